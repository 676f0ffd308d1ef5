//! The job's PID 1 as runnel: a shell waiting for its job, then the supervisor of the job's command.
//!
//! A shell made ahead of time (`shell_pool`) sets its namespaces up, receives its job, starts the command and
//! reports `Started` here; after a fork of the server (`sys::spawn_init`) that is done before this runs. Once the
//! command runs, in the manner of catatonit, this drops every
//! privilege, then sits in one blocking `read` loop on a signalfd: forward stop signals to the command's
//! process group, reap every child (orphans re-parent to PID 1), and when the command itself has ended, report
//! its exact wait status to the server and exit, which makes the kernel kill whatever is left in the PID
//! namespace. Nothing here polls.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};

use super::shell_pool::{ReceivedJob, NETWORK_ARGUMENT, SHELL_ARGUMENT};
use super::{InitReport, RUN_AS_VARIABLE};
use crate::sys::{self, ExitStatus, COMMAND_PID};

/// The init's report channel to the server, set up by the server's spawn.
const CONTROL_FD: i32 = 3;

/// Signals forwarded to the command's process group, as a service manager would pass them on.
const FORWARDED: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// Runs the init; never returns. `args` are those after `__init`: none for the init proper exec'd by a forked
/// init (`sys::spawn_init`), `--shell [--network]` for a shell made ahead of time (`shell_pool`).
pub fn main(args: Vec<OsString>) -> ! {
    let shell = match args.as_slice() {
        [] => None,
        [flag] if flag == SHELL_ARGUMENT => Some(false),
        [flag, network] if flag == SHELL_ARGUMENT && network == NETWORK_ARGUMENT => Some(true),
        _ => not_for_users(),
    };
    // Only a process the server started as a namespace's PID 1 may run this: with its report pipe as
    // descriptor 3 after a fork, with its socket there as a shell.
    if sys::getpid() != 1 {
        not_for_users();
    }
    match shell {
        Some(own_network) => shell_main(own_network),
        None => {
            let run_as = std::env::var(RUN_AS_VARIABLE).ok().and_then(|value| {
                let (uid, gid) = value.split_once(':')?;
                Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?))
            });
            match (run_as, sys::is_pipe(CONTROL_FD)) {
                (Some((uid, gid)), true) => supervise(uid, gid),
                _ => not_for_users(),
            }
        }
    }
}

fn not_for_users() -> ! {
    eprintln!("error: INVALID_ARGUMENT: `runnel {}` is internal to the server", super::INIT_COMMAND);
    sys::exit_now(2);
}

/// A shell: sets its namespaces up, waits for its job on descriptor 3 (its socket), starts the job's command,
/// reports, and supervises it. Every signal stays blocked until the supervisor's signalfd exists.
fn shell_main(own_network: bool) -> ! {
    let _ = sys::block_all_signals();
    if !sys::is_socket(CONTROL_FD) {
        not_for_users();
    }
    // Its stderr is the server's log until the job arrives.
    let give_up = |what: &str, why: &dyn std::fmt::Display| -> ! {
        eprintln!("runnel shell: cannot {what}: {why}");
        sys::exit_now(1)
    };
    // Until its job comes, what the host mounts and unmounts reaches it (see `shell_pool`).
    if let Err(report) = sys::set_up_namespaces(own_network, sys::MountPropagation::FromHost) {
        give_up("set up its namespaces", &format!("{report:?}"));
    }
    // Made when a CPU was idle (see `shell_pool`); the job must not wait for one, nor inherit that. The helper
    // lowered itself only if it could come back (CAP_SYS_NICE).
    if let Err(err) = sys::schedule_normally(0) {
        eprintln!("runnel shell: cannot return to the ordinary scheduling policy: {err}");
    }
    // Ready: the helper hands it to the server now.
    if !matches!(sys::write_nonblocking(CONTROL_FD, &[1]), Ok(Some(1))) {
        sys::exit_now(1);
    }
    let (bytes, fds) = match sys::receive_with_descriptors(CONTROL_FD, true) {
        Ok(sys::Received::Message { bytes, fds }) => (bytes, fds),
        // The server let the pool go (it is stopping): no job will come.
        Ok(sys::Received::Closed) | Ok(sys::Received::Empty) => sys::exit_now(0),
        Err(err) => give_up("receive its job", &err),
    };
    let job = ReceivedJob::decode(&bytes).unwrap_or_else(|err| give_up("read its job", &err));
    if fds.len() != 4 {
        give_up("read its job", &format!("{} descriptors came with it", fds.len()));
    }
    // 0-2 the job's stdin, stdout and stderr, 3 its control pipe (in place of the socket, which this closes):
    // nothing else stays open.
    let targets: Vec<(OwnedFd, i32)> = fds.into_iter().zip(0..).collect();
    sys::install_descriptors(targets).unwrap_or_else(|err| give_up("take its job's descriptors", &err));
    let mut stacks = sys::InitStacks::default();
    let setup = job.setup();
    let report = sys::start_job_in_shell(&setup, &mut stacks);
    sys::send_report(report);
    if report != InitReport::Started {
        sys::exit_now(127);
    }
    let (uid, gid) = job.run_as();
    supervise(uid, gid)
}

/// The init proper, once the command runs: drops every privilege, then forwards signals and reaps until the
/// command ends, and reports how.
fn supervise(uid: u32, gid: u32) -> ! {
    // Nothing below may fail the job: the command runs already. If the init cannot supervise it, the command
    // goes (with the init, the kernel kills the namespace) and the server sees the init's own end.
    let give_up = |what: &str, err: std::io::Error| -> ! {
        eprintln!("runnel init: cannot {what}: {err}");
        sys::exit_now(1)
    };
    let _ = sys::set_cloexec(CONTROL_FD);
    sys::drop_privileges(uid, gid).unwrap_or_else(|e| give_up("drop privileges", e));
    // The parent-death signal was re-armed just now; if the server died before that, nothing would kill us.
    if sys::pipe_reader_gone(CONTROL_FD) {
        sys::exit_now(1);
    }
    // Descriptors 0-2 are the job's; 3 is close-on-exec. Nothing else may stay open.
    sys::close_from(4).unwrap_or_else(|e| give_up("close descriptors", e));
    // Every signal arrived blocked (see `sys::spawn_init`): those sent before now are still pending, and the
    // signalfd reads them first.
    let mut signals: Vec<libc::c_int> = FORWARDED.to_vec();
    signals.push(libc::SIGCHLD);
    let signal_fd = sys::signalfd(&signals).unwrap_or_else(|e| give_up("set up signal handling", e));

    loop {
        // Reap first: the command may have ended before the signalfd existed.
        while let Ok(Some((pid, status))) = sys::reap_any_child() {
            if pid == COMMAND_PID {
                report(InitReport::Ended(status));
                sys::exit_now(match status {
                    ExitStatus::Exited(code) => code,
                    ExitStatus::Signaled(signal) => 128 + signal,
                });
            }
        }
        if sys::wait_readable(signal_fd.as_raw_fd(), -1).is_err() {
            sys::exit_now(1);
        }
        while let Ok(Some(signal)) = sys::read_signal(signal_fd.as_raw_fd()) {
            if signal != libc::SIGCHLD {
                // The command leads its own process group (its session), so this reaches its children too.
                let _ = sys::signal_process(-COMMAND_PID, signal);
            }
        }
    }
}

fn report(message: InitReport) {
    // If the server is gone there is nobody to tell; the parent-death signal ends us anyway.
    let _ = sys::write_all(CONTROL_FD, &message.encode());
}
