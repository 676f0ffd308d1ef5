//! The system calls of a job's isolation: a private mount tree with a fresh `/proc`, its hostname, the loopback
//! interface and giving up every privilege (made by the job's first process, `init_start`, and its init), and
//! the messages that hand a job to a shell made ahead of time (`isolation::shell_pool`).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::ExitStatus;

/// How a new mount namespace's mounts relate to the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPropagation {
    /// Nothing propagates either way: a job's, so nothing it mounts reaches the host and nothing mounted on the
    /// host later appears in it.
    Private,
    /// The host's mounts and unmounts reach it, nothing goes back: a shell's until its job comes, so that an idle
    /// shell sees what the host mounts and keeps nothing the host unmounts alive.
    FromHost,
}

/// Sets the propagation of every mount in this (new) mount namespace.
pub fn set_mount_propagation(propagation: MountPropagation) -> io::Result<()> {
    let kind = match propagation {
        MountPropagation::Private => libc::MS_PRIVATE,
        MountPropagation::FromHost => libc::MS_SLAVE,
    };
    let flags = libc::MS_REC | kind;
    syscall!(mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), flags, std::ptr::null())).map(drop)
}

/// Mounts a fresh procfs on `/proc`: it shows only the processes of this PID namespace.
pub fn mount_proc() -> io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    syscall!(mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, std::ptr::null())).map(drop)
}

/// Mounts a fresh sysfs on `/sys` (read-only): in a new network namespace it shows that namespace's
/// interfaces instead of the host's.
pub fn mount_sysfs() -> io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
    syscall!(mount(c"sysfs".as_ptr(), c"/sys".as_ptr(), c"sysfs".as_ptr(), flags, std::ptr::null())).map(drop)
}

/// Sets this process's hostname (in its own UTS namespace).
pub fn set_hostname(name: &[u8]) -> io::Result<()> {
    syscall!(sethostname(name.as_ptr().cast(), name.len())).map(drop)
}

/// Sets `lo` up: a new network namespace starts with it down.
pub fn bring_loopback_up() -> io::Result<()> {
    let socket = syscall!(socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0))?;
    // SAFETY: socket returned a fresh descriptor we now own.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(c"lo".to_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    syscall!(ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    syscall!(ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request)).map(drop)
}

/// `struct __user_cap_header_struct` / `__user_cap_data_struct` from `linux/capability.h`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: capset with two data structs (64 capability bits).
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `KEYCTL_JOIN_SESSION_KEYRING` from `linux/keyctl.h`.
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;

/// Becomes `uid`:`gid` with no supplementary groups and no capability in any set (effective, permitted,
/// inheritable, bounding, ambient), sets `PR_SET_NO_NEW_PRIVS`, and re-arms the parent-death signal (a
/// credential change clears it).
pub fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    // The bounding set can only shrink while CAP_SETPCAP is still held, so it goes first.
    for cap in 0.. {
        match syscall!(prctl(
            libc::PR_CAPBSET_DROP,
            cap as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong
        )) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    let zero: libc::c_ulong = 0;
    syscall!(prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, zero, zero, zero))?;
    // Raw system calls, not the C library's wrappers (musl's synchronise every thread first): this also runs in
    // a vfork child (see `init_start`).
    raw_syscall(libc::SYS_setgroups, [0, 0, 0])?;
    raw_syscall(libc::SYS_setresgid, [gid.into(), gid.into(), gid.into()])?;
    raw_syscall(libc::SYS_setresuid, [uid.into(), uid.into(), uid.into()])?;
    // Leaving uid 0 already empties the permitted and effective sets; this also covers a run-as uid of 0 and the
    // inheritable set.
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: header and two data structs are what capset with version 3 reads.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    syscall!(prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, zero, zero, zero))?;
    // Not dumpable: the command, running as the same user, cannot ptrace this process or open its /proc files
    // (its report pipe among them). A uid change clears the flag already, except where fs.suid_dumpable=1.
    syscall!(prctl(libc::PR_SET_DUMPABLE, zero, zero, zero, zero))?;
    // A session keyring of its own: the server's (and whatever keys it holds) stays out of reach.
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL) takes no pointer but the null name.
    if unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, std::ptr::null::<libc::c_char>()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    syscall!(prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, zero, zero, zero)).map(drop)
}

