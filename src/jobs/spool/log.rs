//! [`OutputLog`]: one job's output, in append-only segment files read back with `pread`, so server memory does
//! not grow with output volume and any number of readers can replay it from any offset.
//!
//! Output taken from a job's pipe in one go becomes one *record* in the current segment file: a 5-byte header
//! (`stream: u8`, `len: u32` little-endian) followed by the bytes. Records are written at offsets the log keeps
//! itself (no `O_APPEND`), so a record's data can be spliced straight from the pipe into the file and its header
//! written once its length is known ([`OutputLog::splice_target`], [`OutputLog::commit_spliced`]). Offsets are logical: the count of output bytes
//! (stdout and stderr interleaved in the order the server read them) before a byte, headers excluded. When the
//! retained bytes pass the job's cap, whole segments are discarded from the front and [`OutputLog::start`] moves
//! forward; an offset never changes meaning. A discarded segment's file may become a spare that a later
//! segment, of this job or another, is written over ([`SpareSegments`], which the [`Spool`](super::Spool) lends
//! every log's writes): a segment's records end where the log
//! says, not where its file ends. Readers hold an [`OutputCursor`] with their own open segment file; one whose
//! offset fell behind [`OutputLog::start`] jumps forward before it reads again, never reading a discarded file.
//!
//! Every segment file begins with a [`SEGMENT_HEADER_LEN`]-byte header: the magic `RUNNELSG`, a format
//! version, flags, the logical offset of the segment's first byte, and whose segment it is (its index and its
//! job's directory name). With it, a server that restarts (or starts after a crash) rebuilds a job's log from
//! its files alone ([`OutputLog::recover`]): it walks each segment's records until the first that is not whole.
//! What it must never read as output is what a file held before: a segment written over a spare has the spare's
//! old records past its own end, and until its own header is written, the spare's header (which names another
//! segment, and is refused). So every record is written data first, then five zero bytes after it (an end
//! mark), then its header over the previous end mark, the length before the stream tag (a tag of 0 is no
//! record, and a write the server's death cuts short between two pages leaves the tag unwritten): whenever the
//! server dies, and whatever write failed before, the walk stops at an end mark or after a record that is whole.
//!
//! A reader that starts at an arbitrary offset must find the record holding it. Each segment keeps a sparse
//! index in memory: the logical offset and file position of the first record header at or past every
//! [`INDEX_STRIDE`] bytes of the file. Opening at an offset is then one binary search and one `pread` of at
//! most a stride, whose headers are walked in memory, however small the records the job wrote (walking the
//! headers one `pread` each took 19.5 s for 50 readers near the end of 37 MB written in tiny pieces). The index
//! costs 16 bytes per stride of retained output: 2 MiB for 8 GiB.

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::task::Waker;

use super::mover::segment_path;
use super::spares::{Prepared, SpareSegments};
use super::writer::{SegmentFile, SpliceTarget};

/// Which of the job's streams a byte came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The stream's place in arrays kept per stream: stdout first.
    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
    fn from_tag(tag: u8) -> io::Result<Stream> {
        match tag {
            1 => Ok(Stream::Stdout),
            2 => Ok(Stream::Stderr),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("corrupt output record tag {tag}"))),
        }
    }
}

/// Bytes of record header in front of every pipe read stored in a segment.
pub const RECORD_HEADER_LEN: usize = 5;

/// Bytes of the header every segment file begins with (see the module documentation): magic, version, flags,
/// first offset, index, and [`OWNER_LEN`] bytes of its job's directory name.
pub const SEGMENT_HEADER_LEN: u64 = 32 + OWNER_LEN as u64;
/// Bytes of a job's directory name a segment header keeps (a job id's 36, zero-padded).
const OWNER_LEN: usize = 40;
const SEGMENT_MAGIC: &[u8; 8] = b"RUNNELSG";
const SEGMENT_VERSION: u32 = 1;
/// Segment flag: written over a spare (its file held older output).
const WRITTEN_OVER_SPARE: u32 = 1;
/// What follows the last record of a segment written over a spare.
const END_MARK: [u8; RECORD_HEADER_LEN] = [0; RECORD_HEADER_LEN];

/// Smallest and largest segment: small enough that the cap is honoured closely (a cap keeps between
/// cap − segment and cap bytes; a segment whose next file the mover was late with can reach twice its size, see
/// [`OVERDUE_SEGMENTS`]), large enough that a fast job does not create files at a high rate.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// A busy job writes on past its segment's size while the mover makes its next file, up to this many times the
/// size; past that it makes the one after itself.
const OVERDUE_SEGMENTS: u64 = 2;

/// File bytes between two points of a segment's index (see the module documentation).
const INDEX_STRIDE: u64 = 64 * 1024;

#[derive(Debug)]
struct Segment {
    index: u64,
    /// Logical offset of the segment's first byte.
    start: u64,
    /// Logical bytes in the segment.
    len: u64,
    /// Bytes in the file (records with headers).
    file_len: u64,
    /// The file has disk blocks up to this offset: past `file_len` only when it was a spare, whose old bytes
    /// there hold nothing readable.
    blocks_to: u64,
    /// The size of the spare this segment is written over, until it is settled with the spares (see
    /// [`SpareSegments::settle`]); 0 for a new file.
    lent: u64,
    /// The sparse index: (logical offset, file position) of the first record header at or past every
    /// [`INDEX_STRIDE`] bytes of the file, the first record's included.
    index_points: Vec<(u64, u64)>,
    /// Written over a spare: every record is followed by an end mark (see the module documentation).
    over_spare: bool,
}

impl Segment {
    fn new(index: u64, start: u64, blocks_to: u64, lent: u64) -> Segment {
        Segment {
            index,
            start,
            len: 0,
            file_len: SEGMENT_HEADER_LEN,
            blocks_to,
            lent,
            index_points: Vec::new(),
            over_spare: lent > 0,
        }
    }

    /// Accounts for a record of `len` data bytes at the segment's end, whose output starts at `logical`.
    fn add_record(&mut self, logical: u64, len: u64) {
        let next_point = self.index_points.last().map_or(0, |&(_, position)| position + INDEX_STRIDE);
        if self.file_len >= next_point {
            self.index_points.push((logical, self.file_len));
        }
        self.len += len;
        self.file_len += RECORD_HEADER_LEN as u64 + len;
    }

    /// The segment file's header.
    fn header(&self, owner: &[u8; OWNER_LEN]) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let flags = if self.over_spare { WRITTEN_OVER_SPARE } else { 0 };
        let (version, flags, start) = (SEGMENT_VERSION.to_le_bytes(), flags.to_le_bytes(), self.start.to_le_bytes());
        let index = self.index.to_le_bytes();
        let fields = SEGMENT_MAGIC.iter().chain(&version).chain(&flags).chain(&start).chain(&index).chain(owner);
        let mut header = [0; SEGMENT_HEADER_LEN as usize];
        for (byte, value) in header.iter_mut().zip(fields) {
            *byte = *value;
        }
        header
    }
}

/// One job's spooled output.
#[derive(Debug)]
pub struct OutputLog {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// The segment file being written: open on the loop, or held by the spool writer (`writer.rs`).
    writer: Option<SegmentFile>,
    next_index: u64,
    /// The mover's ticket for the segment file `next_index` it is making ahead of need (see
    /// [`SpareSegments::prepare`]).
    next_segment: Option<u64>,
    /// The empty file of segment 0, made by the mover with the log's directory: the first output is written
    /// through it, and the loop looks up no name before a job's output fills a segment.
    first_segment: Option<File>,
    segment_limit: u64,
    retention: u64,
    end: u64,
    /// Output the spool writer has not written yet: the number of the last command of each record (or of the
    /// last of several, see [`MAX_UNCONFIRMED_MARKS`]) and the log's end after it. Readers read up to
    /// [`Self::readable`], the end before the first of these; without a writer, always empty.
    unconfirmed: VecDeque<(u64, u64)>,
    readable: u64,
    finished: bool,
    waiters: Vec<Waker>,
}

/// Marks kept of one log's output on its way to the disk; past this the newest mark covers several records, and
/// readers see them in one step.
const MAX_UNCONFIRMED_MARKS: usize = 16;

/// A span of output ready to be read: `len` bytes of `stream` starting at logical `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub stream: Stream,
    pub len: usize,
    /// Where the span's first byte is in its spool file (readers align their buffers to it).
    pub position: u64,
}

/// A reader's position. Opened lazily; holds one segment file open while reading it.
#[derive(Debug)]
pub struct OutputCursor {
    offset: u64,
    file: Option<CursorFile>,
}

