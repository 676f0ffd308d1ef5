//! How a job's output gets from its pipe into its spool file: `splice(2)` through a relay pipe, so no byte passes
//! through user memory and the job's pipe lock is held only briefly, or `read` + `write` where the state
//! directory's file system cannot splice. With a spool writer (`writer.rs`) the relay is its data pipe, and the
//! writer moves the bytes on into the file: the loop itself never writes a file then. Either way consecutive
//! pieces are gathered into one record, and each call moves at most the byte budget it is given, so the loop
//! decides how much of a turn output may take.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::log::{OutputLog, Stream, RECORD_HEADER_LEN};
use super::spares::SpareSegments;
use super::writer::SpliceTarget;
use crate::sys;

/// Largest output record taken with `splice`: the pipe's size, so a full pipe could move in one call. The
/// loop asks for at most 256 KiB at a time (`OUTPUT_BYTES_PER_LOOK` in `server`), so that it can look for calls
/// between pieces, and each piece is a record of its own (one more small header write per 256 KiB).
const SPLICE_RECORD_BYTES: usize = 1024 * 1024;

/// Largest single read from a job's pipe where `splice` cannot be used; also the largest record then.
const PIPE_READ_BYTES: usize = 256 * 1024;

/// How output gets from a job's pipe into its spool file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::jobs) enum Ingest {
    /// `splice(2)` through the table's relay pipe: the kernel copies the pipe's pages into the file's page
    /// cache; no copy through user memory.
    Splice,
    /// `read` into a buffer, then `write`: for a state directory on a file system that cannot splice.
    Read,
}

/// The most a job's pipe holds: what was in it when the job ended is at most this.
pub const PIPE_CAPACITY: usize = sys::PIPE_SIZE;

/// The outcome of draining a pipe.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Drain {
    /// The pipe is empty for now.
    Empty,
    /// The byte budget ran out, maybe with data left: call again soon.
    More,
    /// End of file: the pipe is closed.
    Closed,
    /// The spool writer is behind (its data pipe is full): call again once it confirms more writes.
    Waiting,
}

/// Moves job output from pipes into spool files; one per table, reused for every job.
pub struct Ingester {
    pub(super) mode: Ingest,
    /// The pipe job output is spliced through on its way to a spool file, made when first needed; empty
    /// between calls.
    relay: Option<sys::OutputPipe>,
    /// The buffer of [`Ingest::Read`], allocated when first needed.
    read_buf: Vec<u8>,
}

impl Default for Ingester {
    fn default() -> Self {
        Ingester { mode: Ingest::Splice, relay: None, read_buf: Vec::new() }
    }
}

/// Where one pipe's output goes: the log of `job`'s `stream`, which starts its segments in the table's spare
/// files when it can.
pub struct Destination<'a> {
    pub log: &'a mut OutputLog,
    pub spares: &'a mut SpareSegments,
    pub job: &'a dyn fmt::Display,
    pub stream: Stream,
}

impl Destination<'_> {
    /// Appends one record (header room, then data); a failure is logged, as nothing upstream can retry it.
    fn append(&mut self, record: &mut [u8]) {
        if let Err(err) = self.log.append(self.spares, self.stream, record) {
            let lost = record.len() - RECORD_HEADER_LEN;
            log::error!("job {}: {lost} bytes of output lost, cannot write the spool: {err}", self.job);
        }
    }

    fn splice_target(&mut self) -> io::Result<(SpliceTarget, u64)> {
        self.log.splice_target(self.spares)
    }

    fn commit_spliced(&mut self, filled: usize) -> io::Result<()> {
        self.log.commit_spliced(self.spares, self.stream, filled).inspect_err(|err| {
            log::error!("job {}: {filled} bytes of output lost, cannot write their record header: {err}", self.job);
        })
    }
}

