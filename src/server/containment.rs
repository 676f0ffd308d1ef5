//! Deciding at startup how this host contains jobs: cgroup v2 limits if the host offers them, namespaces and
//! an unprivileged user if the server may create them. Either may be unavailable; the server then says so once
//! and runs jobs without it, unless `--require-limits` / `--require-isolation` make that fatal.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ServerError;
use crate::cgroup::{CgroupError, CgroupRoot};
use crate::isolation::users::{JobUsers, UserRange, DEFAULT_RANGE};
use crate::isolation::{Isolation, RunAs};
use crate::jobs::{Containment, LimitPolicy};

/// The containment flags of `runnel server`.
#[derive(Debug, Clone, Default)]
pub struct ContainmentConfig {
    /// `--cgroup-root`; default: the server's own cgroup.
    pub cgroup_root: Option<PathBuf>,
    /// `--io-device MAJ:MIN`; default: every whole-disk block device.
    pub io_devices: Vec<String>,
    pub policy: LimitPolicy,
    pub require_limits: bool,
    /// `--no-isolation`: run jobs in the host's namespaces as the server's user.
    pub no_isolation: bool,
    /// `--run-as USER[:GROUP]`: every job runs as this user.
    pub run_as: Option<String>,
    /// `--run-as-range FIRST:COUNT`: each job runs as a user of its own from these ids (the default, with
    /// `users::DEFAULT_RANGE`, unless `--run-as` is given).
    pub run_as_range: Option<(u32, u32)>,
    /// `--host-network`: jobs keep the host's network namespace.
    pub host_network: bool,
    /// `--tmp-size`: bytes of each private temporary directory of a job.
    pub tmp_size: u64,
    /// `--seccomp off`: no seccomp filter on jobs' commands.
    pub no_seccomp: bool,
    pub require_isolation: bool,
}

/// Sets up what the host allows. Fails only when a `--require-*` flag is not met or a flag is wrong.
pub fn prepare(config: &ContainmentConfig) -> Result<Containment, ServerError> {
    let refuse = |m: String| Err(ServerError::Containment(m));
    let mut containment = Containment { policy: config.policy.clone(), ..Containment::default() };
    match CgroupRoot::open(config.cgroup_root.as_deref(), &config.io_devices) {
        Ok(cgroups) => {
            log::info!(
                "resource limits: cgroup v2 under {} (io limits apply to {})",
                cgroups.root().display(),
                if cgroups.io_devices().is_empty() { "no device".to_string() } else { cgroups.io_devices().join(" ") }
            );
            containment.cgroups = Some(cgroups);
        }
        Err(err @ CgroupError::InUse(_)) => return refuse(err.to_string()),
        Err(err) if config.require_limits => {
            return refuse(format!("--require-limits: resource limits are unavailable on this host: {err}"));
        }
        Err(err) => {
            log::warn!("resource limits are unavailable on this host ({err}); jobs run without limits");
            containment.limits_unavailable = Some(err.to_string());
        }
    }
    if config.no_isolation {
        if config.require_isolation {
            return refuse("--no-isolation and --require-isolation contradict each other".into());
        }
        log::warn!("--no-isolation: jobs run in the host's namespaces as the server's user");
        return Ok(containment);
    }
    let users = job_users(config)?;
    match Isolation::detect(users, !config.host_network, config.tmp_size, !config.no_seccomp) {
        Ok(isolation) => {
            log::info!(
                "isolation: jobs get their own PID, mount, UTS, IPC{} namespaces and run as {}{}",
                if isolation.own_network { " and network" } else { " (host network)" },
                isolation.users.describe(),
                if isolation.seccomp.is_some() { ", with the default seccomp filter" } else { ", without seccomp" }
            );
            containment.isolation = Some(isolation);
        }
        Err(err) if config.require_isolation => {
            return refuse(format!("--require-isolation: jobs cannot be isolated on this host: {err}"));
        }
        Err(err) => log::warn!("jobs cannot be isolated on this host ({err}); they run as the server's user"),
    }
    Ok(containment)
}

/// Who jobs run as: `--run-as`'s user, or a user of their own from `--run-as-range` (or its default), a range
/// checked against the host's accounts.
fn job_users(config: &ContainmentConfig) -> Result<JobUsers, ServerError> {
    let refuse = |e: crate::isolation::IsolationError| ServerError::Containment(e.to_string());
    match (&config.run_as, config.run_as_range) {
        (Some(_), Some(_)) => Err(ServerError::Containment(
            "--run-as and --run-as-range contradict each other: one user for every job, or one each".into(),
        )),
        (Some(spec), None) => RunAs::resolve(spec).map(JobUsers::Fixed).map_err(refuse),
        (None, range) => {
            let (first, count) = range.unwrap_or(DEFAULT_RANGE);
            let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
            let subordinate = read("/etc/subuid") + &read("/etc/subgid");
            let (passwd, group) = (read("/etc/passwd"), read("/etc/group"));
            UserRange::new(first, count, &passwd, &group, &subordinate).map(JobUsers::Range).map_err(refuse)
        }
    }
}

/// Checks that the user isolated jobs run as can pass through every directory down to `dir` (where their
/// working directories are made); otherwise every job would fail to start, so the server refuses instead.
pub fn check_reachable_by_jobs(containment: &Containment, dir: &Path) -> Result<(), ServerError> {
    let Some(isolation) = &containment.isolation else { return Ok(()) };
    let run_as = isolation.users.example();
    for ancestor in dir.ancestors() {
        let Ok(meta) = std::fs::metadata(ancestor) else { continue };
        let mode = meta.permissions().mode();
        let passable = if meta.uid() == run_as.uid {
            mode & 0o100 != 0
        } else if meta.gid() == run_as.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !passable {
            return Err(ServerError::Containment(format!(
                "jobs run as uid {} cannot reach their working directories under {}: {} has mode {:04o}; \
                 allow others to pass (chmod o+x) or choose another --state-dir",
                run_as.uid,
                dir.display(),
                ancestor.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}
