//! The cgroup v2 subtree runnel manages, and each job's cgroup in it.
//!
//! Resource limits are only as good as the kernel's enforcement, so this module does the little the kernel
//! needs and nothing clever: at startup it checks that `--cgroup-root` is a cgroup v2 directory offering the
//! `cpu memory io pids` controllers, moves the server into `<root>/supervisor` (cgroup v2 forbids processes in
//! a cgroup whose controllers are handed to children), enables the controllers, and kills and removes what a
//! crashed predecessor left under `<root>/jobs`. Each job then gets `<root>/jobs/<job-id>` with its limits
//! written before its first process is created inside it (`CLONE_INTO_CGROUP`, see `sys::spawn`); the job's
//! final usage is read just before the directory is removed. A host where any of this is impossible runs jobs
//! without limits: [`CgroupRoot::open`]'s error says why, and the server decides whether that is fatal.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::proto::{ResourceLimits, ResourceUsage};
use crate::sys;

/// The controllers runnel needs, in the syntax of `cgroup.subtree_control`.
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "io", "pids"];

/// `cpu.max`'s period: quota = millicores × 100 µs per 100 ms.
const CPU_PERIOD_USEC: u64 = 100_000;

/// How long startup and shutdown wait for a killed cgroup to empty before giving up on removing it.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

/// Why cgroup v2 limits cannot be used on this host.
#[derive(Debug)]
pub enum CgroupError {
    /// `/sys/fs/cgroup` (or the chosen root) is not a cgroup v2 filesystem: a v1 or hybrid host.
    NotUnified(PathBuf),
    /// The root does not offer every controller runnel needs.
    MissingControllers { root: PathBuf, missing: Vec<&'static str> },
    /// Another runnel server manages this root (it would take our jobs for a crashed server's leftovers).
    InUse(PathBuf),
    /// A file operation failed (often: not root, or the cgroup is not delegated to us).
    Io { what: &'static str, path: PathBuf, err: io::Error },
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupError::NotUnified(path) => {
                write!(f, "{} is not a cgroup v2 (unified) hierarchy", path.display())
            }
            CgroupError::MissingControllers { root, missing } => write!(
                f,
                "cgroup {} does not offer the {} controller(s): enable them in its parent's cgroup.subtree_control \
                 (or Delegate=yes in a systemd unit)",
                root.display(),
                missing.join(" ")
            ),
            CgroupError::InUse(root) => write!(
                f,
                "cgroup {} is managed by another runnel server: give each server its own --cgroup-root",
                root.display()
            ),
            CgroupError::Io { what, path, err } => write!(f, "cannot {what} {}: {err}", path.display()),
        }
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |err| CgroupError::Io { what, path: path.to_path_buf(), err }
}

/// The subtree the server owns: `<root>/supervisor` holds the server, `<root>/jobs/<id>` each job.
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
        let mount = Path::new("/sys/fs/cgroup");
        if !is_cgroup2(mount)? {
            return Err(CgroupError::NotUnified(mount.to_path_buf()));
        }
        let original = own_cgroup(mount)?;
        let root = root.map_or_else(|| original.clone(), Path::to_path_buf);
        if !is_cgroup2(&root)? {
            return Err(CgroupError::NotUnified(root));
        }
        let offered = read(&root.join("cgroup.controllers"))?;
        let missing: Vec<&str> =
            CONTROLLERS.iter().copied().filter(|c| !offered.split_whitespace().any(|o| o == *c)).collect();
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
        write(&supervisor.join("cgroup.procs"), &sys::getpid().to_string())?;
        let enabled_before = read(&root.join("cgroup.subtree_control"))?;
        let enabled_in_root: Vec<&'static str> =
            CONTROLLERS.iter().copied().filter(|c| !enabled_before.split_whitespace().any(|e| e == *c)).collect();
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
    pub fn create_job(&self, name: &str, limits: &ResourceLimits) -> Result<JobCgroup, CgroupError> {
        let path = self.jobs.join(name);
        make_dir(&path)?;
        let cgroup = JobCgroup { path };
        if let Err(err) = cgroup.write_limits(limits, &self.io_devices) {
            let _ = fs::remove_dir(&cgroup.path);
            return Err(err);
        }
        Ok(cgroup)
    }

