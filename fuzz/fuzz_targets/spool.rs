//! The output spool against a model: arbitrary sequences of job output (any sizes, through real pipes, by
//! `splice` or by `read`), partial drains, retention caps, discards, removals, readers opened at any offset and
//! reading any amounts, and damage to the segment files on disk (bytes overwritten, files cut short, as after a
//! torn write or a stray writer).
//!
//! The model is every byte each log was ever given, with its stream. While a log's files are intact, every
//! byte read must be the model's byte at that offset, from the model's stream; the spool's counts (end,
//! start, retained, the total across logs) must agree with the model and each log's cap (the total cap is the
//! job table's to enforce, with the discards this target makes at random). Once a log's files are
//! damaged, reads may fail or return other bytes (nothing on disk says what they were), but must never panic,
//! hang, or read outside the retained range.
#![no_main]

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use runnel::jobs::janitor::Janitor;
use runnel::jobs::{Drain, OutputCursor, OutputLog, Spool, Stream};

/// Logs in one run (jobs sharing the spool, its spares and its total cap).
const LOGS: usize = 2;
/// Output fed in one run, across logs: bounds the model's memory and a run's time.
const MAX_FED: usize = 24 << 20;

#[derive(Arbitrary, Debug)]
struct Run {
    /// `--max-output-bytes`: 64 KiB << (n % 8), up to 8 MiB (segments of 64 KiB to 1 MiB).
    per_log_cap: u8,
    /// `--max-output-total`: 128 KiB << (n % 8).
    total_cap: u8,
    read_instead_of_splice: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The job writes `len` bytes (as far as its pipe takes them) to one of its streams.
    Write { pipe: u8, len: u32, seed: u8 },
    /// The server drains a pipe with a byte budget.
    Ingest { pipe: u8, budget: u32 },
    /// The job closes one of its streams.
    Close { pipe: u8 },
    /// The total cap discards a log's oldest segment.
    Discard { log: u8 },
    /// A reader opens at an offset (taken modulo a little past the end).
    Open { log: u8, offset: u64 },
    /// A reader asks for a span of at most `max` bytes and reads `take` of them.
    Read { reader: u8, max: u32, take: u32 },
    /// The job is evicted: its log is removed and a new one takes its place.
    Remove { log: u8 },
    /// Bytes of a segment file overwritten on disk.
    Overwrite { log: u8, segment: u8, at: u32, bytes: Vec<u8> },
    /// A segment file cut short on disk.
    Truncate { log: u8, segment: u8, len: u32 },
}

/// One of a log's two pipes, as its job and the model see it.
struct Pipe {
    read: OwnedFd,
    /// The job's end; `None` once closed.
    write: Option<OwnedFd>,
    /// Written, not yet drained: what the next drains must bring, in order.
    pending: VecDeque<u8>,
    /// Bytes ever written to it, which the data written next continues from.
    written: u64,
    closed: bool,
}

struct ModelLog {
    log: OutputLog,
    name: String,
    pipes: [Pipe; 2],
    /// Every byte the log was given, and its stream.
    bytes: Vec<u8>,
    streams: Vec<Stream>,
    finished: bool,
    /// Its files were damaged: reads are no longer held to the model.
    damaged: bool,
}

struct Reader {
    log: usize,
    /// Which log the reader opened (a log replaced by [`Op::Remove`] is another one).
    name: String,
    cursor: OutputCursor,
}

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

fn pipe() -> Pipe {
    let pipe = runnel::sys::output_pipe().expect("pipe");
    // The job's end does not block here: a full pipe takes what it can, as a job's write would before waiting.
    // SAFETY: F_SETFL on a descriptor this function owns.
    let set = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    assert_eq!(set, 0, "non-blocking pipe");
    Pipe { read: pipe.read, write: Some(pipe.write), pending: VecDeque::new(), written: 0, closed: false }
}

/// The job's output: a byte for each position of a pipe's stream, so a byte read from the wrong place shows.
fn output_byte(pipe: usize, position: u64, seed: u8) -> u8 {
    let mixed = (position ^ ((pipe as u64) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 56) as u8 ^ seed
}

impl ModelLog {
    fn new(spool: &Spool, name: String) -> ModelLog {
        let log = spool.create_log(&name).expect("create log");
        ModelLog {
            log,
            name,
            pipes: [pipe(), pipe()],
            bytes: Vec::new(),
            streams: Vec::new(),
            finished: false,
            damaged: false,
        }
    }

    fn check(&self, per_log_cap: u64) {
        let log = &self.log;
        assert!(log.start() <= log.end());
        if !self.damaged {
            assert_eq!(log.end(), self.bytes.len() as u64, "{}: end", self.name);
        }
        assert!(
            log.retained() <= per_log_cap || log.segment_count() == 1,
            "{}: {} retained over the cap of {per_log_cap} in {} segments",
            self.name,
            log.retained(),
            log.segment_count()
        );
    }
}

/// A fresh directory for one run's state, removed when the run ends.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> StateDir {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        // tmpfs when there is one: a run is mostly creating and removing small files, three times faster there.
        let base = std::env::var_os("FUZZ_SPOOL_DIR").map(PathBuf::from).unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() }
        });
        let path = base.join(format!("runnel-fuzz-spool-{}-{run}", std::process::id()));
        fs::create_dir_all(&path).expect("state dir");
        StateDir(path)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
    );
    files.sort();
    files
}

