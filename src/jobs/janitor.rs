//! Removing files off the event loop.
//!
//! Deleting a file frees its disk blocks and page-cache pages in the thread that deletes it: 30–60 ms for one
//! 64 MiB output segment on the development VM while jobs flood output, seconds under writeback; removing a job's
//! working directory costs whatever the job left in it. That thread would be the loop, and every client would
//! wait. So the loop only renames what is to go into `STATE/trash` (one directory entry, microseconds) and
//! hands the name to the janitor: a helper process the server starts from its own executable
//! (`runnel __janitor TRASH`), which removes it on another core. The janitor dies with the server
//! (`PR_SET_PDEATHSIG`), reads names from its stdin, and exits when the server closes that pipe; the server then
//! waits for it. Names are the janitor's own counters, never anything a client sent.
//!
//! Without a janitor (it could not be started, it died, or a unit test asked for none) removal happens in
//! place, as it must go somewhere: slower for everyone, never lost.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;

use crate::sys;

/// The hidden subcommand that runs the janitor (`runnel __janitor TRASH`).
pub const JANITOR_COMMAND: &str = "__janitor";

/// Names handed over but not yet written to a full pipe, past which the server removes in place (the janitor
/// is not keeping up, or is stuck).
const MAX_BACKLOG: usize = 4096;

/// What the server keeps of its janitor.
#[derive(Debug)]
pub struct Janitor {
    /// `STATE/trash`: what is to be removed is renamed into it, as a number.
    trash: PathBuf,
    next_name: u64,
    helper: Option<Helper>,
    /// Names in the trash the helper has not been told of yet (its pipe was full).
    backlog: VecDeque<u64>,
}

#[derive(Debug)]
struct Helper {
    process: Child,
    /// The write end of the helper's stdin, non-blocking.
    names: OwnedFd,
}

impl Janitor {
    /// Creates `trash` (which must not exist) and starts the janitor process from `executable`, the server's
    /// own; `None`, or a janitor that cannot start, means removal in place.
    pub fn start(
        trash: PathBuf,
        executable: Option<&Path>,
        state_dir_lock: Option<BorrowedFd<'_>>,
    ) -> io::Result<Janitor> {
        // Root's alone: what a job left in its working directory must not be reachable there by a later job
        // given the same user while the janitor works.
        std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700).create(&trash)?;
        let helper = executable.and_then(|executable| match Helper::start(executable, &trash, state_dir_lock) {
            Ok(helper) => {
                log::info!("janitor started: pid {}, removing spool and working-directory files", helper.process.id());
                Some(helper)
            }
            Err(err) => {
                log::warn!("cannot start the janitor ({err}); files will be removed on the event loop");
                None
            }
        });
        Ok(Janitor { trash, next_name: 0, helper, backlog: VecDeque::new() })
    }

    /// A janitor that removes in place, with its trash in `scratch`: for tests.
    #[cfg(test)]
    pub fn in_place(scratch: &crate::scratch::ScratchDir) -> Janitor {
        Janitor::start(scratch.join("trash"), None, None).unwrap()
    }

    /// Removes `path` (a file, or a directory with everything in it) without holding the loop: it moves into
    /// the trash at once and out of the way, and the janitor deletes it. Gone from `path` either way.
    pub fn remove(&mut self, path: &Path) {
        let name = self.next_name;
        let in_trash = self.trash.join(name.to_string());
        match fs::rename(path, &in_trash) {
            Ok(()) => self.next_name += 1,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(err) => {
                log::debug!("cannot move {} into the trash ({err}); removing it in place", path.display());
                remove_in_place(path);
                return;
            }
        }
        self.backlog.push_back(name);
        self.tell_helper();
    }

    /// A name in the trash for something another helper moves there (see `spool::mover`): hand it over with
    /// [`Self::hand_over`] once it is there.
    pub fn reserve(&mut self) -> (u64, PathBuf) {
        let name = self.next_name;
        self.next_name += 1;
        (name, self.trash.join(name.to_string()))
    }

    /// Removes what was moved into the trash as `name` (see [`Self::reserve`]).
    pub fn hand_over(&mut self, name: u64) {
        self.backlog.push_back(name);
        self.tell_helper();
    }

    /// True while names wait for room in the helper's pipe: call [`Self::retry`] a little later.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Hands the helper what waited for room in its pipe.
    pub fn retry(&mut self) {
        self.tell_helper();
    }

    /// Hands the backlog to the helper, as much as its pipe takes; removes in place what it cannot take.
    fn tell_helper(&mut self) {
        while let Some(&name) = self.backlog.front() {
            let written = match &self.helper {
                Some(helper) => sys::write_nonblocking(helper.names.as_raw_fd(), format!("{name}\n").as_bytes()),
                None => Err(io::Error::from(io::ErrorKind::NotConnected)),
            };
            match written {
                // Under PIPE_BUF: written whole or not at all.
                Ok(Some(_)) => {}
                Ok(None) if self.backlog.len() <= MAX_BACKLOG => return,
                Ok(None) => remove_in_place(&self.trash.join(name.to_string())),
                Err(err) => {
                    if let Some(helper) = self.helper.take() {
                        log::error!("the janitor is gone ({err}); files will be removed on the event loop");
                        helper.finish();
                    }
                    remove_in_place(&self.trash.join(name.to_string()));
                }
            }
            self.backlog.pop_front();
        }
    }

    /// Lets the janitor finish what it was given and waits for it (server shutdown); later removals happen in
    /// place.
    pub fn finish(&mut self) {
        if let Some(helper) = self.helper.take() {
            helper.finish();
        }
        for name in std::mem::take(&mut self.backlog) {
            remove_in_place(&self.trash.join(name.to_string()));
        }
    }
}

