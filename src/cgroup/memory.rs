//! The `memory` controller: a hard limit with no swap, the whole job killed on OOM, and what it used.

use std::path::Path;

use super::{keyed_value, read, write, CgroupError};

/// The hard limit in bytes; over it the OOM killer acts inside the group.
const MAX: &str = "memory.max";
/// Swap the group may use; absent without swap accounting in the kernel.
const SWAP_MAX: &str = "memory.swap.max";
/// `1`: an OOM kill takes every process in the group, not just the largest.
const OOM_GROUP: &str = "memory.oom.group";
/// The most memory the group used at once.
const PEAK: &str = "memory.peak";
/// Flat-keyed counters; `oom_kill` counts processes the OOM killer took.
const EVENTS: &str = "memory.events";

/// Writes the memory limit (0: none) and makes an OOM kill take the whole job.
pub(super) fn limit(dir: &Path, memory_bytes: u64) -> Result<(), CgroupError> {
    if memory_bytes > 0 {
        write(&dir.join(MAX), &memory_bytes.to_string())?;
        // Without swap accounting in the kernel the file does not exist, and there is no swap to limit.
        match write(&dir.join(SWAP_MAX), "0") {
            Err(CgroupError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    // One OOM kill takes the whole job, init included, so the job ends instead of limping on.
    write(&dir.join(OOM_GROUP), "1")
}

/// The peak memory use, in bytes.
pub(super) fn peak_bytes(dir: &Path) -> Option<u64> {
    read(&dir.join(PEAK)).ok().and_then(|peak| peak.trim().parse().ok())
}

/// How many processes the OOM killer took in the group.
pub(super) fn oom_kills(dir: &Path) -> u64 {
    read(&dir.join(EVENTS)).ok().and_then(|events| keyed_value(&events, "oom_kill")).unwrap_or(0)
}
