//! Starting a job's process: `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` and `execve`, posix_spawn style.
//!
//! It starts a job's command inside its init (see `init_start`, whose fork into the job's namespaces and cgroup
//! uses the same clone: `CLONE_NEW*`, `CLONE_INTO_CGROUP`, no instant of the child outside either), and the
//! command of a job without isolation.
//!
//! The parent prepares everything the child needs (C strings, descriptors, a stack) before the clone, because
//! the child shares the parent's memory and must not allocate or take locks. `CLONE_VFORK` suspends the parent
//! until the child has exec'd or exited, so the child can report an exec failure by writing into a
//! `ChildReport` that lives in the parent's stack frame, and the parent reads it afterwards without a race.
//!
//! That wait is the length of the child's chdir and executable search, which a working directory on a hung file
//! system makes endless. Where the caller cannot afford it (the server's event loop starting a job's command
//! directly), it passes a report pipe instead ([`SpawnFds::report`]): the child is then a plain fork (a
//! copy-on-write copy of the parent's memory, no `CLONE_VM`/`CLONE_VFORK`), the spawn returns at once, and the
//! child writes its failure to the pipe, whose end of file without a report means the exec succeeded
//! ([`read_spawn_report`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// What the child execs: candidate paths tried in order (a bare name resolved against `PATH`), argv, envp,
/// all prepared before the clone (the child may not allocate).
pub struct SpawnProgram<'a> {
    /// When set, this open executable runs (`execveat(fd, "", AT_EMPTY_PATH)`) and `candidates` is ignored.
    pub exec_fd: Option<BorrowedFd<'a>>,
    pub candidates: CStringArray,
    pub argv: CStringArray,
    pub envp: CStringArray,
    pub working_dir: CString,
}

/// C strings with the NULL-terminated pointer array `execve` takes, kept together so the pointers stay valid
/// (moving the `Vec` does not move the strings' bytes).
pub struct CStringArray {
    strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

impl CStringArray {
    pub fn new(strings: Vec<CString>) -> CStringArray {
        let pointers = strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        CStringArray { strings, pointers }
    }

    pub fn strings(&self) -> &[CString] {
        &self.strings
    }

    /// The pointers, ending with a null one.
    pub fn pointers(&self) -> &[*const libc::c_char] {
        &self.pointers
    }
}

/// The descriptors that become the job's stdin, stdout and stderr.
pub struct SpawnFds<'a> {
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    /// Becomes descriptor 3 (not close-on-exec): the job init's report channel to the server.
    pub control: Option<BorrowedFd<'a>>,
    /// The write end of a close-on-exec pipe: with it the spawn does not wait for the exec (see the module
    /// documentation), and the child reports a failure here.
    pub report: Option<BorrowedFd<'a>>,
}

/// Where and how the child starts, beyond the program and its descriptors.
#[derive(Clone, Copy, Default)]
pub struct SpawnOptions<'a> {
    /// `CLONE_NEW*` flags: the namespaces the child gets of its own.
    pub namespaces: Namespaces,
    /// A cgroup v2 directory the child is created in (`CLONE_INTO_CGROUP`).
    pub cgroup: Option<BorrowedFd<'a>>,
    /// `CLONE_PARENT`: the child is the caller's sibling, a child of the caller's parent (a job's shell, made
    /// by a helper for the server, see `isolation::shell_pool`).
    pub sibling: bool,
    /// `PR_SET_PDEATHSIG(SIGKILL)`: the child dies with the server.
    pub die_with_parent: bool,
    /// The open-file limit the child gets back (the server raises its own; see `raise_open_file_limit`).
    pub open_files: Option<libc::rlimit>,
}

/// A set of `CLONE_NEW*` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Namespaces(u64);

impl Namespaces {
    /// PID, mount, UTS, IPC and cgroup (rooted at the job's own cgroup, so `/proc/self/cgroup` shows no host
    /// path).
    pub const JOB: Namespaces = Namespaces(
        (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP)
            as u64,
    );

