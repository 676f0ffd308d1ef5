//! Who may act on a job: its owner, or an admin. The rule lives here alone; the table applies it to every
//! lookup, so a caller learns nothing about jobs that are not theirs.

use super::Job;

/// Who is asking: an authenticated identity, and whether it may act on every job.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: String,
    pub admin: bool,
}

impl Caller {
    /// True if this caller may see and act on `job`.
    pub fn may_see(&self, job: &Job) -> bool {
        self.admin || job.owner == self.identity
    }
}
