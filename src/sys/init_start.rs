//! The first instants of a job's init, before it is runnel's supervisor: the namespace setup, the command's
//! start and the report that it started.
//!
//! They happen in one of two processes. Usually in a shell made ahead of time (`isolation::shell_pool`): a
//! `runnel __init` already PID 1 of fresh namespaces, which did [`set_up_namespaces`] when it was made and, once
//! its job arrives, does the job's part and starts the command ([`start_job_in_shell`]); so a start costs the
//! server neither a fork nor the namespaces' creation. When no shell is ready, the server forks into the job's
//! namespaces and cgroup ([`spawn_init`]: `clone3` without `CLONE_VM`, the loop goes on at once), and the child
//! runs the same steps on data the server prepared, reports, and then execs `runnel __init`, which supervises
//! the command (`isolation::init`). Either way the command is PID 2, started with a `vfork` whose child drops
//! every privilege before its exec, and the job's argv and environment never appear in the init's argv.
//!
//! The steps are raw system calls on prepared data (no allocation), as a fork of the server needs. Until the
//! init's signalfd exists every signal stays blocked: a stop signal sent meanwhile stays pending, and the init
//! reads it from its signalfd.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::spawn::{clone_child, reset_signal_dispositions, ChildArgs, ChildReport, Shared, CLONE_INTO_CGROUP};
use super::{ChildStack, ExecFailure, ExitStatus, MountPropagation, SpawnFds, SpawnOptions, SpawnProgram, SpawnStage};

/// The command's pid in the job's PID namespace: the first process the init starts.
pub const COMMAND_PID: i32 = 2;

/// The directories every isolated job gets a private, empty `tmpfs` on (those that exist on the host).
pub const PRIVATE_TMP_DIRS: [&CStr; 3] = [c"/tmp", c"/var/tmp", c"/dev/shm"];

/// A working directory under one of [`PRIVATE_TMP_DIRS`], which the job's `tmpfs` would hide: it is opened as
/// the job's user before the mount and bind-mounted back at its path inside it.
pub struct WorkingDirBind<'a> {
    /// The working directory, as the client or the server named it.
    pub source: &'a CStr,
    /// The directories to make in the `tmpfs`, parents first, the last one being the working directory's path
    /// (none when the working directory is the temporary directory itself).
    pub directories: &'a super::CStringArray,
    /// Where the working directory is mounted: its own path.
    pub target: &'a CStr,
}

/// What a job's init needs to know of its job: everything but how the init itself came to be.
pub struct JobSetup<'a> {
    pub hostname: &'a CStr,
    /// The job's command; `exec_fd` is not used.
    pub command: &'a SpawnProgram<'a>,
    /// The user and group the command (and, once it has dropped its privileges, the init) runs as.
    pub run_as: (u32, u32),
    /// The command's `RLIMIT_NPROC`: set where the job has a user of its own.
    pub max_processes: Option<u64>,
    /// The command's open-file limits (the server raised its own).
    pub open_files: Option<libc::rlimit>,
    /// The command's seccomp filter, if any.
    pub seccomp: Option<&'a super::SeccompFilter>,
    /// Options of the private `tmpfs` mounts (`size=...,mode=1777`).
    pub tmp_options: &'a CStr,
    pub working_dir_bind: Option<WorkingDirBind<'a>>,
    /// The working directory is the one the server made for the job, private to the server: the setup gives
    /// it to `run_as` first. Done here rather than on the server's loop, since a `chown` waits for the disk.
    pub own_working_dir: bool,
}

/// What the server's fork into a job's namespaces needs (see [`spawn_init`]), prepared before the fork.
pub struct InitStart<'a> {
    pub job: JobSetup<'a>,
    /// Mount a fresh `/sys` and bring `lo` up: the job has a network namespace of its own.
    pub own_network: bool,
    /// runnel's own executable, the init proper.
    pub init_executable: BorrowedFd<'a>,
    /// The init proper's argv and environment.
    pub init_argv: &'a super::CStringArray,
    pub init_envp: &'a super::CStringArray,
}

/// Two stacks: the forked init's first instants run on one (its own copy), the command's `vfork` on the other.
#[derive(Default)]
pub struct InitStacks {
    init: ChildStack,
    command: ChildStack,
}

