//! Namespaces and a PID-1 init for every job.
//!
//! A job must not see the host's processes, mounts, network or hostname, must run without privileges, and
//! must not outlive its job or the server. Each job's first process is runnel itself in a hidden init mode
//! ([`init`]), PID 1 of new PID, mount, UTS, IPC and (unless `--host-network`) network namespaces: usually a shell
//! made ahead of time with its namespaces set up, which is handed the job ([`shell_pool`]); otherwise a fork of the
//! server into the namespaces and the job's cgroup, which sets them up with raw system calls, starts the command,
//! reports that it started, and then execs the init from a descriptor the server opened on its own executable at
//! startup (`sys::spawn_init`). The init gives up every privilege and stays as the namespace's PID 1: it forwards
//! stop signals, reaps orphans, and reports to the server over a pipe (its descriptor 3) the command's exact
//! wait status at the end.
//!
//! This file is the server's side: what the server decided about isolating jobs ([`Isolation`]) and reading
//! the init's reports ([`InitReport`], whose format `sys` writes).

pub mod init;
pub mod shell_pool;
pub mod users;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

pub use crate::sys::{InitReport, SetupStep, REPORT_LEN};

use crate::sys::{self, Namespaces, SeccompFilter};
use users::JobUsers;

/// The hidden subcommand that runs a job's init (`runnel __init`).
pub const INIT_COMMAND: &str = "__init";

/// Why jobs cannot be isolated on this host.
#[derive(Debug)]
pub enum IsolationError {
    /// Namespaces need root (CAP_SYS_ADMIN); this server runs as another user.
    NotRoot,
    /// The kernel refused to create the namespaces.
    NamespacesRefused(io::Error),
    /// The `--run-as` user or group does not exist, or is root.
    UnknownUser(String),
    /// The server's own executable cannot be opened.
    OwnExecutable(io::Error),
}

impl fmt::Display for IsolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsolationError::NotRoot => f.write_str("the server does not run as root, which namespaces need"),
            IsolationError::NamespacesRefused(err) => write!(f, "the kernel refused to create namespaces: {err}"),
            IsolationError::UnknownUser(m) => f.write_str(m),
            IsolationError::OwnExecutable(err) => write!(f, "cannot open the server's own executable: {err}"),
        }
    }
}

/// The user a job's command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Resolves `--run-as USER[:GROUP]` (names or numbers); without a group, the user's primary group.
    pub fn resolve(spec: &str) -> Result<RunAs, IsolationError> {
        use nix::unistd::{Group, User};
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        let unknown =
            |what: &str, name: &str| IsolationError::UnknownUser(format!("--run-as: no {what} {name:?} on this host"));
        let (uid, primary_gid) = match user.parse::<u32>() {
            Ok(uid) => (uid, None),
            Err(_) => {
                let found = User::from_name(user).ok().flatten().ok_or_else(|| unknown("user", user))?;
                (found.uid.as_raw(), Some(found.gid.as_raw()))
            }
        };
        let gid = match group {
            Some(group) => match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => Group::from_name(group).ok().flatten().ok_or_else(|| unknown("group", group))?.gid.as_raw(),
            },
            None => primary_gid.unwrap_or(uid),
        };
        // Root without capabilities still owns root's files, and the init (running as the same user) would
        // stay within the command's reach.
        if uid == 0 || gid == 0 {
            return Err(IsolationError::UnknownUser(format!(
                "--run-as {spec}: jobs may not run as uid 0 or gid 0; name an unprivileged user"
            )));
        }
        Ok(RunAs { uid, gid })
    }
}

/// What the server decided at startup about isolating jobs.
#[derive(Debug)]
pub struct Isolation {
    /// The server's own executable, opened at startup: each job's init is exec'd from it.
    init_executable: OwnedFd,
    /// Who jobs run as.
    pub users: JobUsers,
    /// False with `--host-network`: jobs share the host's network namespace.
    pub own_network: bool,
    /// The size of each private temporary directory (`--tmp-size`), unless the job's memory limit is smaller.
    pub tmp_size: u64,
    /// The commands' seccomp filter (`--seccomp default`); `None` with `--seccomp off`.
    pub seccomp: Option<SeccompFilter>,
}