#[derive(Debug)]
struct CursorFile {
    index: u64,
    file: File,
    /// Position in the file of the next unread data byte (or of the next header when `record_left` is 0).
    position: u64,
    record_left: u64,
    record_stream: Stream,
}

impl OutputCursor {
    pub fn new(offset: u64) -> Self {
        OutputCursor { offset, file: None }
    }
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl OutputLog {
    /// Creates the spool directory `dir` (which must not exist yet) for a job whose retained output is capped at
    /// `retention` bytes.
    pub(super) fn create(dir: PathBuf, retention: u64) -> io::Result<OutputLog> {
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(OutputLog::empty(dir, retention, None))
    }

    /// The log of the spool directory `dir`, made by the segment mover ahead of the job's start with the empty
    /// file of its first segment, `first_segment`.
    pub(super) fn adopt(dir: PathBuf, retention: u64, first_segment: File) -> OutputLog {
        OutputLog::empty(dir, retention, Some(first_segment))
    }

    fn empty(dir: PathBuf, retention: u64, first_segment: Option<File>) -> OutputLog {
        let segment_limit = (retention / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        OutputLog {
            dir,
            segments: VecDeque::new(),
            writer: None,
            next_index: 0,
            next_segment: None,
            first_segment,
            segment_limit,
            retention,
            end: 0,
            unconfirmed: VecDeque::new(),
            readable: 0,
            finished: false,
            waiters: Vec::new(),
        }
    }

    /// Rebuilds, from its directory `dir`, the log of a job a previous server ran (see the module
    /// documentation), complete: its job has ended. `output_end` is how much output the job's record says it
    /// produced, if it says; `trust_spares` is false after the machine itself went down while a server ran,
    /// when a segment written over a spare may hold older bytes the disk never saw overwritten.
    ///
    /// What cannot be used is left out and said why: a segment that is not one, does not follow the one
    /// before it, or may hold older output, and every segment after it. Bytes past a segment's last whole
    /// record are cut off.
    pub(super) fn recover(
        dir: PathBuf,
        retention: u64,
        output_end: Option<u64>,
        trust_spares: bool,
    ) -> io::Result<Recovered> {
        let mut indices: Vec<u64> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.len() == 8 && name.bytes().all(|b| b.is_ascii_digit()) {
                indices.extend(name.parse::<u64>().ok());
            }
        }
        indices.sort_unstable();
        let segment_limit = (retention / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        let mut log = OutputLog {
            dir,
            segments: VecDeque::new(),
            writer: None,
            next_index: indices.last().map_or(0, |last| last + 1),
            next_segment: None,
            first_segment: None,
            segment_limit,
            retention,
            end: 0,
            unconfirmed: VecDeque::new(),
            readable: 0,
            finished: true,
            waiters: Vec::new(),
        };
        let (mut problems, mut unusable) = (Vec::new(), Vec::new());
        for index in indices {
            let path = log.segment_path(index);
            if !problems.is_empty() {
                unusable.push(path);
                continue;
            }
            let expected_start = log.segments.back().map(|s| s.start + s.len);
            match recover_segment(&path, index, &log.owner(), expected_start, trust_spares) {
                Ok(segment) if segment.len == 0 => unusable.push(path),
                Ok(segment) => {
                    log.end = segment.start + segment.len;
                    log.segments.push_back(segment);
                }
                // A file made for a segment (or a spare moved in), never written: it held no output, wherever it
                // is (a segment after it must still continue the one before). Unless the machine went down: then
                // its own header may be what the disk lost.
                // Nor if the job wrote nothing at all (the first segment is made with the job's directory).
                Err(SegmentProblem::NeverWritten(_)) if trust_spares || output_end == Some(0) => unusable.push(path),
                Err(SegmentProblem::NeverWritten(problem) | SegmentProblem::Unusable(problem)) => {
                    problems.push(format!("output segment {}: {problem}", path.display()));
                    unusable.push(path);
                }
            }
        }
        match output_end {
            Some(end) if log.segments.is_empty() => log.end = end,
            Some(end) if end > log.end => {
                problems.push(format!("output from offset {} to {end} is missing from {}", log.end, log.dir.display()))
            }
            Some(end) if end < log.end => {
                // More than the job wrote: what is past its end is not its output.
                problems.push(format!("its segments hold output past the {end} bytes its record says; cut there"));
                while log.segments.back().is_some_and(|s| s.start >= end) {
                    if let Some(segment) = log.segments.pop_back() {
                        unusable.push(log.segment_path(segment.index));
                    }
                }
                // What is left starts before `end` (or nothing is left): `end` is where the output ends.
                if let Some(last) = log.segments.back_mut() {
                    last.len = last.len.min(end - last.start);
                }
                log.end = end;
            }
            _ => {}
        }
        Ok(Recovered { log, unusable, problems })
    }

    /// The job's directory, which holds its segments (and its record, see `jobs::record`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Total bytes of output ever produced.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// First offset still retained.
    pub fn start(&self) -> u64 {
        self.segments.front().map_or(self.end, |s| s.start)
    }

    /// Bytes retained on disk (logical).
    pub fn retained(&self) -> u64 {
        self.end - self.start()
    }

    /// Segments retained, for the fuzz target's check of the cap: past it, only the one being written remains.
    #[cfg(fuzzing)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// True once no more output will come (the job ended and its pipes reached end of file).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// How far readers may read: the end of the output the spool writer has written (all of it without one).
    pub fn readable(&self) -> u64 {
        if self.unconfirmed.is_empty() {
            self.end
        } else {
            self.readable
        }
    }

    /// True once every byte of output is in the spool files and no more will come.
    pub fn is_complete(&self) -> bool {
        self.finished && self.unconfirmed.is_empty()
    }

    /// True while some of the output is on its way to the disk (see [`Self::confirm`]).
    pub fn awaits_writer(&self) -> bool {
        !self.unconfirmed.is_empty()
    }

    /// Takes in that the spool writer has carried out its first `confirmed` commands: readers may read what they
    /// wrote, and are woken if there is more. True while output of this log is still on its way.
    pub fn confirm(&mut self, confirmed: u64) -> bool {
        let before = self.readable();
        while let Some(&(last_command, end)) = self.unconfirmed.front() {
            if last_command >= confirmed {
                break;
            }
            self.readable = end;
            self.unconfirmed.pop_front();
        }
        if self.readable() > before || self.is_complete() {
            self.wake_readers();
        }
        !self.unconfirmed.is_empty()
    }

    /// Appends one record. `record` holds [`RECORD_HEADER_LEN`] spare bytes followed by the data; the header is
    /// filled in here so the whole record goes to the file in one `write`.
    pub(super) fn append(&mut self, spares: &mut SpareSegments, stream: Stream, record: &mut [u8]) -> io::Result<()> {
        let Some((_, data)) = record.split_at_checked(RECORD_HEADER_LEN) else {
            return Err(io::Error::other("an output record without room for its header"));
        };
        let len = data.len();
        if len == 0 {
            return Ok(());
        }
        let header = record_header(stream, len);
        self.roll_if_full(spares)?;
        let (segment, file) = self.writing()?;
        let SegmentFile::Here(file) = file else {
            return Err(io::Error::other("output read into memory while the spool writer writes the spool"));
        };
        file.write_all_at(data, segment.file_len + RECORD_HEADER_LEN as u64)?;
        commit_record(file, segment.file_len, &header)?;
        self.recorded(spares, len);
        Ok(())
    }

    /// Where the data of the next record goes: the segment file being written and the offset just past the
    /// record's header. Write the data there (e.g. with `splice`), then call [`Self::commit_spliced`]; until then
    /// the record is invisible to readers, and an uncommitted one is simply overwritten by the next.
    pub(super) fn splice_target(&mut self, spares: &mut SpareSegments) -> io::Result<(SpliceTarget, u64)> {
        self.roll_if_full(spares)?;
        let (segment, file) = self.writing()?;
        let target = match file {
            SegmentFile::Here(file) => SpliceTarget::File(file.as_raw_fd()),
            SegmentFile::Writer(number) => SpliceTarget::Writer(*number),
        };
        Ok((target, segment.file_len + RECORD_HEADER_LEN as u64))
    }

    /// Completes the record whose `len` data bytes were written where [`Self::splice_target`] said, by writing
    /// its header in front of them.
    pub(super) fn commit_spliced(&mut self, spares: &mut SpareSegments, stream: Stream, len: usize) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (segment, file) = self.writing()?;
        let header = record_header(stream, len);
        for (at, bytes) in commit_writes(segment.file_len, &header) {
            spares.write_segment(file, bytes, at)?;
        }
        self.recorded(spares, len);
        Ok(())
    }

    /// The segment being written and its file: there is one from the first record's roll until the output ends.
    fn writing(&self) -> io::Result<(&Segment, &SegmentFile)> {
        match (self.segments.back(), self.writer.as_ref()) {
            (Some(segment), Some(file)) => Ok((segment, file)),
            _ => Err(io::Error::other("no output segment is being written (the output has ended)")),
        }
    }

    fn roll_if_full(&mut self, spares: &mut SpareSegments) -> io::Result<()> {
        if self.writer.is_none() || self.segments.back().is_some_and(|s| s.file_len >= self.segment_limit) {
            self.roll(spares)?;
        }
        Ok(())
    }

    /// Accounts for a record of `len` data bytes just written at the end of the current segment.
    fn recorded(&mut self, spares: &mut SpareSegments, len: usize) {
        let Some(segment) = self.segments.back_mut() else { return };
        segment.add_record(self.end, len as u64);
        segment.blocks_to = segment.blocks_to.max(segment.file_len);
        if let Some(last_command) = spares.writer_last_command() {
            if self.unconfirmed.is_empty() {
                self.readable = self.end;
            }
            let end = self.end + len as u64;
            let marks = self.unconfirmed.len();
            match self.unconfirmed.back_mut() {
                Some(mark) if marks >= MAX_UNCONFIRMED_MARKS => *mark = (last_command, end),
                _ => self.unconfirmed.push_back((last_command, end)),
            }
        }
        self.end += len as u64;
        while self.retained() > self.retention && self.segments.len() > 1 {
            self.discard_oldest_segment(spares);
        }
    }

    /// Closes the segment file being written (through the mover: see [`SpareSegments::close_segment_file`]),
    /// giving back the disk blocks past what it holds (a spare's old bytes): truncating a file to its own length
    /// frees the blocks past its end (a hole cannot be punched there).
    fn close_writer(&mut self, spares: &mut SpareSegments) {
        let Some(file) = self.writer.take() else { return };
        let Some(segment) = self.segments.back_mut() else { return spares.close_segment(file, None) };
        spares.settle(std::mem::take(&mut segment.lent));
        let cut_to = (segment.blocks_to > segment.file_len).then_some(segment.file_len);
        segment.blocks_to = segment.file_len;
        spares.close_segment(file, cut_to);
    }

    /// Starts a new segment. A job whose last segment filled up is likely to fill this one too: it writes over
    /// a spare if there is one, and the mover makes its next segment file while it fills this one, so that the
    /// loop looks up no name for it (see `mover.rs`). Until that file is made the job writes on past the
    /// segment's size. A log's first segment file is made with its directory. Otherwise the loop makes the file
    /// itself: a spare or a new file.
    fn roll(&mut self, spares: &mut SpareSegments) -> io::Result<()> {
        let overdue = self.segments.back().is_some_and(|s| s.file_len >= OVERDUE_SEGMENTS * self.segment_limit);
        let made_ahead = match self.first_segment.take() {
            // The log's first, made with its directory.
            Some(file) => Some(Prepared::Ready(file, 0)),
            None => self.next_segment.map(|ticket| spares.take_prepared(ticket)),
        };
        let prepared = match (self.next_segment, made_ahead) {
            (_, Some(Prepared::Waiting)) if self.writer.is_some() && !overdue => return Ok(()),
            (Some(ticket), Some(Prepared::Waiting)) => {
                // The mover is that far behind: its file goes when made, and this log makes the one after it.
                spares.abandon(ticket, &self.segment_path(self.next_index));
                self.next_index += 1;
                None
            }
            (_, Some(Prepared::Failed)) => {
                // Not made, or made by a mover gone since (that may yet finish it): whatever is at its path goes,
                // and this log makes the one after it.
                spares.dispose(&self.segment_path(self.next_index));
                self.next_index += 1;
                None
            }
            (_, prepared) => prepared,
        };
        self.next_segment = None;
        let index = self.next_index;
        let path = self.segment_path(index);
        let full = self.segments.back_mut().filter(|s| s.file_len >= self.segment_limit);
        let busy = full.is_some();
        if let Some(full) = full {
            // Filled up: whatever spare it was written over now holds only counted output.
            spares.settle(std::mem::take(&mut full.lent));
        }
        let (file, lent) = match prepared {
            Some(Prepared::Ready(file, len)) => (file, len),
            _ => match busy.then(|| spares.take(&path)).flatten() {
                Some((file, len)) => (file, len),
                // Not O_APPEND: `splice` refuses such files. Every write gives its offset.
                None => (OpenOptions::new().create_new(true).write(true).mode(0o600).open(&path)?, 0),
            },
        };
        let segment = Segment::new(index, self.end, lent, lent);
        // An end mark at once: over a spare, the spare's old first record follows the header.
        let header: Vec<u8> = segment.header(&self.owner()).iter().chain(&END_MARK).copied().collect();
        let file = spares.adopt(file);
        if let Err(err) = spares.write_segment(&file, &header, 0) {
            // Not a segment: what it was lent is the spares' again, the file goes, and the next roll makes the
            // one after it.
            spares.settle(lent);
            spares.close_segment(file, None);
            spares.dispose(&path);
            self.next_index += 1;
            return Err(err);
        }
        self.next_index += 1;
        // Its next file asked for before the full one is closed: the mover serves them in order, and a close
        // can wait for the disk.
        if busy {
            self.next_segment = spares.prepare(&self.segment_path(self.next_index));
        }
        if let Some(full) = self.writer.replace(file) {
            spares.close_segment(full, None);
        }
        self.segments.push_back(segment);
        Ok(())
    }

    /// Gives up the segment the mover was making for this log, if any (its output ended or it is removed).
    fn abandon_next_segment(&mut self, spares: &mut SpareSegments) {
        if let Some(ticket) = self.next_segment.take() {
            spares.abandon(ticket, &self.segment_path(self.next_index));
        }
    }

    fn segment_path(&self, index: u64) -> PathBuf {
        segment_path(&self.dir, index)
    }

    /// What the segment headers of this log say it is: its directory's name.
    fn owner(&self) -> [u8; OWNER_LEN] {
        owner_of(&self.dir)
    }

    /// Discards the oldest segment if it is not the one being written, its file becoming a spare or deleted;
    /// returns the logical bytes freed.
    pub(super) fn discard_oldest_segment(&mut self, spares: &mut SpareSegments) -> u64 {
        if self.writer.is_some() && self.segments.len() == 1 {
            return 0;
        }
        let Some(segment) = self.segments.pop_front() else { return 0 };
        spares.settle(segment.lent);
        spares.keep_or_delete(&self.segment_path(segment.index), segment.blocks_to);
        segment.len
    }

    /// Marks the output complete: no more appends; wakes every waiting reader so it can end its stream.
    pub(super) fn finish(&mut self, spares: &mut SpareSegments) {
        self.abandon_next_segment(spares);
        self.close_writer(spares);
        self.finished = true;
        self.wake_readers();
    }

    /// Remembers a reader to wake when output is appended or finished.
    pub fn wait_for_output(&mut self, waker: &Waker) {
        crate::reactor::remember_waker(&mut self.waiters, waker);
    }

    /// Wakes every reader waiting for output; called once per batch of appends, not per record.
    pub fn wake_readers(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }

    /// Where `cursor` can read next, up to `max` bytes, without crossing a record (so one stream per span).
    /// `Ok(None)` when the cursor has read everything produced so far. A cursor behind [`Self::start`] first
    /// jumps forward to it.
    pub fn next_span(&self, cursor: &mut OutputCursor, max: usize) -> io::Result<Option<Span>> {
        if cursor.offset < self.start() {
            cursor.offset = self.start();
            cursor.file = None;
        }
        if cursor.offset >= self.readable() {
            return Ok(None);
        }
        loop {
            let Some(at) = cursor.file.as_mut() else {
                self.open_at(cursor)?;
                continue;
            };
            if at.record_left > 0 {
                let len = (at.record_left as usize).min(max);
                return Ok(Some(Span { offset: cursor.offset, stream: at.record_stream, len, position: at.position }));
            }
            // Segments are discarded oldest first, so one still being read is retained (the offset check above).
            let (file_len, logical_end) = self.segment_ends(at.index).unwrap_or((0, 0));
            if at.position >= file_len {
                // End of this segment: go on in the next one.
                cursor.file = None;
                continue;
            }
            if let Err(err) = read_header(at, cursor.offset, file_len, logical_end) {
                // The reader does not stay on a record it refused: asked again, it fails again.
                cursor.file = None;
                return Err(err);
            }
        }
    }

    /// Appends the span [`Self::next_span`] returned (its first `len` bytes, at most `span.len`) to `dst` and
    /// advances the cursor past them.
    pub fn read_span(&self, cursor: &mut OutputCursor, len: usize, dst: &mut bytes::BytesMut) -> io::Result<()> {
        let at = cursor.file.as_mut().ok_or_else(|| io::Error::other("read_span without a span from next_span"))?;
        debug_assert!(len as u64 <= at.record_left);
        crate::sys::pread_append(at.file.as_raw_fd(), dst, len, at.position)?;
        at.position += len as u64;
        at.record_left -= len as u64;
        cursor.offset += len as u64;
        Ok(())
    }

    /// Where segment `index` ends, if it is retained: its file's bytes, and the logical offset past its output.
    fn segment_ends(&self, index: u64) -> Option<(u64, u64)> {
        self.segments.iter().find(|s| s.index == index).map(|s| (s.file_len, s.start + s.len))
    }

    /// Opens the segment holding `cursor.offset` and finds the record holding it: from the index point at or
    /// before it, one `pread` of at most a stride and a walk over the headers in memory.
    fn open_at(&self, cursor: &mut OutputCursor) -> io::Result<()> {
        let offset = cursor.offset;
        let segment = self
            .segments
            .iter()
            .find(|s| offset >= s.start && offset < s.start + s.len)
            .ok_or_else(|| io::Error::other(format!("no retained segment holds offset {offset}")))?;
        let file = File::open(self.segment_path(segment.index))?;
        let point = segment.index_points.partition_point(|&(logical, _)| logical <= offset);
        // The first record is always a point, and `offset` is at or past it.
        let &(mut logical, from) = point
            .checked_sub(1)
            .and_then(|point| segment.index_points.get(point))
            .ok_or_else(|| io::Error::other(format!("no index point at or before offset {offset}")))?;
        // Every header from `from` to the record holding `offset` lies within a stride of it: the first header
        // past the stride would be the next index point.
        let mut headers = vec![0; (INDEX_STRIDE as usize + RECORD_HEADER_LEN).min((segment.file_len - from) as usize)];
        // The spool writer may not have written all of that yet, but every header up to `offset`'s (which is
        // below the readable end) is there.
        let read = read_up_to(&file, &mut headers, from)?;
        headers.truncate(read);
        let mut at = 0;
        loop {
            let header = headers
                .get(at..at + RECORD_HEADER_LEN)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "output index points past a record"))?;
            let (record_stream, record_len) = parse_header(header, from + at as u64, segment.file_len)?;
            if offset < logical + record_len {
                if logical + record_len > segment.start + segment.len {
                    return Err(past_the_segment(from + at as u64, logical + record_len, segment.start + segment.len));
                }
                let skip = offset - logical;
                let position = from + (at + RECORD_HEADER_LEN) as u64 + skip;
                let record_left = record_len - skip;
                cursor.file = Some(CursorFile { index: segment.index, file, position, record_left, record_stream });
                return Ok(());
            }
            logical += record_len;
            at += RECORD_HEADER_LEN + record_len as usize;
        }
    }

    /// Discards every retained segment (into `spares` while they take them) and deletes the spool directory
    /// (job evicted, or server shutdown).
    pub(super) fn remove(&mut self, spares: &mut SpareSegments) {
        self.abandon_next_segment(spares);
        if let Some(file) = self.writer.take() {
            spares.close_segment(file, None);
        }
        for segment in std::mem::take(&mut self.segments) {
            spares.settle(segment.lent);
            spares.keep_or_delete(&self.segment_path(segment.index), segment.blocks_to);
        }
        spares.dispose(&self.dir);
    }
}

