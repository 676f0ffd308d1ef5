//! Every raw system call runnel makes, in one place.
//!
//! The rest of the crate sees safe functions with `io::Result`s. The one delicate piece is [`spawn`]: it starts a
//! job with `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`, the posix_spawn technique, so the cost of starting a
//! job does not grow with the server's memory (no page tables are copied) and the server gets a pidfd it can
//! register with the reactor. The child runs on a small stack of its own in the server's address space until it
//! execs, so it may only make raw system calls: no allocation, no locks, nothing that touches Rust state.

mod alloc;
mod init_start;
mod seccomp;
mod spawn;

pub use alloc::CacheLineAllocator;
pub use seccomp::{SeccompFilter, DENIED as SECCOMP_DENIED};

pub use init_start::{
    send_report, set_up_namespaces, spawn_init, start_job_in_shell, InitReport, InitStacks, InitStart, JobSetup,
    SetupStep, WorkingDirBind, COMMAND_PID, PRIVATE_TMP_DIRS, REPORT_LEN,
};

pub use spawn::{
    block_all_signals, probe_namespaces, read_spawn_report, spawn, CStringArray, ChildStack, ExecFailure, Namespaces,
    SpawnFds, SpawnOptions, SpawnProgram, SpawnReport, SpawnStage,
};

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Turns a libc `-1` return into `io::Error::last_os_error()`, as mio does.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller of the macro upholds the libc function's contract for these arguments.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

mod isolation;

pub use isolation::{
    close_from, control_pipe, drop_privileges, exit_now, fit_send_buffer, getpid, install_descriptors, is_pipe,
    is_socket, lower_session_priority, open_own_executable, open_read_only, peer_closed, pipe_reader_gone,
    reap_any_child, receive_with_descriptors, schedule_normally, schedule_when_idle, send_with_descriptors,
    seqpacket_pair, set_cloexec, set_mount_propagation, shut_down_sending, signal_process, wait_readable,
    wait_readable_or_writable, write_all, MountPropagation, Received,
};

/// A pipe for one of a job's output streams: the server keeps `read` (non-blocking), the job gets `write`.
pub struct OutputPipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

/// Pipe buffer size asked for with `F_SETPIPE_SZ`: 1 MiB (the unprivileged maximum by default) lets a fast
/// writer hand over more per wakeup than the default 64 KiB, and so move more per second.
pub const PIPE_SIZE: usize = 1 << 20;

/// Makes a close-on-exec pipe with a non-blocking read end and a blocking write end (jobs expect blocking stdout).
pub fn output_pipe() -> io::Result<OutputPipe> {
    let OutputPipe { read, write } = pipe(libc::O_CLOEXEC)?;
    set_nonblocking(read.as_raw_fd())?;
    // A smaller pipe still works; the size is only a throughput optimisation.
    let _ = syscall!(fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int));
    Ok(OutputPipe { read, write })
}

/// Reads into `buf`, mapping `EAGAIN` to `Ok(None)`.
pub fn read_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    transfer(|| syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len())))
}

/// Writes `bytes` to `fd` without blocking: `Ok(None)` when the pipe is full (`EAGAIN`).
pub fn write_nonblocking(fd: RawFd, bytes: &[u8]) -> io::Result<Option<usize>> {
    transfer(|| syscall!(write(fd, bytes.as_ptr().cast(), bytes.len())))
}

/// Runs a `read` or `write` until no signal interrupts it, mapping `EAGAIN` to `Ok(None)`.
fn transfer(mut call: impl FnMut() -> io::Result<libc::ssize_t>) -> io::Result<Option<usize>> {
    loop {
        match call() {
            Ok(n) => return Ok(Some(n as usize)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The pipe to a helper process the server starts: a blocking read end for the helper's stdin, and a
/// non-blocking write end the server keeps. Both close-on-exec (the spawn makes the read end the helper's 0).
pub fn helper_pipe() -> io::Result<OutputPipe> {
    let pipe = pipe(libc::O_CLOEXEC)?;
    set_nonblocking(pipe.write.as_raw_fd())?;
    Ok(pipe)
}

/// A pipe made with `pipe2(flags)`.
fn pipe(flags: libc::c_int) -> io::Result<OutputPipe> {
    let mut fds = [0 as RawFd; 2];
    syscall!(pipe2(fds.as_mut_ptr(), flags))?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(OutputPipe { read, write })
}

/// Sets `O_NONBLOCK` on one end of a pipe (the other keeps blocking).
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFL))?;
    syscall!(fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)).map(drop)
}

