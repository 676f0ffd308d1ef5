//! [`CgroupRoot`]: the subtree the server owns, `<root>/supervisor` holding the server and `<root>/jobs/<id>`
//! each job.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    io_error, make_dir, open_dir, read, write, CgroupError, FinalUsage, JobCgroup, Limits, CONTROLLERS, KILL, PROCS,
    SUBTREE_CONTROL,
};
use crate::sys;

/// Where the kernel mounts the cgroup v2 hierarchy.
const MOUNT: &str = "/sys/fs/cgroup";

/// The controllers runnel needs, in the syntax of `cgroup.subtree_control`.
const REQUIRED_CONTROLLERS: [&str; 4] = ["cpu", "memory", "io", "pids"];

/// The supervisor's `cpu.weight` against the jobs' subtree (default 100): when jobs keep every CPU busy, the
/// server still gets ten times their share as a group, so calls are answered and output is read while they run.
/// The server uses little CPU except to take in job output, which then slows the jobs writing it.
const SUPERVISOR_CPU_WEIGHT: &str = "1000";

/// How long startup and shutdown wait for a killed cgroup to empty before giving up on removing it.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

/// The subtree the server owns.
#[derive(Debug)]
pub struct CgroupRoot {
    root: PathBuf,
    jobs: PathBuf,
    supervisor: PathBuf,
    /// The cgroup the server started in, where it returns at shutdown.
    original: PathBuf,
    /// Controllers this server turned on in the root's `cgroup.subtree_control` (turned off again at shutdown).
    enabled_in_root: Vec<&'static str>,
    /// `MAJ:MIN` of the block devices `io.max` applies to.
    io_devices: Vec<String>,
    /// Job cgroups that were still populated when their job was reaped; removed later.
    leftovers: Vec<PathBuf>,
    /// An exclusive `flock` on the root directory, held for the server's lifetime.
    _lock: OwnedFd,
}

impl CgroupRoot {
    /// Checks and prepares `root` (default: the server's own cgroup). Writes nothing unless the host really has
    /// a cgroup v2 hierarchy offering every needed controller at `root`.
    pub fn open(root: Option<&Path>, io_devices: &[String]) -> Result<CgroupRoot, CgroupError> {
        CgroupRoot::open_under(Path::new(MOUNT), root, io_devices)
    }

    /// [`CgroupRoot::open`] with the hierarchy mounted at `mount`.
    fn open_under(mount: &Path, root: Option<&Path>, io_devices: &[String]) -> Result<CgroupRoot, CgroupError> {
        check_unified(mount)?;
        let original = own_cgroup(mount)?;
        let root = root.map_or_else(|| original.clone(), Path::to_path_buf);
        check_unified(&root)?;
        let offered = read(&root.join(CONTROLLERS))?;
        let missing: Vec<&str> =
            REQUIRED_CONTROLLERS.iter().copied().filter(|c| !offered.split_whitespace().any(|o| o == *c)).collect();
        if !missing.is_empty() {
            return Err(CgroupError::MissingControllers { root, missing });
        }
        let io_devices = if io_devices.is_empty() { whole_disks() } else { io_devices.to_vec() };
        let lock = open_dir(&root)?;
        if !sys::try_lock_exclusive(lock.as_raw_fd()).map_err(io_error("lock", &root))? {
            return Err(CgroupError::InUse(root));
        }

        let supervisor = root.join("supervisor");
        make_dir(&supervisor)?;
        write(&supervisor.join(PROCS), &sys::getpid().to_string())?;
        let enabled_before = read(&root.join(SUBTREE_CONTROL))?;
        let enabled_in_root: Vec<&'static str> = REQUIRED_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !enabled_before.split_whitespace().any(|e| e == *c))
            .collect();
        let mut cgroups = CgroupRoot {
            jobs: root.join("jobs"),
            root,
            supervisor,
            original,
            enabled_in_root,
            io_devices,
            leftovers: Vec::new(),
            _lock: lock,
        };
        enable_controllers(&cgroups.root).map_err(|err| match err {
            CgroupError::Io { err, path, .. } if err.raw_os_error() == Some(libc::EBUSY) => CgroupError::Io {
                what: "enable controllers (the cgroup still holds other processes: move them out or choose \
                       another --cgroup-root) in",
                path,
                err,
            },
            other => other,
        })?;
        make_dir(&cgroups.jobs)?;
        enable_controllers(&cgroups.jobs)?;
        write(&cgroups.supervisor.join("cpu.weight"), SUPERVISOR_CPU_WEIGHT)?;
        cgroups.remove_leftovers_of_a_crash();
        Ok(cgroups)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The block devices (`MAJ:MIN`) io limits apply to.
    pub fn io_devices(&self) -> &[String] {
        &self.io_devices
    }

    /// Kills and removes every job cgroup left under `<root>/jobs` (by a server that died).
    fn remove_leftovers_of_a_crash(&mut self) {
        let Ok(entries) = fs::read_dir(&self.jobs) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            log::warn!("killing and removing cgroup {} left by a previous server", path.display());
            kill_and_remove(&path);
        }
    }

