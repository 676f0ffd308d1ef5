//! Tests' scratch directories: one per test under the system temp dir, removed when dropped, so a test that
//! fails leaves nothing behind for the next run either.
//!
//! The one helper for every test: the unit tests use it as `crate::scratch`, the integration tests and the
//! bench include this same file from `tests/util`.

use std::fs;
use std::path::{Path, PathBuf};

pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new empty directory whose name starts with `runnel-NAME-`.
    pub fn new(name: &str) -> ScratchDir {
        ScratchDir::new_in(&std::env::temp_dir(), name)
    }

    /// As [`ScratchDir::new`], under `parent` instead of the system temp dir.
    pub fn new_in(parent: &Path, name: &str) -> ScratchDir {
        let path = parent.join(format!("runnel-{name}-{:016x}", rand::random::<u64>()));
        fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