/// Makes the connections a listener accepts send without pacing: they get `reno` as their congestion control.
/// For a listener on a loopback address, whose every connection stays on this machine. There is no link to pace
/// for there, and the pacing `bbr` does (the default on some distributions and cloud images) costs the sender a
/// timer per burst. On a virtual machine that was 0.2–0.45 s of the server's CPU per GiB a follower received
/// (`docs/performance.md`).
/// `reno` because every kernel has it and any process may choose it. Set on the listener, so that every
/// connection starts with it when its handshake completes, before `bbr` could switch pacing on.
pub fn send_unpaced(listener: RawFd) -> io::Result<()> {
    let name = b"reno";
    syscall!(setsockopt(
        listener,
        libc::IPPROTO_TCP,
        libc::TCP_CONGESTION,
        name.as_ptr().cast(),
        name.len() as libc::socklen_t
    ))
    .map(drop)
}

/// How a helper process [`spawn_helper`] starts ends when its server dies without stopping it (SIGKILL, a crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtServerDeath {
    /// Killed with it (`PR_SET_PDEATHSIG(SIGKILL)`): for a helper whose unfinished work costs nothing (the janitor's
    /// removals are redone at the next start; a shell made ahead is simply not used).
    Killed,
    /// It carries out what the server had sent it (its socket still holds it after the server's end closed) and
    /// then ends, at its socket's end: for a helper that writes what the server told clients was done (a job's
    /// record, its output). It must hold the state directory's lock, so that the next server waits for it.
    FinishesWhatItWasSent,
}