    /// Creates `<root>/jobs/<name>` with `limits` written (0 fields: no limit) and returns it, open for
    /// `CLONE_INTO_CGROUP`.
    pub fn create_job(&self, name: &str, limits: &Limits) -> Result<JobCgroup, CgroupError> {
        let path = self.jobs.join(name);
        make_dir(&path)?;
        let cgroup = JobCgroup::new(path);
        if let Err(err) = cgroup.write_limits(limits, &self.io_devices) {
            let _ = fs::remove_dir(cgroup.path());
            return Err(err);
        }
        Ok(cgroup)
    }

    /// Kills what is left in a job's cgroup, reads its final usage and removes it (or remembers to, if processes
    /// are still on their way out).
    pub fn remove_job(&mut self, cgroup: JobCgroup) -> FinalUsage {
        let last = cgroup.final_usage();
        let _ = cgroup.kill();
        if let Err(err) = fs::remove_dir(cgroup.path()) {
            log::debug!("cgroup {} not removable yet: {err}", cgroup.path().display());
            self.leftovers.push(cgroup.path().to_path_buf());
        }
        self.leftovers.retain(|path| fs::remove_dir(path).is_err() && path.exists());
        last
    }

    /// Shutdown, once every job was reaped: takes the subtree down (see the `Drop` implementation).
    pub fn close(self) {}
}

/// Taking the subtree down, at shutdown or when [`CgroupRoot::open`] fails halfway: kills and removes what is
/// left under `jobs/`, removes it, turns off the controllers this server turned on, returns the server to the
/// cgroup it started in and removes `supervisor/`.
impl Drop for CgroupRoot {
    fn drop(&mut self) {
        for path in std::mem::take(&mut self.leftovers) {
            kill_and_remove(&path);
        }
        self.remove_leftovers_of_a_crash();
        match fs::remove_dir(&self.jobs) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                log::warn!("cannot remove cgroup {}: {err}", self.jobs.display());
                return;
            }
            _ => {}
        }
        if !self.enabled_in_root.is_empty() {
            let disable: Vec<String> = self.enabled_in_root.iter().map(|c| format!("-{c}")).collect();
            if let Err(err) = write(&self.root.join(SUBTREE_CONTROL), &disable.join(" ")) {
                log::debug!("{err}");
            }
        }
        if self.original == self.supervisor {
            return;
        }
        if let Err(err) = write(&self.original.join(PROCS), &sys::getpid().to_string()) {
            let (from, to) = (self.supervisor.display(), self.original.display());
            log::warn!("cannot return to cgroup {to}, leaving {from}: {err}");
            return;
        }
        if let Err(err) = fs::remove_dir(&self.supervisor) {
            log::warn!("cannot remove cgroup {}: {err}", self.supervisor.display());
        }
    }
}

/// Whole-disk block devices from `/sys/block`, skipping virtual ones (loop, ram, zram, device-mapper…).
fn whole_disks() -> Vec<String> {
    let mut devices = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/block") else { return devices };
    for entry in entries.flatten() {
        let virtual_device = fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().contains("/virtual/"));
        if virtual_device {
            continue;
        }
        if let Ok(dev) = fs::read_to_string(entry.path().join("dev")) {
            devices.push(dev.trim().to_string());
        }
    }
    devices.sort();
    devices
}

/// The server's own cgroup from `/proc/self/cgroup` (`0::/path`), as a directory under `mount`.
fn own_cgroup(mount: &Path) -> Result<PathBuf, CgroupError> {
    let file = Path::new("/proc/self/cgroup");
    let text = read(file)?;
    let relative = text.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| CgroupError::Io {
        what: "find a cgroup v2 entry (0::/path) in",
        path: file.to_path_buf(),
        err: io::ErrorKind::NotFound.into(),
    })?;
    Ok(mount.join(relative.trim().trim_start_matches('/')))
}

/// Fails unless `path` is on a cgroup v2 file system.
fn check_unified(path: &Path) -> Result<(), CgroupError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| CgroupError::Io {
        what: "use",
        path: path.to_path_buf(),
        err: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    if sys::is_cgroup2(&c_path).map_err(io_error("inspect", path))? {
        Ok(())
    } else {
        Err(CgroupError::NotUnified(path.to_path_buf()))
    }
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let all: Vec<String> = REQUIRED_CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
    write(&dir.join(SUBTREE_CONTROL), &all.join(" "))
}

fn kill_and_remove(path: &Path) {
    let _ = write(&path.join(KILL), "1");
    let deadline = Instant::now() + EMPTY_WAIT;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return,
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => {
                log::warn!("cannot remove cgroup {}: {err}", path.display());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    #[test]
    fn a_directory_that_is_not_cgroup2_is_refused_by_name() {
        let scratch = ScratchDir::new("not-cgroup2");
        let err = CgroupRoot::open_under(scratch.path(), None, &[]).unwrap_err();
        assert!(matches!(&err, CgroupError::NotUnified(path) if path == scratch.path()), "{err:?}");
        assert_eq!(err.to_string(), format!("{} is not a cgroup v2 (unified) hierarchy", scratch.path().display()));
        assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0, "nothing written");
    }
}
