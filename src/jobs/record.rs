//! A job's record on disk (`STATE/jobs/<id>/record`): what a server that restarts, or starts after a crash,
//! needs to serve the job again exactly as before. The job's output is beside it, in its spool segments.
//!
//! Format (version 1): a 20-byte header (the magic `RUNNELJR`, the version, the payload's length and its CRC-32,
//! little-endian) and a protobuf `runnel.state.v1.JobRecord` (`proto/runnel/state/v1/record.proto`). The CRC
//! catches a torn or damaged file; protobuf lets later versions add fields that this one skips.
//!
//! A record is written when the job's process is launched, while its command starts on another core, when the
//! command is seen to start, when the job ends and when its output is complete, each time over the last one in
//! place: a record only grows, and one write of at most a page is copied whole before the kernel looks at a fatal
//! signal, so a crash of the server leaves the old record or the new one, never a mix; one of at most a sector
//! (512 bytes, the usual size) is not torn by a power loss either. A record larger than a page (long arguments)
//! is replaced whole instead: written to `record.tmp`, then renamed over `record`. None is synced (no `fsync`:
//! see README, "State directory"). The loop only encodes a record: the segment mover writes it
//! (`spool::mover`), in the order asked, as looking a file up by name can wait for the disk.
//!
//! This is the one place the job domain meets protobuf: the storage schema is its own, not the API's.

// This module reads bytes from a file a crash or a disk may have damaged: no panicking shortcuts on them, as one
// reachable panic would stop the server from starting.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use prost::Message;

use super::{EndReason, EndState, JobId, JobKey};
use crate::cgroup::{FinalUsage, Limits, Usage};
use crate::proto::state as disk;
use crate::sys::ExitStatus;

/// The record's file name in the job's directory.
pub const RECORD_FILE: &str = "record";
const RECORD_TEMP: &str = "record.tmp";
const MAGIC: &[u8; 8] = b"RUNNELJR";
/// The format this server writes and reads.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 20;
/// A record holds at most a request's args and environment (`--max-request-bytes`, at most a few MiB) and a
/// few numbers: anything claiming more is damaged.
const MAX_PAYLOAD: u32 = 64 << 20;
/// Most bytes a record may have to be overwritten in place: a page, which one `write` copies whole before a
/// fatal signal is looked at.
const IN_PLACE_MAX: usize = 4096;

/// Everything a job's record holds.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub key: JobKey,
    pub owner: String,
    pub command: String,
    pub args: Vec<String>,
    pub pid: i32,
    pub started_at: SystemTime,
    pub end: Option<EndState>,
    pub limits: Option<Limits>,
    pub final_usage: Option<FinalUsage>,
    /// Output bytes the job produced, once all of it was taken in (`None` before: the spool tells).
    pub output_end: Option<u64>,
    /// The command was seen to start; a record without it is of a start that never finished.
    pub started: bool,
}

/// Why a record file cannot be used.
#[derive(Debug)]
pub enum RecordError {
    Io(io::Error),
    /// Shorter than its header says: a write cut short.
    Truncated {
        len: usize,
        needed: usize,
    },
    NotARecord,
    /// Written by another version of runnel (a newer one, most likely).
    UnknownVersion(u32),
    ChecksumMismatch,
    Malformed(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Io(err) => write!(f, "cannot read it: {err}"),
            RecordError::Truncated { len, needed } => write!(f, "truncated: {len} bytes of {needed}"),
            RecordError::NotARecord => f.write_str("not a runnel job record (no RUNNELJR header)"),
            RecordError::UnknownVersion(version) => write!(
                f,
                "format version {version}, and this runnel reads version {VERSION}: written by another version of runnel"
            ),
            RecordError::ChecksumMismatch => f.write_str("damaged: its checksum does not match its contents"),
            RecordError::Malformed(what) => write!(f, "malformed: {what}"),
        }
    }
}