/// Starts one of the server's helper processes (the janitor, the network-namespace maker): `executable` (the
/// server's own) with `args`, `stdin` as its channel to the server, an environment with nothing but the log
/// format, stdout to `/dev/null` and stderr shared. It leads a session of its own, and so a process group of its
/// own (a Ctrl-C or a signal to the server's group is the server's to handle), ends with the server as
/// `at_server_death` says, and keeps none of the descriptors the server inherited without close-on-exec, only its
/// 0-2.
///
/// The session is for the scheduler too. Where the kernel groups CPU time by session (autogroup, the default of
/// Debian's and most distributions' kernels for processes outside a CPU cgroup), a helper in the server's session
/// shares one entity with the loop: the loop and a busy spool writer wake each other by turns, so that entity never
/// sleeps, and a job's init woken on their CPU waited behind it for up to 210 ms under 16 output floods. In
/// sessions of their own, its slowest start in the same runs was 9–12 ms (`docs/performance.md`, session 19).
///
/// `hold`, if given, is kept open in the helper (at the same number): the state directory's lock, held by every
/// helper that writes in it, so that the next server waits until the last of them has exited.
pub fn spawn_helper(
    executable: &std::path::Path,
    args: &[&std::ffi::OsStr],
    stdin: OwnedFd,
    hold: Option<BorrowedFd<'_>>,
    at_server_death: AtServerDeath,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut command = Command::new(executable);
    command.args(args).env_clear();
    // The server's log format (`cli::logging::FORMAT_VARIABLE`), so the helper's lines on the shared stderr match.
    if let Some(format) = std::env::var_os("RUNNEL_LOG_FORMAT") {
        command.env("RUNNEL_LOG_FORMAT", format);
    }
    command.stdin(Stdio::from(stdin)).stdout(Stdio::null()).stderr(Stdio::inherit());
    // SAFETY: getpid is async-signal-safe; it runs before the fork.
    let parent = unsafe { libc::getpid() };
    let hold = hold.map(|fd| fd.as_raw_fd());
    // SAFETY: the closure runs in the child between fork and exec, and makes only async-signal-safe system
    // calls (prctl, getppid, setsid, close_range, fcntl), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            let signal = match at_server_death {
                AtServerDeath::Killed => libc::SIGKILL,
                AtServerDeath::FinishesWhatItWasSent => 0,
            };
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The server died before the signal was armed: nothing would kill us later.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Not a group leader yet (a fresh fork of the server), so this cannot fail with EPERM.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = hold {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Waits for a helper process [`spawn_helper`] started to end; one that did not end well is said so, by `name`.
pub fn reap_helper(mut process: std::process::Child, name: &str) {
    match process.wait() {
        Ok(status) if status.success() => {}
        Ok(status) => log::warn!("the {name} ended with {status}"),
        Err(err) => log::warn!("cannot wait for the {name}: {err}"),
    }
}

/// In a helper process [`spawn_helper`] started: its channel to the server (its stdin). A helper that cannot take
/// it says so, naming itself (`who`), and exits.
pub fn helper_channel(who: &str) -> OwnedFd {
    use std::os::fd::AsFd;
    match io::stdin().as_fd().try_clone_to_owned() {
        Ok(channel) => channel,
        Err(err) => {
            eprintln!("{who}: cannot take its channel to the server: {err}");
            std::process::exit(1)
        }
    }
}

/// A pipe whose two ends the server keeps, both non-blocking: the relay through which job output is spliced
/// into spool files (see [`splice_to_pipe`]).
pub fn relay_pipe() -> io::Result<OutputPipe> {
    let OutputPipe { read, write } = pipe(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    // As large as a job's pipe, so one move can take all it holds; a smaller relay only means more moves.
    let _ = syscall!(fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int));
    Ok(OutputPipe { read, write })
}

/// The spool writer's data pipe (see `jobs::spool::writer`): its read end, blocking, for the writer; its write
/// end, non-blocking, for the loop; and its size. As large as the kernel allows this process, up to 4 MiB: it
/// bounds the output on its way to the disk, which absorbs the disk's pauses.
pub fn spool_data_pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let OutputPipe { read, write } = pipe(libc::O_CLOEXEC)?;
    set_nonblocking(write.as_raw_fd())?;
    for size in [4 * PIPE_SIZE, PIPE_SIZE] {
        if syscall!(fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int)).is_ok() {
            break;
        }
    }
    let size = pipe_size(write.as_raw_fd())?;
    Ok((read, write, size))
}

/// The size of the pipe `fd` (`F_GETPIPE_SZ`): how many bytes it can hold.
pub fn pipe_size(fd: RawFd) -> io::Result<usize> {
    syscall!(fcntl(fd, libc::F_GETPIPE_SZ)).map(|size| size as usize)
}

/// How many bytes the pipe `fd` holds (`FIONREAD`).
pub fn pipe_holds(fd: RawFd) -> io::Result<usize> {
    let mut held: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given, which points at `held`.
    syscall!(ioctl(fd, libc::FIONREAD, &mut held as *mut libc::c_int))?;
    Ok(usize::try_from(held).unwrap_or(0))
}

/// What the read end of a pipe has to offer now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeReadiness {
    /// Bytes to read.
    Data,
    /// Nothing, and no writer is left: end of file.
    Ended,
    /// Nothing yet.
    Empty,
}

