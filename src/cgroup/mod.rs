//! The cgroup v2 subtree runnel manages, and each job's cgroup in it.
//!
//! Resource limits are only as good as the kernel's enforcement, so this module does the little the kernel
//! needs and nothing clever: at startup it checks that `--cgroup-root` is a cgroup v2 directory offering the
//! `cpu memory io pids` controllers, moves the server into `<root>/supervisor` (cgroup v2 forbids processes in
//! a cgroup whose controllers are handed to children), enables the controllers, and kills and removes what a
//! crashed predecessor left under `<root>/jobs` ([`CgroupRoot`]). Each job then gets `<root>/jobs/<job-id>`
//! with its [`Limits`] written before its first process is created inside it (`CLONE_INTO_CGROUP`, see
//! `sys::spawn`); the job's final [`Usage`] is read just before the directory is removed ([`JobCgroup`]). A
//! host where any of this is impossible runs jobs without limits: [`CgroupRoot::open`]'s error says why, and
//! the server decides whether that is fatal.
//!
//! One file per controller (`cpu`, `memory`, `io`, `pids`) holds its control-file names and formats; every
//! I/O error carries the path it touched.

mod cpu;
mod io;
mod job;
mod memory;
mod pids;
mod root;

pub use job::{FinalUsage, JobCgroup};
pub use root::CgroupRoot;

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// The core interface files of every cgroup.
const PROCS: &str = "cgroup.procs";
/// Writing `1` kills every process in the cgroup at once, forks racing the kill included.
const KILL: &str = "cgroup.kill";
/// The controllers a cgroup offers its children.
const CONTROLLERS: &str = "cgroup.controllers";
/// The controllers a cgroup has handed to its children.
const SUBTREE_CONTROL: &str = "cgroup.subtree_control";

/// What a job's cgroup enforces. 0 in a field means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// 1000 = one CPU.
    pub cpu_millicores: u32,
    /// Memory, with no swap.
    pub memory_bytes: u64,
    pub io_read_bps: u64,
    pub io_write_bps: u64,
    pub io_read_iops: u64,
    pub io_write_iops: u64,
    /// Processes, the job's init included.
    pub max_pids: u32,
}

impl Limits {
    /// True if no field sets a limit.
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }

    /// True if any io limit is set.
    pub fn has_io(&self) -> bool {
        self.io_read_bps > 0 || self.io_write_bps > 0 || self.io_read_iops > 0 || self.io_write_iops > 0
    }
}

/// What a job's processes used, as the cgroup counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usec: u64,
    pub memory_peak_bytes: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

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
    Io { what: &'static str, path: PathBuf, err: std::io::Error },
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

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |err| CgroupError::Io { what, path: path.to_path_buf(), err }
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

/// The value after `key ` in a flat-keyed cgroup file (`cpu.stat`, `memory.events`).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
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
    fn device_numbers() {
        assert_eq!(parse_device("259:0"), Ok("259:0".into()));
        assert!(parse_device("259").is_err());
        assert!(parse_device("a:b").is_err());
        assert!(parse_device(":1").is_err());
    }
}