impl JobRecord {
    /// The file's bytes: header and payload.
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.to_disk().encode_to_vec();
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        // Bounded by the request limits; a record this size cannot be written (see MAX_PAYLOAD).
        bytes.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes());
        bytes.extend_from_slice(&crc32(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    }

    /// Reads a record file's bytes back.
    pub fn decode(bytes: &[u8]) -> Result<JobRecord, RecordError> {
        let needed = HEADER_LEN;
        let header = bytes.get(..HEADER_LEN).ok_or(RecordError::Truncated { len: bytes.len(), needed })?;
        let (magic, rest) = header.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(RecordError::NotARecord);
        }
        let word = |at: usize| rest.get(at..at + 4).and_then(|w| w.try_into().ok()).map_or(0, u32::from_le_bytes);
        let (version, len, crc) = (word(0), word(4), word(8));
        if version != VERSION {
            return Err(RecordError::UnknownVersion(version));
        }
        if len > MAX_PAYLOAD {
            return Err(RecordError::Malformed(format!("its header claims {len} bytes")));
        }
        let needed = HEADER_LEN + len as usize;
        let payload = bytes.get(HEADER_LEN..needed).ok_or(RecordError::Truncated { len: bytes.len(), needed })?;
        if bytes.len() > needed {
            return Err(RecordError::Malformed(format!("{} bytes past its end", bytes.len() - needed)));
        }
        if crc32(payload) != crc {
            return Err(RecordError::ChecksumMismatch);
        }
        let record = disk::JobRecord::decode(payload).map_err(|e| RecordError::Malformed(e.to_string()))?;
        JobRecord::from_disk(record)
    }

    /// Writes the record into the job's directory `dir`, replacing the one there whole.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        replace(dir, &self.encode())
    }

    /// Reads the record in the job's directory `dir`; `Ok(None)` if there is none, or if its file is empty: the
    /// server died between creating it and writing it (the job's start never finished).
    pub fn read(dir: &Path) -> Result<Option<JobRecord>, RecordError> {
        match fs::read(dir.join(RECORD_FILE)) {
            Ok(bytes) if bytes.is_empty() => Ok(None),
            Ok(bytes) => JobRecord::decode(&bytes).map(Some),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(RecordError::Io(err)),
        }
    }

    fn to_disk(&self) -> disk::JobRecord {
        disk::JobRecord {
            id: self.id.to_string(),
            sequence: self.key,
            owner: self.owner.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            pid: self.pid,
            started_at_unix_nanos: unix_nanos(self.started_at),
            end: self.end.map(|end| disk::End {
                reason: reason_to_disk(end.reason) as i32,
                status: end.status.map(|status| match status {
                    ExitStatus::Exited(code) => disk::end::Status::ExitCode(code),
                    ExitStatus::Signaled(signal) => disk::end::Status::Signal(signal),
                }),
                at_unix_nanos: unix_nanos(end.at),
            }),
            limits: self.limits.map(|l| disk::Limits {
                cpu_millicores: l.cpu_millicores,
                memory_bytes: l.memory_bytes,
                io_read_bps: l.io_read_bps,
                io_write_bps: l.io_write_bps,
                io_read_iops: l.io_read_iops,
                io_write_iops: l.io_write_iops,
                max_pids: l.max_pids,
            }),
            usage: self.final_usage.map(|f| disk::Usage {
                cpu_usec: f.usage.cpu_usec,
                memory_peak_bytes: f.usage.memory_peak_bytes,
                io_read_bytes: f.usage.io_read_bytes,
                io_write_bytes: f.usage.io_write_bytes,
                oom_killed: f.oom_killed,
            }),
            output_end: self.output_end,
            started: self.started,
        }
    }

    fn from_disk(record: disk::JobRecord) -> Result<JobRecord, RecordError> {
        let id = JobId::parse(&record.id)
            .ok_or_else(|| RecordError::Malformed(format!("job id {:?} is not a UUID", super::clip(&record.id))))?;
        let end = match record.end {
            None => None,
            Some(end) => {
                let reason = disk::Reason::try_from(end.reason)
                    .ok()
                    .and_then(reason_from_disk)
                    .ok_or_else(|| RecordError::Malformed(format!("end reason {} is unknown", end.reason)))?;
                let status = end.status.map(|status| match status {
                    disk::end::Status::ExitCode(code) => ExitStatus::Exited(code),
                    disk::end::Status::Signal(signal) => ExitStatus::Signaled(signal),
                });
                if status.is_none() != (reason == EndReason::ServerLost) {
                    return Err(RecordError::Malformed("an end without an exit status that is not a loss".into()));
                }
                Some(EndState { status, reason, at: from_unix_nanos(end.at_unix_nanos) })
            }
        };
        Ok(JobRecord {
            id,
            key: record.sequence,
            owner: record.owner,
            command: record.command,
            args: record.args,
            pid: record.pid,
            started_at: from_unix_nanos(record.started_at_unix_nanos),
            end,
            limits: record.limits.map(|l| Limits {
                cpu_millicores: l.cpu_millicores,
                memory_bytes: l.memory_bytes,
                io_read_bps: l.io_read_bps,
                io_write_bps: l.io_write_bps,
                io_read_iops: l.io_read_iops,
                io_write_iops: l.io_write_iops,
                max_pids: l.max_pids,
            }),
            final_usage: record.usage.map(|u| FinalUsage {
                usage: Usage {
                    cpu_usec: u.cpu_usec,
                    memory_peak_bytes: u.memory_peak_bytes,
                    io_read_bytes: u.io_read_bytes,
                    io_write_bytes: u.io_write_bytes,
                },
                oom_killed: u.oom_killed,
            }),
            output_end: record.output_end,
            started: record.started,
        })
    }
}

