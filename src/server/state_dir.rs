//! The server's state directory: an exclusive lock so two servers never share one, what the previous server
//! left (its jobs' history, kept; its working files, cleared), and what goes at shutdown.
//!
//! The lock file also says how the previous server stopped: it holds the server's PID and the machine's boot id
//! while the server runs, and is emptied when it stops cleanly. Found holding them, the previous server died
//! (a crash, SIGKILL); with another boot id, the machine went down under it (see `jobs::PreviousServer`).
//!
//! The helper processes that write in the directory (the segment mover, the spool writer, the janitor) hold
//! the lock too. Each dies with its server, but one may be finishing a write as it does, after a new server
//! has read the file: so a new server that finds the lock held by a server gone waits for them to let it go.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::ServerError;
use crate::jobs::PreviousServer;
use crate::sys;

const LOCK_FILE: &str = "runnel.lock";
/// Subdirectories the job table creates for the server's own use; removed at startup (a crashed predecessor's)
/// and at shutdown. (`output` is where versions before the job history kept output.)
const WORK_DIRS: [&str; 4] = ["output", "spare", "work", "trash"];
/// The jobs' records and output (`jobs::history`): kept across restarts unless the server is ephemeral.
const HISTORY_DIRS: [&str; 2] = ["jobs", "damaged"];
/// Where Linux says which boot this is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

pub struct StateDir {
    path: PathBuf,
    /// Held open for the server's lifetime: the flock lives as long as this descriptor.
    lock: File,
    /// `--ephemeral`: nothing outlives the server.
    ephemeral: bool,
    /// This server made the directory (nothing was there before it).
    created: bool,
    previous: PreviousServer,
}

impl StateDir {
    /// Creates `path` if needed (0711: jobs running as another user pass through it to their working
    /// directories, but cannot list it) and locks it, clearing the working files a previous server left in it
    /// (and its jobs' history too if `ephemeral`). Returns how the previous server stopped.
    pub fn acquire(path: &Path, ephemeral: bool) -> Result<(StateDir, PreviousServer), ServerError> {
        let error =
            |what: &str, err: std::io::Error| ServerError::StateDir(format!("{what} {}: {err}", path.display()));
        // A directory the administrator made keeps its mode (the server checks that jobs can reach through it).
        let created = !path.exists();
        if created {
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
            let holder = holder.lines().next().unwrap_or_default().trim().to_string();
            let named = if holder.is_empty() { "unknown".to_string() } else { holder.clone() };
            let server_alive = holder.parse().is_ok_and(sys::process_exists);
            if server_alive {
                return Err(ServerError::StateDir(format!(
                    "state directory {} is in use by another runnel server (PID {named}); stop it or pass another \
                     --state-dir",
                    path.display(),
                )));
            }
            // Its server is gone, its helpers not yet: one killed with it may be finishing a write in here.
            log::info!("waiting for the helpers of the previous server (PID {named}) to exit");
            if !wait_for_lock(&lock, HELPERS_EXIT_WAIT).map_err(|e| error("cannot lock", e))? {
                return Err(ServerError::StateDir(format!(
                    "state directory {} is still locked by helper processes of a runnel server that has exited \
                     (PID {named}), {} s on: they may be stuck on the disk (`fuser -v {}` lists them)",
                    path.display(),
                    HELPERS_EXIT_WAIT.as_secs(),
                    lock_path.display()
                )));
            }
            lock.rewind().map_err(|e| error("cannot read the lock file in", e))?;
        }
        let mut left = String::new();
        let _ = lock.read_to_string(&mut left);
        let boot_id = boot_id();
        let previous = match left.lines().nth(1) {
            None if left.trim().is_empty() => PreviousServer::Stopped,
            Some(boot) if !boot_id.is_empty() && boot.trim() == boot_id => PreviousServer::Crashed,
            // Another boot, an unknown one, or a PID alone (a version before the history): assume the worst.
            _ => PreviousServer::WentDownWithTheMachine,
        };
        // Until the job table has read the history back, a machine that went down stays on record: a server
        // that fails to start now must not make the next one trust what this one has not yet checked.
        let boot = if previous == PreviousServer::WentDownWithTheMachine { UNCHECKED } else { boot_id.as_str() };
        write_lock(&mut lock, boot).map_err(|e| error("cannot write the lock file in", e))?;
        let cleared = if ephemeral { [&WORK_DIRS[..], &HISTORY_DIRS[..]].concat() } else { WORK_DIRS.to_vec() };
        for dir in cleared {
            let leftover = path.join(dir);
            if leftover.exists() {
                log::warn!("removing {} left by a previous server", leftover.display());
                fs::remove_dir_all(&leftover).map_err(|e| error("cannot clear", e))?;
            }
        }
        Ok((StateDir { path: path.to_path_buf(), lock, ephemeral, created, previous }, previous))
    }