/// A log rebuilt by [`OutputLog::recover`], and what of its directory could not be used.
#[derive(Debug)]
pub struct Recovered {
    pub log: OutputLog,
    /// Segment files left out, to be removed.
    pub unusable: Vec<PathBuf>,
    /// Why they were left out, or what is missing, one line each.
    pub problems: Vec<String>,
}

/// Reads back the segment file at `path`: its header, then its records up to the first that is not whole,
/// cutting the file there. `expected_start` is where the segment before it ended.
/// Why a segment file cannot be read back.
enum SegmentProblem {
    /// It has no header of its own, so it never held a record of this segment (one is written only after it):
    /// a file made or a spare moved in for it, the server gone before it wrote there.
    NeverWritten(String),
    Unusable(String),
}

impl From<String> for SegmentProblem {
    fn from(problem: String) -> SegmentProblem {
        SegmentProblem::Unusable(problem)
    }
}

fn recover_segment(
    path: &std::path::Path,
    index: u64,
    owner: &[u8; OWNER_LEN],
    expected_start: Option<u64>,
    trust_spares: bool,
) -> Result<Segment, SegmentProblem> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let size = file.metadata().map_err(|e| format!("cannot read its size: {e}"))?.len();
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|_| SegmentProblem::NeverWritten(format!("{size} bytes, too short for a segment header")))?;
    let word = |at: usize| header.get(at..at + 4).and_then(|w| w.try_into().ok()).map_or(0, u32::from_le_bytes);
    let start = header.get(16..24).and_then(|w| w.try_into().ok()).map_or(0, u64::from_le_bytes);
    if header.get(..8) != Some(&SEGMENT_MAGIC[..]) {
        return Err("not a runnel output segment (no RUNNELSG header)".to_string().into());
    }
    if word(8) != SEGMENT_VERSION {
        return Err(format!("format version {}, and this runnel reads version {SEGMENT_VERSION}", word(8)).into());
    }
    let named = header.get(24..32).and_then(|w| w.try_into().ok()).map(u64::from_le_bytes);
    if named != Some(index) || header.get(32..) != Some(&owner[..]) {
        // A spare taken for this segment before its own header was written: another segment's file.
        return Err(SegmentProblem::NeverWritten(
            "its header names another segment (a file being reused when the server stopped)".into(),
        ));
    }
    let over_spare = word(12) & WRITTEN_OVER_SPARE != 0;
    if over_spare && !trust_spares {
        return Err("written over an older segment's file while the machine went down: it may hold older output"
            .to_string()
            .into());
    }
    if let Some(expected) = expected_start.filter(|&expected| expected != start) {
        return Err(format!("it starts at offset {start}, where the output before it ends at {expected}").into());
    }
    let mut segment = Segment::new(index, start, size, 0);
    segment.over_spare = over_spare;
    // Headers are read a stride at a time, so small records cost no read each.
    let mut buffer = vec![0u8; INDEX_STRIDE as usize];
    let (mut buffer_at, mut buffer_len) = (0u64, 0usize);
    loop {
        let at = segment.file_len;
        if at + RECORD_HEADER_LEN as u64 > size {
            break;
        }
        if at < buffer_at || at + RECORD_HEADER_LEN as u64 > buffer_at + buffer_len as u64 {
            buffer_len = (size - at).min(INDEX_STRIDE) as usize;
            let Some(window) = buffer.get_mut(..buffer_len) else { break };
            file.read_exact_at(window, at).map_err(|e| format!("cannot read it: {e}"))?;
            buffer_at = at;
        }
        let from = (at - buffer_at) as usize;
        let Some(header) = buffer.get(from..from + RECORD_HEADER_LEN) else { break };
        // An end mark, a record not whole, or the end of what was written.
        let Ok((_, len)) = parse_header(header, at, size) else { break };
        segment.add_record(segment.start + segment.len, len);
    }
    if size > segment.file_len {
        file.set_len(segment.file_len).map_err(|e| format!("cannot cut it after its last record: {e}"))?;
    }
    segment.blocks_to = segment.file_len;
    Ok(segment)
}

