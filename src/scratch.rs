//! Tests' scratch directories: one per test under the system temp dir, removed when dropped, so a test that
//! fails leaves nothing behind for the next run either.

use std::fs;
use std::path::PathBuf;

pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new empty directory whose name starts with `runnel-NAME-`.
    pub fn new(name: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!("runnel-{name}-{:016x}", rand::random::<u64>()));
        fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
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