/// `syscall(number, args...)` with three integer arguments.
fn raw_syscall(number: libc::c_long, args: [libc::c_long; 3]) -> io::Result<()> {
    // SAFETY: the callers pass only integer (or null pointer) arguments the system call accepts.
    if unsafe { libc::syscall(number, args[0], args[1], args[2]) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// True if `fd` is an open pipe.
pub fn is_pipe(fd: RawFd) -> bool {
    file_type_of(fd) == Some(libc::S_IFIFO)
}

/// Whether `fd` is an open socket.
pub fn is_socket(fd: RawFd) -> bool {
    file_type_of(fd) == Some(libc::S_IFSOCK)
}

/// The `S_IF*` type of what the open descriptor `fd` refers to.
fn file_type_of(fd: RawFd) -> Option<libc::mode_t> {
    // SAFETY: stat is plain data, filled by fstat before it is read.
    let mut info: libc::stat = unsafe { std::mem::zeroed() };
    syscall!(fstat(fd, &mut info)).ok().map(|_| info.st_mode & libc::S_IFMT)
}

/// True if nobody holds the read end of the pipe whose write end is `fd` any more (the server is gone).
pub fn pipe_reader_gone(fd: RawFd) -> bool {
    let mut poll = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    match syscall!(poll(&mut poll, 1, 0)) {
        Ok(_) => poll.revents & libc::POLLERR != 0,
        Err(_) => true,
    }
}

/// Reaps one ended child of this process without blocking: `Ok(None)` when none has ended.
pub fn reap_any_child() -> io::Result<Option<(i32, ExitStatus)>> {
    let mut status = 0;
    loop {
        match syscall!(waitpid(-1, &mut status, libc::WNOHANG)) {
            Ok(0) => return Ok(None),
            Ok(pid) if libc::WIFEXITED(status) => {
                return Ok(Some((pid, ExitStatus::Exited(libc::WEXITSTATUS(status)))))
            }
            Ok(pid) if libc::WIFSIGNALED(status) => {
                return Ok(Some((pid, ExitStatus::Signaled(libc::WTERMSIG(status)))))
            }
            Ok(pid) => {
                // A stop is not an end. It reaches us only if the child made us its tracer (PTRACE_TRACEME):
                // let it go, passing on the signal that stopped it, and keep waiting.
                let zero: libc::c_ulong = 0;
                let signal = libc::WSTOPSIG(status) as libc::c_ulong;
                let _ = syscall!(ptrace(libc::PTRACE_DETACH, pid, zero, signal));
            }
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sends `signal` to one process.
pub fn signal_process(pid: i32, signal: i32) -> io::Result<()> {
    match syscall!(kill(pid, signal)) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// Blocks until `fd` is readable or `timeout_ms` passed (-1: forever). Returns false on timeout.
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    wait_for(fd, libc::POLLIN, timeout_ms)
}

/// Blocks until `fd` is readable or writable, or `timeout_ms` passed (-1: forever). Returns false on timeout.
pub fn wait_readable_or_writable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    wait_for(fd, libc::POLLIN | libc::POLLOUT, timeout_ms)
}

fn wait_for(fd: RawFd, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut poll = libc::pollfd { fd, events, revents: 0 };
    loop {
        match syscall!(poll(&mut poll, 1, timeout_ms)) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// True once the other end of the unix socket `socket` is closed (its process ended): `POLLHUP`, which a
/// `shutdown` of its sending half alone does not raise.
pub fn peer_closed(socket: RawFd) -> bool {
    let mut poll = libc::pollfd { fd: socket, events: 0, revents: 0 };
    loop {
        match syscall!(poll(&mut poll, 1, 0)) {
            Ok(_) => return poll.revents & libc::POLLHUP != 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Writes all of `bytes` to a blocking descriptor.
pub fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match syscall!(write(fd, bytes.as_ptr().cast(), bytes.len())) {
            Ok(n) => bytes = &bytes[n as usize..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Marks `fd` close-on-exec.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    syscall!(fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC)).map(drop)
}

/// Closes every descriptor from `first` up.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers; closing descriptors this process does not use is harmless.
    if unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens this process's own executable read-only, close-on-exec: a job's init is exec'd from it, so replacing
/// the file on disk cannot change what runs. The descriptor is 10 or above, clear of the numbers a spawn moves
/// the child's descriptors to (0-4) before it execs from it.
pub fn open_own_executable() -> io::Result<OwnedFd> {
    let opened = open_read_only(c"/proc/self/exe")?;
    let lifted = syscall!(fcntl(opened.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10))?;
    // SAFETY: fcntl just made this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(lifted) })
}

/// Opens a file or directory read-only, close-on-exec.
pub fn open_read_only(path: &CStr) -> io::Result<OwnedFd> {
    let fd = syscall!(open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC))?;
    // SAFETY: open returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pipe between a job's init and the server: the server reads, the init writes. Both ends close-on-exec
/// (the spawn turns the init's copy into its descriptor 3).
pub fn control_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// This process's pid.
pub fn getpid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Exits at once with `code`, without running destructors or flushing (the init's last act).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// Makes this process (and what it starts later) run only on a CPU nothing else wants (`SCHED_IDLE`), its nice
/// value kept: for work done ahead of time, which must not slow what is done now.
pub fn schedule_when_idle() -> io::Result<()> {
    set_scheduling_policy(0, libc::SCHED_IDLE)
}

/// Gives this process's session the lowest share of CPU where the kernel shares it out by session (autogroup): the
/// session's nice value 19. `SCHED_IDLE` ranks a process only against the others of its session's group, so a
/// helper that leads a session of its own needs this too to yield to the loop. No-op on a kernel without
/// autogroup (no `/proc/self/autogroup`); raising a nice value takes no privilege.
pub fn lower_session_priority() -> io::Result<()> {
    match std::fs::write("/proc/self/autogroup", b"19") {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        written => written,
    }
}

/// Puts process `pid` (0: this one) back to the ordinary policy after [`schedule_when_idle`], with the same nice
/// value; takes CAP_SYS_NICE.
pub fn schedule_normally(pid: i32) -> io::Result<()> {
    set_scheduling_policy(pid, libc::SCHED_OTHER)
}

fn set_scheduling_policy(pid: i32, policy: libc::c_int) -> io::Result<()> {
    // SAFETY: sched_param is plain data (musl's has more fields than glibc's); zero is priority 0, what both
    // policies take.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    syscall!(sched_setscheduler(pid, policy, &param)).map(drop)
}

/// Shuts down the sending direction of the socket `fd`: its peer reads end of file once it has read the rest.
pub fn shut_down_sending(fd: RawFd) -> io::Result<()> {
    syscall!(shutdown(fd, libc::SHUT_WR)).map(drop)
}

/// Makes each descriptor of `targets` the number it is paired with (0-2 inheritable, the others close-on-exec)
/// and closes every descriptor above the highest target (targets are 0 up, with no gap).
pub fn install_descriptors(targets: Vec<(OwnedFd, RawFd)>) -> io::Result<()> {
    let above = targets.iter().map(|(_, target)| *target).max().unwrap_or(2) + 1;
    // Lifted above every target first, so that no move overwrites a descriptor still to be moved.
    let lifted: Vec<(OwnedFd, RawFd)> = targets
        .into_iter()
        .map(|(fd, target)| {
            let lifted = syscall!(fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above))?;
            // SAFETY: fcntl just made this descriptor, owned by nobody else.
            Ok((unsafe { OwnedFd::from_raw_fd(lifted) }, target))
        })
        .collect::<io::Result<_>>()?;
    for (fd, target) in &lifted {
        let flags = if *target < 3 { 0 } else { libc::O_CLOEXEC };
        syscall!(dup3(fd.as_raw_fd(), *target, flags))?;
    }
    let first_closed = u32::try_from(above).unwrap_or(3).max(3);
    // The lifted copies and everything else above the targets: what is left open is exactly the targets.
    std::mem::forget(lifted);
    syscall!(syscall(libc::SYS_close_range, first_closed, u32::MAX, 0)).map(drop)
}

/// A connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets (message boundaries kept), both close-on-exec: the
/// first non-blocking (the server's end), the second blocking (a helper's).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    syscall!(socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()))?;
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    let (server, helper) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    super::set_nonblocking(server.as_raw_fd())?;
    Ok((server, helper))
}

/// Sends `bytes` and the descriptors `fds` (`SCM_RIGHTS`) over the unix socket `socket` as one message;
/// blocking or not as the socket is (`Ok(false)`: a non-blocking socket is full).
pub fn send_with_descriptors(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<bool> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(socket, &[io::IoSlice::new(bytes)], control, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(false),
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// What a receive from a `SOCK_SEQPACKET` socket found.
#[derive(Debug)]
pub enum Received {
    /// One message, with the descriptors it carried (close-on-exec).
    Message { bytes: Vec<u8>, fds: Vec<OwnedFd> },
    /// Nothing queued (a non-blocking receive).
    Empty,
    /// The peer closed its end.
    Closed,
}

/// The most descriptors one message may carry: those beyond are closed by the kernel, unseen.
const MAX_RECEIVED_FDS: usize = 8;

/// Takes one whole message, of any length, from the `SOCK_SEQPACKET` socket `socket`, with the descriptors it
/// carries; `wait`: block until one comes, else return [`Received::Empty`] at once.
pub fn receive_with_descriptors(socket: RawFd, wait: bool) -> io::Result<Received> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let dont_wait = if wait { 0 } else { libc::MSG_DONTWAIT };
    // The message's length, without taking it (`MSG_TRUNC` makes a unix socket tell the whole length).
    let length = loop {
        // SAFETY: a zero-length peek into no buffer.
        let length =
            unsafe { libc::recv(socket, std::ptr::null_mut(), 0, libc::MSG_PEEK | libc::MSG_TRUNC | dont_wait) };
        if length >= 0 {
            break length as usize;
        }
        match io::Error::last_os_error() {
            err if err.kind() == io::ErrorKind::Interrupted => continue,
            err if err.kind() == io::ErrorKind::WouldBlock => return Ok(Received::Empty),
            err => return Err(err),
        }
    };
    let mut bytes = vec![0u8; length];
    let mut space = nix::cmsg_space!([RawFd; MAX_RECEIVED_FDS]);
    let mut iov = [io::IoSliceMut::new(&mut bytes)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    let message = loop {
        match recvmsg::<()>(socket, &mut iov, Some(&mut space), flags) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
            Ok(message) => break message,
        }
    };
    // Own every descriptor that arrived before judging the message, so none leaks.
    let mut fds: Vec<OwnedFd> = Vec::new();
    for cmsg in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel installed these descriptors in this process for this message; nothing else
            // knows of them.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let received = message.bytes;
    if received == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    bytes.truncate(received);
    Ok(Received::Message { bytes, fds })
}

/// Raises the send buffer of the unix socket `socket` to carry a message of `length` bytes (root only:
/// `SO_SNDBUFFORCE` goes past `net.core.wmem_max`).
pub fn fit_send_buffer(socket: RawFd, length: usize) -> io::Result<()> {
    // A unix datagram may be at most the send buffer less some overhead; the kernel doubles what it is given.
    let wanted = libc::c_int::try_from(length / 2 + 4096).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid int option value.
    syscall!(setsockopt(
        socket,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        (&wanted as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as libc::socklen_t
    ))
    .map(drop)
}