impl Isolation {
    /// Checks that this server can isolate jobs: it is root and the kernel creates the namespaces.
    pub fn detect(
        users: JobUsers,
        own_network: bool,
        tmp_size: u64,
        seccomp: bool,
    ) -> Result<Isolation, IsolationError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(IsolationError::NotRoot);
        }
        let isolation = Isolation {
            init_executable: sys::open_own_executable().map_err(IsolationError::OwnExecutable)?,
            users,
            own_network,
            tmp_size,
            seccomp: seccomp.then(SeccompFilter::default_for_jobs),
        };
        sys::probe_namespaces(isolation.namespaces(), &mut sys::ChildStack::default())
            .map_err(IsolationError::NamespacesRefused)?;
        Ok(isolation)
    }

    pub fn namespaces(&self) -> Namespaces {
        if self.own_network {
            Namespaces::JOB.with_network()
        } else {
            Namespaces::JOB
        }
    }

    pub fn init_executable(&self) -> BorrowedFd<'_> {
        self.init_executable.as_fd()
    }
}

/// The variable that tells the init proper which user to become (`UID:GID`). Its environment holds nothing
/// else: it starts as root, and a job-chosen `LD_PRELOAD` (or any loader variable) would run code in it. Not its
/// argv either, which every local user can read: `/proc/PID/environ` is readable by its owner only, and the
/// init is not dumpable once it dropped its privileges.
pub const RUN_AS_VARIABLE: &str = "RUNNEL_INIT_RUN_AS";

/// Reads one report from the server's end of the pipe, waiting at most `timeout_ms` (-1: forever).
/// `Ok(None)`: the init closed the pipe (it died) or did not report in time.
pub fn read_report(fd: RawFd, timeout_ms: i32) -> io::Result<Option<InitReport>> {
    let mut bytes = [0u8; REPORT_LEN];
    let mut filled = 0;
    while filled < REPORT_LEN {
        if !sys::wait_readable(fd, timeout_ms)? {
            return Ok(None);
        }
        match sys::read_nonblocking(fd, &mut bytes[filled..])? {
            Some(0) => return Ok(None),
            Some(n) => filled += n,
            None => {}
        }
    }
    Ok(InitReport::decode(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{ExecFailure, ExitStatus, SpawnStage};

    #[test]
    fn reports_round_trip() {
        for report in [
            InitReport::Started,
            InitReport::SpawnFailed(ExecFailure { stage: SpawnStage::Exec, errno: libc::ENOENT }),
            InitReport::SpawnFailed(ExecFailure { stage: SpawnStage::WorkingDir, errno: libc::EACCES }),
            InitReport::SetupFailed { step: SetupStep::Loopback, errno: libc::EPERM },
            InitReport::Ended(ExitStatus::Exited(3)),
            InitReport::Ended(ExitStatus::Signaled(libc::SIGSEGV)),
        ] {
            assert_eq!(InitReport::decode(&report.encode()), Some(report));
        }
        assert_eq!(InitReport::decode(&[9; REPORT_LEN]), None);
    }

    #[test]
    fn run_as_numbers_and_defaults() {
        assert_eq!(RunAs::resolve("1234:99").unwrap(), RunAs { uid: 1234, gid: 99 });
        assert_eq!(RunAs::resolve("1234").unwrap(), RunAs { uid: 1234, gid: 1234 });
        assert!(RunAs::resolve("root").unwrap_err().to_string().contains("may not run as uid 0"));
        assert!(RunAs::resolve("1000:0").is_err());
        assert!(RunAs::resolve("no-such-user-here").unwrap_err().to_string().contains("no-such-user-here"));
    }
}
