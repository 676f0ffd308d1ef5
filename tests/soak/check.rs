//! One follower's check: every chunk's offset and every byte against what the job wrote.
//!
//! Offsets are in the job's combined output (stdout and stderr interleaved as the server took them from the
//! pipes, which no one can predict), so each stream is checked on its own: the stdout bytes received, in order,
//! must be the job's stdout from some position on, and the same for stderr. From offset 0 with no gap the
//! positions are known exactly. After a gap (retention discarded output) or from an offset past 0, how many
//! of the bytes before were stdout is not known, so a stream's position is found by searching its expected
//! bytes for what arrived (pseudo-random output makes that unique) and checked from there on.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Instant;

use runnel::proto::{OutputChunk, OutputStream};

use crate::recipes::Recipe;

const STREAM_NAMES: [&str; 2] = ["stdout", "stderr"];

/// Positions kept for a stream whose place is ambiguous after a gap (short text that occurs several times).
const MAX_CANDIDATES: usize = 4096;

/// Where the next byte of one stream sits in its expected output.
enum Place {
    At(u64),
    /// At one of these (what arrived after a gap occurs at each).
    Among(Vec<u64>),
    /// Not known (after a gap, or in a follow from an offset past 0), but not before `low`.
    Unknown {
        low: u64,
    },
}

impl Place {
    fn from_candidates(mut candidates: Vec<u64>) -> Place {
        match candidates.len() {
            1 => Place::At(candidates[0]),
            // Cut short: the true position is one of these or a later one.
            MAX_CANDIDATES => Place::Unknown { low: candidates[0] },
            _ => {
                candidates.dedup();
                Place::Among(candidates)
            }
        }
    }

    fn forget(&self) -> Place {
        match self {
            Place::At(p) => Place::Unknown { low: *p },
            Place::Among(candidates) => Place::Unknown { low: candidates[0] },
            Place::Unknown { low } => Place::Unknown { low: *low },
        }
    }

    /// False if the stream is known to have stopped short of `len`.
    fn may_be_at(&self, len: u64) -> bool {
        match self {
            Place::At(p) => *p == len,
            Place::Among(candidates) => candidates.contains(&len),
            Place::Unknown { .. } => true,
        }
    }
}

pub struct StreamCheck {
    job_id: String,
    recipe: Arc<Recipe>,
    requested: u64,
    /// Offset right after the last chunk.
    next: Option<u64>,
    places: [Place; 2],
    received: [u64; 2],
    /// Bytes received, and of them those matched against the expected output (all of them, unless it failed).
    pub streamed: u64,
    pub checked: u64,
    /// Skips in the offsets (each confirmed by the caller against the job's `output_start`).
    pub gaps: u64,
    begun: Instant,
    last_chunk_at: Option<Instant>,
}