/// Everything the forked child reads, through the trampoline's pointer (its own copy of it).
struct InitArgs<'a> {
    start: &'a InitStart<'a>,
    fds: [RawFd; 4],
    die_with_parent: bool,
    command_stack: *mut ChildStack,
}

/// Starts a job's init: forks into `options`' namespaces and cgroup, with `fds` as 0-2 and `fds.control` as 3.
/// Returns at once with the init's host pid and pidfd; what happens next arrives on the control pipe
/// (`InitReport`): `Started` or why the command did not start, later the command's end.
pub fn spawn_init(
    start: &InitStart<'_>,
    fds: &SpawnFds<'_>,
    options: SpawnOptions<'_>,
    stacks: &mut InitStacks,
) -> io::Result<(i32, OwnedFd)> {
    let control = fds.control.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let args = InitArgs {
        start,
        fds: [fds.stdin.as_raw_fd(), fds.stdout.as_raw_fd(), fds.stderr.as_raw_fd(), control.as_raw_fd()],
        die_with_parent: options.die_with_parent,
        command_stack: &mut stacks.command,
    };
    let mut flags = options.namespaces.bits();
    if options.cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let cgroup = options.cgroup.map_or(0, |fd| fd.as_raw_fd() as u64);
    // SAFETY: the child is a copy (no CLONE_VM): it reads its own copy of `args` and of everything it points to,
    // and makes only raw system calls.
    unsafe {
        clone_child(Shared::Copy, flags, cgroup, &mut stacks.init, init_child_main, &args as *const InitArgs as *mut _)
    }
}

/// Where the init's first instants keep a working directory that is mounted back (`/proc/self/fd/5`).
const WORKING_DIR_FD: libc::c_int = 5;

/// Writes `report` to the control pipe (descriptor 3), raw.
pub fn send_report(report: InitReport) {
    let bytes = report.encode();
    // SAFETY: a write of a local buffer; a failure means the server is gone, and nothing can be done.
    unsafe { libc::write(3, bytes.as_ptr().cast(), bytes.len()) };
}

/// The current errno, as the raw system calls below leave it.
fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn setup_failed(step: SetupStep) -> InitReport {
    InitReport::SetupFailed { step, errno: errno() }
}

/// The forked child: PID 1 of the job's namespaces until it execs the init proper. Raw system calls only.
extern "C" fn init_child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to this process's copy of the parent's `InitArgs`, valid for the child's life.
    let args = unsafe { &*(arg as *const InitArgs) };
    let start = args.start;
    // Before descriptor 3 is the control pipe, a failure can only be an exit status.
    let failed = |report: InitReport| -> libc::c_int {
        send_report(report);
        127
    };

    // SAFETY (for the block below): each call is a thin system call wrapper on values prepared before the fork,
    // in this process's own copy of the server's memory.
    unsafe {
        reset_signal_dispositions();
        if libc::setsid() < 0 {
            return 127;
        }
        if args.die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
            return 127;
        }
        // 0-2 the job's stdin, stdout and stderr, 3 the control pipe, 4 the init's executable: each lifted above
        // 4 first, so that no source is overwritten by another's move. 3 and 4 stay close-on-exec for the
        // command's exec; 3 is made inheritable just before the init proper's.
        let sources = [args.fds[0], args.fds[1], args.fds[2], args.fds[3], start.init_executable.as_raw_fd()];
        let mut lifted = [0; 5];
        for (lifted, source) in lifted.iter_mut().zip(sources) {
            *lifted = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, 5);
            if *lifted < 0 {
                return 127;
            }
        }
        for (target, &fd) in lifted.iter().enumerate() {
            let flags = if target < 3 { 0 } else { libc::O_CLOEXEC };
            if libc::dup3(fd, target as libc::c_int, flags) < 0 {
                return 127;
            }
        }
        // None of the server's descriptors (its sockets, its other jobs' pipes) stays open in the job.
        if libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0) < 0 {
            return failed(setup_failed(SetupStep::Descriptors));
        }
        // The server may have died before the death signal was armed, and nothing would end this job then. Its
        // parent is outside the PID namespace (`getppid` says 0), so ask the control pipe instead: with this
        // copy of the server's read end closed just now, the server's own is the only one left.
        if super::isolation::pipe_reader_gone(3) {
            return 127;
        }
        if let Err(report) = set_up_namespaces(start.own_network, MountPropagation::Private) {
            return failed(report);
        }
        if let Err(report) = set_up_job(&start.job, args.die_with_parent) {
            return failed(report);
        }
        // Already in the job's cgroup and cgroup namespace: the command inherits both.
        let report = start_command(&start.job, 0, &mut *args.command_stack);
        send_report(report);
        if report != InitReport::Started {
            return 127;
        }

        // The init proper: the same descriptors (3 now inheritable), every signal still blocked.
        if libc::fcntl(3, libc::F_SETFD, 0) == 0 {
            libc::syscall(
                libc::SYS_execveat,
                4,
                c"".as_ptr(),
                start.init_argv.pointers().as_ptr(),
                start.init_envp.pointers().as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        // No init to supervise the command: end it, and the server sees the init end without a report.
        libc::kill(-COMMAND_PID, libc::SIGKILL);
        libc::kill(COMMAND_PID, libc::SIGKILL);
    }
    1
}

