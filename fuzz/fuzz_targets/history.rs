//! Reading a previous server's files back, on bytes a crash, a disk or a stray writer may have left: a job's
//! record (any bytes, decoded) and its output segments (files with a sound header or not, any records after it),
//! read back into a spool. Nothing may panic or hang; a record that decodes must encode back to itself; a log
//! read back must keep its own counts (start ≤ end, retained within its cap), and reading it from its start must
//! end (with its bytes, or an error) without leaving the retained range.
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use runnel::jobs::janitor::Janitor;
use runnel::jobs::{JobRecord, OutputCursor, Spool};

#[derive(Arbitrary, Debug)]
struct Input {
    record: Vec<u8>,
    segments: Vec<SegmentFile>,
    /// What the job's record says it produced, if it says.
    output_end: Option<u32>,
    trust_spares: bool,
    /// `--max-output-bytes`: 64 KiB << (n % 6).
    per_log_cap: u8,
}

#[derive(Arbitrary, Debug)]
struct SegmentFile {
    index: u8,
    /// A sound header (this first offset, written over a spare or not), or none: the body is the whole file.
    header: Option<(u32, bool)>,
    body: Vec<u8>,
}

/// A fresh state directory for one run, removed when the run ends.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> StateDir {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let path = base.join(format!("runnel-fuzz-history-{}-{run}", std::process::id()));
        fs::create_dir_all(&path).expect("state dir");
        StateDir(path)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fuzz_target!(|input: Input| {
    if let Ok(record) = JobRecord::decode(&input.record) {
        assert_eq!(JobRecord::decode(&record.encode()).ok(), Some(record), "a record encodes back to itself");
    }

    let state = StateDir::new();
    let cap = (64u64 << 10) << (input.per_log_cap % 6);
    let janitor = Janitor::start(state.0.join("trash"), None, None).expect("janitor");
    let mut spool = Spool::create(&state.0, cap, cap * 4, janitor, None, None).expect("spool");
    let name = "0123abcd-0000-4000-8000-00000000beef";
    let dir = state.0.join("jobs").join(name);
    fs::create_dir_all(&dir).expect("job dir");
    for segment in input.segments.iter().take(8) {
        let mut bytes = Vec::new();
        let index = segment.index % 16;
        if let Some((start, over_spare)) = segment.header {
            bytes.extend_from_slice(b"RUNNELSG");
            bytes.extend_from_slice(&1u32.to_le_bytes());
            bytes.extend_from_slice(&u32::from(over_spare).to_le_bytes());
            bytes.extend_from_slice(&u64::from(start).to_le_bytes());
            bytes.extend_from_slice(&u64::from(index).to_le_bytes());
            let mut owner = [0u8; 40];
            owner[..name.len()].copy_from_slice(name.as_bytes());
            bytes.extend_from_slice(&owner);
        }
        bytes.extend_from_slice(&segment.body);
        fs::write(dir.join(format!("{index:08}")), bytes).expect("segment");
    }
    let Ok((log, _problems)) = spool.recover_log(name, input.output_end.map(u64::from), input.trust_spares) else {
        return;
    };
    assert!(log.start() <= log.end());
    assert!(log.retained() <= cap || log.retained() == 0, "retained {} over the cap {cap}", log.retained());
    assert_eq!(spool.retained_total(), log.retained());
    let mut cursor = OutputCursor::new(0);
    let mut read = 0u64;
    loop {
        match log.next_span(&mut cursor, 1 << 16) {
            Ok(Some(span)) => {
                assert!(span.offset >= log.start() && span.offset + span.len as u64 <= log.end(), "{span:?}");
                let mut buf = bytes::BytesMut::new();
                if log.read_span(&mut cursor, span.len, &mut buf).is_err() {
                    break;
                }
                read += span.len as u64;
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    assert!(read <= log.retained());
});