    /// A job's shell made ahead of time (`isolation::shell_pool`): PID, mount, UTS and IPC. Its command gets a
    /// cgroup namespace of its own when the shell starts it.
    pub const SHELL: Namespaces =
        Namespaces((libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64);

    pub fn with_network(self) -> Namespaces {
        Namespaces(self.0 | libc::CLONE_NEWNET as u64)
    }

    pub(super) fn bits(self) -> u64 {
        self.0
    }
}

/// The step at which the child failed, reported back through shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SpawnStage {
    Setup = 1,
    WorkingDir = 2,
    Exec = 3,
}

impl SpawnStage {
    /// The stage for a number written by [`SpawnStage`] `as u32` (unknown numbers count as setup).
    pub fn from_code(code: u32) -> SpawnStage {
        match code {
            2 => SpawnStage::WorkingDir,
            3 => SpawnStage::Exec,
            _ => SpawnStage::Setup,
        }
    }
}

/// A child-side failure: the stage and its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecFailure {
    pub stage: SpawnStage,
    pub errno: i32,
}

/// Memory the child writes its failure into; zero stage means the exec succeeded.
#[repr(C)]
pub(super) struct ChildReport {
    pub(super) stage: u32,
    pub(super) errno: i32,
}

/// Bytes of a failure on a report pipe: the stage and the errno, each a little-endian u32.
const REPORT_BYTES: usize = 8;

/// What a spawn's report pipe ([`SpawnFds::report`]) says so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnReport {
    /// Nothing yet: the child is still on its way to the exec.
    Pending,
    /// End of file without a failure: the exec succeeded (the pipe closed with it).
    Execd,
    Failed(ExecFailure),
}

/// Reads the read end of a report pipe without waiting.
pub fn read_spawn_report(fd: RawFd) -> io::Result<SpawnReport> {
    if !super::wait_readable(fd, 0)? {
        return Ok(SpawnReport::Pending);
    }
    let mut bytes = [0u8; REPORT_BYTES];
    // Written in one `write` of less than PIPE_BUF before the child exits: whole or not at all.
    match super::read_nonblocking(fd, &mut bytes)? {
        None => Ok(SpawnReport::Pending),
        Some(0) => Ok(SpawnReport::Execd),
        Some(REPORT_BYTES) => {
            let stage = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
            let errno = i32::from_le_bytes(bytes[4..].try_into().expect("4 bytes"));
            Ok(SpawnReport::Failed(ExecFailure { stage: SpawnStage::from_code(stage), errno }))
        }
        Some(n) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("a spawn report of {n} bytes"))),
    }
}

/// A stack for the short-lived child, allocated once and reused: the child only runs until `execve`, and
/// `CLONE_VFORK` guarantees one child at a time uses it.
pub struct ChildStack {
    memory: Vec<u128>,
}

/// 64 KiB is far more than the child's few frames of raw system calls need.
const CHILD_STACK_BYTES: usize = 64 * 1024;

impl Default for ChildStack {
    fn default() -> Self {
        ChildStack { memory: vec![0u128; CHILD_STACK_BYTES / 16] }
    }
}

/// Everything the child function reads, passed by pointer through the trampoline.
pub(super) struct ChildArgs<'a> {
    pub(super) program: &'a SpawnProgram<'a>,
    pub(super) fds: [RawFd; 3],
    pub(super) control: Option<RawFd>,
    pub(super) die_with_parent: bool,
    pub(super) open_files: Option<libc::rlimit>,
    /// Drop to this uid and gid, with no capability left, before the chdir and exec (a job's command started
    /// by its init, see `init_start`).
    pub(super) run_as: Option<(u32, u32)>,
    /// `RLIMIT_NPROC` after `run_as`: the most processes (threads) the user may have, for a user of the job's own.
    pub(super) max_processes: Option<u64>,
    /// A seccomp filter installed just before the exec (after `run_as`, which sets `NO_NEW_PRIVS`).
    pub(super) seccomp: Option<*const libc::sock_fprog>,
    /// Where a failure goes: the parent's frame (vfork), or a pipe (fork).
    pub(super) report: *mut ChildReport,
    pub(super) report_pipe: Option<RawFd>,
    /// The parent's pid: a fork checks it is still its parent once the death signal is armed.
    pub(super) parent: libc::pid_t,
}

