//! The `pids` controller: how many processes the group may hold at once.

use std::path::Path;

use super::{write, CgroupError};

/// The most processes (and threads) the group may hold; a fork past it fails with EAGAIN.
const MAX: &str = "pids.max";

/// Writes the process limit (0: none, nothing written).
pub(super) fn limit(dir: &Path, max_pids: u32) -> Result<(), CgroupError> {
    if max_pids == 0 {
        return Ok(());
    }
    write(&dir.join(MAX), &max_pids.to_string())
}
