//! Spare segment files: output segments that retention discarded, kept to be written over as new segments
//! instead of being deleted and created afresh.
//!
//! Why: freeing a file's disk blocks happens in the thread that deletes or truncates the file, and that thread
//! is the event loop. On ext4 without a journal and mounted with `discard` (the machines runnel is measured on),
//! every freed extent is discarded synchronously: deleting a large segment takes milliseconds to tens of
//! milliseconds, and seconds while writeback keeps the disk busy, with every connection waiting
//! (`docs/performance.md`). A new file also needs new disk blocks and
//! new page-cache pages, which on a VM that handed its free memory back to the host is the largest part of what
//! the spool costs. A spare written over keeps its blocks and its cached pages, so a server whose retention caps
//! discard output as fast as jobs write it (a long-running server, at `--max-output-bytes` or
//! `--max-output-total`) neither frees nor allocates anything for its spool.
//!
//! A spare is a file in the spare directory; [`SpareSegments::take`] renames it into a job's spool, and an
//! [`OutputLog`](super::log::OutputLog) writes over it from offset 0, keeping its own record of how much of the file
//! holds output (a spare's old bytes past that are never read). A spare taken stays *lent* until the segment
//! written over it fills up or its output ends ([`SpareSegments::settle`]), since until then the file holds old
//! bytes no cap counts. At most [`SPARE_FILES`] spares are kept, and spares plus what is lent stay within a
//! quarter of `--max-output-total`: with record headers, the disk the spool holds beyond what its caps count.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::jobs::janitor::Janitor;

/// How many discarded segment files are kept for reuse: a roll takes one as a discard gives one back, so a
/// couple covers a server at its caps.
pub const SPARE_FILES: usize = 2;

/// A discarded segment smaller than this is deleted, not kept: deleting it is cheap, and reusing it saves little.
const MIN_SPARE_BYTES: u64 = 1024 * 1024;

/// The spare segment files of one job table.
#[derive(Debug)]
pub struct SpareSegments {
    dir: PathBuf,
    spares: Vec<Spare>,
    next_name: u64,
    /// Bytes of spares taken whose segments have not yet filled up or ended.
    lent: u64,
    max_bytes: u64,
    /// Where the segments that are not kept go (off the event loop).
    janitor: Janitor,
}

#[derive(Debug)]
struct Spare {
    path: PathBuf,
    /// The file's size: bytes of disk blocks a segment written over it will not have to allocate.
    len: u64,
}

impl SpareSegments {
    /// Creates the spare directory `dir` (which must not exist yet); spares will hold at most `max_bytes`, and
    /// `janitor` removes the rest.
    pub fn create(dir: PathBuf, max_bytes: u64, janitor: Janitor) -> io::Result<SpareSegments> {
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(SpareSegments { dir, spares: Vec::new(), next_name: 0, lent: 0, max_bytes, janitor })
    }

    /// Removes `path`, a file or a directory tree, through the janitor.
    pub fn dispose(&mut self, path: &Path) {
        self.janitor.remove(path);
    }

    /// Hands the janitor what waited for room in its pipe.
    pub fn retry_removals(&mut self) {
        self.janitor.retry();
    }

    /// True while removals wait for room in the janitor's pipe.
    pub fn has_removals_waiting(&self) -> bool {
        self.janitor.has_backlog()
    }

    /// Waits for the janitor to finish (server shutdown).
    pub fn finish_removals(&mut self) {
        self.janitor.finish();
    }

    /// Takes over the discarded segment file at `path`, `len` bytes long, as a spare if there is room for it;
    /// has the janitor delete it otherwise.
    pub fn keep_or_delete(&mut self, path: &Path, len: u64) {
        let room = self.spares.len() < SPARE_FILES && self.bytes() + self.lent + len <= self.max_bytes;
        if len >= MIN_SPARE_BYTES && room {
            let spare = self.dir.join(format!("{:08}", self.next_name));
            match fs::rename(path, &spare) {
                Ok(()) => {
                    self.next_name += 1;
                    self.spares.push(Spare { path: spare, len });
                    return;
                }
                Err(err) => log::debug!("cannot keep {} as a spare segment: {err}", path.display()),
            }
        }
        self.janitor.remove(path);
    }