impl StreamCheck {
    /// A follow of `job_id` (started from `recipe`) asked to start at `offset`.
    pub fn new(job_id: &str, recipe: Arc<Recipe>, offset: u64) -> StreamCheck {
        let place = || if offset == 0 { Place::At(0) } else { Place::Unknown { low: 0 } };
        StreamCheck {
            job_id: job_id.into(),
            recipe,
            requested: offset,
            next: None,
            places: [place(), place()],
            received: [0, 0],
            streamed: 0,
            checked: 0,
            gaps: 0,
            begun: Instant::now(),
            last_chunk_at: None,
        }
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    pub fn describe(&self) -> String {
        format!("job {} ({}, followed from offset {})", self.job_id, self.recipe.name, self.requested)
    }

    /// How far the stream got, and when: for a failure's message.
    pub fn progress(&self) -> String {
        let last = match self.last_chunk_at {
            Some(at) => format!("the last {:.1} s after the call began", (at - self.begun).as_secs_f64()),
            None => "none".into(),
        };
        let end = self.end_offset();
        format!("{} bytes in chunks up to offset {end} ({} gaps); chunks: {last}", self.streamed, self.gaps)
    }

    /// Checks one chunk. `Ok(Some(start))`: the chunk skipped the offsets from `start` to its own, which is
    /// right only if retention discarded them; the caller must confirm that.
    pub fn chunk(&mut self, chunk: &OutputChunk) -> Result<Option<u64>, String> {
        let index = match chunk.stream() {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
            other => {
                return Err(format!("{}: a chunk at offset {} names stream {other:?}", self.describe(), chunk.offset))
            }
        };
        let at = self.next.unwrap_or(self.requested);
        let gap = match chunk.offset.cmp(&at) {
            Ordering::Less => {
                return Err(format!(
                    "{}: a chunk at offset {} after the stream had reached {at} (bytes sent twice, or out of order)",
                    self.describe(),
                    chunk.offset
                ))
            }
            Ordering::Equal => None,
            Ordering::Greater => {
                self.places = [self.places[0].forget(), self.places[1].forget()];
                self.gaps += 1;
                Some(at)
            }
        };
        let len = chunk.data.len() as u64;
        self.streamed += len;
        self.place(index, chunk.offset, &chunk.data)?;
        self.received[index] += len;
        self.checked += len;
        self.next = Some(chunk.offset + len);
        self.last_chunk_at = Some(Instant::now());
        Ok(gap)
    }

    /// Checks `data`, which arrived at combined `offset` on stream `index`, and moves that stream's place on.
    fn place(&mut self, index: usize, offset: u64, data: &[u8]) -> Result<(), String> {
        let expected = self.recipe.expected.stream(index).clone();
        let other_len = self.recipe.expected.stream(1 - index).len();
        if other_len == 0 {
            // A job that writes one stream only: its offsets are that stream's positions.
            self.places[index] = Place::At(offset);
        }
        let len = data.len() as u64;
        let next = match std::mem::replace(&mut self.places[index], Place::Unknown { low: 0 }) {
            Place::At(position) => {
                if let Some(i) = expected.first_difference(position, data) {
                    return Err(self.mismatch(index, position, offset, data, i));
                }
                Place::At(position + len)
            }
            Place::Among(candidates) => {
                let matching: Vec<u64> = candidates
                    .into_iter()
                    .filter(|&p| expected.first_difference(p, data).is_none())
                    .map(|p| p + len)
                    .collect();
                if matching.is_empty() {
                    return Err(self.nowhere(index, offset, data.len()));
                }
                Place::from_candidates(matching)
            }
            Place::Unknown { low } => {
                // The combined offset counts this stream's bytes before these and at most all the other's.
                let low = low.max(offset.saturating_sub(other_len));
                let found = expected.positions_of(data, low, offset, MAX_CANDIDATES);
                if found.is_empty() {
                    return Err(self.nowhere(index, offset, data.len()));
                }
                Place::from_candidates(found.into_iter().map(|p| p + len).collect())
            }
        };
        self.places[index] = next;
        Ok(())
    }

    fn mismatch(&self, index: usize, position: u64, offset: u64, data: &[u8], i: usize) -> String {
        let expected = self.recipe.expected.stream(index);
        let around = i.saturating_sub(8);
        let got = &data[around..data.len().min(around + 24)];
        format!(
            "{}: {} byte {} (combined offset {}) differs: expected {} bytes of {} in all, {} received before this \
             chunk; from stream byte {}: expected {:02x?}, received {:02x?}",
            self.describe(),
            STREAM_NAMES[index],
            position + i as u64,
            offset + i as u64,
            expected.len(),
            STREAM_NAMES[index],
            self.received[index],
            position + around as u64,
            expected.bytes(position + around as u64, got.len()),
            got
        )
    }

    fn nowhere(&self, index: usize, offset: u64, len: usize) -> String {
        format!(
            "{}: {len} {} bytes at combined offset {offset} occur nowhere in the job's {} bytes of {} where they \
             could be (after a gap or a follow from past 0); {} received before",
            self.describe(),
            STREAM_NAMES[index],
            self.recipe.expected.stream(index).len(),
            STREAM_NAMES[index],
            self.received[index]
        )
    }

    pub fn expected_total(&self) -> u64 {
        self.recipe.expected.total()
    }

    /// The offset after the last byte received (where the follow began, if nothing arrived).
    pub fn end_offset(&self) -> u64 {
        self.next.unwrap_or(self.requested)
    }

    /// The rest of the output, up to `output_bytes`, was discarded by retention (the caller confirmed it): a
    /// gap at the end.
    pub fn skip_discarded_tail(&mut self, output_bytes: u64) {
        self.places = [self.places[0].forget(), self.places[1].forget()];
        self.gaps += 1;
        self.next = Some(output_bytes);
    }

    /// The follow ended as a completed follow does: every byte the job wrote from the requested offset on must
    /// have arrived (or been discarded by retention, confirmed at each gap).
    pub fn finish_complete(&self) -> Result<(), String> {
        self.finish_at(self.recipe.expected.total())?;
        for (index, name) in STREAM_NAMES.iter().enumerate() {
            let len = self.recipe.expected.stream(index).len();
            if !self.places[index].may_be_at(len) {
                return Err(format!(
                    "{}: the follow ended, but {name} is short: the job wrote {len} bytes, {} arrived",
                    self.describe(),
                    self.received[index]
                ));
            }
        }
        Ok(())
    }

    /// A read of a stopped job's output ended: it must reach `output_bytes`, the job's output when it ended.
    pub fn finish_at(&self, output_bytes: u64) -> Result<(), String> {
        let end = self.end_offset();
        if end != output_bytes {
            return Err(format!(
                "{}: the stream ended at offset {end} (first chunk + bytes received), but the job's output is {} \
                 bytes; received stdout {}, stderr {}; expected stdout {}, stderr {}",
                self.describe(),
                output_bytes,
                self.received[0],
                self.received[1],
                self.recipe.expected.stdout.len(),
                self.recipe.expected.stderr.len()
            ));
        }
        Ok(())
    }
}