fuzz_target!(|run: Run| {
    let state = StateDir::new();
    let per_log_cap = (64u64 << 10) << (run.per_log_cap % 8);
    let total_cap = (128u64 << 10) << (run.total_cap % 8);
    let janitor = Janitor::start(state.0.join("trash"), None, None).expect("janitor");
    let mut spool = Spool::create(&state.0, per_log_cap, total_cap, janitor, None, None).expect("spool");
    if run.read_instead_of_splice {
        spool.read_instead_of_splice();
    }
    let mut generation = 0;
    let mut logs: Vec<ModelLog> = (0..LOGS)
        .map(|i| {
            generation += 1;
            ModelLog::new(&spool, format!("log{i}-{generation}"))
        })
        .collect();
    let mut readers: Vec<Reader> = Vec::new();
    let mut fed = 0usize;
    let mut chunk = Vec::new();

    for op in run.ops {
        match op {
            Op::Write { pipe, len, seed } => {
                let (log, pipe) = pick_pipe(pipe);
                let model = &mut logs[log];
                let stream_pipe = &mut model.pipes[pipe];
                let Some(write) = &stream_pipe.write else { continue };
                let len = write_len(len).min(MAX_FED - fed);
                chunk.clear();
                chunk.extend((0..len as u64).map(|i| output_byte(pipe, stream_pipe.written + i, seed)));
                let sent = match runnel::sys::write_nonblocking(write.as_raw_fd(), &chunk) {
                    Ok(Some(sent)) => sent,
                    Ok(None) => 0,
                    Err(err) => panic!("write to a pipe: {err}"),
                };
                stream_pipe.pending.extend(&chunk[..sent]);
                stream_pipe.written += sent as u64;
                fed += sent;
            }
            Op::Ingest { pipe, budget } => {
                let (log, pipe) = pick_pipe(pipe);
                let model = &mut logs[log];
                let stream_pipe = &mut model.pipes[pipe];
                if stream_pipe.closed || model.finished {
                    continue;
                }
                let budget = (budget as usize % (2 << 20)).max(1);
                let stream = STREAMS[pipe];
                let ingested = spool.ingest(&mut model.log, &"fuzz", stream, stream_pipe.read.as_raw_fd(), budget);
                let bytes = ingested.bytes as usize;
                assert!(bytes <= budget, "{bytes} bytes ingested on a budget of {budget}");
                assert!(bytes <= stream_pipe.pending.len(), "{bytes} ingested of {} written", stream_pipe.pending.len());
                model.bytes.extend(stream_pipe.pending.drain(..bytes));
                model.streams.extend(std::iter::repeat_n(stream, bytes));
                match ingested.drain {
                    Drain::Empty => assert!(stream_pipe.pending.is_empty() && stream_pipe.write.is_some()),
                    Drain::Closed => {
                        assert!(stream_pipe.pending.is_empty() && stream_pipe.write.is_none());
                        stream_pipe.closed = true;
                    }
                    Drain::More => assert_eq!(bytes, budget, "More only when the budget ran out"),
                    Drain::Waiting => panic!("Waiting (for a spool writer's room) from a spool that has no writer"),
                }
                if model.pipes.iter().all(|p| p.closed) {
                    spool.finish(&mut model.log);
                    model.finished = true;
                    assert!(model.log.is_finished());
                }
            }
            Op::Close { pipe } => {
                let (log, pipe) = pick_pipe(pipe);
                logs[log].pipes[pipe].write = None;
            }
            Op::Discard { log } => {
                let model = &mut logs[log as usize % LOGS];
                let start = model.log.start();
                let freed = spool.discard_oldest_segment(&mut model.log);
                assert_eq!(model.log.start(), start + freed, "{}: start moves by what was freed", model.name);
            }
            Op::Open { log, offset } => {
                let index = log as usize % LOGS;
                let model = &logs[index];
                let offset = offset % (model.log.end() + 2);
                if readers.len() < 8 {
                    readers.push(Reader { log: index, name: model.name.clone(), cursor: OutputCursor::new(offset) });
                }
            }
            Op::Read { reader, max, take } => {
                let count = readers.len().max(1);
                let Some(reader) = readers.get_mut(reader as usize % count) else { continue };
                let model = &logs[reader.log];
                if model.name != reader.name {
                    continue;
                }
                read(model, &mut reader.cursor, (max as usize % (2 << 20)).max(1), Some(take as usize));
            }
            Op::Remove { log } => {
                let index = log as usize % LOGS;
                spool.remove(&mut logs[index].log);
                generation += 1;
                logs[index] = ModelLog::new(&spool, format!("log{index}-{generation}"));
            }
            Op::Overwrite { log, segment, at, bytes } => {
                let model = &mut logs[log as usize % LOGS];
                let files = segment_files(&state.0.join("output").join(&model.name));
                let Some(path) = files.get(segment as usize % files.len().max(1)) else { continue };
                let file = OpenOptions::new().write(true).open(path).expect("open segment");
                let len = file.metadata().expect("segment size").len();
                file.write_all_at(&bytes, u64::from(at) % (len + 1)).expect("overwrite");
                model.damaged = true;
            }
            Op::Truncate { log, segment, len } => {
                let model = &mut logs[log as usize % LOGS];
                let files = segment_files(&state.0.join("output").join(&model.name));
                let Some(path) = files.get(segment as usize % files.len().max(1)) else { continue };
                let file = OpenOptions::new().write(true).open(path).expect("open segment");
                let size = file.metadata().expect("segment size").len();
                file.set_len(u64::from(len) % (size + 1)).expect("truncate");
                model.damaged = true;
            }
        }
        let retained: u64 = logs.iter().map(|m| m.log.retained()).sum();
        assert_eq!(spool.retained_total(), retained, "the spool's total is the logs' sum");
        for model in &logs {
            model.check(per_log_cap);
        }
    }

    // Every intact log reads back whole from its start; then every log goes, and with it every count.
    for model in &logs {
        if !model.damaged {
            let mut cursor = OutputCursor::new(0);
            while cursor.offset() < model.log.end() {
                read(model, &mut cursor, 1 << 20, None);
            }
        }
    }
    for model in &mut logs {
        spool.remove(&mut model.log);
    }
    assert_eq!(spool.retained_total(), 0);
    spool.finish_removals();
});

