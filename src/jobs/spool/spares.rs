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

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::mover::{Reply, Request, SegmentMover};
use super::writer::{SegmentFile, SpoolWriter};
use crate::jobs::janitor::Janitor;
use crate::sys;

/// How many discarded segment files are kept for reuse: a roll takes one as a discard gives one back, so a
/// couple covers a server at its caps.
pub const SPARE_FILES: usize = 2;

/// A discarded segment smaller than this is deleted, not kept: deleting it is cheap, and reusing it saves little.
const MIN_SPARE_BYTES: u64 = 1024 * 1024;

/// The spare segment files of one job table, and the helpers that make, move, write and remove spool files off
/// the loop: what every log's segment files go through.
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
    /// Makes segment files and moves them off the loop (`mover.rs`); `None`: the loop does it.
    mover: Option<SegmentMover>,
    /// There was a mover and it is gone: no file is reused from then on, as one might be a file the mover was
    /// still to cut or close when it was killed.
    mover_lost: bool,
    /// What the mover was asked and has not answered, by ticket.
    awaiting: HashMap<u64, Awaiting>,
    /// Writes segment files off the loop (`writer.rs`); `None`: the loop writes them.
    writer: Option<SpoolWriter>,
    /// Segments the mover prepared that their log has not taken yet, by ticket: the file and the size of the
    /// spare it was (0: a new file), or `None` if it could not be made.
    prepared: HashMap<u64, Option<(File, u64)>>,
    /// Jobs' directories the mover answered for and nobody has asked about yet, by ticket: made (with the
    /// output's first segment file), or not.
    job_dirs: HashMap<u64, Option<File>>,
}

#[derive(Debug)]
struct Spare {
    path: PathBuf,
    /// The file's size: bytes of disk blocks a segment written over it will not have to allocate.
    len: u64,
}

/// A request the mover has not answered yet.
#[derive(Debug)]
enum Awaiting {
    /// A segment being made, over `spare` (lent from the request on) or as a new file; `abandoned` (its path)
    /// once its log no longer wants it: then it goes as soon as it is made.
    Segment { spare: Option<Spare>, abandoned: Option<PathBuf> },
    /// A discarded segment moving from `from` into the spare directory, as `spare`.
    ToSpare { from: PathBuf, spare: Spare },
    /// A file moving from `from` into the trash, as the janitor's `name`.
    ToTrash { from: PathBuf, name: u64 },
    /// A segment file being closed (see [`SpareSegments::close_segment_file`]).
    Closing,
    /// A job's directories being made (see [`SpareSegments::make_job_dirs`]): what goes if they fail, or once
    /// made if `abandoned`.
    JobDirs { output: PathBuf, work: PathBuf, abandoned: bool },
    /// A job's record being written into `dir` (kept to write here if the mover is lost first); `moot` once the
    /// directory is going (the write may find it gone).
    Record { dir: PathBuf, bytes: Vec<u8>, moot: bool },
}

/// Records up to this size travel in the request itself; larger ones (long arguments, up to
/// `--max-job-request`) in a memory file sent with it, as a socket message is at most its send buffer.
const INLINE_RECORD_MAX: usize = 16 * 1024;

/// Where a job's directories asked of [`SpareSegments::make_job_dirs`] stand.
#[derive(Debug)]
pub enum JobDirs {
    /// Made, with the output's first segment file, empty and open for writing.
    Made(File),
    Waiting,
    /// Not made (the mover took back what it made of them), or nothing is known of them (the mover is gone, and
    /// what it made of them is on its way to the janitor).
    Failed,
}

/// Where a segment asked of [`SpareSegments::prepare`] stands.
#[derive(Debug)]
pub enum Prepared {
    /// Made: the file, open for writing, and the size of the spare it was (0: a new file, empty).
    Ready(File, u64),
    /// Not made yet.
    Waiting,
    /// Not made, or nothing is known of it (the mover is gone): the log makes it itself, at the same path, and
    /// takes over whatever file is there.
    Failed,
}

