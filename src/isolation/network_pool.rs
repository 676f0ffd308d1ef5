//! Network namespaces made ahead of time.
//!
//! A new network namespace is the costliest part of an isolated job's start: about 2 ms of kernel work (200
//! `unshare -n true` take 0.35 s longer than 200 `unshare -u true` on the development VM), done inside the
//! server's `clone3` while `CLONE_VFORK` holds the loop. So a helper process the server starts from its own
//! executable (`runnel __netns`) makes them in advance, on another core, and sends each to the server as a
//! descriptor over a `SOCK_SEQPACKET` socket. They wait in that socket's receive queue, which is the pool: a
//! launch takes one without blocking, the job's first process joins it (`setns`) before it execs, and the
//! server asks the helper for one more (one byte per namespace). When the pool is empty (a burst of starts) or
//! the helper is gone, the job's `clone3` makes its namespace as before: nothing ever waits for the helper.
//!
//! Every namespace is fresh: the helper unshares into it, opens it and moves on to the next, and nothing runs
//! in it before the job. The helper dies with the server (`PR_SET_PDEATHSIG`) and ends when the server closes
//! its socket; namespaces still queued are freed with the socket.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Child;

use crate::sys::{self, ReceivedDescriptor};

/// The hidden subcommand that runs the helper (`runnel __netns`).
pub const NETWORK_POOL_COMMAND: &str = "__netns";

/// Namespaces kept ready. A start takes one and the helper replaces it in about 2 ms, so only a burst of
/// more starts than this within a few milliseconds makes some create their own; each idle namespace costs the
/// kernel some tens of KiB.
pub const POOL_SIZE: u8 = 8;

/// The server's side: the helper and the socket its namespaces arrive on.
#[derive(Debug)]
pub struct NetworkPool {
    /// `None` once the helper is gone: every job then makes its own namespace.
    helper: Option<Helper>,
}

#[derive(Debug)]
struct Helper {
    process: Child,
    /// The server's end, non-blocking: namespaces come in, requests for more go out.
    socket: OwnedFd,
}

impl NetworkPool {
    /// Starts the helper from `executable` (the server's own) and asks it for [`POOL_SIZE`] namespaces. A
    /// helper that cannot start is logged, and jobs make their own namespaces.
    pub fn start(executable: &Path) -> NetworkPool {
        let helper = match Helper::start(executable) {
            Ok(helper) => {
                log::info!("network namespaces are made ahead of time by pid {}", helper.process.id());
                Some(helper)
            }
            Err(err) => {
                log::warn!("cannot start the network-namespace helper ({err}); each job's start makes its own");
                None
            }
        };
        let mut pool = NetworkPool { helper };
        pool.ask_for(POOL_SIZE);
        pool
    }

    /// A fresh network namespace, if one is ready; asks the helper for its replacement.
    pub fn take(&mut self) -> Option<OwnedFd> {
        let helper = self.helper.as_ref()?;
        match sys::receive_descriptor(helper.socket.as_raw_fd()) {
            Ok(ReceivedDescriptor::Descriptor(namespace)) => {
                log::debug!("a network namespace from the pool");
                self.ask_for(1);
                Some(namespace)
            }
            Ok(ReceivedDescriptor::Empty) => {
                log::debug!("the network-namespace pool is empty");
                None
            }
            Ok(ReceivedDescriptor::Closed) => {
                self.lose_helper("it closed its socket");
                None
            }
            Err(err) => {
                self.lose_helper(&err.to_string());
                None
            }
        }
    }

    /// Asks the helper for `count` more namespaces.
    fn ask_for(&mut self, count: u8) {
        let Some(helper) = &self.helper else { return };
        let requests = vec![0u8; usize::from(count)];
        match sys::write_nonblocking(helper.socket.as_raw_fd(), &requests) {
            Ok(Some(_)) => {}
            // Never in practice: at most POOL_SIZE small messages are ever queued. The pool is one smaller.
            Ok(None) => log::debug!("the network-namespace helper's socket is full"),
            Err(err) => self.lose_helper(&err.to_string()),
        }
    }

    fn lose_helper(&mut self, why: &str) {
        if let Some(helper) = self.helper.take() {
            log::error!("the network-namespace helper is gone ({why}); each job's start makes its own namespace");
            helper.stop();
        }
    }
}

impl Drop for NetworkPool {
    fn drop(&mut self) {
        if let Some(helper) = self.helper.take() {
            helper.stop();
        }
    }
}

impl Helper {
    fn start(executable: &Path) -> io::Result<Helper> {
        let (socket, helper_end) = sys::seqpacket_pair()?;
        let process = sys::spawn_helper(executable, &[NETWORK_POOL_COMMAND.as_ref()], helper_end)?;
        Ok(Helper { process, socket })
    }

    /// Closes the socket, which ends the helper at its next read, and reaps it; killed first, as nothing it
    /// holds is worth waiting for.
    fn stop(mut self) {
        drop(self.socket);
        let _ = self.process.kill();
        if let Err(err) = self.process.wait() {
            log::warn!("cannot wait for the network-namespace helper: {err}");
        }
    }
}

/// Runs the helper; never returns. Its stdin is its socket to the server: each byte read asks for one
/// namespace, sent back as a descriptor; end of file ends it.
pub fn main(args: Vec<OsString>) -> ! {
    if !args.is_empty() {
        eprintln!("error: INVALID_ARGUMENT: `runnel {NETWORK_POOL_COMMAND}` is internal to the server");
        std::process::exit(2);
    }
    let socket = io::stdin().as_raw_fd();
    let mut requests = [0u8; 64];
    loop {
        let count = match io::stdin().lock().read(&mut requests) {
            Ok(0) => std::process::exit(0),
            // The server closed its end with namespaces of the pool still unread in it (at every shutdown):
            // the same end as end of file.
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => std::process::exit(0),
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => fail("cannot read the server's requests", err),
        };
        for _ in 0..count {
            let namespace =
                sys::new_network_namespace().unwrap_or_else(|err| fail("cannot create a network namespace", err));
            match sys::send_descriptor(socket, namespace.as_raw_fd()) {
                Ok(()) => {}
                // The server closed its end: it is shutting down.
                Err(err) if err.raw_os_error() == Some(libc::EPIPE) => std::process::exit(0),
                Err(err) => fail("cannot send a network namespace to the server", err),
            }
        }
    }
}

fn fail(what: &str, err: io::Error) -> ! {
    eprintln!("runnel {NETWORK_POOL_COMMAND}: {what}: {err}");
    std::process::exit(1)
}