impl Helper {
    fn start(executable: &Path, trash: &Path, state_dir_lock: Option<BorrowedFd<'_>>) -> io::Result<Helper> {
        let pipe = sys::helper_pipe()?;
        // It ends when its stdin closes (the server waits for it at shutdown), or with the server.
        let args = [JANITOR_COMMAND.as_ref(), trash.as_os_str()];
        let process = sys::spawn_helper(executable, &args, pipe.read, state_dir_lock, sys::AtServerDeath::Killed)?;
        Ok(Helper { process, names: pipe.write })
    }

    /// Closes the janitor's stdin, which ends it once it removed what it was told of, and reaps it.
    fn finish(mut self) {
        drop(self.names);
        match self.process.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => log::warn!("the janitor ended with {status}"),
            Err(err) => log::warn!("cannot wait for the janitor: {err}"),
        }
    }
}

/// Removes `path`, a file or a directory tree (without following symbolic links), logging what fails.
fn remove_in_place(path: &Path) {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) => Err(err),
    };
    if let Err(err) = removed {
        if err.kind() != io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {err}", path.display());
        }
    }
}

/// Runs the janitor; never returns. `args` are those after `__janitor`: the trash directory.
pub fn main(args: Vec<OsString>) -> ! {
    let [trash] = <[OsString; 1]>::try_from(args).unwrap_or_else(|_| {
        eprintln!("error: INVALID_ARGUMENT: `runnel {JANITOR_COMMAND}` is internal to the server");
        std::process::exit(2)
    });
    let trash = PathBuf::from(trash);
    for line in io::stdin().lock().lines() {
        let Ok(name) = line else { break };
        // Only the server's own numbers: nothing outside the trash can be named.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            eprintln!("runnel janitor: ignoring {name:?}: not a trash entry");
            continue;
        }
        remove_in_place(&trash.join(name));
    }
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    #[test]
    fn without_a_helper_removal_happens_in_place_and_leaves_an_empty_trash() {
        let scratch = ScratchDir::new("janitor");
        let mut janitor = Janitor::start(scratch.join("trash"), None, None).unwrap();
        let tree = scratch.join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/file"), b"x").unwrap();
        std::os::unix::fs::symlink(scratch.path(), tree.join("link-out")).unwrap();
        let file = scratch.join("file");
        fs::write(&file, b"y").unwrap();
        janitor.remove(&tree);
        janitor.remove(&file);
        janitor.remove(&scratch.join("never-there"));
        assert!(!tree.exists() && !file.exists());
        assert!(scratch.path().exists(), "a symbolic link out of the tree is not followed");
        assert_eq!(fs::read_dir(scratch.join("trash")).unwrap().count(), 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(scratch.join("trash")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "jobs' users cannot reach what waits in the trash");
        janitor.finish();
    }
}
