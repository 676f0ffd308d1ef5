//! The output spool: every job's output on disk, in its directory under the state directory's `jobs/`.
//!
//! Each job has an [`OutputLog`] (`log.rs`): its output in segment files, read back by any number of
//! [`OutputCursor`]s. The [`Spool`] owns what the logs share: the spare segment files a log's next segment is
//! written over (`spares.rs`), the [`Ingester`](ingest::Ingester) that moves output from a job's pipe into its
//! log (`ingest.rs`), and the count of bytes retained across every log that `--max-output-total` caps. Every
//! change to a log's contents goes through the spool, so that count is always exact and costs nothing to check.
//! Three helper processes keep the disk's waits off the loop: the segment mover makes and moves segment files
//! (`mover.rs`), the spool writer writes them (`writer.rs`), and the janitor deletes them (`jobs/janitor.rs`).

mod ingest;
mod log;
pub mod mover;
mod spares;
pub mod writer;

pub use self::ingest::{Drain, PIPE_CAPACITY};
pub use self::log::{OutputCursor, OutputLog, Span, Stream};

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use self::ingest::{Destination, Ingester};
use self::mover::SegmentMover;
pub use self::spares::JobDirs;
use self::spares::SpareSegments;
use self::writer::SpoolWriter;
use super::janitor::Janitor;

/// What one [`Spool::ingest`] did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Ingested {
    /// Where the pipe stands.
    pub drain: Drain,
    /// Output bytes that arrived.
    pub bytes: u64,
}

/// Every job's output log and what they share.
pub struct Spool {
    /// `STATE/jobs`: one directory per job.
    dir: PathBuf,
    /// Retained output per job (`--max-output-bytes`).
    max_per_log: u64,
    /// Retained output across every log (`--max-output-total`).
    max_total: u64,
    /// Output retained across every log, kept as it changes.
    retained_total: u64,
    spares: SpareSegments,
    ingester: Ingester,
}