/// What every job's namespaces get, whichever job it is: mounts that send nothing to the host's, a fresh
/// `/proc`, and with a network namespace of its own a fresh `/sys` and `lo` up; and the OOM score of an ordinary
/// process. For PID 1 of new namespaces (a forked init, or a shell when it is made).
pub fn set_up_namespaces(own_network: bool, mounts: MountPropagation) -> Result<(), InitReport> {
    use super::isolation::{bring_loopback_up, mount_proc, mount_sysfs, set_mount_propagation};
    // The helpers are thin system-call wrappers (no allocation), and leave errno as they found it.
    set_mount_propagation(mounts).map_err(|_| setup_failed(SetupStep::Mounts))?;
    mount_proc().map_err(|_| setup_failed(SetupStep::Proc))?;
    if own_network {
        mount_sysfs().map_err(|_| setup_failed(SetupStep::Sysfs))?;
        bring_loopback_up().map_err(|_| setup_failed(SetupStep::Loopback))?;
    }
    // A server protected from the OOM killer (systemd's OOMScoreAdjust=-1000) does not pass that on.
    // SAFETY: an open of a constant path, a write of a constant byte, a close of what was opened.
    unsafe {
        let oom = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if oom < 0 || libc::write(oom, c"0".as_ptr().cast(), 1) != 1 {
            return Err(setup_failed(SetupStep::OomScore));
        }
        libc::close(oom);
    }
    Ok(())
}