    /// Moves the largest spare to `path` and opens it for writing over: the file and its size, or `None` when
    /// there is no spare (or it could not be moved, and is gone). The size is lent until [`Self::settle`].
    pub fn take(&mut self, path: &Path) -> Option<(File, u64)> {
        let largest = (0..self.spares.len()).max_by_key(|&i| self.spares[i].len)?;
        let spare = self.spares.swap_remove(largest);
        // Opened before it moves (the descriptor follows the file), so a failure leaves nothing at `path`.
        let moved = OpenOptions::new().write(true).open(&spare.path).and_then(|file| {
            fs::rename(&spare.path, path)?;
            Ok(file)
        });
        match moved {
            Ok(file) => {
                self.lent += spare.len;
                Some((file, spare.len))
            }
            Err(err) => {
                log::warn!("cannot reuse spare segment {}: {err}", spare.path.display());
                self.janitor.remove(&spare.path);
                None
            }
        }
    }

    /// A spare [`Self::take`] lent, `len` bytes, is no longer holding uncounted bytes: the segment written over
    /// it filled up, or its output ended and the file was cut to what it holds.
    pub fn settle(&mut self, len: u64) {
        self.lent = self.lent.saturating_sub(len);
    }

    /// Bytes held in spares.
    pub fn bytes(&self) -> u64 {
        self.spares.iter().map(|s| s.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    /// A discarded segment's stand-in: a file of `len` bytes.
    fn segment(scratch: &ScratchDir, name: &str, len: u64) -> PathBuf {
        let path = scratch.join(name);
        File::create(&path).unwrap().set_len(len).unwrap();
        path
    }

    #[test]
    fn keeps_big_discarded_files_up_to_its_count_and_hands_out_the_largest() {
        let scratch = ScratchDir::new("spares");
        let mut spares = SpareSegments::create(scratch.join("spare"), 1 << 30, Janitor::in_place(&scratch)).unwrap();
        let small = segment(&scratch, "small", MIN_SPARE_BYTES - 1);
        spares.keep_or_delete(&small, MIN_SPARE_BYTES - 1);
        assert!(!small.exists(), "a small segment is deleted");
        assert_eq!(spares.bytes(), 0);
        for (name, len) in [("a", 2 << 20), ("b", 3 << 20), ("c", 1 << 20)] {
            let path = segment(&scratch, name, len);
            spares.keep_or_delete(&path, len);
            assert!(!path.exists());
        }
        assert_eq!(spares.bytes(), 5 << 20, "a and b kept; c over the file count");

        let (_, len) = spares.take(&scratch.join("new")).unwrap();
        assert_eq!(len, 3 << 20, "the largest first");
        assert_eq!(fs::metadata(scratch.join("new")).unwrap().len(), 3 << 20, "moved, contents kept");
        let (_, len) = spares.take(&scratch.join("newer")).unwrap();
        assert_eq!(len, 2 << 20);
        assert!(spares.take(&scratch.join("none")).is_none());
        assert_eq!(fs::read_dir(scratch.join("spare")).unwrap().count(), 0);
    }

    #[test]
    fn spares_and_what_is_lent_stay_within_the_byte_limit() {
        let scratch = ScratchDir::new("spares");
        let mut spares = SpareSegments::create(scratch.join("spare"), 5 << 20, Janitor::in_place(&scratch)).unwrap();
        spares.keep_or_delete(&segment(&scratch, "a", 3 << 20), 3 << 20);
        let (_, lent) = spares.take(&scratch.join("written-over")).unwrap();
        let refused = segment(&scratch, "b", 3 << 20);
        spares.keep_or_delete(&refused, 3 << 20);
        assert!(!refused.exists(), "3 MiB lent + 3 MiB more is over the 5 MiB limit: deleted");
        assert_eq!(spares.bytes(), 0);
        spares.settle(lent);
        spares.keep_or_delete(&segment(&scratch, "c", 3 << 20), 3 << 20);
        assert_eq!(spares.bytes(), 3 << 20, "kept once the lent spare is settled");
    }
}
