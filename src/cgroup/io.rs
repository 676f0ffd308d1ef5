//! The `io` controller: bandwidth and operation limits per block device, and the bytes moved.

use std::path::Path;

use super::{read, write, CgroupError, Limits};

/// One line per device: `MAJ:MIN rbps=N wbps=N riops=N wiops=N` (keys left out are unlimited).
const MAX: &str = "io.max";
/// One line per device: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...`.
const STAT: &str = "io.stat";

/// Writes the io limits set in `limits` for each device in `devices` (nothing if none is set).
pub(super) fn limit(dir: &Path, limits: &Limits, devices: &[String]) -> Result<(), CgroupError> {
    let settings: Vec<String> = [
        ("rbps", limits.io_read_bps),
        ("wbps", limits.io_write_bps),
        ("riops", limits.io_read_iops),
        ("wiops", limits.io_write_iops),
    ]
    .iter()
    .filter(|(_, value)| *value > 0)
    .map(|(key, value)| format!("{key}={value}"))
    .collect();
    if settings.is_empty() {
        return Ok(());
    }
    for device in devices {
        write(&dir.join(MAX), &format!("{device} {}", settings.join(" ")))?;
    }
    Ok(())
}

/// Bytes read and written, summed over every device: `(read, written)`.
pub(super) fn bytes(dir: &Path) -> (u64, u64) {
    let (mut read_bytes, mut written_bytes) = (0, 0);
    if let Ok(stat) = read(&dir.join(STAT)) {
        for word in stat.split_whitespace() {
            if let Some(n) = word.strip_prefix("rbytes=").and_then(|n| n.parse::<u64>().ok()) {
                read_bytes += n;
            } else if let Some(n) = word.strip_prefix("wbytes=").and_then(|n| n.parse::<u64>().ok()) {
                written_bytes += n;
            }
        }
    }
    (read_bytes, written_bytes)
}