impl Spool {
    /// Creates `STATE/jobs` (or takes the one a previous server left, whose logs [`Self::recover_log`] reads
    /// back) and `STATE/spare` (which must not exist yet) for logs of at most `max_per_log` bytes each and
    /// `max_total` together, with `janitor` to remove what they no longer keep, `mover` (if any) to make and
    /// move their files off the loop, and `writer` (if any) to write them.
    pub fn create(
        state_dir: &Path,
        max_per_log: u64,
        max_total: u64,
        janitor: Janitor,
        mover: Option<SegmentMover>,
        writer: Option<SpoolWriter>,
    ) -> io::Result<Spool> {
        let dir = state_dir.join("jobs");
        // Output is the server's alone.
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            created => created?,
        }
        let mut spares = SpareSegments::create(state_dir.join("spare"), max_total / 4, janitor, mover)?;
        if let Some(writer) = writer {
            spares.write_through(writer);
        }
        Ok(Spool { dir, max_per_log, max_total, retained_total: 0, spares, ingester: Ingester::default() })
    }

    /// A new, empty log named `name` (a job's id).
    pub fn create_log(&self, name: &str) -> io::Result<OutputLog> {
        OutputLog::create(self.dir.join(name), self.max_per_log)
    }

    /// The new, empty log of a job whose directory `name` the mover made ahead of its start, with the file of
    /// its first segment, `first_segment` ([`Self::make_job_dirs`]).
    pub fn adopt_log(&self, name: &str, first_segment: File) -> OutputLog {
        OutputLog::adopt(self.dir.join(name), self.max_per_log, first_segment)
    }

    /// Asks the segment mover to make a job's directories ahead of its start (see
    /// [`SpareSegments::make_job_dirs`]): its output directory `output` (under [`Self::jobs_dir`]) and its
    /// working directory `work`.
    pub fn make_job_dirs(&mut self, output: &Path, work: &Path) -> Option<u64> {
        self.spares.make_job_dirs(output, work)
    }

    /// Writes a job's record, `bytes`, into its directory `dir` without waiting (see
    /// [`SpareSegments::save_record`]).
    pub fn save_record(&mut self, dir: &Path, bytes: Vec<u8>) {
        self.spares.save_record(dir, bytes);
    }

    /// Where the directories asked for with `ticket` stand.
    pub fn job_dirs(&mut self, ticket: u64) -> JobDirs {
        self.spares.job_dirs(ticket)
    }

    /// The directories asked for with `ticket` are not wanted: they go, now or once made.
    pub fn abandon_job_dirs(&mut self, ticket: u64, output: &Path, work: &Path) {
        self.spares.abandon_job_dirs(ticket, output, work);
    }

    /// The directory that holds one directory per job.
    pub fn jobs_dir(&self) -> &Path {
        &self.dir
    }

    /// Reads back the log of a job a previous server ran, in its directory `name` (see [`OutputLog::recover`]),
    /// within this server's cap per job; returns it and what could not be used of it, one line each.
    pub fn recover_log(
        &mut self,
        name: &str,
        output_end: Option<u64>,
        trust_spares: bool,
    ) -> io::Result<(OutputLog, Vec<String>)> {
        let recovered = OutputLog::recover(self.dir.join(name), self.max_per_log, output_end, trust_spares)?;
        for path in &recovered.unusable {
            self.dispose(path);
        }
        let mut log = recovered.log;
        self.retained_total += log.retained();
        while log.retained() > self.max_per_log && self.discard_oldest_segment(&mut log) > 0 {}
        Ok((log, recovered.problems))
    }

    /// True while the logs together retain more than `--max-output-total`.
    pub fn is_over_total(&self) -> bool {
        self.retained_total > self.max_total
    }

    /// Moves what the pipe `fd` holds into `log` as `stream` output of `job`, at most `budget` bytes, and wakes
    /// the log's readers if anything arrived. The log's own cap applies at once; the total cap is the caller's
    /// to enforce (see [`Self::is_over_total`]), since which job's output goes first is the job table's rule.
    pub fn ingest(
        &mut self,
        log: &mut OutputLog,
        job: &dyn fmt::Display,
        stream: Stream,
        fd: RawFd,
        budget: usize,
    ) -> Ingested {
        let end_before = log.end();
        let drain = self.counted(log, |log, spares, ingester| {
            ingester.ingest(Destination { log, spares, job, stream }, fd, budget)
        });
        let bytes = log.end() - end_before;
        // With a spool writer, readers are woken once it confirms, and what was asked of it goes at the end of
        // the turn's copy (`Self::send_writes`): one message for many pieces, and fewer wake-ups of the writer.
        if bytes > 0 && self.spares.writer().is_none() {
            log.wake_readers();
        }
        Ingested { drain, bytes }
    }

    /// The spool writer's socket, for the loop to watch for its confirmations; `None` without a writer.
    pub fn writer_socket(&mut self) -> Option<RawFd> {
        self.spares.writer().map(|writer| writer.socket())
    }

    /// The segment mover's socket, readable when it answered, while there is a mover.
    pub fn mover_socket(&self) -> Option<RawFd> {
        self.spares.mover_socket()
    }

    /// Takes in every answer the segment mover sent so far.
    pub fn collect_mover_replies(&mut self) {
        self.spares.collect_replies();
    }

    /// Sends the spool writer what the logs' changes asked of it so far (a segment closed, a log removed).
    pub fn send_writes(&mut self) {
        if let Some(writer) = self.spares.writer() {
            writer.flush();
        }
    }

    /// Waits for the spool writer to write out what it was sent, and ends it: a test's look at the files (the
    /// server's shutdown does it in [`Self::finish_removals`]).
    #[cfg(test)]
    pub fn finish_writes(&mut self) {
        self.spares.finish_writes();
    }

    /// Takes the spool writer's confirmations, without waiting: how many commands it has carried out, if more
    /// than before (a log's [`OutputLog::confirm`] takes it from there).
    pub fn receive_confirmations(&mut self) -> Option<u64> {
        let writer = self.spares.writer()?;
        writer.receive().then(|| writer.confirmed())
    }

    /// Why the spool writer is gone, if it is: output taken from jobs may be lost, and the server must stop.
    pub fn writer_failure(&mut self) -> Option<String> {
        let writer = self.spares.writer()?;
        let pid = writer.pid().map_or(String::new(), |pid| format!(" (pid {pid})"));
        writer.failure().map(|err| format!("the spool writer{pid} is gone: {err}"))
    }

    /// Marks `log` complete (its job's pipes are closed) and gives back what a spare held past its last segment's
    /// end.
    pub fn finish(&mut self, log: &mut OutputLog) {
        self.counted(log, |log, spares, _| log.finish(spares));
    }

    /// Discards `log`'s oldest segment unless it is the one being written; returns the bytes freed.
    pub fn discard_oldest_segment(&mut self, log: &mut OutputLog) -> u64 {
        self.counted(log, |log, spares, _| log.discard_oldest_segment(spares))
    }

    /// Deletes `log` and its directory (job evicted, or server shutdown).
    pub fn remove(&mut self, log: &mut OutputLog) {
        self.counted(log, |log, spares, _| log.remove(spares));
    }

    /// Removes `path`, a file or a directory tree (a job's working directory), off the event loop.
    pub fn dispose(&mut self, path: &Path) {
        self.spares.dispose(path);
    }

    /// Hands the janitor what waited for room in its pipe.
    pub fn retry_removals(&mut self) {
        self.spares.retry_removals();
    }

    /// True while removals wait for room in the janitor's pipe.
    pub fn has_removals_waiting(&self) -> bool {
        self.spares.has_removals_waiting()
    }

    /// Waits until everything disposed of is gone (server shutdown, after [`Self::remove`] of every log).
    pub fn finish_removals(&mut self) {
        self.spares.finish_removals();
    }

    /// Runs a change to `log`, keeping the retained total up to date.
    fn counted<R>(
        &mut self,
        log: &mut OutputLog,
        change: impl FnOnce(&mut OutputLog, &mut SpareSegments, &mut Ingester) -> R,
    ) -> R {
        let before = log.retained();
        let result = change(log, &mut self.spares, &mut self.ingester);
        self.retained_total = self.retained_total - before + log.retained();
        result
    }

    /// How output is taken from pipes: tests choose, and check that the state directory allowed their choice.
    #[cfg(test)]
    pub(super) fn ingest_mode(&mut self) -> &mut Ingest {
        &mut self.ingester.mode
    }

    /// Takes output with `read` instead of `splice` from now on, for the fuzz target to drive both paths.
    #[cfg(fuzzing)]
    pub fn read_instead_of_splice(&mut self) {
        self.ingester.mode = Ingest::Read;
    }

    /// Output bytes retained across every log (what `--max-output-total` bounds).
    pub fn retained_total(&self) -> u64 {
        self.retained_total
    }
}

#[cfg(any(test, fuzzing))]
pub(super) use self::ingest::Ingest;