    /// Kills what is left in a job's cgroup, reads its final usage and removes it (or remembers to, if processes
    /// are still on their way out).
    pub fn remove_job(&mut self, cgroup: JobCgroup) -> FinalUsage {
        let usage = cgroup.usage();
        let oom_killed = cgroup.oom_kills() > 0;
        let _ = write(&cgroup.path.join("cgroup.kill"), "1");
        if let Err(err) = fs::remove_dir(&cgroup.path) {
            log::debug!("cgroup {} not removable yet: {err}", cgroup.path.display());
            self.leftovers.push(cgroup.path);
        }
        self.leftovers.retain(|path| fs::remove_dir(path).is_err() && path.exists());
        FinalUsage { usage, oom_killed }
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
            if let Err(err) = write(&self.root.join("cgroup.subtree_control"), &disable.join(" ")) {
                log::debug!("{err}");
            }
        }
        if self.original == self.supervisor {
            return;
        }
        if let Err(err) = write(&self.original.join("cgroup.procs"), &sys::getpid().to_string()) {
            let (from, to) = (self.supervisor.display(), self.original.display());
            log::warn!("cannot return to cgroup {to}, leaving {from}: {err}");
            return;
        }
        if let Err(err) = fs::remove_dir(&self.supervisor) {
            log::warn!("cannot remove cgroup {}: {err}", self.supervisor.display());
        }
    }
}

/// A job's cgroup directory.
#[derive(Debug)]
pub struct JobCgroup {
    path: PathBuf,
}

/// What a job's cgroup said last, kept after it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalUsage {
    pub usage: ResourceUsage,
    pub oom_killed: bool,
}

impl JobCgroup {
    /// Opens the directory for `CLONE_INTO_CGROUP`; the caller closes it once the job's process exists (a
    /// descriptor per running job would count against the server's open-file limit for nothing).
    pub fn open(&self) -> Result<OwnedFd, CgroupError> {
        open_dir(&self.path)
    }

    /// Writes every limit but the CPU's (see [`JobCgroup::limit_cpu`]).
    fn write_limits(&self, limits: &ResourceLimits, io_devices: &[String]) -> Result<(), CgroupError> {
        if limits.memory_bytes > 0 {
            write(&self.path.join("memory.max"), &limits.memory_bytes.to_string())?;
            // Without swap accounting in the kernel the file does not exist, and there is no swap to limit.
            match write(&self.path.join("memory.swap.max"), "0") {
                Err(CgroupError::Io { err, .. }) if err.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        // One OOM kill takes the whole job, init included, so the job ends instead of limping on.
        write(&self.path.join("memory.oom.group"), "1")?;
        if limits.max_pids > 0 {
            write(&self.path.join("pids.max"), &limits.max_pids.to_string())?;
        }
        let io = [
            ("rbps", limits.io_read_bps),
            ("wbps", limits.io_write_bps),
            ("riops", limits.io_read_iops),
            ("wiops", limits.io_write_iops),
        ];
        if io.iter().any(|(_, v)| *v > 0) {
            let settings: Vec<String> =
                io.iter().filter(|(_, v)| *v > 0).map(|(key, value)| format!("{key}={value}")).collect();
            for device in io_devices {
                write(&self.path.join("io.max"), &format!("{device} {}", settings.join(" ")))?;
            }
        }
        Ok(())
    }

    /// Writes `cpu.max`. The server does this once the job's init has reported the command started: StartJob
    /// waits for that report on the event loop, and the init's setup (about 1.5 ms of CPU) under a small quota
    /// would stall the loop for the quota's periods (up to 150 ms at 10 millicores). The job is in its cgroup
    /// from its first instruction either way; only the CPU cap starts those microseconds later.
    pub fn limit_cpu(&self, limits: &ResourceLimits) -> Result<(), CgroupError> {
        if limits.cpu_millicores == 0 {
            return Ok(());
        }
        let quota = u64::from(limits.cpu_millicores) * CPU_PERIOD_USEC / 1000;
        write(&self.path.join("cpu.max"), &format!("{quota} {CPU_PERIOD_USEC}"))
    }

    /// Usage so far: CPU time, peak memory, bytes read and written.
    pub fn usage(&self) -> ResourceUsage {
        let cpu = read(&self.path.join("cpu.stat")).ok().and_then(|s| keyed_value(&s, "usage_usec"));
        let peak = read(&self.path.join("memory.peak")).ok().and_then(|s| s.trim().parse().ok());
        let (mut rbytes, mut wbytes) = (0, 0);
        if let Ok(io) = read(&self.path.join("io.stat")) {
            for word in io.split_whitespace() {
                if let Some(n) = word.strip_prefix("rbytes=").and_then(|n| n.parse::<u64>().ok()) {
                    rbytes += n;
                } else if let Some(n) = word.strip_prefix("wbytes=").and_then(|n| n.parse::<u64>().ok()) {
                    wbytes += n;
                }
            }
        }
        ResourceUsage {
            cpu_usec: cpu.unwrap_or(0),
            memory_peak_bytes: peak.unwrap_or(0),
            io_read_bytes: rbytes,
            io_write_bytes: wbytes,
        }
    }

    /// How many processes the OOM killer took in this cgroup.
    fn oom_kills(&self) -> u64 {
        read(&self.path.join("memory.events")).ok().and_then(|s| keyed_value(&s, "oom_kill")).unwrap_or(0)
    }

    /// Kills every process in the cgroup at once (`cgroup.kill`), forks racing the kill included.
    pub fn kill(&self) -> Result<(), CgroupError> {
        write(&self.path.join("cgroup.kill"), "1")
    }
}

/// The value after `key ` in a flat-keyed cgroup file (`cpu.stat`, `memory.events`).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
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

/// Parses `MAJ:MIN` as given to `--io-device`.
pub fn parse_device(text: &str) -> Result<String, String> {
    let valid = text.split_once(':').is_some_and(|(major, minor)| {
        !major.is_empty() && !minor.is_empty() && major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok()
    });
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!("{text:?} is not a block device number MAJ:MIN (see /sys/block/DEVICE/dev)"))
    }
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

fn is_cgroup2(path: &Path) -> Result<bool, CgroupError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| CgroupError::Io {
        what: "use",
        path: path.to_path_buf(),
        err: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    sys::is_cgroup2(&c_path).map_err(io_error("inspect", path))
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let all: Vec<String> = CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
    write(&dir.join("cgroup.subtree_control"), &all.join(" "))
}

fn kill_and_remove(path: &Path) {
    let _ = write(&path.join("cgroup.kill"), "1");
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

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
            Err(CgroupError::Io { what: "create", path: path.to_path_buf(), err })
        }
        _ => Ok(()),
    }
}

