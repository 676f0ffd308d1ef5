//! The first instants of a job's init, before it is runnel: the namespace setup, the command's start and the
//! report that it started, in a forked copy of the server; then the exec of the init proper.
//!
//! Exec'ing runnel first and doing the setup there put a second exec, of the server's whole executable, between
//! StartJob and its answer. Here the server forks (`clone3` without `CLONE_VM`: the loop goes on at once) into
//! the job's namespaces and cgroup. The child, PID 1 of the new PID namespace, sets the namespaces up with raw
//! system calls on data the server prepared, starts the command as PID 2 (a `vfork` whose child drops every
//! privilege before its exec), reports `Started` or the failure on descriptor 3, and only then execs
//! `runnel __init` (`isolation::init`), which supervises the command. The job's argv and environment never
//! appear in the init's argv: they live in the child's copy of the server's memory, which the exec ends, and
//! the child holds none of the server's descriptors from its first instants.
//!
//! Until that exec every signal stays blocked (as the spawn blocks them around the clone): a stop signal sent
//! meanwhile stays pending across the exec, and the init reads it from its signalfd.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::spawn::{clone_child, reset_signal_dispositions, ChildArgs, ChildReport, Shared, CLONE_INTO_CGROUP};
use super::{ChildStack, ExecFailure, ExitStatus, SpawnFds, SpawnOptions, SpawnProgram, SpawnStage};

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

/// What the init's first instants need, prepared by the server before the fork.
pub struct InitStart<'a> {
    pub hostname: &'a CStr,
    /// Mount a fresh `/sys` and bring `lo` up: the job has a network namespace of its own.
    pub own_network: bool,
    /// The job's command; `exec_fd` is not used.
    pub command: &'a SpawnProgram<'a>,
    /// The user and group the command (and, once it has dropped its privileges, the init) runs as.
    pub run_as: (u32, u32),
    /// The command's `RLIMIT_NPROC`: set where the job has a user of its own.
    pub max_processes: Option<u64>,
    /// The command's seccomp filter, if any.
    pub seccomp: Option<&'a super::SeccompFilter>,
    /// Options of the private `tmpfs` mounts (`size=...,mode=1777`).
    pub tmp_options: &'a CStr,
    pub working_dir_bind: Option<WorkingDirBind<'a>>,
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
    open_files: Option<libc::rlimit>,
    network: Option<RawFd>,
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
        open_files: options.open_files,
        network: options.network.map(|fd| fd.as_raw_fd()),
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
fn send(report: InitReport) {
    let bytes = report.encode();
    // SAFETY: a write of a local buffer; a failure means the server is gone, and nothing can be done.
    unsafe { libc::write(3, bytes.as_ptr().cast(), bytes.len()) };
}