    /// The job table has read back the previous server's history: from now on only this server's own end
    /// matters to the next one.
    pub fn history_restored(&mut self) -> std::io::Result<()> {
        write_lock(&mut self.lock, &boot_id())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another descriptor of the lock, for the helper processes that write in the directory: while any of them
    /// lives, the directory stays locked, and a next server waits for it (see [`StateDir::acquire`]). `None` if
    /// the descriptor cannot be duplicated (no descriptors left): the helpers then run without it.
    pub fn lock_for_helpers(&self) -> Option<std::os::fd::OwnedFd> {
        let duplicate = self.lock.try_clone().map(std::os::fd::OwnedFd::from);
        duplicate.inspect_err(|err| log::warn!("cannot hand the state directory's lock to helpers: {err}")).ok()
    }

    /// The server could not start: the directory is left as it was found, or removed if this server made it.
    pub fn abandon(mut self) {
        if self.created {
            self.ephemeral = true;
            return self.remove();
        }
        for dir in WORK_DIRS {
            let _ = fs::remove_dir_all(self.path.join(dir));
        }
        // Nothing ran: a clean stop stays clean; a crash stays on record, its jobs not yet recorded lost.
        if self.previous == PreviousServer::Stopped {
            let _ = self.lock.set_len(0);
        }
    }

    /// Removes what the server created for its own use, and marks the stop clean. Ephemeral, it removes the
    /// jobs' history, the lock file, and the directory if it is then empty (and not a mount point), too.
    pub fn remove(self) {
        for dir in WORK_DIRS {
            let _ = fs::remove_dir_all(self.path.join(dir));
        }
        if !self.ephemeral {
            // The history on disk before the stop is called clean: what a clean stop promises the next server
            // (segments written over spares are read back) must hold after a power loss too.
            let marked = sys::sync_file_system(self.lock.as_raw_fd())
                .and_then(|()| self.lock.set_len(0))
                .and_then(|()| self.lock.sync_all());
            if let Err(err) = marked {
                log::warn!("cannot mark the stop clean in {}: {err}", self.path.join(LOCK_FILE).display());
            }
            return;
        }
        for dir in HISTORY_DIRS {
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

/// How long a starting server waits for the helpers of a server that has exited to exit too (they hold its
/// lock): those killed with it exit at once, unless a write of theirs waits for the disk.
const HELPERS_EXIT_WAIT: Duration = Duration::from_secs(10);

/// Takes the lock on `lock` once whoever holds it lets go, trying every few milliseconds until `wait` passed;
/// false if it never did.
fn wait_for_lock(lock: &File, wait: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        if sys::try_lock_exclusive(lock.as_raw_fd())? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A boot id that matches no boot (see [`StateDir::acquire`]).
const UNCHECKED: &str = "unchecked";

/// Writes the lock file's contents while the server runs, its PID and `boot`, and waits until they are on disk
/// (at startup only): a power loss must not leave the empty file of a clean stop.
fn write_lock(lock: &mut File, boot: &str) -> std::io::Result<()> {
    lock.set_len(0)?;
    lock.rewind()?;
    write!(lock, "{}\n{boot}\n", std::process::id())?;
    lock.sync_all()
}

/// Which boot of the machine this is; empty if Linux does not say.
fn boot_id() -> String {
    fs::read_to_string(BOOT_ID).map(|id| id.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;
    use std::os::fd::AsFd;

    fn previous_after(lock: Option<&str>) -> PreviousServer {
        let scratch = ScratchDir::new("state-dir");
        let path = scratch.join("state");
        if let Some(lock) = lock {
            fs::create_dir(&path).unwrap();
            fs::write(path.join(LOCK_FILE), lock).unwrap();
        }
        let (state_dir, previous) = StateDir::acquire(&path, false).unwrap();
        let written = fs::read_to_string(path.join(LOCK_FILE)).unwrap();
        let expected_boot = if previous == PreviousServer::WentDownWithTheMachine { UNCHECKED } else { &boot_id() };
        assert_eq!(written, format!("{}\n{expected_boot}\n", std::process::id()));
        state_dir.remove();
        assert_eq!(fs::read_to_string(path.join(LOCK_FILE)).unwrap(), "", "a clean stop empties the lock file");
        previous
    }

    #[test]
    fn the_lock_file_says_how_the_previous_server_stopped() {
        assert!(!boot_id().is_empty(), "Linux names this boot");
        assert_eq!(previous_after(None), PreviousServer::Stopped, "a new directory");
        assert_eq!(previous_after(Some("")), PreviousServer::Stopped);
        assert_eq!(previous_after(Some(&format!("123\n{}\n", boot_id()))), PreviousServer::Crashed);
        let other_boot = "00000000-0000-4000-8000-000000000000";
        assert_eq!(previous_after(Some(&format!("123\n{other_boot}\n"))), PreviousServer::WentDownWithTheMachine);
        assert_eq!(previous_after(Some("123\nunchecked\n")), PreviousServer::WentDownWithTheMachine);
        assert_eq!(previous_after(Some("123\n")), PreviousServer::WentDownWithTheMachine, "a PID alone");
    }

    #[test]
    fn a_new_server_waits_for_the_helpers_of_one_that_died_and_refuses_one_that_lives() {
        let scratch = ScratchDir::new("state-dir-helpers");
        let path = scratch.join("state");
        let (state_dir, _) = StateDir::acquire(&path, false).unwrap();
        let refused = StateDir::acquire(&path, false).err().unwrap().to_string();
        assert!(
            refused.contains(&format!("in use by another runnel server (PID {})", std::process::id())),
            "{refused}"
        );
        // A helper holding the lock for 0.6 s more, and its server gone without a clean stop (a PID of nobody).
        let stdin = sys::open_dev_null().unwrap();
        let mut helper = sys::spawn_helper(
            Path::new("/bin/sleep"),
            &["0.6".as_ref()],
            stdin,
            Some(state_dir.lock.as_fd()),
            sys::AtServerDeath::Killed,
        )
        .unwrap();
        let mut gone = std::process::Command::new("/bin/true").spawn().unwrap();
        gone.wait().unwrap();
        drop(state_dir);
        fs::write(path.join(LOCK_FILE), format!("{}\n{}\n", gone.id(), boot_id())).unwrap();
        let begun = Instant::now();
        let (state_dir, previous) = StateDir::acquire(&path, false).unwrap();
        let waited = begun.elapsed();
        // (Its exit lets the lock go a moment before the helper can be reaped: judged by the time waited.)
        helper.wait().unwrap();
        assert!(waited >= Duration::from_millis(300), "taken after {waited:?}, before the helper exited");
        assert_eq!(previous, PreviousServer::Crashed, "the lock file read from its start");
        state_dir.remove();
    }

    #[test]
    fn a_server_that_could_not_start_leaves_the_directory_as_it_found_it() {
        let scratch = ScratchDir::new("state-dir-abandon");
        // A directory this server made goes whole.
        let made = scratch.join("made");
        StateDir::acquire(&made, false).unwrap().0.abandon();
        assert!(!made.exists());
        // One it found: a clean stop stays clean, a crash stays on record (its jobs are not yet recorded lost).
        let found = scratch.join("found");
        fs::create_dir_all(found.join("jobs")).unwrap();
        StateDir::acquire(&found, false).unwrap().0.abandon();
        assert_eq!(fs::read_to_string(found.join(LOCK_FILE)).unwrap(), "");
        let crashed = format!("123\n{}\n", boot_id());
        fs::write(found.join(LOCK_FILE), &crashed).unwrap();
        let (state_dir, previous) = StateDir::acquire(&found, false).unwrap();
        assert_eq!(previous, PreviousServer::Crashed);
        state_dir.abandon();
        assert_eq!(StateDir::acquire(&found, false).unwrap().1, PreviousServer::Crashed);
        assert!(found.join("jobs").exists(), "the history stays");
    }
}