/// Starts the program in a new session (so it leads its own process group) with the given descriptors as
/// 0/1/2, every other descriptor closed, default signal dispositions and an empty signal mask.
///
/// Returns the pid and a pidfd once the child has exec'd, or the child's failure (the child has then already
/// been reaped). With a report pipe ([`SpawnFds::report`]) it returns at once, and the exec's outcome comes on
/// the pipe.
pub fn spawn(
    program: &SpawnProgram<'_>,
    fds: &SpawnFds<'_>,
    options: SpawnOptions<'_>,
    stack: &mut ChildStack,
) -> io::Result<Result<(i32, OwnedFd), ExecFailure>> {
    let mut report = ChildReport { stage: 0, errno: 0 };
    let args = ChildArgs {
        program,
        fds: [fds.stdin.as_raw_fd(), fds.stdout.as_raw_fd(), fds.stderr.as_raw_fd()],
        control: fds.control.map(|fd| fd.as_raw_fd()),
        die_with_parent: options.die_with_parent,
        open_files: options.open_files,
        run_as: None,
        max_processes: None,
        seccomp: None,
        report: &mut report,
        report_pipe: fds.report.map(|fd| fd.as_raw_fd()),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
    };
    let mut flags = options.namespaces.0;
    if options.cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    if options.sibling {
        flags |= libc::CLONE_PARENT as u64;
    }
    let cgroup = options.cgroup.map_or(0, |fd| fd.as_raw_fd() as u64);
    let shared = if fds.report.is_some() { Shared::Copy } else { Shared::UntilExec };
    // SAFETY: `child_main` only makes async-signal-safe system calls and reads `args`, which outlives the
    // child's use of it: CLONE_VFORK keeps us suspended until the child execs or exits, or the child has a copy.
    let (pid, pidfd) =
        unsafe { clone_child(shared, flags, cgroup, stack, child_main, &args as *const ChildArgs as *mut _)? };
    if report.stage != 0 {
        // The child has exited (127) before exec; reap it so nothing is left behind (a sibling is our parent's
        // to reap).
        if !options.sibling {
            super::wait_pidfd(pidfd.as_raw_fd(), super::Wait::Reap)?;
        }
        return Ok(Err(ExecFailure { stage: SpawnStage::from_code(report.stage), errno: report.errno }));
    }
    Ok(Ok((pid, pidfd)))
}

/// How the child has the parent's memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Shared {
    /// `CLONE_VM | CLONE_VFORK`: the same memory, the parent suspended until the child execs or exits.
    UntilExec,
    /// A copy-on-write copy (a fork): the parent goes on at once.
    Copy,
}