/// The forked child: PID 1 of the job's namespaces until it execs the init proper. Raw system calls only.
extern "C" fn init_child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to this process's copy of the parent's `InitArgs`, valid for the child's life.
    let args = unsafe { &*(arg as *const InitArgs) };
    let start = args.start;
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
    // Before descriptor 3 is the control pipe, a failure can only be an exit status.
    let failed = |step: SetupStep| -> libc::c_int {
        send(InitReport::SetupFailed { step, errno: errno() });
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
        // Before the descriptors move: the namespace's own may be among those the moves overwrite. A failure here
        // cannot be reported yet (the control pipe is not 3): the server sees the init end without a report.
        if let Some(network) = args.network {
            if libc::setns(network, libc::CLONE_NEWNET) < 0 {
                return 127;
            }
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
            return failed(SetupStep::Descriptors);
        }
        // The server may have died before the death signal was armed, and nothing would end this job then. Its
        // parent is outside the PID namespace (`getppid` says 0), so ask the control pipe instead: with this
        // copy of the server's read end closed just now, the server's own is the only one left.
        if super::isolation::pipe_reader_gone(3) {
            return 127;
        }
        if let Some(limit) = &args.open_files {
            if libc::setrlimit(libc::RLIMIT_NOFILE, limit) < 0 {
                return failed(SetupStep::Descriptors);
            }
        }
        // The helpers below are thin system-call wrappers too (no allocation), and leave errno as they found it.
        use super::isolation::{bring_loopback_up, make_mounts_private, mount_proc, mount_sysfs, set_hostname};
        let none = std::ptr::null::<libc::c_void>();
        if make_mounts_private().is_err() {
            return failed(SetupStep::Mounts);
        }
        if mount_proc().is_err() {
            return failed(SetupStep::Proc);
        }
        if set_hostname(start.hostname.to_bytes()).is_err() {
            return failed(SetupStep::Hostname);
        }
        if start.own_network {
            if mount_sysfs().is_err() {
                return failed(SetupStep::Sysfs);
            }
            if bring_loopback_up().is_err() {
                return failed(SetupStep::Loopback);
            }
        }
        // Private temporary directories: what one job leaves there, no other job sees, and it goes with the job.
        // A working directory under one of them is opened first, as the job's user would reach it (its file
        // system ids, no supplementary group), and mounted back in place.
        if let Some(bind) = &start.working_dir_bind {
            let (uid, gid) = start.run_as;
            libc::syscall(libc::SYS_setgroups, 0, 0);
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsuid, uid);
            let working_dir = libc::open(bind.source.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            let open_errno = errno();
            libc::syscall(libc::SYS_setfsuid, 0);
            libc::syscall(libc::SYS_setfsgid, 0);
            // Changing the file-system ids cleared the parent-death signal: arm it again.
            if args.die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return failed(SetupStep::TmpDirs);
            }
            if working_dir < 0 {
                let failure = ExecFailure { stage: SpawnStage::WorkingDir, errno: open_errno };
                send(InitReport::SpawnFailed(failure));
                return 127;
            }
            // Descriptors from 5 up were closed, so it is 5 already; make sure.
            if working_dir != WORKING_DIR_FD {
                if libc::dup3(working_dir, WORKING_DIR_FD, libc::O_CLOEXEC) < 0 {
                    return failed(SetupStep::TmpDirs);
                }
                libc::close(working_dir);
            }
        }
        for dir in PRIVATE_TMP_DIRS {
            let tmpfs = c"tmpfs".as_ptr();
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            if libc::mount(tmpfs, dir.as_ptr(), tmpfs, flags, start.tmp_options.as_ptr().cast()) < 0
                && errno() != libc::ENOENT
            {
                return failed(SetupStep::TmpDirs);
            }
        }
        if let Some(bind) = &start.working_dir_bind {
            for &dir in bind.directories.pointers().iter().take_while(|p| !p.is_null()) {
                if libc::mkdir(dir, 0o755) < 0 && errno() != libc::EEXIST {
                    return failed(SetupStep::TmpDirs);
                }
            }
            // Not recursive: a recursive bind of the whole temporary directory would bring the new tmpfs along.
            let source = c"/proc/self/fd/5".as_ptr();
            if libc::mount(source, bind.target.as_ptr(), std::ptr::null(), libc::MS_BIND, none) < 0 {
                return failed(SetupStep::TmpDirs);
            }
            libc::close(WORKING_DIR_FD);
        }
        // A server protected from the OOM killer (systemd's OOMScoreAdjust=-1000) does not pass that on.
        let oom = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if oom < 0 || libc::write(oom, c"0".as_ptr().cast(), 1) != 1 {
            return failed(SetupStep::OomScore);
        }
        libc::close(oom);

        // The command: PID 2, in a session of its own, without privileges, signals unblocked at its exec.
        let mut report = ChildReport { stage: 0, errno: 0 };
        let seccomp = start.seccomp.map(super::SeccompFilter::program);
        let command_args = ChildArgs {
            program: start.command,
            fds: [0, 1, 2],
            control: None,
            die_with_parent: true,
            open_files: None,
            network: None,
            run_as: Some(start.run_as),
            max_processes: start.max_processes,
            seccomp: seccomp.as_ref().map(|program| program as *const libc::sock_fprog),
            report: &mut report,
            report_pipe: None,
            parent: 1,
        };
        let stack = &mut *args.command_stack;
        let command = clone_child(
            Shared::UntilExec,
            0,
            0,
            stack,
            super::spawn::child_main,
            &command_args as *const ChildArgs as *mut _,
        );
        let (pid, pidfd) = match command {
            Ok(spawned) => spawned,
            Err(err) => {
                send(InitReport::SetupFailed { step: SetupStep::Command, errno: err.raw_os_error().unwrap_or(0) });
                return 127;
            }
        };
        if report.stage != 0 {
            let _ = super::wait_pidfd(pidfd.as_raw_fd(), super::Wait::Reap);
            let stage = SpawnStage::from_code(report.stage);
            send(InitReport::SpawnFailed(ExecFailure { stage, errno: report.errno }));
            return 127;
        }
        drop(pidfd);
        if pid != COMMAND_PID {
            libc::kill(pid, libc::SIGKILL);
            send(InitReport::SetupFailed { step: SetupStep::Command, errno: libc::ESRCH });
            return 127;
        }
        send(InitReport::Started);

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
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
    1
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