fn open_dir(path: &Path) -> Result<OwnedFd, CgroupError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("cgroup paths have no NUL");
    sys::open_read_only(&c_path).map_err(io_error("open", path))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_error("read", path))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_error("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_values() {
        let stat = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(keyed_value(stat, "usage_usec"), Some(1234));
        assert_eq!(keyed_value(stat, "user_usec"), Some(1000));
        assert_eq!(keyed_value("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n", "oom"), Some(1));
        assert_eq!(keyed_value("oom_kill 7\n", "oom_kill"), Some(7));
        assert_eq!(keyed_value("", "oom_kill"), None);
    }

    #[test]
    fn limits_are_written_in_the_kernels_formats() {
        // A plain directory stands in for the cgroup: each file then holds the last value written.
        let path = std::env::temp_dir().join(format!("runnel-cgroup-{}", rand::random::<u64>()));
        fs::create_dir(&path).unwrap();
        let cgroup = JobCgroup { path: path.clone() };
        let limits = ResourceLimits {
            cpu_millicores: 200,
            memory_bytes: 32 << 20,
            io_write_bps: 1 << 20,
            io_read_iops: 50,
            max_pids: 10,
            ..Default::default()
        };
        fs::write(path.join("memory.swap.max"), "max").unwrap();
        cgroup.write_limits(&limits, &["259:0".to_string()]).unwrap();
        assert!(!path.join("cpu.max").exists(), "the CPU limit is written once the job started");
        cgroup.limit_cpu(&limits).unwrap();
        let file = |name: &str| fs::read_to_string(path.join(name)).unwrap();
        assert_eq!(file("cpu.max"), "20000 100000");
        assert_eq!(file("memory.max"), "33554432");
        assert_eq!(file("memory.swap.max"), "0");
        assert_eq!(file("memory.oom.group"), "1");
        assert_eq!(file("pids.max"), "10");
        assert_eq!(file("io.max"), "259:0 wbps=1048576 riops=50");

        fs::write(path.join("cpu.stat"), "usage_usec 600000\nuser_usec 1\n").unwrap();
        fs::write(path.join("memory.peak"), "33554432\n").unwrap();
        fs::write(path.join("io.stat"), "259:0 rbytes=10 wbytes=4194304 rios=1 wios=4\n8:0 rbytes=5 wbytes=0\n")
            .unwrap();
        fs::write(path.join("memory.events"), "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n").unwrap();
        let usage = cgroup.usage();
        assert_eq!(
            usage,
            ResourceUsage { cpu_usec: 600000, memory_peak_bytes: 32 << 20, io_read_bytes: 15, io_write_bytes: 4 << 20 }
        );
        assert_eq!(cgroup.oom_kills(), 1);
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn device_numbers() {
        assert_eq!(parse_device("259:0"), Ok("259:0".into()));
        assert!(parse_device("259").is_err());
        assert!(parse_device("a:b").is_err());
        assert!(parse_device(":1").is_err());
    }

    #[test]
    fn a_directory_that_is_not_cgroup2_is_refused_by_name() {
        let err = is_cgroup2(Path::new("/")).map(|unified| (!unified).then(|| CgroupError::NotUnified("/".into())));
        let err = err.expect("statfs / works").expect("/ is never a cgroup2 mount");
        assert_eq!(err.to_string(), "/ is not a cgroup v2 (unified) hierarchy");
    }
}
