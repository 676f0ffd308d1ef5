//! Starting a job's process: the command itself when the server cannot isolate jobs, otherwise the job's init:
//! a shell made ahead of time (`isolation::shell_pool`) that is handed the job, or, when none is ready or the job
//! has a cgroup, a fork into new namespaces that starts the command and then becomes runnel's init (see
//! `isolation` and `sys::spawn_init`). A forked first process is created inside the job's cgroup when there is
//! one.
//!
//! Either way the launch returns as soon as the process exists, and whether the command started comes later,
//! through the event loop, within [`START_TIMEOUT`]: without isolation the child (a fork) reports an exec
//! failure on a pipe that otherwise closes at the exec; with isolation the init reports on its control pipe
//! ([`init_failure`] and [`exec_error`] turn a failure into the client's error). So a slow namespace setup, a
//! working directory on a hung file system or a long executable search never holds the loop.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::spec::{c_string, JobSpec};
use super::JobError;
use crate::cgroup::JobCgroup;
use crate::isolation::shell_pool::ShellPool;
use crate::isolation::{InitReport, Isolation, RunAs, INIT_COMMAND, RUN_AS_VARIABLE};
use crate::sys::{
    self, CStringArray, ChildStack, ExecFailure, InitStacks, InitStart, JobSetup, SpawnFds, SpawnOptions, SpawnProgram,
    SpawnStage, WorkingDirBind,
};

/// How long a job has to report that its command started (its init's report, or the exec of a job without
/// isolation), after which the job is killed and StartJob fails. The work is a few mounts and system calls,
/// the search for the executable and one exec: milliseconds, unless the working directory or PATH leads
/// somewhere slow (a hung network file system, long symlink chains). The server does not wait meanwhile.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A job process whose command is starting.
pub struct Launched {
    /// Host pid of the job's top process: the init when isolated, else the command.
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// Read ends of the stdout and stderr pipes.
    pub pipes: [OwnedFd; 2],
    /// Where the start's outcome arrives.
    pub report: StartReport,
}

/// What an isolated job runs inside: the server's isolation, the user it was given and its bounds.
pub struct Sandbox<'a> {
    pub isolation: &'a Isolation,
    pub run_as: RunAs,
    /// Bounds its private temporary directories too.
    pub memory_limit: Option<u64>,
    /// `RLIMIT_NPROC`, for a user of the job's own.
    pub max_processes: Option<u32>,
    /// The working directory is the job's own, made by the server: its init gives it to `run_as`.
    pub own_working_dir: bool,
}

/// The pipe a starting job reports on.
pub enum StartReport {
    /// The command's own exec (no isolation): 8 bytes of failure, or end of file once it exec'd
    /// (`sys::read_spawn_report`).
    Exec(OwnedFd),
    /// The job's init: `Started` or a failure, later the command's exit status (`isolation::InitReport`).
    Init(OwnedFd),
}

/// What every launch reuses: the children's stacks, the job's stdin, the init's argv, shells made ahead of time.
pub struct Launcher {
    child_stack: ChildStack,
    init_stacks: InitStacks,
    /// `runnel __init`: all an init's command line says (the job's own arguments are not in it).
    init_argv: CStringArray,
    dev_null: OwnedFd,
    /// Where isolated jobs take their namespaces from, made ahead of time; without one (or when it is empty),
    /// the job's start forks into new ones.
    shell_pool: Option<ShellPool>,
    /// The server's open-file limits before it raised them: what jobs get.
    open_files: Option<libc::rlimit>,
}

impl Launcher {
    pub fn new(shell_pool: Option<ShellPool>) -> io::Result<Launcher> {
        let open_files = match sys::raise_open_file_limit() {
            Ok(original) => Some(original),
            Err(err) => {
                log::warn!("cannot raise the open-file limit: {err}");
                None
            }
        };
        Ok(Launcher {
            child_stack: ChildStack::default(),
            init_stacks: InitStacks::default(),
            init_argv: CStringArray::new(vec![c"runnel".into(), c_string(INIT_COMMAND.as_bytes())]),
            dev_null: sys::open_dev_null()?,
            open_files,
            shell_pool,
        })
    }

    /// Asks for the shells taken since the last call to be replaced (see `ShellPool::replenish`).
    pub fn replenish_shells(&mut self, starts_pending: bool) {
        if let Some(pool) = &mut self.shell_pool {
            pool.replenish(starts_pending);
        }
    }

