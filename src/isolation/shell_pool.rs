//! Jobs' shells made ahead of time: the namespaces of an isolated job, ready before its StartJob.
//!
//! Most of an isolated start was making the job's namespaces, and the server paid for it: a new network
//! namespace costs the kernel about 0.7 ms (p50), mounting `/proc` and `/sys` and bringing `lo` up more, and the
//! fork of the server into them copied its page tables and then made the loop fault on each page it wrote
//! (78 page faults per start, against 2 for a call that forks nothing). So a helper process the server starts
//! from its own executable (`runnel __shells`) makes shells in advance, on another core. A shell is
//! `runnel __init` running as PID 1 of fresh PID, mount, UTS, IPC and (unless `--host-network`) network
//! namespaces, which sets them up at once (`sys::set_up_namespaces`), says it is ready, and waits on a socket for
//! its job. Until its job arrives its mounts stay slaves of the host's, so that what the host mounts or unmounts
//! meanwhile reaches it (an idle shell keeps no unmounted file system alive); they become private with the job.
//!
//! Not where jobs get cgroups (a cgroup v2 host with a delegated subtree): a shell's init would stay in the
//! server's cgroup, outside its job's, where a forked init is created in it. Those starts fork (see
//! `jobs::launch`), and no pool is made.
//!
//! The helper clones each shell with `CLONE_PARENT`, so that it is the server's child as a forked init is: the
//! server waits for it with its pidfd, and it dies with the server (`PR_SET_PDEATHSIG`). The helper sends the
//! server the shell's pid, its pidfd and the server's end of its socket; these messages wait in the helper's
//! socket, which is the pool. A launch takes one without blocking and hands the shell its job in one message
//! ([`Shell::assign`]: a `ShellJob` and the job's descriptors), and the server asks the helper for one more
//! (one byte per shell). When the pool is empty (a burst of starts) or the helper is gone, the job's start forks
//! into new namespaces as before (`sys::spawn_init`): nothing ever waits for the helper.
//!
//! A shell knows nothing of any job until its own arrives, and serves one: nothing runs in its namespaces before
//! the job, and they end with it. One whose socket closes without a job (those still queued at shutdown) exits.