/// Reads into `buf` from `at` until it is full or the file ends; how many bytes were read.
fn read_up_to(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut read = 0;
    while let Some(room) = buf.get_mut(read..).filter(|room| !room.is_empty()) {
        match file.read_at(room, at + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(read)
}

/// Completes the record at `position` whose data is in place (see [`commit_writes`]).
fn commit_record(file: &File, position: u64, header: &[u8; RECORD_HEADER_LEN]) -> io::Result<()> {
    commit_writes(position, header).iter().try_for_each(|(at, bytes)| file.write_all_at(bytes, *at))
}

/// The writes that complete the record at `position` whose data is in place, as (offset, bytes), in the order
/// they must reach the file: an end mark after its data, then its header over the end mark before it, the
/// length first and the stream tag last (see the module documentation).
fn commit_writes(position: u64, header: &[u8; RECORD_HEADER_LEN]) -> [(u64, &[u8]); 3] {
    let [tag, len @ ..] = header;
    let data_len = u64::from(u32::from_le_bytes(*len));
    [
        (position + RECORD_HEADER_LEN as u64 + data_len, &END_MARK[..]),
        (position + 1, &len[..]),
        (position, std::slice::from_ref(tag)),
    ]
}

/// A job directory's name as segment headers keep it: its first [`OWNER_LEN`] bytes, zero-padded.
fn owner_of(dir: &std::path::Path) -> [u8; OWNER_LEN] {
    let mut owner = [0; OWNER_LEN];
    let name = dir.file_name().map(|name| name.as_encoded_bytes()).unwrap_or_default();
    for (byte, value) in owner.iter_mut().zip(name) {
        *byte = *value;
    }
    owner
}

fn record_header(stream: Stream, len: usize) -> [u8; RECORD_HEADER_LEN] {
    #[allow(clippy::expect_used, reason = "a record is at most one pipe read or splice, far below 4 GiB")]
    let len = u32::try_from(len).expect("records are far smaller than 4 GiB").to_le_bytes();
    [stream.tag(), len[0], len[1], len[2], len[3]]
}

/// Reads the record header at the cursor's position in a segment of `file_len` bytes.
/// Reads the record header at the cursor's position, whose output starts at logical `offset`, in a segment of
/// `file_len` bytes whose output ends at `logical_end`; the cursor is left as it was if the header is refused.
fn read_header(at: &mut CursorFile, offset: u64, file_len: u64, logical_end: u64) -> io::Result<()> {
    let mut header = [0u8; RECORD_HEADER_LEN];
    at.file.read_exact_at(&mut header, at.position)?;
    let (stream, len) = parse_header(&header, at.position, file_len)?;
    if offset + len > logical_end {
        return Err(past_the_segment(at.position, offset + len, logical_end));
    }
    (at.record_stream, at.record_left) = (stream, len);
    at.position += RECORD_HEADER_LEN as u64;
    Ok(())
}

/// A record whose output would end at logical offset `ends` in a segment whose output ends at `segment_end`.
fn past_the_segment(position: u64, ends: u64, segment_end: u64) -> io::Error {
    let message =
        format!("corrupt output record at {position}: it would end at offset {ends}, past its segment's {segment_end}");
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The stream and data length of the record whose header, `header`, is at `position` in a segment of
/// `file_len` bytes. The server wrote the file, but it is a file: a header damaged on disk (a torn write, a
/// stray writer) that claims more than the segment holds must end the readers of that log with an error, not
/// send bytes from past the segment's output. (A length damaged shorter, or data damaged, cannot be told from
/// what was written: records carry no checksum.)
fn parse_header(header: &[u8], position: u64, file_len: u64) -> io::Result<(Stream, u64)> {
    let &[tag, a, b, c, d] = header else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "output record header cut short"));
    };
    let stream = Stream::from_tag(tag)?;
    let len = u64::from(u32::from_le_bytes([a, b, c, d]));
    if position + RECORD_HEADER_LEN as u64 + len > file_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt output record at {position}: {len} bytes would pass the segment's end ({file_len})"),
        ));
    }
    Ok((stream, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    /// A job's log and the spares it shares, in a scratch directory.
    struct TestLog {
        log: OutputLog,
        spares: SpareSegments,
        root: ScratchDir,
    }

    impl TestLog {
        fn new(name: &str, retention: u64) -> TestLog {
            let root = ScratchDir::new(&format!("output-{name}"));
            let log = OutputLog::create(root.join("log"), retention).unwrap();
            let spares = SpareSegments::create(
                root.join("spare"),
                1 << 30,
                crate::jobs::janitor::Janitor::in_place(&root),
                None,
            )
            .unwrap();
            TestLog { log, spares, root }
        }

        fn append(&mut self, stream: Stream, data: &[u8]) {
            let mut record = vec![0u8; RECORD_HEADER_LEN];
            record.extend_from_slice(data);
            self.log.append(&mut self.spares, stream, &mut record).unwrap();
        }

        fn remove(&mut self) {
            self.log.remove(&mut self.spares);
        }
    }

    fn read_all(log: &OutputLog, cursor: &mut OutputCursor, max: usize) -> Vec<(u64, Stream, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(span) = log.next_span(cursor, max).unwrap() {
            let mut buf = bytes::BytesMut::new();
            log.read_span(cursor, span.len, &mut buf).unwrap();
            out.push((span.offset, span.stream, buf.to_vec()));
        }
        out
    }

    /// A log at an 8 MiB cap (1 MiB segments) after records of many sizes, left as a crash leaves it: not
    /// finished, the last segment written over a spare whose older records lie past its end, and a splice
    /// begun and never committed.
    fn crashed_log(name: &str) -> TestLog {
        let mut spool = TestLog::new(name, 8 << 20);
        for i in 0..300usize {
            let len = [1, 7, 300, 70_000, 190_000][i % 5] + i;
            spool.append(if i % 3 == 0 { Stream::Stderr } else { Stream::Stdout }, &vec![i as u8; len]);
        }
        let last = spool.log.segments.back().unwrap();
        let size = fs::metadata(spool.log.segment_path(last.index)).unwrap().len();
        assert!(last.over_spare && size > last.file_len + 100_000, "older records lie past the last segment's end");
        // Its data, end mark and length written, the server died before the stream tag.
        let (_, at) = spool.log.splice_target(&mut spool.spares).unwrap();
        let path = spool.log.segment_path(spool.log.segments.back().unwrap().index);
        let file = OpenOptions::new().write(true).open(path).unwrap();
        let data = b"spliced, never committed";
        file.write_all_at(data, at).unwrap();
        file.write_all_at(&END_MARK, at + data.len() as u64).unwrap();
        file.write_all_at(&(data.len() as u32).to_le_bytes(), at - 4).unwrap();
        spool
    }

    /// A log capped at 8 MiB (1 MiB segments) whose spares have a mover, and the helper's end of its socket for
    /// the test to serve (or not).
    fn log_with_mover(name: &str) -> (ScratchDir, std::os::fd::OwnedFd, SpareSegments, OutputLog) {
        let root = ScratchDir::new(name);
        let (mover, helper_end) = crate::jobs::spool::mover::SegmentMover::with_socket_pair();
        let janitor = crate::jobs::janitor::Janitor::in_place(&root);
        let spares = SpareSegments::create(root.join("spare"), 1 << 30, janitor, Some(mover)).unwrap();
        let log = OutputLog::create(root.join("log"), 8 << 20).unwrap();
        (root, helper_end, spares, log)
    }

    /// Appends `records` records of 100 000 bytes, each numbered from `seed`, calling `after` after each;
    /// returns what was written.
    fn append_numbered(
        log: &mut OutputLog,
        spares: &mut SpareSegments,
        records: u32,
        seed: u32,
        after: impl Fn(&mut SpareSegments),
    ) -> Vec<u8> {
        let mut written = Vec::new();
        for i in 0..records {
            let data: Vec<u8> = (0..100_000u32).map(|j| (i * seed + j) as u8).collect();
            let mut record = [&[0u8; RECORD_HEADER_LEN][..], &data].concat();
            log.append(spares, Stream::Stdout, &mut record).unwrap();
            written.extend_from_slice(&data);
            after(spares);
        }
        written
    }

    #[test]
    fn segments_the_mover_makes_ahead_hold_the_output_and_a_crash_leaves_nothing_amiss() {
        use crate::jobs::spool::mover::serve_queued;
        let (root, helper_end, mut spares, mut log) = log_with_mover("output-mover");
        // The mover, on this thread: it serves what was asked, and the loop takes its replies (which may ask more).
        let settle = |spares: &mut SpareSegments| {
            for _ in 0..10 {
                serve_queued(&helper_end, root.path());
                spares.retry_removals();
            }
            assert!(!spares.has_removals_waiting(), "the mover answered everything");
        };
        // 1 MiB segments; 20 MiB of output rolls 20 of them and discards 12 (into spares, or the trash).
        let written = append_numbered(&mut log, &mut spares, 200, 7, settle);
        let next = log.segment_path(log.next_index);
        assert!(log.next_segment.is_some() && next.exists(), "the next segment is made ahead of need");
        let reused = fs::metadata(&next).unwrap().len();
        assert!(reused >= 1 << 20, "made over a discarded segment the mover moved into the spares: {reused} bytes");
        let read: Vec<u8> = read_all(&log, &mut OutputCursor::new(0), 1 << 20).into_iter().flat_map(|r| r.2).collect();
        assert!(log.start() > 0 && read == written[log.start() as usize..], "the output, byte for byte");

        // The server gone now: the made file is set aside as never written, without a word.
        let recovered = OutputLog::recover(root.join("log"), 8 << 20, None, true).unwrap();
        assert!(recovered.problems.is_empty(), "{:?}", recovered.problems);
        assert_eq!(recovered.unusable, vec![next.clone()]);
        assert_eq!((recovered.log.start(), recovered.log.end()), (log.start(), log.end()));

        // The log rolls onto the spare made ahead and writes a little there; then its output ends.
        let rolled_to = log.next_index;
        while log.segments.back().unwrap().index != rolled_to {
            let mut record = [&[0u8; RECORD_HEADER_LEN][..], &[9u8; 100_000]].concat();
            log.append(&mut spares, Stream::Stdout, &mut record).unwrap();
            settle(&mut spares);
        }
        let next = log.segment_path(log.next_index);
        log.finish(&mut spares);
        settle(&mut spares);
        assert!(!next.exists(), "an unused next segment does not stay in the job's directory");
        let last = log.segments.back().unwrap();
        let size = fs::metadata(log.segment_path(last.index)).unwrap().len();
        assert!(last.file_len < reused, "the spare held more than the segment written over it");
        assert_eq!(size, last.file_len, "the mover cut the last segment to what it holds when it closed it");
        drop(helper_end);
        spares.finish_removals();
    }

    #[test]
    fn a_job_writes_on_while_the_mover_is_late_and_makes_its_own_segment_when_it_is_too_late() {
        // A mover that never answers.
        let (_root, helper_end, mut spares, mut log) = log_with_mover("output-late-mover");
        let written = append_numbered(&mut log, &mut spares, 60, 3, |_| {});
        let indices: Vec<u64> = log.segments.iter().map(|s| s.index).collect();
        let sizes: Vec<u64> = log.segments.iter().map(|s| s.file_len).collect();
        // 1 MiB segments: the first rolled by itself, the second waited for the mover up to twice its size, and
        // the log went on past the index the mover was asked for.
        assert_eq!(&indices[..3], &[0, 1, 3], "{indices:?}");
        assert!(sizes[1] >= 2 << 20 && sizes[1] < (2 << 20) + 200_000, "{sizes:?}");
        let read: Vec<u8> = read_all(&log, &mut OutputCursor::new(0), 1 << 20).into_iter().flat_map(|r| r.2).collect();
        assert_eq!(read, written, "the output, byte for byte");
        drop(helper_end);
        spares.finish_removals();
    }

    #[test]
    fn a_log_read_back_from_its_files_is_the_log_that_wrote_them() {
        let spool = crashed_log("recover");
        let recovered = OutputLog::recover(spool.root.join("log"), 8 << 20, None, true).unwrap();
        assert_eq!((recovered.problems.len(), recovered.unusable.len()), (0, 0), "{:?}", recovered.problems);
        let (log, written) = (&recovered.log, &spool.log);
        assert!(log.start() > 0 && log.is_finished());
        assert_eq!((log.start(), log.end()), (written.start(), written.end()));
        let points = |log: &OutputLog| log.segments.iter().map(|s| s.index_points.clone()).collect::<Vec<_>>();
        assert_eq!(points(log), points(written), "the same index, so the same reads at any offset");
        for offset in [0, written.start() + 1, written.end() - 70_000, written.end() - 1] {
            let mut cursor = OutputCursor::new(offset);
            assert_eq!(read_all(log, &mut cursor, 1 << 20), read_all(written, &mut OutputCursor::new(offset), 1 << 20));
        }
        // What followed the last record (older output, the uncommitted splice) is cut off the file.
        let last = log.segments.back().unwrap();
        assert_eq!(fs::metadata(log.segment_path(last.index)).unwrap().len(), last.file_len);
    }

    #[test]
    fn older_records_past_the_end_of_a_segment_written_over_a_spare_are_never_read_back() {
        let mut spool = TestLog::new("recover-stale", 8 << 20);
        // A spare full of another job's one-byte records, one every 6 bytes of the file.
        let stale = spool.root.join("stale");
        fs::write(&stale, [1u8, 1, 0, 0, 0, b'X'].repeat(400_000)).unwrap();
        spool.spares.keep_or_delete(&stale, 2_400_000);
        // Records of 100 008 bytes with their headers (6 × 16 668): every one starts where a stale one does.
        while spool.log.segments.len() < 2 {
            spool.append(Stream::Stdout, &[7; 100_003]);
        }
        let last = spool.log.segments.back().unwrap();
        assert!(last.over_spare && (last.file_len - SEGMENT_HEADER_LEN) % 6 == 0);
        let recovered = OutputLog::recover(spool.root.join("log"), 8 << 20, None, true).unwrap();
        assert_eq!(recovered.log.end(), spool.log.end(), "{:?}", recovered.problems);
        let tail = read_all(&recovered.log, &mut OutputCursor::new(spool.log.end() - 10), 1 << 20);
        assert_eq!(tail, vec![(spool.log.end() - 10, Stream::Stdout, vec![7; 10])]);
    }

    #[test]
    fn what_cannot_be_trusted_of_a_log_is_left_out_and_said() {
        // A segment missing in the middle: the output before it stays, the segments after it go.
        let spool = crashed_log("recover-gap");
        let indices: Vec<u64> = spool.log.segments.iter().map(|s| s.index).collect();
        fs::remove_file(spool.log.segment_path(indices[3])).unwrap();
        let recovered = OutputLog::recover(spool.root.join("log"), 8 << 20, None, true).unwrap();
        assert_eq!(recovered.log.segments.len(), 3);
        assert_eq!(recovered.log.end(), spool.log.segments[2].start + spool.log.segments[2].len);
        assert_eq!(recovered.unusable.len(), indices.len() - 4);
        assert!(recovered.problems[0].contains("where the output before it ends at"), "{:?}", recovered.problems);

        // After the machine went down, no segment written over a spare is read; a record says what is missing.
        let spool = crashed_log("recover-untrusted");
        let first_over_spare = spool.log.segments.iter().position(|s| s.over_spare).unwrap();
        let recovered = OutputLog::recover(spool.root.join("log"), 8 << 20, Some(1 << 40), false).unwrap();
        assert_eq!(recovered.log.segments.len(), first_over_spare);
        assert!(recovered.problems[0].contains("may hold older output"), "{:?}", recovered.problems);
        assert!(recovered.problems[1].contains("is missing"), "{:?}", recovered.problems);

        // A segment file that another segment's file was renamed over (a spare taken, its header not yet
        // rewritten): its header names the other one. It never held this log's output: set aside without a
        // word, the segments after it read back. After the machine went down its own header may be what the disk
        // lost: said, and nothing after it read.
        let mut spool = crashed_log("recover-foreign");
        let mut other = OutputLog::create(spool.root.join("other"), 8 << 20).unwrap();
        let mut record = vec![b'o'; RECORD_HEADER_LEN + 1000];
        other.append(&mut spool.spares, Stream::Stdout, &mut record).unwrap();
        // Another job's first segment where this log's first one is: nothing but the header can tell.
        let oldest = spool.log.segment_path(spool.log.segments[0].index);
        fs::copy(other.segment_path(0), &oldest).unwrap();
        let recovered = OutputLog::recover(spool.root.join("log"), 8 << 20, None, true).unwrap();
        assert!(recovered.problems.is_empty(), "{:?}", recovered.problems);
        assert_eq!(
            (recovered.unusable.clone(), recovered.log.segments.len()),
            (vec![oldest], spool.log.segments.len() - 1)
        );
        assert_eq!((recovered.log.start(), recovered.log.end()), (spool.log.segments[1].start, spool.log.end()));
        let recovered = OutputLog::recover(spool.root.join("log"), 8 << 20, None, false).unwrap();
        assert!(recovered.log.segments.is_empty(), "{:?}", recovered.log.segments);
        assert!(recovered.problems[0].contains("names another segment"), "{:?}", recovered.problems);

        // A record that says the job wrote less than its segments hold: they are cut there, all of them if need be.
        let spool = crashed_log("recover-cut");
        let third = spool.log.segments[2].start;
        let recovered = OutputLog::recover(spool.root.join("log"), 8 << 20, Some(third + 10), true).unwrap();
        assert_eq!((recovered.log.segments.len(), recovered.log.end()), (3, third + 10));
        assert!(recovered.problems[0].contains("cut there"), "{:?}", recovered.problems);
        let before_all = spool.log.segments[0].start - 1;
        let recovered = OutputLog::recover(spool.root.join("log"), 8 << 20, Some(before_all), true).unwrap();
        assert_eq!(
            (recovered.log.segments.len(), recovered.log.start(), recovered.log.end()),
            (0, before_all, before_all)
        );

        // A file that is not a segment.
        let spool = crashed_log("recover-garbage");
        let first = spool.log.segments[0].index;
        fs::write(spool.log.segment_path(first), b"not a segment at all, but long enough. ".repeat(4)).unwrap();
        let recovered = OutputLog::recover(spool.root.join("log"), 8 << 20, None, true).unwrap();
        assert!(recovered.log.segments.is_empty() && recovered.log.end() == 0);
        assert!(recovered.problems[0].contains("no RUNNELSG header"), "{:?}", recovered.problems);
    }

    #[test]
    fn replays_interleaved_streams_byte_exact_from_any_offset() {
        let mut spool = TestLog::new("replay", 1 << 30);
        spool.append(Stream::Stdout, b"hello ");
        spool.append(Stream::Stderr, &[0, 0xff, 0xfe]);
        spool.append(Stream::Stdout, b"world");
        let log = &spool.log;
        assert_eq!(log.end(), 14);

        let got = read_all(log, &mut OutputCursor::new(0), 1024);
        assert_eq!(
            got,
            vec![
                (0, Stream::Stdout, b"hello ".to_vec()),
                (6, Stream::Stderr, vec![0, 0xff, 0xfe]),
                (9, Stream::Stdout, b"world".to_vec()),
            ]
        );
        let got = read_all(log, &mut OutputCursor::new(7), 2);
        assert_eq!(
            got,
            vec![
                (7, Stream::Stderr, vec![0xff, 0xfe]),
                (9, Stream::Stdout, b"wo".to_vec()),
                (11, Stream::Stdout, b"rl".to_vec()),
                (13, Stream::Stdout, b"d".to_vec()),
            ]
        );
        assert!(read_all(log, &mut OutputCursor::new(14), 10).is_empty());
        spool.remove();
        assert!(!spool.root.join("log").exists());
    }

    #[test]
    fn opening_at_any_offset_among_tiny_and_huge_records_finds_the_right_byte() {
        // Segments of 512 KiB (retention / 8): tiny records, then a record longer than a stride, then tiny ones.
        let mut spool = TestLog::new("index", 4 << 20);
        let mut expected = Vec::new();
        let mut append = |spool: &mut TestLog, stream: Stream, data: &[u8]| {
            spool.append(stream, data);
            expected.extend(data.iter().map(|&b| (stream, b)));
        };
        for i in 0..60_000u32 {
            let stream = if i % 3 == 0 { Stream::Stderr } else { Stream::Stdout };
            append(&mut spool, stream, &i.to_le_bytes()[..1 + (i % 3) as usize]);
        }
        append(&mut spool, Stream::Stdout, &vec![7u8; 200_000]);
        for i in 0..20_000u32 {
            append(&mut spool, Stream::Stderr, &[i as u8]);
        }
        let log = &spool.log;
        assert_eq!(log.end(), expected.len() as u64);
        assert!(log.segments.len() > 1, "the output spans segments");
        let points: usize = log.segments.iter().map(|s| s.index_points.len()).sum();
        let file_bytes: u64 = log.segments.iter().map(|s| s.file_len).sum();
        assert!(points as u64 <= file_bytes / INDEX_STRIDE + log.segments.len() as u64, "{points} points");
        // Every offset near a stride boundary, a segment boundary, the huge record, and spread evenly.
        let mut offsets: Vec<u64> = (0..expected.len() as u64).step_by(997).collect();
        for segment in &log.segments {
            offsets.extend(segment.index_points.iter().flat_map(|&(logical, _)| [logical.saturating_sub(1), logical]));
            offsets.push(segment.start + segment.len - 1);
        }
        for offset in offsets {
            let mut cursor = OutputCursor::new(offset);
            let span = log.next_span(&mut cursor, 1).unwrap().unwrap();
            let mut byte = bytes::BytesMut::new();
            log.read_span(&mut cursor, 1, &mut byte).unwrap();
            assert_eq!((span.stream, byte[0]), expected[offset as usize], "at offset {offset}");
        }
    }

    #[test]
    fn a_segment_holds_disk_blocks_for_what_was_written_and_a_spares_old_bytes_go_when_the_output_ends() {
        use std::os::unix::fs::MetadataExt;
        // Nothing is reserved ahead of the writer: under output floods `fallocate` on the loop took 40-170 ms
        // (docs/performance.md). Cap 128 MiB: segments of 16 MiB, the second one 10 MiB into its 16. Needs a file
        // system that counts only written blocks of a file being written (ext4, tmpfs; not XFS, whose
        // speculative preallocation shows in `st_blocks` until the file is closed).
        let allocated = |path: &std::path::Path| fs::metadata(path).unwrap().blocks() * 512;
        let mut spool = TestLog::new("blocks", 128 << 20);
        for _ in 0..26 {
            spool.append(Stream::Stdout, &vec![1u8; 1 << 20]);
        }
        assert_eq!(spool.log.segments.len(), 2);
        for index in [0, 1] {
            let path = spool.log.segment_path(index);
            let written = fs::metadata(&path).unwrap().len();
            assert!(allocated(&path) < written + 64 * 1024, "{} allocated for {written}", allocated(&path));
        }

        // A job that writes over a spare and ends early gives the spare's old bytes back.
        let discarded = spool.root.join("another job's segment");
        fs::write(&discarded, vec![0xa5u8; 16 << 20]).unwrap();
        spool.spares.keep_or_delete(&discarded, 16 << 20);
        while spool.log.segments.back().is_some_and(|s| !s.over_spare) {
            spool.append(Stream::Stdout, &vec![2u8; 1 << 20]);
        }
        let last = spool.log.segment_path(spool.log.segments.back().unwrap().index);
        assert!(allocated(&last) >= 16 << 20, "the spare's blocks: {}", allocated(&last));
        spool.log.finish(&mut spool.spares);
        let written = fs::metadata(&last).unwrap().len();
        assert!(written < 4 << 20 && allocated(&last) < written + 64 * 1024, "{} for {written}", allocated(&last));
    }

    #[test]
    fn spliced_records_interleave_with_written_ones() {
        use std::io::Write;
        let mut spool = TestLog::new("splice", 1 << 30);
        let pipe = crate::sys::output_pipe().unwrap();
        let mut writer = File::from(pipe.write);
        let splice = |spool: &mut TestLog, stream: Stream| {
            let (SpliceTarget::File(file), at) = spool.log.splice_target(&mut spool.spares).unwrap() else {
                panic!("a log without a spool writer splices into its file")
            };
            let moved = crate::sys::splice_to_file(pipe.read.as_raw_fd(), file, at, 1 << 20).unwrap().unwrap();
            spool.log.commit_spliced(&mut spool.spares, stream, moved).unwrap();
        };
        spool.append(Stream::Stdout, b"written ");
        writer.write_all(&[0, 1, 0xff]).unwrap();
        splice(&mut spool, Stream::Stderr);
        writer.write_all(b" spliced").unwrap();
        splice(&mut spool, Stream::Stdout);
        // A target taken but never committed is invisible, and the next record takes its place.
        let (SpliceTarget::File(file), at) = spool.log.splice_target(&mut spool.spares).unwrap() else {
            panic!("a log without a spool writer splices into its file")
        };
        writer.write_all(b"lost").unwrap();
        crate::sys::splice_to_file(pipe.read.as_raw_fd(), file, at, 1 << 20).unwrap();
        assert_eq!(spool.log.end(), 19);
        spool.append(Stream::Stdout, b"!");
        assert_eq!(crate::sys::splice_to_file(pipe.read.as_raw_fd(), file, at, 10).unwrap(), None, "pipe empty");
        drop(writer);
        assert_eq!(crate::sys::splice_to_file(pipe.read.as_raw_fd(), file, at, 10).unwrap(), Some(0), "end of file");

        let got = read_all(&spool.log, &mut OutputCursor::new(0), 1024);
        assert_eq!(
            got,
            vec![
                (0, Stream::Stdout, b"written ".to_vec()),
                (8, Stream::Stderr, vec![0, 1, 0xff]),
                (11, Stream::Stdout, b" spliced".to_vec()),
                (19, Stream::Stdout, b"!".to_vec()),
            ]
        );
        assert_eq!(read_all(&spool.log, &mut OutputCursor::new(12), 3)[0], (12, Stream::Stdout, b"spl".to_vec()));
    }

    #[test]
    fn retention_discards_whole_segments_and_moves_start() {
        // Cap 256 KiB: segments of the 64 KiB minimum.
        let mut spool = TestLog::new("retention", 256 * 1024);
        let block = vec![7u8; 16 * 1024];
        for _ in 0..64 {
            spool.append(Stream::Stdout, &block);
        }
        let (log, dir) = (&spool.log, spool.root.join("log"));
        assert_eq!(log.end(), 1024 * 1024);
        assert!(log.retained() <= 256 * 1024, "retained {}", log.retained());
        assert!(log.retained() >= 256 * 1024 - 64 * 1024 - 16 * 1024, "retained {}", log.retained());
        let files = fs::read_dir(&dir).unwrap().count();
        assert!(files <= 5, "{files} segment files left");

        // A reader asking for offset 0 starts at the first retained byte.
        let mut cursor = OutputCursor::new(0);
        let got = read_all(log, &mut cursor, 1 << 20);
        assert_eq!(got[0].0, log.start());
        assert_eq!(got.iter().map(|c| c.2.len() as u64).sum::<u64>(), log.retained());
        assert_eq!(cursor.offset(), log.end());
    }

    #[test]
    fn a_log_at_its_cap_writes_over_discarded_segment_files_and_never_reads_their_old_bytes() {
        use std::os::unix::fs::MetadataExt;
        // Cap 8 MiB: segments of 1 MiB, each discarded one big enough to be kept as a spare.
        let mut spool = TestLog::new("reuse", 8 << 20);
        let record = |i: usize| vec![i as u8; 100_000 + i % 7];
        let file_size = |spool: &TestLog, index: u64| fs::metadata(spool.log.segment_path(index)).unwrap().len();
        let mut cursor = OutputCursor::new(0);
        let mut reused = 0;
        for i in 0..400 {
            spool.append(if i % 3 == 0 { Stream::Stderr } else { Stream::Stdout }, &record(i));
            // A segment just begun in a file that already holds a whole segment's bytes: a spare.
            let newest = spool.log.segments.back().unwrap();
            if newest.file_len < 200_000 && file_size(&spool, newest.index) >= 1 << 20 {
                reused += 1;
            }
            if i == 5 {
                // A reader part way into the first segment, which will be discarded and written over.
                let span = spool.log.next_span(&mut cursor, 50_000).unwrap().unwrap();
                spool.log.read_span(&mut cursor, span.len, &mut bytes::BytesMut::new()).unwrap();
                assert_eq!(cursor.offset(), 50_000);
            }
        }
        assert!(reused > 10, "new segments were written over discarded files ({reused} of them)");
        let files = fs::read_dir(spool.root.join("log")).unwrap().count();
        let spares = fs::read_dir(spool.root.join("spare")).unwrap().count();
        assert!(files <= 9 && spares <= super::super::spares::SPARE_FILES, "{files} segments, {spares} spares");

        // Everything retained reads back as written, from the reader that fell behind as from a new one.
        let expected_from = |start: u64| {
            let (mut offset, mut out) = (0u64, Vec::new());
            for i in 0..400 {
                let data = record(i);
                let stream = if i % 3 == 0 { Stream::Stderr } else { Stream::Stdout };
                if offset + data.len() as u64 > start {
                    let skip = start.saturating_sub(offset) as usize;
                    out.push((offset + skip as u64, stream, data[skip..].to_vec()));
                }
                offset += data.len() as u64;
            }
            out
        };
        let start = spool.log.start();
        assert!(start > 0);
        assert_eq!(read_all(&spool.log, &mut cursor, 1 << 20), expected_from(start));
        assert_eq!(read_all(&spool.log, &mut OutputCursor::new(0), 1 << 20), expected_from(start));

        // Ending the output gives back what the last file held past its records (a spare's old bytes).
        let last = spool.log.segments.back().unwrap();
        let (last_path, last_len) = (spool.log.segment_path(last.index), last.file_len);
        assert!(file_size(&spool, last.index) > last_len + 100_000, "the last segment is written over a spare");
        spool.log.finish(&mut spool.spares);
        let last_file = fs::metadata(&last_path).unwrap();
        assert_eq!(last_file.len(), last_len);
        assert!(last_file.blocks() * 512 < last_len + 64 * 1024, "{} bytes allocated", last_file.blocks() * 512);
        assert_eq!(read_all(&spool.log, &mut OutputCursor::new(0), 1 << 20), expected_from(start));
    }

    #[test]
    fn a_reader_at_the_end_of_a_segment_another_job_now_writes_over_reads_on_in_its_own_job() {
        // Two jobs sharing spares, caps of 8 MiB: segments of 1 MiB, each 1 MiB record fills one.
        let mut spool = TestLog::new("shared-spare", 8 << 20);
        let mut other = OutputLog::create(spool.root.join("other"), 8 << 20).unwrap();
        let mut append_other = |spares: &mut SpareSegments, byte: u8, len: usize| {
            let mut record = vec![byte; RECORD_HEADER_LEN + len];
            other.append(spares, Stream::Stdout, &mut record).unwrap();
        };
        spool.append(Stream::Stdout, &vec![1; 1 << 20]);
        spool.append(Stream::Stdout, &vec![2; 1 << 20]);
        let mut cursor = OutputCursor::new(0);
        let span = spool.log.next_span(&mut cursor, 1 << 20).unwrap().unwrap();
        spool.log.read_span(&mut cursor, span.len, &mut bytes::BytesMut::new()).unwrap();
        assert_eq!(cursor.offset(), 1 << 20, "at the end of segment 0, its file still open");

        // The total cap discards segment 0 (start is now exactly the reader's offset); the other job, whose
        // first segment filled up, writes its second one over that file.
        assert_eq!(spool.log.discard_oldest_segment(&mut spool.spares), 1 << 20);
        assert_eq!(spool.log.start(), cursor.offset());
        append_other(&mut spool.spares, 0xbb, 1 << 20);
        // Longer than the file was: the reader's open descriptor now sees bytes past where it stopped.
        append_other(&mut spool.spares, 0xcc, 2 << 20);
        assert_eq!(spool.spares.bytes(), 0, "the spare was taken");

        assert_eq!(read_all(&spool.log, &mut cursor, 1 << 20), vec![(1 << 20, Stream::Stdout, vec![2; 1 << 20])]);
    }

    #[test]
    fn a_record_header_damaged_on_disk_ends_the_reader_with_an_error_not_with_other_bytes() {
        use std::os::unix::fs::FileExt;
        // Three records, 5, 6 and 46 bytes: 57 of output in 72 bytes of records, after the segment's header.
        let damaged = |header: [u8; RECORD_HEADER_LEN], at: u64| {
            let mut spool = TestLog::new("damaged", 1 << 30);
            spool.append(Stream::Stdout, b"first");
            spool.append(Stream::Stderr, b"second");
            spool.append(Stream::Stdout, b"third, long enough to hold the second's claim");
            let file = OpenOptions::new().write(true).open(spool.log.segment_path(0)).unwrap();
            file.write_all_at(&header, at).unwrap();
            let mut cursor = OutputCursor::new(0);
            let mut results = Vec::new();
            for _ in 0..4 {
                match spool.log.next_span(&mut cursor, 100) {
                    Ok(Some(span)) => {
                        let mut buf = bytes::BytesMut::new();
                        spool.log.read_span(&mut cursor, span.len, &mut buf).unwrap();
                        results.push(Ok(buf.to_vec()));
                    }
                    Ok(None) => break,
                    Err(err) => {
                        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
                        results.push(Err(err.to_string()));
                        break;
                    }
                }
            }
            // The first record as written; then the damaged one fails, from a reader reading on and from one
            // opened on it.
            assert_eq!(results[0], Ok(b"first".to_vec()));
            assert!(results[1].is_err(), "{results:?}");
            assert!(spool.log.next_span(&mut cursor, 100).is_err(), "asked again, the same reader fails again");
            assert!(spool.log.next_span(&mut OutputCursor::new(7), 100).is_err());
        };
        let second = SEGMENT_HEADER_LEN + (RECORD_HEADER_LEN + 5) as u64;
        // Longer than the file holds.
        damaged([2, 0xff, 0xff, 0, 0], second);
        // Within the file (10 + 5 + 55 <= 72), but past the segment's output (5 + 55 > 57).
        damaged([2, 55, 0, 0, 0], second);
        // A tag that is neither stream.
        damaged([9, 6, 0, 0, 0], second);
    }

    #[test]
    fn reader_keeps_up_with_appends_across_segments() {
        let mut spool = TestLog::new("follow", 1 << 30);
        let mut cursor = OutputCursor::new(0);
        let mut seen = Vec::new();
        for round in 0..40u8 {
            spool.append(Stream::Stdout, &vec![round; 5000]);
            for (_, _, data) in read_all(&spool.log, &mut cursor, 3000) {
                seen.extend(data);
            }
        }
        assert_eq!(seen.len(), 200_000);
        assert!(seen.chunks(5000).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    }
}
