//! The `cpu` controller: a quota per period, and the CPU time used.

use std::path::Path;

use super::{keyed_value, read, write, CgroupError};

/// `QUOTA PERIOD` in microseconds: the group may run QUOTA µs per PERIOD µs.
const MAX: &str = "cpu.max";
/// Flat-keyed; `usage_usec` is the CPU time the group used.
const STAT: &str = "cpu.stat";

/// `cpu.max`'s period: quota = millicores × 100 µs per 100 ms.
const PERIOD_USEC: u64 = 100_000;

/// Caps the group at `millicores` (0: no cap, nothing written).
pub(super) fn limit(dir: &Path, millicores: u32) -> Result<(), CgroupError> {
    if millicores == 0 {
        return Ok(());
    }
    let quota = u64::from(millicores) * PERIOD_USEC / 1000;
    write(&dir.join(MAX), &format!("{quota} {PERIOD_USEC}"))
}

/// CPU time used so far, in microseconds.
pub(super) fn usage_usec(dir: &Path) -> Option<u64> {
    read(&dir.join(STAT)).ok().and_then(|stat| keyed_value(&stat, "usage_usec"))
}