/// A write's length from `n`: its top four bits choose a power of two from 64 bytes to 1 MiB, the rest a
/// length below it, so small writes (many records, many index points) are as likely as large ones.
fn write_len(n: u32) -> usize {
    let below = 1usize << (6 + (n >> 28) as usize).min(20);
    (n & 0x0fff_ffff) as usize % below
}

/// Pipe `n` of the run: log `n / 2 % LOGS`, stream `n % 2`.
fn pick_pipe(n: u8) -> (usize, usize) {
    ((n as usize / 2) % LOGS, n as usize % 2)
}

/// One span's read at `cursor`: at most `max` bytes asked for, `take` (modulo the span) read, or all of it.
fn read(model: &ModelLog, cursor: &mut OutputCursor, max: usize, take: Option<usize>) {
    let log = &model.log;
    let (before, start, end) = (cursor.offset(), log.start(), log.end());
    let span = match log.next_span(cursor, max) {
        Ok(span) => span,
        Err(err) if model.damaged => return drop(err),
        Err(err) => panic!("{}: next_span at {before} of [{start}, {end}): {err}", model.name),
    };
    let Some(span) = span else {
        assert!(cursor.offset() >= end, "{}: nothing to read at {} of [{start}, {end})", model.name, cursor.offset());
        return;
    };
    assert_eq!(span.offset, before.max(start), "{}: a reader behind the start jumps to it", model.name);
    assert!(span.len >= 1 && span.len <= max, "{}: span of {} for {max}", model.name, span.len);
    assert!(span.offset + span.len as u64 <= end, "{}: span past the end", model.name);
    let take = take.map_or(span.len, |take| take % span.len + 1);
    let mut buf = bytes::BytesMut::new();
    match log.read_span(cursor, take, &mut buf) {
        Ok(()) => {}
        Err(err) if model.damaged => return drop(err),
        Err(err) => panic!("{}: read_span {take} at {}: {err}", model.name, span.offset),
    }
    assert_eq!(buf.len(), take);
    assert_eq!(cursor.offset(), span.offset + take as u64, "the cursor moves past what was read");
    if !model.damaged {
        let at = span.offset as usize;
        assert!(buf[..] == model.bytes[at..at + take], "{}: bytes at {at} differ from what was written", model.name);
        assert!(model.streams[at..at + take].iter().all(|&s| s == span.stream), "{}: stream at {at}", model.name);
    }
}