impl SpareSegments {
    /// Creates the spare directory `dir` (which must not exist yet); spares will hold at most `max_bytes`,
    /// `janitor` removes the rest, and `mover` (if any) moves files off the loop.
    pub fn create(
        dir: PathBuf,
        max_bytes: u64,
        janitor: Janitor,
        mover: Option<SegmentMover>,
    ) -> io::Result<SpareSegments> {
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(SpareSegments {
            dir,
            spares: Vec::new(),
            next_name: 0,
            lent: 0,
            max_bytes,
            janitor,
            mover,
            mover_lost: false,
            awaiting: HashMap::new(),
            writer: None,
            prepared: HashMap::new(),
            job_dirs: HashMap::new(),
        })
    }

    /// Has `writer` write every segment file from now on.
    pub fn write_through(&mut self, writer: SpoolWriter) {
        self.writer = Some(writer);
    }

    /// The segment mover's socket, while there is a mover: readable when it answered.
    pub fn mover_socket(&self) -> Option<std::os::fd::RawFd> {
        self.mover.as_ref().map(SegmentMover::socket)
    }

    /// The spool writer, if segment files are written through one.
    pub fn writer(&mut self) -> Option<&mut SpoolWriter> {
        self.writer.as_mut()
    }

    /// A segment file the loop opened, from now on written where the spool's writes go.
    pub fn adopt(&mut self, file: File) -> SegmentFile {
        match self.writer.as_mut() {
            Some(writer) => SegmentFile::Writer(writer.open(file)),
            None => SegmentFile::Here(file),
        }
    }

    /// Writes `bytes` into `file` at `at` (a segment's header, a record's end mark and header).
    pub fn write_segment(&mut self, file: &SegmentFile, bytes: &[u8], at: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        match (file, self.writer.as_mut()) {
            (SegmentFile::Here(file), _) => file.write_all_at(bytes, at),
            (SegmentFile::Writer(number), Some(writer)) => writer.write(*number, at, bytes),
            (SegmentFile::Writer(_), None) => Err(no_writer()),
        }
    }

    /// The number of the spool writer's last command, if there is a writer.
    pub fn writer_last_command(&self) -> Option<u64> {
        self.writer.as_ref().and_then(SpoolWriter::last_issued)
    }

    /// Closes a segment file once it is written: by the spool writer after its writes, or else by the mover
    /// (see [`Self::close_segment_file`]).
    pub fn close_segment(&mut self, file: SegmentFile, cut_to: Option<u64>) {
        match (file, self.writer.as_mut()) {
            (SegmentFile::Here(file), _) => self.close_segment_file(file, cut_to),
            (SegmentFile::Writer(number), Some(writer)) => writer.close(number, cut_to),
            (SegmentFile::Writer(_), None) => {}
        }
    }