/// `clone3(CLONE_PIDFD | extra_flags)`, plus `CLONE_VM | CLONE_VFORK` for [`Shared::UntilExec`], running
/// `child(arg)` on `stack`, with every signal blocked meanwhile so no handler of ours can run on the child's
/// stack. Returns the child's pid and pidfd: once it has exec'd or exited, or at once for [`Shared::Copy`].
///
/// # Safety
/// As for [`clone3_trampoline`]: `child` may only make raw system calls, and whatever `arg` points to must
/// stay valid until the child execs or exits (which CLONE_VFORK makes "until this returns"; a copy has its own).
pub(super) unsafe fn clone_child(
    shared: Shared,
    extra_flags: u64,
    cgroup: u64,
    stack: &mut ChildStack,
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<(i32, OwnedFd)> {
    let mut pidfd: RawFd = -1;
    let memory = match shared {
        Shared::UntilExec => (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
        Shared::Copy => 0,
    };
    // A sibling's exit signal is the caller's own (the kernel's rule; clone3 refuses any other).
    let exit_signal = if extra_flags & libc::CLONE_PARENT as u64 != 0 { 0 } else { libc::SIGCHLD as u64 };
    let mut clone_args = CloneArgs {
        flags: memory | libc::CLONE_PIDFD as u64 | extra_flags,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal,
        stack: stack.memory.as_mut_ptr() as u64,
        stack_size: (stack.memory.len() * 16) as u64,
        cgroup,
        ..CloneArgs::default()
    };
    let old_mask = block_all_signals()?;
    // SAFETY: `clone_args` describes a stack we own exclusively for the child's lifetime (`&mut` and
    // CLONE_VFORK, or the child's own copy of it); the caller vouches for `child` and `arg`.
    let pid = unsafe { clone3_trampoline(&mut clone_args, child, arg) };
    restore_signal_mask(&old_mask);
    if pid < 0 {
        return Err(io::Error::from_raw_os_error(-pid as i32));
    }
    // SAFETY: clone3 succeeded with CLONE_PIDFD, so the kernel stored a new descriptor we now own.
    Ok((pid as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// `CLONE_INTO_CGROUP` from `linux/sched.h` (not in the libc crate).
pub(super) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts and reaps a child in `namespaces` that exits at once: whether this kernel and these privileges allow
/// creating them (a server that may not runs jobs without isolation).
pub fn probe_namespaces(namespaces: Namespaces, stack: &mut ChildStack) -> io::Result<()> {
    // SAFETY: `exit_at_once` makes no call at all and takes no argument.
    let (_, pidfd) =
        unsafe { clone_child(Shared::UntilExec, namespaces.0, 0, stack, exit_at_once, std::ptr::null_mut())? };
    super::wait_pidfd(pidfd.as_raw_fd(), super::Wait::Reap).map(drop)
}

extern "C" fn exit_at_once(_: *mut libc::c_void) -> libc::c_int {
    0
}

/// `struct clone_args` from `linux/sched.h` (version 2, 88 bytes, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Blocks every signal (that can be blocked) in this thread; returns the mask before.
pub fn block_all_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigfillset/pthread_sigmask before it is read.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a valid sigset_t to fill.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: both pointers are valid sigset_t.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(old)
}

fn restore_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: `mask` came from pthread_sigmask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// Calls `clone3`; in the child, calls `child(arg)` on the new stack and exits with its return value.
///
/// Written in assembly because after `clone3` with a new stack the child cannot return into Rust code whose
/// frame lives on the parent's stack; glibc's `clone` does the same.
///
/// # Safety
/// `args` must describe a valid stack not used by anything else until the child execs or exits, and `child`
/// must be safe to run in a process that shares this address space (raw system calls only).
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_trampoline(
    args: &mut CloneArgs,
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: see the function's contract. The child branch never returns into Rust: it calls `child` with a
    // 16-byte aligned stack (the kernel sets rsp to stack + stack_size, which is 16-aligned) and exits.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") child,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
compile_error!("runnel's spawn trampoline is written for x86_64 Linux only");

/// Signals whose dispositions the child resets to default: every standard signal but SIGKILL/SIGSTOP (which
/// cannot be changed). Rust ignores SIGPIPE and installs SIGSEGV/SIGBUS handlers; a job must see neither.
const RESET_SIGNALS: std::ops::RangeInclusive<libc::c_int> = 1..=31;

/// Resets every signal's disposition to the default (the server ignores SIGPIPE and handles others).
///
/// # Safety
/// Only for a freshly cloned child, which must not run any handler of the parent's.
pub(super) unsafe fn reset_signal_dispositions() {
    // SAFETY: sigaction is plain data; all-zero with SIG_DFL is a valid default disposition.
    let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
    default.sa_sigaction = libc::SIG_DFL;
    for signal in RESET_SIGNALS {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: a valid signal number and disposition.
            unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) };
        }
    }
}

/// The child, between clone and exec. Raw system calls only: it may share the parent's memory.
pub(super) extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` the parent passed, alive while the parent is suspended by CLONE_VFORK
    // (or this process's own copy of it).
    let args = unsafe { &*(arg as *const ChildArgs) };
    // Where a failure goes when there is a report pipe: moved to descriptor 3 below.
    let report_pipe = std::cell::Cell::new(args.report_pipe);
    let fail = |stage: SpawnStage| -> libc::c_int {
        // SAFETY: errno is thread-local storage, the parent's thread's (readable since we share its memory and it
        // is suspended) or our copy of it; `report` points into the parent's suspended frame, and the report
        // pipe is an open descriptor.
        unsafe {
            let errno = *libc::__errno_location();
            match report_pipe.get() {
                Some(fd) => {
                    let mut bytes = [0u8; REPORT_BYTES];
                    bytes[..4].copy_from_slice(&(stage as u32).to_le_bytes());
                    bytes[4..].copy_from_slice(&errno.to_le_bytes());
                    libc::write(fd, bytes.as_ptr().cast(), REPORT_BYTES);
                }
                None => {
                    (*args.report).errno = errno;
                    (*args.report).stage = stage as u32;
                }
            }
        }
        127
    };

    // SAFETY (for the block below): each call is a thin async-signal-safe system call wrapper on values the
    // parent prepared; none allocates or locks.
    unsafe {
        reset_signal_dispositions();
        // A new session: its own process group (so stop can signal the whole group) and no controlling terminal.
        if libc::setsid() < 0 {
            return fail(SpawnStage::Setup);
        }
        // The child of a server that dies gets SIGKILL (the init re-arms this after changing its credentials).
        if args.die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
            return fail(SpawnStage::Setup);
        }
        // A fork's parent goes on at once and may have died before the signal was armed: nothing would end
        // this job then (a vfork's parent is suspended, and alive, until the exec).
        if args.die_with_parent && args.report_pipe.is_some() && libc::getppid() != args.parent {
            return fail(SpawnStage::Setup);
        }
        if let Some(limit) = &args.open_files {
            if libc::setrlimit(libc::RLIMIT_NOFILE, limit) < 0 {
                return fail(SpawnStage::Setup);
            }
        }
        for (target, &fd) in args.fds.iter().enumerate() {
            if libc::dup2(fd, target as libc::c_int) < 0 {
                return fail(SpawnStage::Setup);
            }
        }
        let mut first_closed = 3u32;
        if let Some(control) = args.control {
            // dup2 onto itself would keep close-on-exec, so clear the flag explicitly.
            if libc::dup2(control, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return fail(SpawnStage::Setup);
            }
            first_closed = 4;
        }
        if let Some(report) = args.report_pipe {
            // A fork may wait long in chdir or the executable search: it holds none of the server's descriptors
            // (its sockets, whose peers would not see them close) meanwhile, only the report pipe, as 3.
            if libc::dup2(report, 3) < 0 || libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
                return fail(SpawnStage::Setup);
            }
            report_pipe.set(Some(3));
            if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0) < 0 {
                return fail(SpawnStage::Setup);
            }
        }
        // Every server descriptor is close-on-exec already; this makes sure of it for any that is not.
        if libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) < 0 {
            return fail(SpawnStage::Setup);
        }
        if let Some((uid, gid)) = args.run_as {
            if super::isolation::drop_privileges(uid, gid).is_err() {
                return fail(SpawnStage::Setup);
            }
        }
        if let Some(count) = args.max_processes {
            let limit = libc::rlimit { rlim_cur: count, rlim_max: count };
            if libc::setrlimit(libc::RLIMIT_NPROC, &limit) < 0 {
                return fail(SpawnStage::Setup);
            }
        }
        if let Some(program) = args.seccomp {
            if !super::seccomp::install(program) {
                return fail(SpawnStage::Setup);
            }
        }
        if libc::chdir(args.program.working_dir.as_ptr()) < 0 {
            return fail(SpawnStage::WorkingDir);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        if let Some(fd) = args.program.exec_fd {
            libc::syscall(
                libc::SYS_execveat,
                fd.as_raw_fd(),
                c"".as_ptr(),
                args.program.argv.pointers().as_ptr(),
                args.program.envp.pointers().as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            return fail(SpawnStage::Exec);
        }
        // Try each candidate like execvpe: remember EACCES, keep going past ENOENT/ENOTDIR.
        let mut saw_eacces = false;
        let mut last_errno = libc::ENOENT;
        for &path in args.program.candidates.pointers() {
            if path.is_null() {
                break;
            }
            libc::execve(path, args.program.argv.pointers().as_ptr(), args.program.envp.pointers().as_ptr());
            last_errno = *libc::__errno_location();
            match last_errno {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP => {}
                _ => break,
            }
        }
        *libc::__errno_location() = if saw_eacces && last_errno == libc::ENOENT { libc::EACCES } else { last_errno };
    }
    fail(SpawnStage::Exec)
}
