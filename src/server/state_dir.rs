//! The server's state directory: an exclusive lock so two servers never share one, cleanup of what a crashed
//! predecessor left, and removal at shutdown.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ServerError;
use crate::sys;

const LOCK_FILE: &str = "runnel.lock";
/// Subdirectories the job table creates; removed at startup (a crashed predecessor's) and at shutdown.
const JOB_DIRS: [&str; 4] = ["output", "spare", "work", "trash"];

pub struct StateDir {
    path: PathBuf,
    /// Held open for the server's lifetime: the flock lives as long as this descriptor.
    _lock: File,
}

impl StateDir {
    /// Creates `path` if needed (0711: jobs running as another user pass through it to their working
    /// directories, but cannot list it) and locks it, clearing anything a previous server left in it.
    pub fn acquire(path: &Path) -> Result<StateDir, ServerError> {
        let error =
            |what: &str, err: std::io::Error| ServerError::StateDir(format!("{what} {}: {err}", path.display()));
        // A directory the administrator made keeps its mode (the server checks that jobs can reach through it).
        if !path.exists() {
            fs::DirBuilder::new().mode(0o711).recursive(true).create(path).map_err(|e| error("cannot create", e))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o711))
                .map_err(|e| error("cannot set the mode of", e))?;
        }
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| error("cannot open the lock file in", e))?;
        if !sys::try_lock_exclusive(lock.as_raw_fd()).map_err(|e| error("cannot lock", e))? {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(ServerError::StateDir(format!(
                "state directory {} is in use by another runnel server (PID {}); stop it or pass another --state-dir",
                path.display(),
                if holder.is_empty() { "unknown" } else { holder }
            )));
        }
        lock.set_len(0).and_then(|_| lock.rewind()).map_err(|e| error("cannot write the lock file in", e))?;
        writeln!(lock, "{}", std::process::id()).map_err(|e| error("cannot write the lock file in", e))?;
        for dir in JOB_DIRS {
            let leftover = path.join(dir);
            if leftover.exists() {
                log::warn!("removing {} left by a previous server", leftover.display());
                fs::remove_dir_all(&leftover).map_err(|e| error("cannot clear", e))?;
            }
        }
        Ok(StateDir { path: path.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes what the server created: job directories, the lock file, and the directory if it is then empty (and
    /// not a mount point).
    pub fn remove(self) {
        for dir in JOB_DIRS {
            let _ = fs::remove_dir_all(self.path.join(dir));
        }
        let _ = fs::remove_file(self.path.join(LOCK_FILE));
        match fs::remove_dir(&self.path) {
            Ok(()) => {}
            // A mount point, as systemd's StateDirectory= makes it for a unit with its own mount namespace: emptied,
            // and the directory is the service manager's.
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                log::debug!("state directory {} emptied; it is a mount point, left in place", self.path.display());
            }
            Err(err) => log::warn!("state directory {} not removed: {err}", self.path.display()),
        }
    }
}
