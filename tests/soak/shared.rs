//! What the soak's threads share: settings, the recipes, counters, failures, and what each thread is doing
//! (for the watchdog).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use runnel::client::ClientSettings;
use runnel::proto::{EndReason, Job};

use crate::recipes::Catalogue;

pub const IDENTITIES: [&str; 3] = ["alice", "bob", "admin"];

/// Counters the summary prints; each is incremented where the thing it counts happened.
#[derive(Default)]
pub struct Stats {
    pub jobs_started: AtomicU64,
    pub followers_complete: AtomicU64,
    pub followers_detached: AtomicU64,
    pub followers_stalled: AtomicU64,
    pub followers_vanished: AtomicU64,
    pub followers_evicted: AtomicU64,
    /// Reads (follow=false) of a stopped job's output from offset 0, checked as a prefix of what it would write.
    pub stopped_reads: AtomicU64,
    pub bytes_streamed: AtomicU64,
    pub bytes_checked: AtomicU64,
    /// Offset skips, each confirmed against the job's `output_start` (retention discarded those bytes).
    pub gaps: AtomicU64,
    pub stops: AtomicU64,
    pub waits: AtomicU64,
    pub lists: AtomicU64,
    pub list_pages: AtomicU64,
    /// GetJob/WaitJob/StopJob that found the job evicted (NOT_FOUND): acceptable, counted apart.
    pub lookups_evicted: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub struct Shared {
    pub settings: Vec<ClientSettings>,
    pub catalogue: Catalogue,
    /// `soak-<run id>`: every job's `$0`, so its processes can be found.
    pub marker: String,
    pub begun: Instant,
    /// Workers start no new action after this.
    pub deadline: Instant,
    /// Set when the server is gone: everyone stops.
    pub abort: AtomicBool,
    pub stats: Stats,
    failures: Mutex<Vec<String>>,
    /// End reason of each job a worker started, once some answer showed it ended (`None`: not seen ended yet).
    end_reasons: Mutex<HashMap<String, Option<i32>>>,
    /// What each worker is doing and since when, then the main thread's phase: printed by the watchdog.
    status: Vec<Mutex<String>>,
}

impl Shared {
    pub fn new(
        settings: Vec<ClientSettings>,
        catalogue: Catalogue,
        marker: String,
        begun: Instant,
        deadline: Instant,
        threads: usize,
    ) -> Shared {
        Shared {
            settings,
            catalogue,
            marker,
            begun,
            deadline,
            abort: AtomicBool::new(false),
            stats: Stats::default(),
            failures: Mutex::new(Vec::new()),
            end_reasons: Mutex::new(HashMap::new()),
            status: (0..=threads).map(|_| Mutex::new("not started".into())).collect(),
        }
    }

    pub fn settings_for(&self, identity: &str) -> &ClientSettings {
        &self.settings[IDENTITIES.iter().position(|i| *i == identity).expect("a known identity")]
    }

    pub fn seconds(&self) -> f64 {
        self.begun.elapsed().as_secs_f64()
    }

    pub fn running(&self) -> bool {
        Instant::now() < self.deadline && !self.abort.load(Ordering::Relaxed)
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Records a failure and prints it at once, with the time it happened.
    pub fn fail(&self, message: String) {
        eprintln!("[{:7.1}s] FAILURE: {message}", self.seconds());
        self.failures.lock().unwrap().push(message);
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    pub fn note_started(&self, job: &Job) {
        Stats::add(&self.stats.jobs_started, 1);
        self.end_reasons.lock().unwrap().insert(job.id.clone(), None);
    }

    /// Remembers how `job` ended, if the answer shows it ended and a worker started it.
    pub fn note_end(&self, job: &Job) {
        if job.ended_at.is_some() {
            if let Some(reason) = self.end_reasons.lock().unwrap().get_mut(&job.id) {
                *reason = Some(job.end_reason);
            }
        }
    }

    /// Jobs by end reason, and the number of jobs no answer ever showed ended (evicted before anyone asked).
    pub fn end_reason_counts(&self) -> (Vec<(String, u64)>, u64) {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut unseen = 0;
        for reason in self.end_reasons.lock().unwrap().values() {
            match reason {
                Some(reason) => {
                    let name = EndReason::try_from(*reason).map_or(format!("{reason}"), |r| format!("{r:?}"));
                    *counts.entry(name).or_default() += 1;
                }
                None => unseen += 1,
            }
        }
        let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
        counts.sort();
        (counts, unseen)
    }

    /// Sets what thread `index` is doing (workers 0..n, then the main thread).
    pub fn set_status(&self, index: usize, doing: String) {
        *self.status[index].lock().unwrap() = format!("{doing} (since {:.1}s)", self.seconds());
    }

    pub fn main_status_index(&self) -> usize {
        self.status.len() - 1
    }

    /// Every thread's status, for the watchdog. `try_lock`: a thread that died holding its lock must not hang it.
    pub fn statuses(&self) -> Vec<String> {
        self.status
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let text = s.try_lock().map_or_else(|_| "(busy)".to_string(), |s| s.clone());
                if i + 1 == self.status.len() {
                    format!("main: {text}")
                } else {
                    format!("worker {i}: {text}")
                }
            })
            .collect()
    }
}