use std::ffi::{CStr, CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use prost::Message;

use crate::proto::shell::ShellJob;
use crate::sys::{
    self, CStringArray, ChildStack, JobSetup, Namespaces, Received, SeccompFilter, SpawnFds, SpawnOptions,
    SpawnProgram, WorkingDirBind,
};

/// The hidden subcommand that runs the helper (`runnel __shells [--network]`).
pub const SHELL_POOL_COMMAND: &str = "__shells";

/// The argument of `runnel __init` that makes it a shell; [`NETWORK_ARGUMENT`] after it: with a network
/// namespace of its own.
pub const SHELL_ARGUMENT: &str = "--shell";
pub const NETWORK_ARGUMENT: &str = "--network";

/// Shells kept ready. A start takes one and the helper replaces it in a few milliseconds, so only a burst of
/// more starts than this makes some fork their own namespaces; an idle shell holds a process of a few hundred
/// KiB and its namespaces.
pub const POOL_SIZE: u8 = 8;

/// The server's side: the helper and the socket its shells arrive on.
#[derive(Debug)]
pub struct ShellPool {
    /// `None` once the helper is gone: every job then forks its own namespaces.
    helper: Option<Helper>,
    /// Shells taken and not yet asked for again (see [`ShellPool::replenish`]).
    owed: u8,
}

#[derive(Debug)]
struct Helper {
    process: Child,
    /// The server's end, non-blocking: shells come in, requests for more go out.
    socket: OwnedFd,
}

/// A shell waiting for its job: the server's child, PID 1 of its namespaces.
#[derive(Debug)]
pub struct Shell {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The server's end of the shell's socket, non-blocking.
    socket: OwnedFd,
}

impl ShellPool {
    /// Starts the helper from `executable` (the server's own) and asks it for [`POOL_SIZE`] shells. A helper
    /// that cannot start is logged, and jobs fork their own namespaces.
    pub fn start(executable: &Path, own_network: bool) -> ShellPool {
        let helper = match Helper::start(executable, own_network) {
            Ok(helper) => {
                log::info!("jobs' namespaces are made ahead of time by pid {}", helper.process.id());
                Some(helper)
            }
            Err(err) => {
                log::warn!("cannot start the shell helper ({err}); each job's start makes its own namespaces");
                None
            }
        };
        let mut pool = ShellPool { helper, owed: POOL_SIZE };
        pool.replenish(false);
        pool
    }

    /// A shell, if one is ready; its replacement is asked for at the next [`ShellPool::replenish`].
    pub fn take(&mut self) -> Option<Shell> {
        let helper = self.helper.as_ref()?;
        let (bytes, fds) = match sys::receive_with_descriptors(helper.socket.as_raw_fd(), false) {
            Ok(Received::Message { bytes, fds }) => (bytes, fds),
            Ok(Received::Empty) => {
                log::debug!("the shell pool is empty");
                return None;
            }
            Ok(Received::Closed) => {
                self.lose_helper("it closed its socket");
                return None;
            }
            Err(err) => {
                self.lose_helper(&err.to_string());
                return None;
            }
        };
        self.owed = self.owed.saturating_add(1);
        let shell = Shell::from_message(bytes, fds);
        if shell.is_none() {
            // Never from our own helper; whatever it was, its descriptors are closed.
            self.lose_helper("it sent a message that is not a shell");
        }
        shell
    }

    /// Asks the helper to replace the shells taken since the last call: once per loop turn, after the turn's
    /// calls were served, since waking the helper is a system call a start need not wait for.
    ///
    /// While `starts_pending` (a job started from a shell has not reported yet), only once half the pool is
    /// gone: making a shell is about a millisecond of the kernel's work (a network namespace, mounts, an exec),
    /// which a kernel without preemption does not interrupt for the start's own processes on the same core.
    /// Asked for after the report instead, isolated StartJob p50 was 0.85 x (median of 28 alternating rounds of
    /// 100 starts; `docs/performance.md`, session 15). A burst of starts still gets shells.
    pub fn replenish(&mut self, starts_pending: bool) {
        let Some(helper) = &self.helper else { return };
        if !asks_now(self.owed, starts_pending) {
            return;
        }
        let requests = vec![0u8; usize::from(self.owed)];
        match sys::write_nonblocking(helper.socket.as_raw_fd(), &requests) {
            Ok(Some(_)) => self.owed = 0,
            // Never in practice: at most POOL_SIZE small messages are ever queued. The pool is one smaller.
            Ok(None) => log::debug!("the shell helper's socket is full"),
            Err(err) => self.lose_helper(&err.to_string()),
        }
    }

    fn lose_helper(&mut self, why: &str) {
        if let Some(helper) = self.helper.take() {
            log::error!("the shell helper is gone ({why}); each job's start makes its own namespaces");
            helper.stop(false);
        }
    }
}

/// Whether the shells taken (`owed`) are asked for now (see [`ShellPool::replenish`]).
fn asks_now(owed: u8, starts_pending: bool) -> bool {
    owed > 0 && !(starts_pending && owed < POOL_SIZE / 2)
}

impl Drop for ShellPool {
    /// Server shutdown: ends the helper and every shell no job took, and waits for them (they live in the
    /// server's cgroup, which is removed next).
    fn drop(&mut self) {
        if let Some(helper) = self.helper.take() {
            helper.stop(true);
        }
    }
}

impl Shell {
    /// The shell a message from the helper describes: its pid, then its pidfd and socket as descriptors.
    fn from_message(bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Option<Shell> {
        match (<[u8; 4]>::try_from(bytes), <[OwnedFd; 2]>::try_from(fds)) {
            (Ok(pid), Ok([pidfd, socket])) => Some(Shell { pid: i32::from_le_bytes(pid), pidfd, socket }),
            _ => None,
        }
    }

    /// Hands the shell its job: `job`, with `fds` (the job's stdin, stdout, stderr and the write end of its
    /// control pipe). Returns the shell's pid and pidfd, the job's top process
    /// from now on; its report comes on the control pipe, as a forked init's. A shell that cannot take the job
    /// (it died in the pool) is killed and reaped.
    pub fn assign(self, job: &JobSetup<'_>, fds: [BorrowedFd<'_>; 4]) -> io::Result<(i32, OwnedFd)> {
        let message = encode(job).encode_to_vec();
        let descriptors: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        // The default send buffer carries about 200 KiB; a request may be larger (up to --max-request-bytes).
        let sent = match message.len() > 128 * 1024 {
            true => sys::fit_send_buffer(self.socket.as_raw_fd(), message.len()),
            false => Ok(()),
        }
        .and_then(|()| sys::send_with_descriptors(self.socket.as_raw_fd(), &message, &descriptors));
        match sent {
            Ok(true) => Ok((self.pid, self.pidfd)),
            Ok(false) => Err(self.discard(io::Error::from(io::ErrorKind::WouldBlock))),
            Err(err) => Err(self.discard(err)),
        }
    }

    fn discard(self, err: io::Error) -> io::Error {
        let _ = sys::signal_process(self.pid, libc::SIGKILL);
        let _ = sys::wait_pidfd(self.pidfd.as_raw_fd(), sys::Wait::Reap);
        err
    }
}

impl Helper {
    fn start(executable: &Path, own_network: bool) -> io::Result<Helper> {
        let (socket, helper_end) = sys::seqpacket_pair()?;
        let mut args = vec![SHELL_POOL_COMMAND.as_ref()];
        if own_network {
            args.push(NETWORK_ARGUMENT.as_ref());
        }
        let process = sys::spawn_helper(executable, &args, helper_end, None, sys::AtServerDeath::Killed)?;
        Ok(Helper { process, socket })
    }

    /// Ends the helper, then kills and reaps every shell it sent that no job took. `graceful` (shutdown): it is
    /// told there will be no more requests first, which it reads as end of file once it has sent the shell it
    /// may be making, and given [`HELPER_STOP_TIMEOUT`] at the ordinary scheduling policy; otherwise (a helper
    /// that misbehaved) it is killed at once, and a shell it was making when it died exits by itself when its
    /// socket closes.
    fn stop(mut self, graceful: bool) {
        if graceful && sys::shut_down_sending(self.socket.as_raw_fd()).is_ok() {
            let _ = sys::schedule_normally(self.process.id() as i32);
            let deadline = Instant::now() + HELPER_STOP_TIMEOUT;
            while matches!(self.process.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = self.process.kill();
        if let Err(err) = self.process.wait() {
            log::warn!("cannot wait for the shell helper: {err}");
        }
        while let Ok(Received::Message { bytes, fds }) = sys::receive_with_descriptors(self.socket.as_raw_fd(), false) {
            if let Some(shell) = Shell::from_message(bytes, fds) {
                shell.discard(io::Error::from(io::ErrorKind::Interrupted));
            }
        }
    }
}

/// How long a stopping server waits for the helper to finish the shell it is making (a clone, an exec and a
/// namespace setup: milliseconds) before it kills it.
const HELPER_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the helper; never returns. Its stdin is its socket to the server: each byte read asks for one shell,
/// sent back as its pid, pidfd and socket; end of file ends it.
pub fn main(args: Vec<OsString>) -> ! {
    let own_network = match args.as_slice() {
        [] => false,
        [flag] if flag == NETWORK_ARGUMENT => true,
        _ => {
            eprintln!("error: INVALID_ARGUMENT: `runnel {SHELL_POOL_COMMAND}` is internal to the server");
            std::process::exit(2);
        }
    };
    let mut maker = ShellMaker::new(own_network).unwrap_or_else(|err| fail("cannot prepare", err));
    // Making shells is work ahead of time: on a machine with no CPU to spare, the starts being served now come
    // first (and starts fork their own namespaces while the pool is empty). Each shell goes back to the ordinary
    // policy before it waits for its job, which takes CAP_SYS_NICE (a container may lack it: then no lowering).
    if may_raise_scheduling_priority() {
        if let Err(err) = sys::schedule_when_idle() {
            eprintln!("runnel {SHELL_POOL_COMMAND}: cannot lower its scheduling priority: {err}");
        }
    }
    // The helper leads a session of its own (`sys::spawn_helper`), whose group would otherwise get as much CPU as
    // the server's; shells leave it (each job leads its own session) and keep the ordinary share.
    if let Err(err) = sys::lower_session_priority() {
        eprintln!("runnel {SHELL_POOL_COMMAND}: cannot lower its session's share of CPU: {err}");
    }
    let socket = io::stdin().as_raw_fd();
    let mut requests = [0u8; 64];
    loop {
        let count = match io::stdin().lock().read(&mut requests) {
            Ok(0) => std::process::exit(0),
            // The server closed its end with shells of the pool still unread in it (at every shutdown): the same
            // end as end of file.
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => std::process::exit(0),
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => fail("cannot read the server's requests", err),
        };
        for _ in 0..count {
            let (pid, pidfd, shell_socket) = maker.make().unwrap_or_else(|err| fail("cannot make a shell", err));
            let fds = [pidfd.as_raw_fd(), shell_socket.as_raw_fd()];
            match sys::send_with_descriptors(socket, &pid.to_le_bytes(), &fds) {
                Ok(_) => {}
                // The server closed its end: it is shutting down (the shell, whose socket closes now, exits).
                Err(err) if err.raw_os_error() == Some(libc::EPIPE) => std::process::exit(0),
                Err(err) => fail("cannot send a shell to the server", err),
            }
        }
    }
}

/// What the helper reuses for every shell.
struct ShellMaker {
    executable: OwnedFd,
    dev_null: OwnedFd,
    argv: CStringArray,
    namespaces: Namespaces,
    stack: ChildStack,
}

impl ShellMaker {
    fn new(own_network: bool) -> io::Result<ShellMaker> {
        let mut argv = vec![c"runnel".into(), CString::from(c"__init"), CString::from(c"--shell")];
        let mut namespaces = Namespaces::SHELL;
        if own_network {
            argv.push(CString::from(c"--network"));
            namespaces = namespaces.with_network();
        }
        Ok(ShellMaker {
            executable: sys::open_own_executable()?,
            dev_null: sys::open_dev_null()?,
            argv: CStringArray::new(argv),
            namespaces,
            stack: ChildStack::default(),
        })
    }

    /// Clones a shell as the server's child into new namespaces, its socket as descriptor 3, and waits until it
    /// says it is ready (set up, back at the ordinary scheduling policy, waiting for its job) or has died (the
    /// server then finds it gone when it hands it a job, and forks instead). Returns its pid, its pidfd and the
    /// server's end of its socket.
    fn make(&mut self) -> io::Result<(i32, OwnedFd, OwnedFd)> {
        let (server_end, shell_end) = sys::seqpacket_pair()?;
        let program = SpawnProgram {
            exec_fd: Some(self.executable.as_fd()),
            candidates: CStringArray::new(Vec::new()),
            argv: CStringArray::new(self.argv.strings().to_vec()),
            envp: CStringArray::new(Vec::new()),
            working_dir: c"/".into(),
        };
        // Its stderr is the helper's, the server's log, until its job gives it the job's.
        let stderr = io::stderr();
        let fds = SpawnFds {
            stdin: self.dev_null.as_fd(),
            stdout: self.dev_null.as_fd(),
            stderr: stderr.as_fd(),
            control: Some(shell_end.as_fd()),
            report: None,
        };
        let options =
            SpawnOptions { namespaces: self.namespaces, sibling: true, die_with_parent: true, ..Default::default() };
        match sys::spawn(&program, &fds, options, &mut self.stack)? {
            Ok((pid, pidfd)) => {
                drop(shell_end);
                let mut ready = [0u8; 1];
                // One byte, or end of file if it died.
                while sys::wait_readable(server_end.as_raw_fd(), -1)? {
                    if sys::read_nonblocking(server_end.as_raw_fd(), &mut ready)?.is_some() {
                        break;
                    }
                }
                Ok((pid, pidfd, server_end))
            }
            Err(failure) => {
                Err(io::Error::other(format!("{:?}: {}", failure.stage, io::Error::from_raw_os_error(failure.errno))))
            }
        }
    }
}

/// Whether this process has CAP_SYS_NICE, which leaving `SCHED_IDLE` takes (`CapEff` in `/proc/self/status`).
fn may_raise_scheduling_priority() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status.lines().find_map(|line| line.strip_prefix("CapEff:"));
    effective.and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok()).is_some_and(|caps| caps >> CAP_SYS_NICE & 1 == 1)
}

fn fail(what: &str, err: io::Error) -> ! {
    eprintln!("runnel {SHELL_POOL_COMMAND}: {what}: {err}");
    std::process::exit(1)
}

/// The message that hands `job` to a shell.
fn encode(job: &JobSetup<'_>) -> ShellJob {
    let bytes = |strings: &CStringArray| strings.strings().iter().map(|s| s.as_bytes().to_vec()).collect();
    ShellJob {
        hostname: job.hostname.to_bytes().to_vec(),
        candidates: bytes(&job.command.candidates),
        argv: bytes(&job.command.argv),
        envp: bytes(&job.command.envp),
        working_dir: job.command.working_dir.as_bytes().to_vec(),
        uid: job.run_as.0,
        gid: job.run_as.1,
        max_processes: job.max_processes,
        open_files_soft: job.open_files.map(|limit| limit.rlim_cur),
        open_files_hard: job.open_files.map(|limit| limit.rlim_max),
        seccomp: job.seccomp.is_some(),
        tmp_options: job.tmp_options.to_bytes().to_vec(),
        bind_working_dir: job.working_dir_bind.is_some(),
        bind_directories: job.working_dir_bind.as_ref().map_or_else(Vec::new, |bind| bytes(bind.directories)),
        own_working_dir: job.own_working_dir,
    }
}

/// A job as a shell received it ([`ReceivedJob::decode`]), owning what [`JobSetup`] borrows.
pub struct ReceivedJob {
    hostname: CString,
    command: SpawnProgram<'static>,
    run_as: (u32, u32),
    max_processes: Option<u64>,
    open_files: Option<libc::rlimit>,
    seccomp: Option<SeccompFilter>,
    tmp_options: CString,
    bind_directories: Option<CStringArray>,
    own_working_dir: bool,
}

impl ReceivedJob {
    pub fn decode(bytes: &[u8]) -> Result<ReceivedJob, String> {
        let job = ShellJob::decode(bytes).map_err(|err| format!("undecodable job: {err}"))?;
        let c_string = |bytes: Vec<u8>| CString::new(bytes).map_err(|_| "a string with a NUL byte".to_string());
        let array = |strings: Vec<Vec<u8>>| -> Result<CStringArray, String> {
            Ok(CStringArray::new(strings.into_iter().map(c_string).collect::<Result<_, _>>()?))
        };
        let open_files = match (job.open_files_soft, job.open_files_hard) {
            (Some(rlim_cur), Some(rlim_max)) => Some(libc::rlimit { rlim_cur, rlim_max }),
            (None, None) => None,
            _ => return Err("half an open-file limit".into()),
        };
        Ok(ReceivedJob {
            hostname: c_string(job.hostname)?,
            command: SpawnProgram {
                exec_fd: None,
                candidates: array(job.candidates)?,
                argv: array(job.argv)?,
                envp: array(job.envp)?,
                working_dir: c_string(job.working_dir)?,
            },
            run_as: (job.uid, job.gid),
            max_processes: job.max_processes,
            open_files,
            seccomp: job.seccomp.then(SeccompFilter::default_for_jobs),
            tmp_options: c_string(job.tmp_options)?,
            bind_directories: match job.bind_working_dir {
                true => Some(array(job.bind_directories)?),
                false => None,
            },
            own_working_dir: job.own_working_dir,
        })
    }

    /// The user the command runs as, which the init becomes too.
    pub fn run_as(&self) -> (u32, u32) {
        self.run_as
    }

    pub fn setup(&self) -> JobSetup<'_> {
        let working_dir: &CStr = &self.command.working_dir;
        JobSetup {
            hostname: &self.hostname,
            command: &self.command,
            run_as: self.run_as,
            max_processes: self.max_processes,
            open_files: self.open_files,
            seccomp: self.seccomp.as_ref(),
            tmp_options: &self.tmp_options,
            working_dir_bind: self.bind_directories.as_ref().map(|directories| WorkingDirBind {
                source: working_dir,
                directories,
                target: working_dir,
            }),
            own_working_dir: self.own_working_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_shells_are_asked_for_between_starts_or_once_half_the_pool_is_gone() {
        assert!(!asks_now(0, false), "nothing taken");
        assert!(asks_now(1, false), "no start pending: at once");
        assert!(!asks_now(1, true), "a start pending: later");
        assert!(!asks_now(POOL_SIZE / 2 - 1, true));
        assert!(asks_now(POOL_SIZE / 2, true), "half the pool gone: now, start pending or not");
        assert!(asks_now(POOL_SIZE, true));
    }
}