/// The job's own part of the setup, once its namespaces are: its hostname and private temporary directories.
/// Descriptors 0-3 are the job's; 5 must be free.
fn set_up_job(job: &JobSetup<'_>, die_with_parent: bool) -> Result<(), InitReport> {
    let none = std::ptr::null::<libc::c_void>();
    super::isolation::set_hostname(job.hostname.to_bytes()).map_err(|_| setup_failed(SetupStep::Hostname))?;
    // SAFETY (for the block below): each call is a thin system call wrapper on prepared values.
    unsafe {
        if job.own_working_dir {
            // A directory the server made under its state directory, which nobody else can write to: no link
            // can stand in for it, and none is followed.
            let (uid, gid) = job.run_as;
            let dir = job.command.working_dir.as_ptr();
            if libc::fchownat(libc::AT_FDCWD, dir, uid, gid, libc::AT_SYMLINK_NOFOLLOW) < 0 {
                return Err(setup_failed(SetupStep::WorkingDirOwner));
            }
        }
        // Private temporary directories: what one job leaves there, no other job sees, and it goes with the job.
        // A working directory under one of them is opened first, as the job's user would reach it (its file
        // system ids, no supplementary group), and mounted back in place.
        if let Some(bind) = &job.working_dir_bind {
            let (uid, gid) = job.run_as;
            libc::syscall(libc::SYS_setgroups, 0, 0);
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsuid, uid);
            let working_dir = libc::open(bind.source.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            let open_errno = errno();
            libc::syscall(libc::SYS_setfsuid, 0);
            libc::syscall(libc::SYS_setfsgid, 0);
            // Changing the file-system ids cleared the parent-death signal: arm it again.
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(setup_failed(SetupStep::TmpDirs));
            }
            if working_dir < 0 {
                return Err(InitReport::SpawnFailed(ExecFailure { stage: SpawnStage::WorkingDir, errno: open_errno }));
            }
            if working_dir != WORKING_DIR_FD {
                if libc::dup3(working_dir, WORKING_DIR_FD, libc::O_CLOEXEC) < 0 {
                    return Err(setup_failed(SetupStep::TmpDirs));
                }
                libc::close(working_dir);
            }
        }
        for dir in PRIVATE_TMP_DIRS {
            let tmpfs = c"tmpfs".as_ptr();
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            if libc::mount(tmpfs, dir.as_ptr(), tmpfs, flags, job.tmp_options.as_ptr().cast()) < 0
                && errno() != libc::ENOENT
            {
                return Err(setup_failed(SetupStep::TmpDirs));
            }
        }
        if let Some(bind) = &job.working_dir_bind {
            for &dir in bind.directories.pointers().iter().take_while(|p| !p.is_null()) {
                if libc::mkdir(dir, 0o755) < 0 && errno() != libc::EEXIST {
                    return Err(setup_failed(SetupStep::TmpDirs));
                }
            }
            // Not recursive: a recursive bind of the whole temporary directory would bring the new tmpfs along.
            let source = c"/proc/self/fd/5".as_ptr();
            if libc::mount(source, bind.target.as_ptr(), std::ptr::null(), libc::MS_BIND, none) < 0 {
                return Err(setup_failed(SetupStep::TmpDirs));
            }
            libc::close(WORKING_DIR_FD);
        }
        if let Some(limit) = &job.open_files {
            if libc::setrlimit(libc::RLIMIT_NOFILE, limit) < 0 {
                return Err(setup_failed(SetupStep::Descriptors));
            }
        }
    }
    Ok(())
}

/// Starts the job's command as PID 2: in a session of its own, without privileges, signals unblocked at its
/// exec, with `clone_flags`. Returns `Started`, or why it did not.
fn start_command(job: &JobSetup<'_>, clone_flags: u64, stack: &mut ChildStack) -> InitReport {
    let mut report = ChildReport { stage: 0, errno: 0 };
    let seccomp = job.seccomp.map(super::SeccompFilter::program);
    let command_args = ChildArgs {
        program: job.command,
        fds: [0, 1, 2],
        control: None,
        die_with_parent: true,
        open_files: None,
        run_as: Some(job.run_as),
        max_processes: job.max_processes,
        seccomp: seccomp.as_ref().map(|program| program as *const libc::sock_fprog),
        report: &mut report,
        report_pipe: None,
        parent: 1,
    };
    // SAFETY: `child_main` makes raw system calls only, and `command_args` (with what it points to) outlives
    // the child's use of it: CLONE_VFORK suspends us until the child execs or exits.
    let command = unsafe {
        clone_child(
            Shared::UntilExec,
            clone_flags,
            0,
            stack,
            super::spawn::child_main,
            &command_args as *const ChildArgs as *mut _,
        )
    };
    let (pid, pidfd) = match command {
        Ok(spawned) => spawned,
        Err(err) => {
            return InitReport::SetupFailed { step: SetupStep::Command, errno: err.raw_os_error().unwrap_or(0) }
        }
    };
    if report.stage != 0 {
        let _ = super::wait_pidfd(pidfd.as_raw_fd(), super::Wait::Reap);
        return InitReport::SpawnFailed(ExecFailure {
            stage: SpawnStage::from_code(report.stage),
            errno: report.errno,
        });
    }
    drop(pidfd);
    if pid != COMMAND_PID {
        // SAFETY: a signal to the process just started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return InitReport::SetupFailed { step: SetupStep::Command, errno: libc::ESRCH };
    }
    InitReport::Started
}

/// In a shell whose job has arrived (`isolation::init`), with descriptors 0-3 the job's and every other closed:
/// its mounts made private, the job's part of the setup and its command's start, as in a forked init; the
/// command gets a cgroup namespace of its own (a forked init has one already). Returns the report to send.
pub fn start_job_in_shell(job: &JobSetup<'_>, stacks: &mut InitStacks) -> InitReport {
    if super::isolation::set_mount_propagation(MountPropagation::Private).is_err() {
        return setup_failed(SetupStep::Mounts);
    }
    if let Err(report) = set_up_job(job, true) {
        return report;
    }
    start_command(job, libc::CLONE_NEWCGROUP as u64, &mut stacks.command)
}

