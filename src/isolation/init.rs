//! The job's PID 1: runnel in its hidden init mode, inside the job's namespaces and cgroup.
//!
//! In the manner of catatonit: finish the namespace setup, drop every privilege, start the command in a
//! session of its own, then sit in one blocking `read` loop on a signalfd: forward stop signals to the
//! command's process group, reap every child (orphans re-parent to PID 1), and when the command itself has
//! ended, report its exact wait status to the server and exit, which makes the kernel kill whatever is left in
//! the PID namespace. Nothing here polls.

use std::ffi::{CString, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use super::{InitPlan, InitReport, SetupStep};
use crate::sys::{self, CStringArray, ExitStatus, SpawnFds, SpawnOptions, SpawnProgram};

/// The init's report channel to the server, set up by the server's spawn.
const CONTROL_FD: i32 = 3;

/// Signals forwarded to the command's process group, as a service manager would pass them on.
const FORWARDED: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// Runs the init; never returns. `args` are those after `__init`.
pub fn main(args: Vec<OsString>) -> ! {
    // Only a process the server started as a namespace's PID 1, with its report pipe as descriptor 3, may run
    // this: by hand on a host it would remount the host's mount tree private.
    if sys::getpid() != 1 || !sys::is_pipe(CONTROL_FD) {
        eprintln!("error: INVALID_ARGUMENT: `runnel {}` is internal to the server", super::INIT_COMMAND);
        sys::exit_now(2);
    }
    let plan = match InitPlan::from_args(args) {
        Ok(plan) => plan,
        Err(err) => {
            eprintln!("error: INTERNAL: runnel init: {err}");
            sys::exit_now(2);
        }
    };
    let setup_failed = |step: SetupStep, err: std::io::Error| -> ! {
        report(InitReport::SetupFailed { step, errno: err.raw_os_error().unwrap_or(libc::EIO) });
        sys::exit_now(1)
    };
    let _ = sys::set_cloexec(CONTROL_FD);
    sys::make_mounts_private().unwrap_or_else(|e| setup_failed(SetupStep::Mounts, e));
    sys::mount_proc().unwrap_or_else(|e| setup_failed(SetupStep::Proc, e));
    sys::set_hostname(&plan.hostname).unwrap_or_else(|e| setup_failed(SetupStep::Hostname, e));
    if plan.loopback {
        sys::mount_sysfs().unwrap_or_else(|e| setup_failed(SetupStep::Sysfs, e));
        sys::bring_loopback_up().unwrap_or_else(|e| setup_failed(SetupStep::Loopback, e));
    }
    sys::reset_oom_score_adj().unwrap_or_else(|e| setup_failed(SetupStep::OomScore, e));
    sys::drop_privileges(plan.run_as.uid, plan.run_as.gid).unwrap_or_else(|e| setup_failed(SetupStep::Privileges, e));
    // The parent-death signal was re-armed just now; if the server died before that, nothing would kill us.
    if sys::pipe_reader_gone(CONTROL_FD) {
        sys::exit_now(1);
    }
    // Descriptors 0-2 are the job's; 3 is close-on-exec. Nothing else the server had may reach the command.
    sys::close_from(4).unwrap_or_else(|e| setup_failed(SetupStep::Descriptors, e));
    let mut signals: Vec<libc::c_int> = FORWARDED.to_vec();
    signals.push(libc::SIGCHLD);
    let signal_fd = sys::signalfd(&signals).unwrap_or_else(|e| setup_failed(SetupStep::Signals, e));

    let command = match start_command(&plan) {
        Ok(pid) => pid,
        Err(report_to_send) => {
            report(report_to_send);
            sys::exit_now(127);
        }
    };
    report(InitReport::Started);

    loop {
        match sys::wait_readable(signal_fd.as_raw_fd(), -1) {
            Ok(_) => {}
            Err(_) => sys::exit_now(1),
        }
        while let Ok(Some(signal)) = sys::read_signal(signal_fd.as_raw_fd()) {
            if signal != libc::SIGCHLD {
                // The command leads its own process group (its session), so this reaches its children too.
                let _ = sys::signal_process(-command, signal);
                continue;
            }
            while let Ok(Some((pid, status))) = sys::reap_any_child() {
                if pid == command {
                    report(InitReport::Ended(status));
                    sys::exit_now(match status {
                        ExitStatus::Exited(code) => code,
                        ExitStatus::Signaled(signal) => 128 + signal,
                    });
                }
            }
        }
    }
}

/// Execs the command as the init's child, in a session of its own, with the init's descriptors 0-2 and the
/// job's environment from the plan. Returns its pid, or the report that says why it could not start.
fn start_command(plan: &InitPlan) -> Result<i32, InitReport> {
    let c_string = |bytes: &[u8]| CString::new(bytes).expect("arguments and environment have no NUL");
    let program = SpawnProgram {
        exec_fd: None,
        candidates: CStringArray::new(plan.candidates.iter().map(|c| c_string(c.as_os_str().as_bytes())).collect()),
        argv: CStringArray::new(plan.argv.iter().map(|a| c_string(a.as_bytes())).collect()),
        envp: CStringArray::new(plan.env.iter().map(|e| c_string(e.as_bytes())).collect()),
        working_dir: c_string(plan.working_dir.as_os_str().as_bytes()),
    };
    let [stdin, stdout, stderr] = sys::standard_fds();
    let fds = SpawnFds { stdin, stdout, stderr, control: None, report: None };
    let options = SpawnOptions { die_with_parent: true, ..SpawnOptions::default() };
    let failed_to_start = |err: std::io::Error| InitReport::SetupFailed {
        step: SetupStep::Command,
        errno: err.raw_os_error().unwrap_or(libc::EIO),
    };
    match sys::spawn(&program, &fds, options, &mut sys::ChildStack::default()) {
        Ok(Ok((pid, _pidfd))) => Ok(pid),
        Ok(Err(failure)) => Err(InitReport::SpawnFailed(failure)),
        Err(err) => Err(failed_to_start(err)),
    }
}

fn report(message: InitReport) {
    // If the server is gone there is nobody to tell; the parent-death signal ends us anyway.
    let _ = sys::write_all(CONTROL_FD, &message.encode());
}