    /// Ends the shell helper and waits for it (server shutdown); the shells still in the pool exit. Later
    /// isolated jobs would fork their own namespaces.
    pub fn finish(&mut self) {
        self.shell_pool = None;
    }

    /// Starts `spec`'s process (for an isolated job, its init, whose report is still to come); on failure
    /// nothing is left running.
    pub fn launch(
        &mut self,
        spec: &JobSpec,
        hostname: &str,
        working_dir: &Path,
        sandbox: Option<Sandbox<'_>>,
        cgroup: Option<&JobCgroup>,
    ) -> Result<Launched, JobError> {
        let cgroup_dir = match cgroup.map(JobCgroup::open).transpose() {
            Ok(dir) => dir,
            Err(err) => return Err(JobError::system("cannot open the job's cgroup", err)),
        };
        let internal = |err: io::Error| JobError::system("cannot start the job", err);
        let stdout = sys::output_pipe().map_err(internal)?;
        let stderr = sys::output_pipe().map_err(internal)?;
        let options = SpawnOptions {
            namespaces: Default::default(),
            cgroup: cgroup_dir.as_ref().map(AsFd::as_fd),
            sibling: false,
            die_with_parent: true,
            open_files: self.open_files,
        };

        let Some(Sandbox { isolation, run_as, memory_limit, max_processes, own_working_dir }) = sandbox else {
            let program = command_program(spec, working_dir);
            let (report_read, report_write) = sys::control_pipe().map_err(internal)?;
            let fds = SpawnFds {
                stdin: self.dev_null.as_fd(),
                stdout: stdout.write.as_fd(),
                stderr: stderr.write.as_fd(),
                control: None,
                report: Some(report_write.as_fd()),
            };
            return match sys::spawn(&program, &fds, options, &mut self.child_stack).map_err(internal)? {
                // Only the read ends are kept: the write ends, closed as this returns, now belong to the job
                // alone, so the pipes reach end of file when the job (and whatever inherited them) exits, and the
                // report pipe when the child exec'd.
                Ok((pid, pidfd)) => Ok(Launched {
                    pid,
                    pidfd,
                    pipes: [stdout.read, stderr.read],
                    report: StartReport::Exec(report_read),
                }),
                Err(failure) => Err(exec_error(&spec.command, working_dir, failure)),
            };
        };

        let command = command_program(spec, working_dir);
        let RunAs { uid, gid } = run_as;
        let hostname = c_string(hostname.as_bytes());
        // Each private temporary directory holds at most --tmp-size, and no more than the job's memory.
        let tmp_size = memory_limit.map_or(isolation.tmp_size, |limit| limit.min(isolation.tmp_size));
        let tmp_options = c_string(format!("size={tmp_size},mode=1777").as_bytes());
        let bind = WorkingDirMount::under_private_tmp(working_dir);
        let job = JobSetup {
            hostname: &hostname,
            command: &command,
            run_as: (uid, gid),
            max_processes: max_processes.map(u64::from),
            open_files: self.open_files,
            seccomp: isolation.seccomp.as_ref(),
            tmp_options: &tmp_options,
            working_dir_bind: bind.as_ref().map(WorkingDirMount::as_bind),
            own_working_dir,
        };
        let (control_read, control_write) = sys::control_pipe().map_err(internal)?;
        // There is no pool where jobs get cgroups (see `JobTable::new`): a shell's init is not in its job's.
        debug_assert!(cgroup_dir.is_none() || self.shell_pool.is_none());
        if let Some(shell) = self.shell_pool.as_mut().and_then(ShellPool::take) {
            let fds = [self.dev_null.as_fd(), stdout.write.as_fd(), stderr.write.as_fd(), control_write.as_fd()];
            match shell.assign(&job, fds) {
                Ok((pid, pidfd)) => {
                    let pipes = [stdout.read, stderr.read];
                    return Ok(Launched { pid, pidfd, pipes, report: StartReport::Init(control_read) });
                }
                Err(err) => log::warn!("a shell made ahead of time could not take a job ({err}); forking one"),
            }
        }
        let start = InitStart {
            job,
            own_network: isolation.own_network,
            init_executable: isolation.init_executable(),
            init_argv: &self.init_argv,
            init_envp: &CStringArray::new(vec![c_string(format!("{RUN_AS_VARIABLE}={uid}:{gid}").as_bytes())]),
        };
        let fds = SpawnFds {
            stdin: self.dev_null.as_fd(),
            stdout: stdout.write.as_fd(),
            stderr: stderr.write.as_fd(),
            control: Some(control_write.as_fd()),
            report: None,
        };
        let options = SpawnOptions { namespaces: isolation.namespaces(), ..options };
        let (pid, pidfd) = sys::spawn_init(&start, &fds, options, &mut self.init_stacks)
            .map_err(|err| JobError::system("cannot start the job's init", err))?;
        Ok(Launched { pid, pidfd, pipes: [stdout.read, stderr.read], report: StartReport::Init(control_read) })
    }
}