/// The steps of the init's setup, named in the error a failure produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum SetupStep {
    Mounts = 1,
    Proc = 2,
    Hostname = 3,
    Loopback = 4,
    Privileges = 5,
    Signals = 6,
    Descriptors = 7,
    Command = 8,
    Sysfs = 9,
    OomScore = 10,
    TmpDirs = 12,
    WorkingDirOwner = 13,
}

impl SetupStep {
    pub fn from_code(code: i32) -> Option<SetupStep> {
        [
            Self::Mounts,
            Self::Proc,
            Self::Hostname,
            Self::Loopback,
            Self::Privileges,
            Self::Signals,
            Self::Descriptors,
            Self::Command,
            Self::Sysfs,
            Self::OomScore,
            Self::TmpDirs,
            Self::WorkingDirOwner,
        ]
        .into_iter()
        .find(|s| *s as i32 == code)
    }

    pub fn describe(self) -> &'static str {
        match self {
            SetupStep::Mounts => "make mounts private",
            SetupStep::Proc => "mount /proc",
            SetupStep::Hostname => "set the hostname",
            SetupStep::Loopback => "bring up the loopback interface",
            SetupStep::Privileges => "drop privileges",
            SetupStep::Signals => "set up signal handling",
            SetupStep::Descriptors => "close the server's descriptors",
            SetupStep::Command => "start the command",
            SetupStep::Sysfs => "mount /sys",
            SetupStep::OomScore => "reset the OOM score adjustment",
            SetupStep::TmpDirs => "mount its private /tmp, /var/tmp and /dev/shm",
            SetupStep::WorkingDirOwner => "give its working directory to its user",
        }
    }
}

/// A message from a job's init to the server: 12 bytes, written atomically (less than `PIPE_BUF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitReport {
    /// The command was exec'd: StartJob may answer.
    Started,
    /// The command could not be exec'd; the init exits.
    SpawnFailed(ExecFailure),
    /// The init could not finish the namespace setup; it exits without starting the command.
    SetupFailed { step: SetupStep, errno: i32 },
    /// The command ended with this status; the init exits, which ends the namespaces.
    Ended(ExitStatus),
}

pub const REPORT_LEN: usize = 12;

impl InitReport {
    pub fn encode(self) -> [u8; REPORT_LEN] {
        let (kind, a, b) = match self {
            InitReport::Started => (1, 0, 0),
            InitReport::SpawnFailed(f) => (2, f.stage as i32, f.errno),
            InitReport::SetupFailed { step, errno } => (3, step as i32, errno),
            InitReport::Ended(ExitStatus::Exited(code)) => (4, 0, code),
            InitReport::Ended(ExitStatus::Signaled(signal)) => (4, 1, signal),
        };
        let mut out = [0; REPORT_LEN];
        for (chunk, value) in out.chunks_exact_mut(4).zip([kind, a, b]) {
            chunk.copy_from_slice(&i32::to_le_bytes(value));
        }
        out
    }

    /// The report in `bytes`, as read from the init's pipe: `None` for anything [`Self::encode`] never writes.
    #[deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
    pub fn decode(bytes: &[u8; REPORT_LEN]) -> Option<InitReport> {
        let [k0, k1, k2, k3, a0, a1, a2, a3, b0, b1, b2, b3] = *bytes;
        let (kind, a, b) = (
            i32::from_le_bytes([k0, k1, k2, k3]),
            i32::from_le_bytes([a0, a1, a2, a3]),
            i32::from_le_bytes([b0, b1, b2, b3]),
        );
        Some(match (kind, a) {
            (1, _) => InitReport::Started,
            (2, _) => InitReport::SpawnFailed(ExecFailure { stage: SpawnStage::from_code(a as u32), errno: b }),
            (3, _) => InitReport::SetupFailed { step: SetupStep::from_code(a)?, errno: b },
            (4, 0) => InitReport::Ended(ExitStatus::Exited(b)),
            (4, 1) => InitReport::Ended(ExitStatus::Signaled(b)),
            _ => return None,
        })
    }
}
