//! Namespaces and a PID-1 init for every job.
//!
//! A job must not see the host's processes, mounts, network or hostname, must run without privileges, and
//! must not outlive its job or the server. The server cannot do the setup itself between `clone3` and `exec`
//! (the child shares its memory, so only raw system calls are allowed there), so each job starts as runnel
//! itself in a hidden init mode ([`init`]), exec'd from a descriptor the server opened on its own executable at
//! startup, inside new PID, mount, UTS, IPC and (unless `--host-network`) network namespaces and inside the
//! job's cgroup. The init finishes the setup, gives up every privilege, starts the command and stays as the
//! namespace's PID 1: it forwards stop signals, reaps orphans, and reports to the server over a pipe (its
//! descriptor 3) first whether the command was exec'd and at the end the command's exact wait status.
//!
//! This file is the server's side: what the server needs to start an init ([`Isolation`], [`InitPlan`]) and
//! the report format ([`InitReport`]) both sides share.

pub mod init;
pub mod network_pool;

use std::ffi::{CString, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::sys::{self, ExecFailure, ExitStatus, Namespaces, SpawnStage};

/// The hidden subcommand that runs a job's init (`runnel __init ...`).
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
    /// Resolves `USER[:GROUP]`; without a group, the user's primary group. The default `nobody` falls back to
    /// `nogroup`, then to the customary 65534, so a minimal container without `/etc/passwd` still works.
    pub fn resolve(spec: Option<&str>) -> Result<RunAs, IsolationError> {
        use nix::unistd::{Group, User};
        let Some(spec) = spec else {
            let uid = User::from_name("nobody").ok().flatten().map_or(65534, |u| u.uid.as_raw());
            let gid = ["nogroup", "nobody"]
                .iter()
                .find_map(|name| Group::from_name(name).ok().flatten())
                .map_or(65534, |g| g.gid.as_raw());
            return Ok(RunAs { uid, gid });
        };
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
    pub run_as: RunAs,
    /// False with `--host-network`: jobs share the host's network namespace.
    pub own_network: bool,
}

impl Isolation {
    /// Checks that this server can isolate jobs: it is root and the kernel creates the namespaces.
    pub fn detect(run_as: RunAs, own_network: bool) -> Result<Isolation, IsolationError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(IsolationError::NotRoot);
        }
        let isolation = Isolation {
            init_executable: sys::open_own_executable().map_err(IsolationError::OwnExecutable)?,
            run_as,
            own_network,
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

/// Everything a job's init needs to know, passed as its arguments. The init itself runs with an empty
/// environment: it starts as root, and a job-chosen `LD_PRELOAD` (or any loader variable) would run code in it
/// before it drops privileges. The job's environment travels here and is given to the command only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitPlan {
    pub hostname: String,
    pub run_as: RunAs,
    /// Bring `lo` up (the job has a network namespace of its own).
    pub loopback: bool,
    pub working_dir: PathBuf,
    /// Paths to try exec'ing, in order (the command, or the command in each PATH directory).
    pub candidates: Vec<PathBuf>,
    /// The command's environment (`NAME=value`).
    pub env: Vec<String>,
    /// The command's argv, argv[0] included.
    pub argv: Vec<String>,
}

impl InitPlan {
    /// `runnel __init HOSTNAME UID GID lo|host WORKDIR N CANDIDATE×N M ENV×M ARGV...`
    pub fn to_args(&self) -> Vec<CString> {
        let mut args: Vec<Vec<u8>> = vec![
            b"runnel".to_vec(),
            INIT_COMMAND.into(),
            self.hostname.clone().into(),
            self.run_as.uid.to_string().into(),
            self.run_as.gid.to_string().into(),
            if self.loopback { "lo" } else { "host" }.into(),
            self.working_dir.as_os_str().as_bytes().to_vec(),
            self.candidates.len().to_string().into(),
        ];
        args.extend(self.candidates.iter().map(|c| c.as_os_str().as_bytes().to_vec()));
        args.push(self.env.len().to_string().into());
        args.extend(self.env.iter().map(|e| e.clone().into_bytes()));
        args.extend(self.argv.iter().map(|a| a.clone().into_bytes()));
        args.into_iter().map(|a| CString::new(a).expect("validated: no NUL")).collect()
    }

    /// Parses the arguments after `__init`.
    pub fn from_args(args: Vec<OsString>) -> Result<InitPlan, String> {
        let mut args = args.into_iter();
        let mut next = |what: &str| args.next().ok_or_else(|| format!("missing {what}"));
        let text = |value: OsString| value.into_string().map_err(|v| format!("not UTF-8: {v:?}"));
        let number = |value: OsString| -> Result<u32, String> {
            let value = value.into_string().map_err(|v| format!("not a number: {v:?}"))?;
            value.parse().map_err(|_| format!("not a number: {value:?}"))
        };
        let hostname = text(next("hostname")?)?;
        let uid = number(next("uid")?)?;
        let gid = number(next("gid")?)?;
        let loopback = next("network")? == "lo";
        let working_dir = PathBuf::from(next("working dir")?);
        let count = number(next("candidate count")?)? as usize;
        let mut candidates = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            candidates.push(PathBuf::from(next("candidate")?));
        }
        let count = number(next("environment count")?)? as usize;
        let mut env = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            env.push(text(next("environment entry")?)?);
        }
        let argv: Vec<String> = args.map(text).collect::<Result<_, _>>()?;
        if argv.is_empty() {
            return Err("missing the command's argv".into());
        }
        Ok(InitPlan { hostname, run_as: RunAs { uid, gid }, loopback, working_dir, candidates, env, argv })
    }
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
}

impl SetupStep {
    fn from_code(code: i32) -> Option<SetupStep> {
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

    pub fn decode(bytes: &[u8; REPORT_LEN]) -> Option<InitReport> {
        let word = |i: usize| i32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        let (kind, a, b) = (word(0), word(1), word(2));
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

/// Converts arguments to the init's command line, for the server's spawn.
pub fn os_args(args: &[CString]) -> Vec<OsString> {
    args.iter().map(|a| OsString::from_vec(a.as_bytes().to_vec())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn plans_round_trip_through_arguments() {
        let plan = InitPlan {
            hostname: "0123abcd".into(),
            run_as: RunAs { uid: 65534, gid: 65533 },
            loopback: true,
            working_dir: "/tmp/a dir".into(),
            candidates: vec!["/usr/bin/env".into(), "/bin/env".into()],
            env: vec!["PATH=/bin".into(), "EMPTY=".into()],
            argv: vec!["env".into(), "".into(), "--".into(), "x y".into()],
        };
        let args = os_args(&plan.to_args());
        assert_eq!(args[1], INIT_COMMAND);
        assert_eq!(InitPlan::from_args(args[2..].to_vec()), Ok(plan));
        assert!(InitPlan::from_args(vec!["h".into(), "1".into()]).is_err());
    }

    #[test]
    fn run_as_numbers_and_defaults() {
        assert_eq!(RunAs::resolve(Some("1234:99")).unwrap(), RunAs { uid: 1234, gid: 99 });
        assert_eq!(RunAs::resolve(Some("1234")).unwrap(), RunAs { uid: 1234, gid: 1234 });
        assert!(RunAs::resolve(Some("root")).unwrap_err().to_string().contains("may not run as uid 0"));
        assert!(RunAs::resolve(Some("1000:0")).is_err());
        assert!(RunAs::resolve(Some("no-such-user-here")).unwrap_err().to_string().contains("no-such-user-here"));
        assert_ne!(RunAs::resolve(None).unwrap().uid, 0);
    }
}