/// A working directory under a private temporary directory, and what mounting it back there takes (see
/// `sys::WorkingDirBind`).
struct WorkingDirMount {
    source: CString,
    directories: CStringArray,
}

impl WorkingDirMount {
    /// `None` for a directory outside them, or named with `..` (which the job's own view then resolves), or one of
    /// them itself: a job asking to run in `/tmp` runs in its private `/tmp`, as under systemd's `PrivateTmp=`,
    /// never in the host's.
    fn under_private_tmp(working_dir: &Path) -> Option<WorkingDirMount> {
        if working_dir.components().any(|c| c == std::path::Component::ParentDir) {
            return None;
        }
        let tmp = sys::PRIVATE_TMP_DIRS
            .iter()
            .map(|dir| Path::new(std::ffi::OsStr::from_bytes(dir.to_bytes())))
            .find(|dir| working_dir.starts_with(dir))?;
        let below: Vec<_> = working_dir.strip_prefix(tmp).ok()?.components().collect();
        if below.is_empty() {
            return None;
        }
        let directories = (1..=below.len())
            .map(|depth| c_string(tmp.join(below[..depth].iter().collect::<PathBuf>()).as_os_str().as_bytes()))
            .collect();
        Some(WorkingDirMount {
            source: c_string(working_dir.as_os_str().as_bytes()),
            directories: CStringArray::new(directories),
        })
    }

    fn as_bind(&self) -> WorkingDirBind<'_> {
        WorkingDirBind { source: &self.source, directories: &self.directories, target: &self.source }
    }
}

/// The job's command as the spawn execs it: the candidates of its executable search, argv, environment.
fn command_program(spec: &JobSpec, working_dir: &Path) -> SpawnProgram<'static> {
    SpawnProgram {
        exec_fd: None,
        candidates: CStringArray::new(
            spec.exec_candidates().iter().map(|p| c_string(p.as_os_str().as_bytes())).collect(),
        ),
        argv: CStringArray::new(
            std::iter::once(&spec.command).chain(&spec.args).map(|a| c_string(a.as_bytes())).collect(),
        ),
        envp: CStringArray::new(spec.environment().into_iter().map(c_string).collect()),
        working_dir: c_string(working_dir.as_os_str().as_bytes()),
    }
}

/// Why an isolated job running `command` in `working_dir` did not start, from its init's first report.
pub fn init_failure(report: InitReport, command: &str, working_dir: &Path) -> JobError {
    match report {
        InitReport::SpawnFailed(failure) => exec_error(command, working_dir, failure),
        InitReport::SetupFailed { step, errno } => JobError::system(
            &format!("cannot isolate the job: {}", step.describe()),
            io::Error::from_raw_os_error(errno),
        ),
        InitReport::Started | InitReport::Ended(_) => {
            JobError::System(format!("the job's init sent {report:?} before reporting the command started"))
        }
    }
}

/// The error a client sees for a command that could not be exec'd.
pub fn exec_error(command: &str, working_dir: &Path, failure: ExecFailure) -> JobError {
    let reason = io::Error::from_raw_os_error(failure.errno);
    let (command, dir) = (command.to_string(), working_dir.to_path_buf());
    match (failure.stage, failure.errno) {
        (SpawnStage::Exec, libc::ENOENT | libc::ENOTDIR) => JobError::ExecutableNotFound(command),
        (SpawnStage::Exec, libc::EACCES | libc::EPERM) => JobError::ExecutionDenied { command, reason },
        (SpawnStage::Exec, _) => JobError::NotExecutable { command, reason },
        (SpawnStage::WorkingDir, libc::EACCES) => JobError::WorkingDirDenied { dir, reason },
        (SpawnStage::WorkingDir, _) => JobError::WorkingDirUnusable { dir, reason },
        (SpawnStage::Setup, _) => JobError::system("cannot set up the job's process", reason),
    }
}