/// Writes a record's bytes (see [`JobRecord::encode`]) into the job's directory `dir`: over the record there in
/// place, if they are no shorter and fit one write that a crash cannot tear (within a page); replacing it whole
/// otherwise, or creating it where there is none. Where the segment mover runs, it does this (`spool::mover`):
/// the file is looked up by name, which can wait for the disk.
pub fn store(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    // Not truncated: the old record stays whole until the one write over it.
    let mut options = fs::OpenOptions::new();
    let file = options.write(true).create(true).truncate(false).mode(0o600).open(dir.join(RECORD_FILE))?;
    if (bytes.len() as u64) < file.metadata()?.len() || bytes.len() > IN_PLACE_MAX {
        return replace(dir, bytes);
    }
    file.write_all_at(bytes, 0)
}

/// Replaces the record in `dir` whole with `bytes`: written beside it, then renamed over it.
fn replace(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(RECORD_TEMP);
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
    file.write_all(bytes)?;
    fs::rename(&temp, dir.join(RECORD_FILE))
}

fn reason_to_disk(reason: EndReason) -> disk::Reason {
    match reason {
        EndReason::Exited => disk::Reason::Exited,
        EndReason::Stopped => disk::Reason::Stopped,
        EndReason::OomKilled => disk::Reason::OomKilled,
        EndReason::Signaled => disk::Reason::Signaled,
        EndReason::ServerShutdown => disk::Reason::ServerShutdown,
        EndReason::ServerLost => disk::Reason::ServerLost,
    }
}

fn reason_from_disk(reason: disk::Reason) -> Option<EndReason> {
    Some(match reason {
        disk::Reason::Unspecified => return None,
        disk::Reason::Exited => EndReason::Exited,
        disk::Reason::Stopped => EndReason::Stopped,
        disk::Reason::OomKilled => EndReason::OomKilled,
        disk::Reason::Signaled => EndReason::Signaled,
        disk::Reason::ServerShutdown => EndReason::ServerShutdown,
        disk::Reason::ServerLost => EndReason::ServerLost,
    })
}