impl Ingester {
    /// Moves what the pipe `fd` holds to `to`, at most `budget` bytes (at least 1).
    pub fn ingest(&mut self, mut to: Destination<'_>, fd: RawFd, budget: usize) -> Drain {
        if let Some(writer) = to.spares.writer() {
            let (room, data_pipe) = (writer.room(), writer.data_pipe());
            if room == 0 {
                return Drain::Waiting;
            }
            return splice_pipe(&mut to, fd, Relay::Writer(data_pipe), budget.min(room)).unwrap_or_else(|err| {
                log::error!("job {}: cannot take its {:?} output into the spool: {err}", to.job, to.stream);
                Drain::More
            });
        }
        if self.mode == Ingest::Splice && self.relay.is_none() {
            match sys::relay_pipe() {
                Ok(relay) => self.relay = Some(relay),
                Err(err) => {
                    log::warn!("cannot make a relay pipe ({err}); reading job output instead of splicing it");
                    self.mode = Ingest::Read;
                }
            }
        }
        let mut result = None;
        let mut rescue = false;
        if let (Ingest::Splice, Some(relay)) = (self.mode, self.relay.as_ref()) {
            match splice_pipe(&mut to, fd, Relay::Own(relay), budget) {
                Ok(drained) => result = Some(drained),
                Err(err) => {
                    rescue = true;
                    if err.raw_os_error() == Some(libc::EINVAL) {
                        log::warn!("cannot splice job output into the state directory ({err}); reading it instead");
                        self.mode = Ingest::Read;
                    } else {
                        // Reading what is left reports what is wrong with the spool, as the read path does.
                        log::debug!("job {}: splicing its {:?} pipe failed: {err}", to.job, to.stream);
                    }
                }
            }
        }
        match result {
            Some(drained) => drained,
            None => {
                if self.read_buf.is_empty() {
                    self.read_buf = vec![0; RECORD_HEADER_LEN + PIPE_READ_BYTES];
                }
                if let (true, Some(relay)) = (rescue, self.relay.as_ref()) {
                    // Bytes taken from the job's pipe but not into the file are in the relay (at most a full
                    // relay): they come first, whatever the budget.
                    read_pipe(&mut to, relay.read.as_raw_fd(), PIPE_CAPACITY, &mut self.read_buf);
                }
                read_pipe(&mut to, fd, budget, &mut self.read_buf)
            }
        }
    }
}

/// The pipe output is spliced through on its way to a file.
#[derive(Clone, Copy)]
enum Relay<'a> {
    /// The ingester's own: emptied into the file by the loop, before the call returns.
    Own(&'a sys::OutputPipe),
    /// The spool writer's data pipe (its write end): the writer moves what goes in into the file.
    Writer(RawFd),
}

/// Splices what the pipe `fd` holds to `to`, at most `budget` bytes, consecutive moves into one record (up
/// to [`SPLICE_RECORD_BYTES`]).
///
/// Each move goes through `relay`: first from the job's pipe into the relay, which only moves page references
/// and so holds the job's pipe lock for microseconds, then from the relay into the file, the slow part (page
/// cache copy, file system work) during which the job can go on writing. Splicing straight into the file held
/// the job's pipe lock throughout, and a job writing in small pieces spun on it.
///
/// An error leaves the bytes it concerns in the job's pipe or in the relay, for the caller to read; what was
/// moved into the file before it is committed.
///
/// Through the spool writer's data pipe, every byte that goes in is given to the writer at once: into the
/// segment, or, where the log cannot place it, to be thrown away (and said so). A data pipe full before `budget`
/// ran out (it holds pages, and pages partly filled) leaves the rest in the job's pipe: [`Drain::Waiting`].
fn splice_pipe(to: &mut Destination<'_>, fd: RawFd, relay: Relay<'_>, budget: usize) -> io::Result<Drain> {
    let mut target = None;
    let mut filled = 0;
    let mut left = budget;
    let mut result = Drain::More;
    let into = match relay {
        Relay::Own(pipe) => pipe.write.as_raw_fd(),
        Relay::Writer(data_pipe) => data_pipe,
    };
    while left > 0 {
        match sys::splice_to_pipe(fd, into, (SPLICE_RECORD_BYTES - filled).min(left)) {
            Ok(Some(0)) => result = Drain::Closed,
            Ok(Some(n)) => {
                // Only output that exists gets a place in a segment: a silent job creates no file.
                let place = match target {
                    Some(place) => Ok(place),
                    None => to.splice_target().inspect(|&place| target = Some(place)),
                };
                let (moved, error) = match (place, relay) {
                    (Ok((SpliceTarget::File(file), data_at)), Relay::Own(pipe)) => {
                        relay_to_file(pipe.read.as_raw_fd(), file, data_at + filled as u64, n)
                    }
                    (Ok((SpliceTarget::Writer(number), data_at)), Relay::Writer(_)) => {
                        if let Some(writer) = to.spares.writer() {
                            writer.data(number, data_at + filled as u64, n);
                        }
                        (n, None)
                    }
                    (place, relay) => {
                        let err = place.err().unwrap_or_else(|| io::Error::other("a segment the relay cannot reach"));
                        if let (Relay::Writer(_), Some(writer)) = (relay, to.spares.writer()) {
                            // In the data pipe already: the writer must take the bytes out, and they are lost.
                            writer.discard(n);
                            log::error!("job {}: {n} bytes of output lost, no segment to write them: {err}", to.job);
                        }
                        (0, Some(err))
                    }
                };
                filled += moved;
                left -= n;
                if let Some(err) = error {
                    to.commit_spliced(filled)?;
                    return Err(err);
                }
            }
            // Nothing moved: the job's pipe is empty, or the writer's data pipe is full (which the kernel tells
            // first, even at the job pipe's end of file).
            Ok(None) if matches!(relay, Relay::Writer(_)) => {
                result = match sys::pipe_readiness(fd) {
                    Ok(sys::PipeReadiness::Data) => Drain::Waiting,
                    Ok(sys::PipeReadiness::Ended) => Drain::Closed,
                    Ok(sys::PipeReadiness::Empty) => Drain::Empty,
                    Err(err) => {
                        to.commit_spliced(filled)?;
                        return Err(err);
                    }
                }
            }
            Ok(None) => result = Drain::Empty,
            Err(err) => {
                to.commit_spliced(filled)?;
                return Err(err);
            }
        }
        if filled == SPLICE_RECORD_BYTES || result != Drain::More {
            to.commit_spliced(filled)?;
            (target, filled) = (None, 0);
        }
        if result != Drain::More {
            break;
        }
    }
    to.commit_spliced(filled)?;
    Ok(result)
}