    /// Waits for the spool writer to write out what it was sent (server shutdown, before the mover and the
    /// janitor finish: a file is closed before it is moved).
    pub fn finish_writes(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.finish(std::time::Instant::now() + super::writer::SHUTDOWN_WAIT);
        }
    }

    /// Removes `path`, a file or a directory tree, through the janitor (moved into its trash by the mover).
    pub fn dispose(&mut self, path: &Path) {
        for awaiting in self.awaiting.values_mut() {
            if let Awaiting::Record { dir, moot, .. } = awaiting {
                *moot |= dir == path;
            }
        }
        let (name, in_trash) = match &self.mover {
            Some(_) => self.janitor.reserve(),
            None => return self.janitor.remove(path),
        };
        let request = Request::Move { from: path.to_path_buf(), to: in_trash };
        if !self.ask(&request, Awaiting::ToTrash { from: path.to_path_buf(), name }) {
            self.janitor.remove(path);
        }
    }

    /// Takes the mover's replies, sends it what waited for room in its socket, and hands the janitor what
    /// waited for room in its pipe.
    pub fn retry_removals(&mut self) {
        self.collect_replies();
        if let Some(Err(err)) = self.mover.as_mut().map(SegmentMover::send_unsent) {
            self.lose_mover(&err);
        }
        self.janitor.retry();
    }

    /// True while the mover or the janitor has work of the loop's to finish: call [`Self::retry_removals`] a
    /// little later.
    pub fn has_removals_waiting(&self) -> bool {
        self.janitor.has_backlog() || !self.awaiting.is_empty()
    }

    /// Writes a job's record, `bytes`, into its directory `dir` (`jobs::record`): by the mover, after whatever
    /// it was asked before, or here without one. Never waits.
    pub fn save_record(&mut self, dir: &Path, bytes: Vec<u8>) {
        if self.mover.is_some() {
            // Small ones in the message; larger ones in a memory file, the message naming only the directory.
            let inline = bytes.len() <= INLINE_RECORD_MAX;
            let file = match inline {
                true => Ok(None),
                false => sys::memory_file(c"runnel-record", &bytes).map(Some),
            };
            match file {
                Ok(file) => {
                    let message = if inline { bytes.clone() } else { Vec::new() };
                    let request = Request::WriteRecord { dir: dir.to_path_buf(), bytes: message };
                    let awaiting = Awaiting::Record { dir: dir.to_path_buf(), bytes, moot: false };
                    // Lost meanwhile: what it was asked before is settled, so this one goes after it, here.
                    if let Err(Awaiting::Record { bytes, .. }) = self.ask_with(&request, file, awaiting) {
                        store_record(dir, &bytes);
                    }
                    return;
                }
                // Out of memory or descriptors. Written here, it could land before an older one still queued.
                Err(err) => return warn_record_not_kept(dir, &err),
            }
        }
        store_record(dir, &bytes);
    }

    /// Waits for the spool writer, the mover and then the janitor to finish (server shutdown).
    pub fn finish_removals(&mut self) {
        self.finish_writes();
        if let Some(mut mover) = self.mover.take() {
            let deadline = std::time::Instant::now() + super::mover::SHUTDOWN_WAIT;
            match mover.send_all_unsent(deadline, |reply| self.answered(reply)) {
                Ok(true) => {}
                // Settled below as never answered.
                Ok(false) => log::warn!("the segment mover took no more requests; stopping without them"),
                Err(err) => log::warn!("cannot send the segment mover its last requests: {err}"),
            }
            mover.close_requests();
            let deadline = std::time::Instant::now() + super::mover::SHUTDOWN_WAIT;
            let ended = loop {
                match mover.receive_waiting(deadline) {
                    Ok(Some(reply)) => self.answered(reply),
                    Ok(None) => continue,
                    Err(err) => break err.kind() != io::ErrorKind::TimedOut,
                }
            };
            if ended {
                mover.reap();
            } else {
                log::warn!("the segment mover did not finish; stopping without it");
            }
        }
        self.lose_mover_requests();
        self.prepared.clear();
        self.janitor.finish();
    }

    /// Takes over the discarded segment file at `path`, `len` bytes long, as a spare if there is room for it;
    /// has the janitor delete it otherwise.
    pub fn keep_or_delete(&mut self, path: &Path, len: u64) {
        let moving: Vec<&Spare> = self.awaiting.values().filter_map(Awaiting::spare_moving).collect();
        let count = self.spares.len() + moving.len();
        let held = self.bytes() + moving.iter().map(|s| s.len).sum::<u64>();
        let room = count < SPARE_FILES && held + self.lent + len <= self.max_bytes;
        if len >= MIN_SPARE_BYTES && room && !self.mover_lost {
            let spare = Spare { path: self.dir.join(format!("{:08}", self.next_name)), len };
            self.next_name += 1;
            let request = Request::Move { from: path.to_path_buf(), to: spare.path.clone() };
            if self.mover.is_some() {
                if self.ask(&request, Awaiting::ToSpare { from: path.to_path_buf(), spare }) {
                    return;
                }
            } else {
                match fs::rename(path, &spare.path) {
                    Ok(()) => return self.spares.push(spare),
                    Err(err) => log::debug!("cannot keep {} as a spare segment: {err}", path.display()),
                }
            }
        }
        self.dispose(path);
    }

    /// Moves the largest spare to `path` and opens it for writing over: the file and its size, or `None` when
    /// there is no spare (or it could not be moved, and is gone). The size is lent until [`Self::settle`].
    pub fn take(&mut self, path: &Path) -> Option<(File, u64)> {
        let spare = self.take_largest()?;
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

    /// Asks the mover to make the segment file `target` ahead of need, over the largest spare if there is one
    /// (lent from now on): a ticket for [`Self::take_prepared`], or `None` without a mover.
    pub fn prepare(&mut self, target: &Path) -> Option<u64> {
        self.mover.as_ref()?;
        let spare = self.take_largest();
        let request = Request::Prepare { target: target.to_path_buf(), spare: spare.as_ref().map(|s| s.path.clone()) };
        let lent = spare.as_ref().map_or(0, |s| s.len);
        match self.send(&request, None) {
            Some(ticket) => {
                self.lent += lent;
                self.awaiting.insert(ticket, Awaiting::Segment { spare, abandoned: None });
                Some(ticket)
            }
            None => {
                self.spares.extend(spare);
                None
            }
        }
    }

    /// Asks the mover to make a job's directories, `output` and `work`, ahead of the start that takes them: the
    /// ticket to ask [`Self::job_dirs`] with, or `None` without a mover (the start makes them itself).
    pub fn make_job_dirs(&mut self, output: &Path, work: &Path) -> Option<u64> {
        let request = Request::MakeJobDirs { output: output.to_path_buf(), work: work.to_path_buf() };
        let ticket = self.send(&request, None)?;
        let awaiting = Awaiting::JobDirs { output: output.to_path_buf(), work: work.to_path_buf(), abandoned: false };
        self.awaiting.insert(ticket, awaiting);
        Some(ticket)
    }

    /// The directories asked for with `ticket`, `output` and `work`, are not wanted (the server is stopping):
    /// they go, now or once made.
    pub fn abandon_job_dirs(&mut self, ticket: u64, output: &Path, work: &Path) {
        self.collect_replies();
        if let Some(Awaiting::JobDirs { abandoned, .. }) = self.awaiting.get_mut(&ticket) {
            *abandoned = true;
        } else if let Some(Some(_)) = self.job_dirs.remove(&ticket) {
            self.dispose(output);
            self.dispose(work);
        }
    }

    /// Where the directories asked for with `ticket` stand; once `Made` or `Failed`, the ticket is spent.
    pub fn job_dirs(&mut self, ticket: u64) -> JobDirs {
        self.collect_replies();
        match self.job_dirs.remove(&ticket) {
            Some(Some(first_segment)) => JobDirs::Made(first_segment),
            Some(None) => JobDirs::Failed,
            None if self.awaiting.contains_key(&ticket) => JobDirs::Waiting,
            None => JobDirs::Failed,
        }
    }

    /// Where the segment asked for with `ticket` stands; once `Ready` or `Failed`, the ticket is spent.
    pub fn take_prepared(&mut self, ticket: u64) -> Prepared {
        self.collect_replies();
        match self.prepared.remove(&ticket) {
            Some(Some((file, len))) => Prepared::Ready(file, len),
            Some(None) => Prepared::Failed,
            None if self.awaiting.contains_key(&ticket) => Prepared::Waiting,
            None => Prepared::Failed,
        }
    }

    /// The segment asked for with `ticket`, to be made at `target`, is not wanted (its output ended first): it
    /// becomes a spare or goes, once made.
    pub fn abandon(&mut self, ticket: u64, target: &Path) {
        self.collect_replies();
        if let Some(Awaiting::Segment { spare, abandoned }) = self.awaiting.get_mut(&ticket) {
            // Dealt with when the mover answers: the file is not there yet.
            *abandoned = Some(target.to_path_buf());
            let len = spare.as_ref().map_or(0, |s| s.len);
            return self.settle(len);
        }
        match self.prepared.remove(&ticket) {
            Some(Some((file, len))) => {
                // Closed by the mover too: a spare's old blocks may still be under allocation.
                self.close_segment_file(file, None);
                self.settle(len);
                self.keep_or_delete(target, len);
            }
            // Not made, or its descriptor lost, or the mover gone: whatever is there goes.
            _ => self.dispose(target),
        }
    }

    /// Closes a segment file the loop wrote, cut to `cut_to` bytes first if given: by the mover, since a
    /// writer's last close (and a cut) can wait for the disk.
    pub fn close_segment_file(&mut self, file: File, cut_to: Option<u64>) {
        if self.mover.is_some() {
            // Lost meanwhile: the file was closed with what it was queued in, uncut (its unused blocks stay).
            let _ = self.ask_with(&Request::Close { cut_to }, Some(file), Awaiting::Closing);
            return;
        }
        if let Some(len) = cut_to {
            if let Err(err) = file.set_len(len) {
                log::warn!("cannot give back unused disk blocks of a segment file: {err}");
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

    fn take_largest(&mut self) -> Option<Spare> {
        let largest = (0..self.spares.len()).max_by_key(|&i| self.spares[i].len)?;
        Some(self.spares.swap_remove(largest))
    }

    /// Sends `request`, remembering it as `awaiting`; false if there is no mover (do it in place).
    fn ask(&mut self, request: &Request, awaiting: Awaiting) -> bool {
        self.ask_with(request, None, awaiting).is_ok()
    }

    /// [`Self::ask`], sending `file` with the request; `awaiting` back if there is no mover.
    fn ask_with(&mut self, request: &Request, file: Option<File>, awaiting: Awaiting) -> Result<(), Awaiting> {
        match self.send(request, file) {
            Some(ticket) => {
                self.awaiting.insert(ticket, awaiting);
                Ok(())
            }
            None => Err(awaiting),
        }
    }

    /// Sends `request` (with `file`) after what waits for room: its ticket, or `None` without a mover (there
    /// was none, or it is lost now).
    fn send(&mut self, request: &Request, file: Option<File>) -> Option<u64> {
        match self.mover.as_mut()?.send(request, file) {
            Ok(ticket) => Some(ticket),
            Err(err) => {
                self.lose_mover(&err);
                None
            }
        }
    }

    /// Takes every reply that came, without waiting.
    /// Takes in every reply the mover sent so far (it never waits for one).
    pub fn collect_replies(&mut self) {
        while let Some(mover) = &mut self.mover {
            match mover.receive() {
                Ok(Some(reply)) => self.answered(reply),
                Ok(None) => return,
                Err(err) => self.lose_mover(&err),
            }
        }
    }

    fn answered(&mut self, Reply { ticket, outcome }: Reply) {
        let Some(awaiting) = self.awaiting.remove(&ticket) else {
            log::warn!("the segment mover answered a request never made ({ticket})");
            return;
        };
        match (awaiting, outcome) {
            // Its lent size was settled when it was abandoned.
            (Awaiting::Segment { abandoned: Some(target), spare }, outcome) => match outcome {
                Ok(Some(file)) => {
                    self.close_segment_file(file, None);
                    self.keep_or_delete(&target, spare.map_or(0, |s| s.len));
                }
                Ok(None) => self.dispose(&target),
                Err(_) => {
                    if let Some(spare) = spare {
                        self.janitor.remove(&spare.path);
                    }
                }
            },
            (Awaiting::Segment { spare, .. }, Ok(Some(file))) => {
                self.prepared.insert(ticket, Some((file, spare.map_or(0, |s| s.len))));
            }
            (Awaiting::Segment { spare, .. }, failed) => {
                log::debug!("the segment mover could not make a segment: {:?}", failed.err());
                if let Some(spare) = spare {
                    self.settle(spare.len);
                    self.janitor.remove(&spare.path);
                }
                self.prepared.insert(ticket, None);
            }
            (Awaiting::JobDirs { output, work, abandoned: true }, Ok(_)) => {
                self.dispose(&output);
                self.dispose(&work);
            }
            (Awaiting::JobDirs { .. }, Ok(Some(first_segment))) => {
                self.job_dirs.insert(ticket, Some(first_segment));
            }
            (Awaiting::JobDirs { output, work, .. }, Ok(None)) => {
                log::warn!("the segment mover made a job's directories without its first segment file");
                self.dispose(&output);
                self.dispose(&work);
                self.job_dirs.insert(ticket, None);
            }
            // The mover took back what it made; what was there before is not this request's to remove.
            (Awaiting::JobDirs { .. }, Err(err)) => {
                log::warn!("cannot make a job's directories ahead of its start: {err}");
                self.job_dirs.insert(ticket, None);
            }
            (Awaiting::Record { moot: true, .. }, _) | (Awaiting::Record { .. }, Ok(_)) => {}
            (Awaiting::Record { dir, .. }, Err(err)) => warn_record_not_kept(&dir, &err),
            (Awaiting::Closing, Ok(_)) => {}
            (Awaiting::Closing, Err(err)) => log::warn!("cannot close a segment file (or give back its blocks): {err}"),
            (Awaiting::ToSpare { spare, .. }, Ok(_)) => self.spares.push(spare),
            (Awaiting::ToTrash { name, .. }, Ok(_)) => self.janitor.hand_over(name),
            (Awaiting::ToSpare { from, .. } | Awaiting::ToTrash { from, .. }, Err(err)) => {
                log::debug!("the segment mover could not move {}: {err}", from.display());
                self.janitor.remove(&from);
            }
        }
    }

    /// The mover failed: the loop does its work from now on, and what it was asked is done or undone here.
    fn lose_mover(&mut self, err: &io::Error) {
        if let Some(mover) = self.mover.take() {
            log::error!("the segment mover is gone ({err}); spool files will be made and moved on the event loop");
            mover.kill();
            self.mover_lost = true;
            for spare in std::mem::take(&mut self.spares) {
                self.janitor.remove(&spare.path);
            }
        }
        self.lose_mover_requests();
    }

    /// Settles what the mover was asked and will never answer: each file is wherever the mover left it, and
    /// the records it was to write are written here, in the order asked.
    fn lose_mover_requests(&mut self) {
        let mut awaiting: Vec<(u64, Awaiting)> = std::mem::take(&mut self.awaiting).into_iter().collect();
        awaiting.sort_unstable_by_key(|(ticket, _)| *ticket);
        for (ticket, awaiting) in awaiting {
            match awaiting {
                Awaiting::Record { dir, bytes, moot: false } => store_record(&dir, &bytes),
                Awaiting::Record { moot: true, .. } => {}
                Awaiting::Segment { spare, abandoned } => {
                    // At its old path or its new one: the log takes over the new one; the old goes.
                    if let Some(spare) = &spare {
                        self.janitor.remove(&spare.path);
                    }
                    match abandoned {
                        Some(target) => self.janitor.remove(&target),
                        None => {
                            self.settle(spare.map_or(0, |s| s.len));
                            self.prepared.insert(ticket, None);
                        }
                    }
                }
                Awaiting::ToSpare { from, spare } => {
                    self.janitor.remove(&from);
                    self.janitor.remove(&spare.path);
                }
                Awaiting::ToTrash { from, name } => {
                    self.janitor.remove(&from);
                    self.janitor.hand_over(name);
                }
                // Closed with the mover's end of the socket, wherever the request was.
                Awaiting::Closing => {}
                // Made or not, in part or whole: they go, and the start that would have taken them makes its own.
                Awaiting::JobDirs { output, work, .. } => {
                    self.janitor.remove(&output);
                    self.janitor.remove(&work);
                    self.job_dirs.insert(ticket, None);
                }
            }
        }
    }
}

impl Awaiting {
    fn spare_moving(&self) -> Option<&Spare> {
        match self {
            Awaiting::ToSpare { spare, .. } => Some(spare),
            _ => None,
        }
    }
}

/// Writes a record into a job's directory here, on the loop: there is no mover.
fn store_record(dir: &Path, bytes: &[u8]) {
    if let Err(err) = crate::jobs::record::store(dir, bytes) {
        warn_record_not_kept(dir, &err);
    }
}

fn warn_record_not_kept(dir: &Path, err: &dyn std::fmt::Display) {
    log::warn!("cannot record the job in {}: {err}; it may not be kept as it is now across a restart", dir.display());
}

/// A file handed to the spool writer, written when there is none: a bug.
fn no_writer() -> io::Error {
    io::Error::other("a segment file of the spool writer written without one")
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
        let mut spares =
            SpareSegments::create(scratch.join("spare"), 1 << 30, Janitor::in_place(&scratch), None).unwrap();
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
    fn requests_wait_in_order_for_room_in_the_movers_socket_and_a_lost_movers_records_are_written_in_order() {
        use super::super::mover::{serve_queued, SegmentMover};
        let scratch = ScratchDir::new("spares-records");
        let (mover, helper_end) = SegmentMover::with_socket_pair();
        let mut spares =
            SpareSegments::create(scratch.join("spare"), 1 << 30, Janitor::in_place(&scratch), Some(mover)).unwrap();
        let (kept, gone) = (scratch.join("kept"), scratch.join("gone"));
        fs::create_dir(&kept).unwrap();
        fs::create_dir(&gone).unwrap();
        // 16 KiB each, saved faster than the mover takes them: its socket fills after a dozen or so, and the
        // rest wait on the loop, in order.
        let record = |i: u32| i.to_le_bytes().repeat(INLINE_RECORD_MAX / 4);
        for i in 0..100 {
            spares.save_record(&kept, record(i));
            spares.save_record(&gone, record(i));
        }
        assert!(spares.mover.as_ref().unwrap().has_unsent(), "the socket filled");
        // A directory going, behind them: moved into the trash after its records, by the mover, not here.
        spares.dispose(&gone);
        assert!(gone.exists() && spares.has_removals_waiting(), "the move waits its turn");
        let settle = |spares: &mut SpareSegments| {
            for _ in 0..50 {
                serve_queued(&helper_end, scratch.path());
                spares.retry_removals();
            }
            assert!(!spares.has_removals_waiting(), "the mover answered everything");
        };
        settle(&mut spares);
        assert_eq!(fs::read(kept.join("record")).unwrap(), record(99), "the last one saved is the one kept");
        assert!(!gone.exists() && fs::read_dir(scratch.join("trash")).unwrap().count() == 0);
        // Too large for a message: through a memory file.
        spares.save_record(&kept, vec![7; 100_000]);
        settle(&mut spares);
        assert_eq!(fs::read(kept.join("record")).unwrap(), vec![7; 100_000]);

        // The mover lost with records sent and waiting: written here, in the order saved.
        for i in 100..200 {
            spares.save_record(&kept, record(i));
        }
        assert!(spares.mover.as_ref().unwrap().has_unsent());
        drop(helper_end);
        spares.retry_removals();
        assert!(spares.mover.is_none() && !spares.has_removals_waiting());
        assert_eq!(fs::read(kept.join("record")).unwrap(), record(199));
        spares.save_record(&kept, record(200));
        assert_eq!(fs::read(kept.join("record")).unwrap(), record(200), "without a mover, at once");
    }

    #[test]
    fn spares_and_what_is_lent_stay_within_the_byte_limit() {
        let scratch = ScratchDir::new("spares");
        let mut spares =
            SpareSegments::create(scratch.join("spare"), 5 << 20, Janitor::in_place(&scratch), None).unwrap();
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
