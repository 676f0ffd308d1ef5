//! What the job table has done since the server started ([`JobCounters`]) and where its jobs are now
//! ([`JobCensus`]), for the server's metrics. The table only counts; naming and exporting the figures is the
//! server's business (`server::metrics`).

use super::job::{EndReason, Job, JobState};
use super::spool::Stream;

/// Running totals, only ever increased.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JobCounters {
    /// Jobs whose command was reported started.
    pub started: u64,
    /// StartJob calls whose job was taken back (the command could not be executed, the init failed, or it did
    /// not report in time).
    pub start_failures: u64,
    /// Jobs ended, by why (indexed as [`EndReason::ALL`]).
    pub ended: [u64; EndReason::ALL.len()],
    /// Output bytes taken from jobs' pipes into the spool, stdout then stderr.
    pub output_bytes: [u64; 2],
    /// Ended jobs forgotten to stay under `--max-jobs`.
    pub evicted: u64,
    /// Ended jobs forgotten on request (RemoveJob).
    pub removed: u64,
}

impl JobCounters {
    pub(super) fn count_end(&mut self, reason: EndReason) {
        if let Some(count) = EndReason::ALL.iter().position(|r| *r == reason).and_then(|i| self.ended.get_mut(i)) {
            *count += 1;
        }
    }

    pub(super) fn count_output(&mut self, stream: Stream, bytes: u64) {
        self.output_bytes[stream.index()] += bytes;
    }
}

/// How many jobs the table holds in each state now. A job whose start is not settled yet is `starting`, not
/// yet in any [`JobState`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JobCensus {
    pub starting: u64,
    pub running: u64,
    pub stopping: u64,
    pub exited: u64,
    pub killed: u64,
}

impl JobCensus {
    pub(super) fn count<'a>(jobs: impl Iterator<Item = &'a Job>) -> JobCensus {
        let mut census = JobCensus::default();
        for job in jobs {
            let count = match job.state() {
                _ if job.is_starting() => &mut census.starting,
                JobState::Running => &mut census.running,
                JobState::Stopping => &mut census.stopping,
                JobState::Exited => &mut census.exited,
                JobState::Killed => &mut census.killed,
            };
            *count += 1;
        }
        census
    }
}