/// Looks at the read end `fd` of a pipe without reading (`poll` that does not wait).
pub fn pipe_readiness(fd: RawFd) -> io::Result<PipeReadiness> {
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    loop {
        match syscall!(poll(&mut poll, 1, 0)) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(if poll.revents & libc::POLLIN != 0 {
        PipeReadiness::Data
    } else if poll.revents & libc::POLLHUP != 0 {
        PipeReadiness::Ended
    } else {
        PipeReadiness::Empty
    })
}

/// Moves up to `len` bytes from the pipe `from` to the pipe `to` with `splice(2)`. Between two pipes the kernel
/// moves page references, copying nothing, so this holds `from`'s lock only briefly. `Ok(None)` when `from` is
/// empty (or `to` full), `Ok(Some(0))` at end of file.
pub fn splice_to_pipe(from: RawFd, to: RawFd, len: usize) -> io::Result<Option<usize>> {
    splice(from, to, None, len)
}

/// Moves up to `len` bytes from the pipe `pipe` into `file` at `offset` with `splice(2)`: the kernel copies the
/// pipe's pages into the file's page cache, with no copy through user memory and no change to the file
/// position. `Ok(None)` when the pipe is empty, `Ok(Some(0))` at end of file (no writer left).
///
/// Fails with `EINVAL` where the file system cannot splice, or if `file` was opened with `O_APPEND`.
pub fn splice_to_file(pipe: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<Option<usize>> {
    splice(pipe, file, Some(offset), len)
}

fn splice(from: RawFd, to: RawFd, to_offset: Option<u64>, len: usize) -> io::Result<Option<usize>> {
    let mut offset = match to_offset {
        Some(offset) => off_t(offset)?,
        None => 0,
    };
    let offset_ptr = match to_offset {
        Some(_) => &mut offset as *mut libc::loff_t,
        None => std::ptr::null_mut(),
    };
    loop {
        match syscall!(splice(from, std::ptr::null_mut(), to, offset_ptr, len, libc::SPLICE_F_NONBLOCK)) {
            Ok(n) => return Ok(Some(n as usize)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A file offset as the kernel takes it (`off_t`, the same as `loff_t` on 64-bit Linux); too large is `EFBIG`.
fn off_t(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// Appends exactly `len` bytes of `file`, read at `offset`, to `buf`. The room is not zeroed first: `pread`
/// writes it, and only what it wrote becomes part of `buf`.
pub fn pread_append(file: RawFd, buf: &mut bytes::BytesMut, len: usize, offset: u64) -> io::Result<()> {
    buf.reserve(len);
    let mut done = 0;
    while done < len {
        let room = &mut buf.spare_capacity_mut()[..len - done];
        let at = off_t(offset + done as u64)?;
        match syscall!(pread(file, room.as_mut_ptr().cast(), room.len(), at)) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ends before the span")),
            Ok(n) => {
                let n = n as usize;
                // SAFETY: `pread` initialised the first `n` bytes of the spare capacity (n <= room.len()), so the
                // buffer's length may grow by `n`.
                unsafe { buf.set_len(buf.len() + n) };
                done += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Allocations up to this size come from the heap, never from a fresh `mmap` of their own.
#[cfg(target_env = "gnu")]
const MALLOC_MMAP_THRESHOLD: libc::c_int = 4 * 1024 * 1024;
/// Free memory kept at the top of the heap for reuse before glibc returns it to the kernel.
#[cfg(target_env = "gnu")]
const MALLOC_TRIM_THRESHOLD: libc::c_int = 16 * 1024 * 1024;

/// Makes glibc's allocator keep freed buffers for reuse. Streaming output allocates and frees a buffer of
/// 100 KiB–1 MiB per message (h2's frames, gRPC messages); by default glibc serves such sizes with `mmap` or
/// trims them off the heap when freed, so every message came back as fresh pages: one page fault per 4 KiB
/// streamed, a large share of a streaming client's CPU. Fixed thresholds (which also turn off
/// glibc's dynamic adjustment of them) keep that memory in the heap. A no-op elsewhere (musl).
pub fn retain_freed_memory() {
    #[cfg(target_env = "gnu")]
    for (param, value) in
        [(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD), (libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)]
    {
        // SAFETY: mallopt only adjusts allocator parameters; both are valid parameter numbers and values.
        if unsafe { libc::mallopt(param, value) } != 1 {
            log::debug!("mallopt({param}, {value}) was refused");
        }
    }
}

#[cfg(target_env = "musl")]
extern "C" {
    /// mimalloc's: frees what its heaps hold unused, back to the kernel when `force`.
    fn mi_collect(force: bool);
}

/// Gives the kernel back the freed memory the allocator keeps for reuse ([`retain_freed_memory`] makes glibc
/// keep up to 16 MiB at the heap's top, and freed blocks inside the heap stay resident): for after a burst of
/// connections or calls has ended, so that the server's footprint returns to what it serves now. Costs a walk
/// of the heap (about a millisecond for tens of MiB).
pub fn give_back_freed_memory() {
    // SAFETY: malloc_trim only returns free pages to the kernel; any argument is valid.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    // SAFETY: mi_collect only frees what mimalloc's heaps hold unused; this process has one thread.
    #[cfg(target_env = "musl")]
    unsafe {
        mi_collect(true);
    }
}

/// How a process ended, as `waitid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

/// How to wait in [`wait_pidfd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Reap the process if it has ended; return at once otherwise.
    ReapIfEnded,
    /// Report whether it has ended but leave it a zombie (its pid, and so its process group id, stay reserved).
    PeekIfEnded,
    /// Block until it ends, then reap it.
    Reap,
}

/// Waits for the process behind `pidfd`; `Ok(None)` while it still runs.
pub fn wait_pidfd(pidfd: RawFd, wait: Wait) -> io::Result<Option<ExitStatus>> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value and how callers detect "no child ended".
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED
        | match wait {
            Wait::ReapIfEnded => libc::WNOHANG,
            Wait::PeekIfEnded => libc::WNOHANG | libc::WNOWAIT,
            Wait::Reap => 0,
        };
    loop {
        match syscall!(waitid(libc::P_PIDFD, pidfd as libc::id_t, &mut info, flags)) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    // SAFETY: waitid filled `info` for a child event (or left it zeroed under WNOHANG), so si_pid/si_status
    // are the fields the kernel wrote for SIGCHLD-style siginfo.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    }))
}

/// Sends `signal` to every process in the process group `pgid`. A group that no longer exists is not an error.
pub fn kill_process_group(pgid: i32, signal: i32) -> io::Result<()> {
    match syscall!(kill(-pgid, signal)) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// The signals the server handles through its signalfd: shutdown requests.
pub const SHUTDOWN_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Blocks `signals` for this (only) thread and returns a non-blocking signalfd that reports them.
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data and sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &signal in signals {
        // SAFETY: `set` is initialised; `signal` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let fd = syscall!(signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC))?;
    // SAFETY: signalfd returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal number from a signalfd; `Ok(None)` when none is pending.
pub fn read_signal(fd: RawFd) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: the buffer is exactly one signalfd_siginfo long and writable.
    let buf = unsafe { std::slice::from_raw_parts_mut((&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    match read_nonblocking(fd, buf)? {
        Some(n) if n == size => Ok(Some(info.ssi_signo as i32)),
        _ => Ok(None),
    }
}

/// Raises this process's soft open-file limit to the hard limit (each running job holds a few descriptors) and
/// returns the limits it had, which jobs get back.
pub fn raise_open_file_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
    let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    syscall!(setrlimit(libc::RLIMIT_NOFILE, &raised))?;
    Ok(limit)
}

/// Makes sure descriptors 0, 1 and 2 are open (on `/dev/null` if they were closed), so no pipe or socket the
/// server opens later can land on them and be mistaken for a standard stream by a job.
pub fn ensure_standard_fds() -> io::Result<()> {
    for fd in 0..3 {
        if syscall!(fcntl(fd, libc::F_GETFD)).is_err() {
            let null = syscall!(open(c"/dev/null".as_ptr(), libc::O_RDWR))?;
            if null != fd {
                syscall!(dup2(null, fd))?;
                syscall!(close(null))?;
            }
        }
    }
    Ok(())
}

/// Takes an exclusive, non-blocking `flock` on `fd`. `Ok(false)` if another process holds it.
pub fn try_lock_exclusive(fd: RawFd) -> io::Result<bool> {
    match syscall!(flock(fd, libc::LOCK_EX | libc::LOCK_NB)) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a process `pid` exists (any process by that number: a PID can be reused).
pub fn process_exists(pid: i32) -> bool {
    // Signal 0 checks without sending; EPERM means it exists, as another user's.
    pid > 0 && syscall!(kill(pid, 0)).map_or_else(|err| err.raw_os_error() == Some(libc::EPERM), |_| true)
}

/// Opens `/dev/null` read-only, close-on-exec: the job's stdin.
pub fn open_dev_null() -> io::Result<OwnedFd> {
    let fd = syscall!(open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC))?;
    // SAFETY: open returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A file in memory only (`memfd_create`, close-on-exec) holding `bytes`: to hand another process more than one
/// socket message carries. No file system is involved, so nothing waits for a disk.
pub fn memory_file(name: &std::ffi::CStr, bytes: &[u8]) -> io::Result<std::fs::File> {
    use std::io::Write;
    let mut file = std::fs::File::from(nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?);
    file.write_all(bytes)?;
    Ok(file)
}

/// Writes everything cached for the file system holding `fd` to disk (`syncfs`), waiting until it is done.
pub fn sync_file_system(fd: RawFd) -> io::Result<()> {
    syscall!(syncfs(fd)).map(drop)
}

/// Seconds since 1970 of a wall-clock time in the local time zone (`TZ`, else `/etc/localtime`, else UTC), as
/// the C library's `mktime` reads it: `month` 1-12. A time a daylight-saving change skips or repeats is taken as
/// `mktime` takes it.
pub fn local_time_to_unix(year: i32, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> io::Result<i64> {
    let field = |value: u32| libc::c_int::try_from(value).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    // SAFETY: tm is plain data; every field mktime reads is set below.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = year - 1900;
    tm.tm_mon = field(month)? - 1;
    tm.tm_mday = field(day)?;
    (tm.tm_hour, tm.tm_min, tm.tm_sec) = (field(hour)?, field(minute)?, field(second)?);
    // Whether daylight saving applies: the C library finds out.
    tm.tm_isdst = -1;
    // SAFETY: tm is a valid, initialised struct tm that mktime may normalise in place.
    let seconds = unsafe { libc::mktime(&mut tm) };
    if seconds == -1 && !(tm.tm_year == 69 && tm.tm_mday == 31) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    Ok(seconds)
}

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`: the filesystem type of a cgroup v2 mount.
const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;

/// Whether `path` lies on a cgroup v2 (unified) filesystem.
pub fn is_cgroup2(path: &std::ffi::CStr) -> io::Result<bool> {
    // SAFETY: statfs is plain data, filled by the call before it is read.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    syscall!(statfs(path.as_ptr(), &mut info))?;
    Ok(info.f_type as libc::c_long == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    #[test]
    fn pread_append_reads_exactly_the_span_after_what_is_there() {
        let scratch = ScratchDir::new("pread");
        let path = scratch.join("data");
        let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut buf = bytes::BytesMut::from(&b"head"[..]);
        pread_append(file.as_raw_fd(), &mut buf, 200_000, 1234).unwrap();
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..], &data[1234..201_234]);
        let err = pread_append(file.as_raw_fd(), &mut buf, 10, 299_995).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_listener_sending_unpaced_gives_its_connections_reno() {
        let congestion_control = |fd: RawFd| {
            let mut name = [0u8; 16];
            let mut len = name.len() as libc::socklen_t;
            syscall!(getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, name.as_mut_ptr().cast(), &mut len))
                .unwrap();
            String::from_utf8_lossy(&name[..len as usize]).trim_end_matches('\0').to_string()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send_unpaced(listener.as_raw_fd()).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(congestion_control(listener.as_raw_fd()), "reno");
        assert_eq!(congestion_control(accepted.as_raw_fd()), "reno");
    }
}
