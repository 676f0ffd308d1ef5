//! The job's PID 1 once it is runnel: the supervisor of a command that has already started.
//!
//! The namespace setup and the command's start happen before this, in the forked child that execs it
//! (`sys::spawn_init`), which reported `Started` already. In the manner of catatonit, this drops every
//! privilege, then sits in one blocking `read` loop on a signalfd: forward stop signals to the command's
//! process group, reap every child (orphans re-parent to PID 1), and when the command itself has ended, report
//! its exact wait status to the server and exit, which makes the kernel kill whatever is left in the PID
//! namespace. Nothing here polls.

use std::ffi::OsString;
use std::os::fd::AsRawFd;

use super::{InitReport, RUN_AS_VARIABLE};
use crate::sys::{self, ExitStatus, COMMAND_PID};

/// The init's report channel to the server, set up by the server's spawn.
const CONTROL_FD: i32 = 3;

/// Signals forwarded to the command's process group, as a service manager would pass them on.
const FORWARDED: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// Runs the init; never returns. `args` are those after `__init` (none).
pub fn main(args: Vec<OsString>) -> ! {
    // Only a process the server started as a namespace's PID 1, with its report pipe as descriptor 3, may run
    // this.
    let run_as = std::env::var(RUN_AS_VARIABLE).ok().and_then(|value| {
        let (uid, gid) = value.split_once(':')?;
        Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?))
    });
    let (Some((uid, gid)), true, true, true) = (run_as, args.is_empty(), sys::getpid() == 1, sys::is_pipe(CONTROL_FD))
    else {
        eprintln!("error: INVALID_ARGUMENT: `runnel {}` is internal to the server", super::INIT_COMMAND);
        sys::exit_now(2);
    };
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
