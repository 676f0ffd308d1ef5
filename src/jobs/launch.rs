//! Starting a job's process: the command itself when the server cannot isolate jobs, otherwise runnel's init
//! inside new namespaces (see `isolation`), which starts the command. Either way the first process is created
//! inside the job's cgroup when there is one.
//!
//! Without isolation the launch returns once the command was exec'd (the spawn is a `vfork`, and the search
//! for the executable is bounded by the request's PATH limits). With isolation it returns as soon as the init
//! exists: the init reports on its control pipe whether the command started, which the event loop reads when
//! it arrives ([`init_failure`] turns a failure report into the client's error), so a slow namespace setup or
//! executable search never holds the loop.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::spec::{c_string, JobSpec};
use super::JobError;
use crate::cgroup::JobCgroup;
use crate::isolation::{InitPlan, InitReport, Isolation};
use crate::sys::{self, CStringArray, ChildStack, ExecFailure, SpawnFds, SpawnOptions, SpawnProgram, SpawnStage};

/// A job process that is running the command.
pub struct Launched {
    /// Host pid of the job's top process: the init when isolated, else the command.
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// Read ends of the stdout and stderr pipes.
    pub pipes: [OwnedFd; 2],
    /// The init's report pipe (isolated jobs only): first whether the command started, later its exit status.
    pub control: Option<OwnedFd>,
}

/// What every launch reuses: the child's stack and the job's stdin.
pub struct Launcher {
    child_stack: ChildStack,
    dev_null: OwnedFd,
    /// The server's open-file limits before it raised them: what jobs get.
    open_files: Option<libc::rlimit>,
}

impl Launcher {
    pub fn new() -> io::Result<Launcher> {
        let open_files = match sys::raise_open_file_limit() {
            Ok(original) => Some(original),
            Err(err) => {
                log::warn!("cannot raise the open-file limit: {err}");
                None
            }
        };
        Ok(Launcher { child_stack: ChildStack::default(), dev_null: sys::open_dev_null()?, open_files })
    }

    /// Starts `spec`'s process (for an isolated job, its init, whose report is still to come); on failure
    /// nothing is left running.
    pub fn launch(
        &mut self,
        spec: &JobSpec,
        hostname: &str,
        working_dir: &Path,
        isolation: Option<&Isolation>,
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
            die_with_parent: true,
            open_files: self.open_files,
        };

        let Some(isolation) = isolation else {
            let program = SpawnProgram {
                exec_fd: None,
                candidates: CStringArray::new(
                    spec.exec_candidates().iter().map(|p| c_string(p.as_os_str().as_bytes())).collect(),
                ),
                argv: CStringArray::new(
                    std::iter::once(&spec.command).chain(&spec.args).map(|a| c_string(a.as_bytes())).collect(),
                ),
                envp: CStringArray::new(spec.environment().into_iter().map(c_string).collect()),
                working_dir: c_string(working_dir.as_os_str().as_bytes()),
            };
            let fds = SpawnFds {
                stdin: self.dev_null.as_fd(),
                stdout: stdout.write.as_fd(),
                stderr: stderr.write.as_fd(),
                control: None,
            };
            return match sys::spawn(&program, &fds, options, &mut self.child_stack).map_err(internal)? {
                // Only the read ends are kept: the write ends, closed as this returns, now belong to the job
                // alone, so the pipes reach end of file when the job (and whatever inherited them) exits.
                Ok((pid, pidfd)) => Ok(Launched { pid, pidfd, pipes: [stdout.read, stderr.read], control: None }),
                Err(failure) => Err(exec_error(&spec.command, working_dir, failure)),
            };
        };

        let plan = InitPlan {
            hostname: hostname.to_string(),
            run_as: isolation.run_as,
            loopback: isolation.own_network,
            working_dir: working_dir.to_path_buf(),
            candidates: spec.exec_candidates(),
            env: spec.environment(),
            argv: std::iter::once(&spec.command).chain(&spec.args).cloned().collect(),
        };
        let program = SpawnProgram {
            exec_fd: Some(isolation.init_executable()),
            candidates: CStringArray::new(Vec::new()),
            argv: CStringArray::new(plan.to_args()),
            // Empty: the init starts as root (see `InitPlan`).
            envp: CStringArray::new(Vec::new()),
            working_dir: c"/".into(),
        };
        let (control_read, control_write) = sys::control_pipe().map_err(internal)?;
        let fds = SpawnFds {
            stdin: self.dev_null.as_fd(),
            stdout: stdout.write.as_fd(),
            stderr: stderr.write.as_fd(),
            control: Some(control_write.as_fd()),
        };
        let options = SpawnOptions { namespaces: isolation.namespaces(), ..options };
        let spawned = sys::spawn(&program, &fds, options, &mut self.child_stack).map_err(internal)?;
        drop(control_write);
        let (pid, pidfd) = spawned.map_err(|failure| {
            let reason = io::Error::from_raw_os_error(failure.errno);
            JobError::system("cannot start the job's init (runnel's own executable)", reason)
        })?;
        Ok(Launched { pid, pidfd, pipes: [stdout.read, stderr.read], control: Some(control_read) })
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
fn exec_error(command: &str, working_dir: &Path, failure: ExecFailure) -> JobError {
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