/// Nanoseconds since 1970 (negative before; saturating past the year 2262).
fn unix_nanos(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn from_unix_nanos(nanos: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// CRC-32 (IEEE 802.3, as zlib and `cksum -a crc32b` compute it).
fn crc32(data: &[u8]) -> u32 {
    #[allow(clippy::indexing_slicing, reason = "a constant loop over the table's own 256 entries")]
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 != 0 { 0xedb8_8320 ^ (crc >> 1) } else { crc >> 1 };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &byte in data {
        #[allow(clippy::indexing_slicing, reason = "a u8 indexes a table of 256")]
        let entry = TABLE[usize::from(crc as u8 ^ byte)];
        crc = entry ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        JobRecord {
            id: JobId::parse("0123abcd-0000-4000-8000-00000000beef").unwrap(),
            key: 42,
            owner: "alice".into(),
            command: "sh".into(),
            args: vec!["-c".into(), "echo \u{1F600}\0".into()],
            pid: 1234,
            started_at: SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789),
            end: Some(EndState {
                status: Some(ExitStatus::Signaled(9)),
                reason: EndReason::OomKilled,
                at: SystemTime::UNIX_EPOCH + Duration::new(1_800_000_100, 1),
            }),
            limits: Some(Limits { memory_bytes: 1 << 30, max_pids: 64, ..Limits::default() }),
            final_usage: Some(FinalUsage {
                usage: Usage { cpu_usec: 5, memory_peak_bytes: 1 << 29, io_read_bytes: 7, io_write_bytes: 8 },
                oom_killed: true,
            }),
            output_end: Some(1 << 33),
            started: true,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926, "the standard check value");
        let record = record();
        assert_eq!(JobRecord::decode(&record.encode()).unwrap(), record);
        let running = JobRecord {
            end: None,
            limits: None,
            final_usage: None,
            output_end: None,
            started: false,
            ..record.clone()
        };
        assert_eq!(JobRecord::decode(&running.encode()).unwrap(), running);
        let lost = EndState { status: None, reason: EndReason::ServerLost, at: SystemTime::UNIX_EPOCH };
        let lost = JobRecord { end: Some(lost), ..record };
        assert_eq!(JobRecord::decode(&lost.encode()).unwrap(), lost);
    }

    #[test]
    fn every_kind_of_damage_is_refused_and_named() {
        let bytes = record().encode();
        let refused = |bytes: &[u8]| JobRecord::decode(bytes).unwrap_err().to_string();
        assert!(refused(&bytes[..bytes.len() - 1]).starts_with("truncated"), "{}", refused(&bytes[..10]));
        assert!(refused(&bytes[..10]).starts_with("truncated"));
        assert!(refused(&[]).starts_with("truncated"));
        assert!(refused(&[b'x'; 64]).starts_with("not a runnel job record"));
        let mut newer = bytes.clone();
        newer[8] = 2;
        assert!(refused(&newer).contains("format version 2"), "{}", refused(&newer));
        for at in [HEADER_LEN, HEADER_LEN + 7, bytes.len() - 1] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(refused(&flipped).contains("checksum"), "a byte flipped at {at}: {}", refused(&flipped));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(refused(&longer).contains("past its end"));
        // A payload that is sound protobuf with the right checksum, but not a job: no id.
        let mut empty = Vec::from(&bytes[..HEADER_LEN]);
        empty[12..16].copy_from_slice(&0u32.to_le_bytes());
        empty[16..20].copy_from_slice(&crc32(&[]).to_le_bytes());
        assert!(refused(&empty).contains("is not a UUID"), "{}", refused(&empty));
    }

    #[test]
    fn a_record_is_created_then_overwritten_in_place_or_replaced_whole() {
        let dir = crate::scratch::ScratchDir::new("record");
        assert!(JobRecord::read(dir.path()).unwrap().is_none());
        // Created and never written (the server died in between): no record, as for a start that never finished.
        fs::write(dir.join(RECORD_FILE), b"").unwrap();
        assert!(JobRecord::read(dir.path()).unwrap().is_none());
        fs::remove_file(dir.join(RECORD_FILE)).unwrap();
        let mut record = JobRecord { end: None, started: false, ..record() };
        store(dir.path(), &record.encode()).unwrap();
        assert_eq!(JobRecord::read(dir.path()).unwrap().as_ref(), Some(&record), "created where there was none");
        // Marked started in place: longer, the same file.
        let inode = || std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir.join(RECORD_FILE)).unwrap());
        let created = inode();
        record.started = true;
        store(dir.path(), &record.encode()).unwrap();
        assert_eq!((JobRecord::read(dir.path()).unwrap().as_ref(), inode()), (Some(&record), created));
        // Shorter, or past a page: replaced whole, a new file.
        record.args.clear();
        store(dir.path(), &record.encode()).unwrap();
        assert_eq!(JobRecord::read(dir.path()).unwrap().as_ref(), Some(&record));
        assert_ne!(inode(), created);
        let replaced = inode();
        record.args = vec!["x".repeat(5000)];
        store(dir.path(), &record.encode()).unwrap();
        assert_eq!((JobRecord::read(dir.path()).unwrap().as_ref(), inode() != replaced), (Some(&record), true));
        assert!(!dir.join(RECORD_TEMP).exists());
    }
}