/// Splices `len` bytes from the relay into `file` at `at`: how many made it, and the error that stopped it
/// short (the rest is still in the relay).
fn relay_to_file(relay: RawFd, file: RawFd, at: u64, len: usize) -> (usize, Option<io::Error>) {
    let mut moved = 0;
    while moved < len {
        match sys::splice_to_file(relay, file, at + moved as u64, len - moved) {
            Ok(Some(n)) if n > 0 => moved += n,
            Ok(_) => return (moved, Some(io::Error::other("the relay pipe held less than was moved into it"))),
            Err(err) => return (moved, Some(err)),
        }
    }
    (moved, None)
}

/// Reads what the pipe `fd` holds to `to` with `read`, at most `budget` bytes, consecutive reads gathered
/// into one record of up to `buf`'s size (which starts with room for the record header).
fn read_pipe(to: &mut Destination<'_>, fd: RawFd, budget: usize, buf: &mut [u8]) -> Drain {
    // Consecutive reads are gathered into one record (up to the buffer's size): a job writing in small
    // pieces then costs one spool write and one output chunk per buffer, not per `write` it made.
    let mut filled = 0;
    let mut left = budget;
    let mut result = Drain::More;
    while left > 0 {
        let room = (buf.len() - RECORD_HEADER_LEN - filled).min(left);
        match sys::read_nonblocking(fd, &mut buf[RECORD_HEADER_LEN + filled..][..room]) {
            Ok(Some(0)) => result = Drain::Closed,
            Ok(Some(n)) => {
                filled += n;
                left -= n;
            }
            Ok(None) => result = Drain::Empty,
            Err(err) => {
                log::error!("job {}: cannot read its {:?} pipe: {err}", to.job, to.stream);
                result = Drain::Closed;
            }
        }
        let buffer_full = RECORD_HEADER_LEN + filled == buf.len();
        if filled > 0 && (buffer_full || result != Drain::More) {
            to.append(&mut buf[..RECORD_HEADER_LEN + filled]);
            filled = 0;
        }
        if result != Drain::More {
            break;
        }
    }
    if filled > 0 {
        to.append(&mut buf[..RECORD_HEADER_LEN + filled]);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;
    use std::fs;

    #[test]
    fn relay_keeps_what_it_could_not_move_into_the_file() {
        use std::io::{Read, Write};
        let relay = sys::relay_pipe().unwrap();
        let job = sys::output_pipe().unwrap();
        std::fs::File::from(job.write).write_all(b"job output").unwrap();
        assert_eq!(sys::splice_to_pipe(job.read.as_raw_fd(), relay.write.as_raw_fd(), 1 << 20).unwrap(), Some(10));
        // A file opened read-only cannot be spliced into: nothing moves, the bytes stay in the relay.
        let scratch = ScratchDir::new("relay");
        let path = scratch.join("segment");
        fs::write(&path, b"").unwrap();
        let file = fs::File::open(&path).unwrap();
        let (moved, error) = relay_to_file(relay.read.as_raw_fd(), file.as_raw_fd(), 0, 10);
        assert_eq!(moved, 0);
        assert!(error.is_some());
        let mut left = [0u8; 16];
        let n = fs::File::from(relay.read).read(&mut left).unwrap();
        assert_eq!(&left[..n], b"job output");
    }
}
