//! What the soak watches from outside the server: its descriptors, memory and processes in `/proc` and its
//! state directory, every 5 s; a GetJob round trip every 50 ms; and a watchdog over the whole run.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel::client::Client;
use runnel::grpc::path;
use runnel::proto::{GetJobRequest, Job, JobState, ListJobsRequest, ListJobsResponse, StartJobRequest, StopJobRequest};

use crate::shared::{Shared, Stats};
use crate::util;

pub const MIB: f64 = 1024.0 * 1024.0;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_millis(50);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's flags the soak runs with, and the state directory's bound they imply.
pub const MAX_OUTPUT_TOTAL: u64 = 48 << 20;
pub const STATE_LIMIT_FORMULA: &str =
    "48 MiB (--max-output-total) + 12 MiB (a quarter of it: spare segments) + 2 MiB per running job (the segment \
     it writes, which no cap discards: an eighth of --max-output-bytes 4M and a record of up to 1 MiB; its \
     directories and record) + 16 MiB";

pub fn state_dir_limit(running_jobs: usize) -> u64 {
    MAX_OUTPUT_TOTAL + MAX_OUTPUT_TOTAL / 4 + (2 << 20) * running_jobs as u64 + (16 << 20)
}

/// One look at the server from outside.
#[derive(Clone, Debug)]
pub struct Sample {
    pub seconds: f64,
    pub fds: usize,
    pub rss_kib: u64,
    /// Processes descended from the server (its helpers and every job's), and how many of them are zombies.
    pub procs: usize,
    pub zombies: usize,
    /// The state directory: the sum of file sizes, and the blocks allocated to them.
    pub state_bytes: u64,
    pub state_allocated: u64,
    pub running_jobs: usize,
}

impl Sample {
    pub fn line(&self, shared: &Shared) -> String {
        format!(
            "[{:7.1}s] fds {:4}  rss {:6.1} MiB  procs {:4} (zombies {})  state {:6.1} MiB (allocated {:6.1})  \
             running {:3}  jobs started {:6}  checked {:9.1} MiB",
            self.seconds,
            self.fds,
            self.rss_kib as f64 / 1024.0,
            self.procs,
            self.zombies,
            self.state_bytes as f64 / MIB,
            self.state_allocated as f64 / MIB,
            self.running_jobs,
            Stats::get(&shared.stats.jobs_started),
            Stats::get(&shared.stats.bytes_checked) as f64 / MIB
        )
    }

    /// The larger of the two state directory figures.
    pub fn state_max(&self) -> u64 {
        self.state_bytes.max(self.state_allocated)
    }
}

/// A process descended from the server.
pub struct Process {
    pub pid: i32,
    pub state: char,
    pub cmdline: String,
    /// How many processes it has as children.
    pub children: usize,
}

impl Process {
    /// The server's own helpers: `runnel __janitor`, `runnel __segments`, `runnel __writer`, `runnel __shells` and the
    /// shells it made that wait for a job (`runnel __init --shell` with no child: a job's init has its command as its
    /// child until it exits).
    pub fn is_helper(&self) -> bool {
        let mut words = self.cmdline.split(' ').skip(1);
        match (words.next(), words.next()) {
            (Some("__janitor" | "__segments" | "__writer" | "__shells"), _) => true,
            (Some("__init"), Some("--shell")) => self.children == 0,
            _ => false,
        }
    }
}

/// Every process whose chain of parents reaches `root`.
pub fn descendants(root: i32) -> Vec<Process> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command name in parentheses (which may hold anything): state, then ppid.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let Some(ppid) = fields.next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        parents.push((pid, ppid, state));
    }
    let mut found = vec![root];
    let mut processes = Vec::new();
    let mut i = 0;
    while i < found.len() {
        for &(pid, ppid, state) in &parents {
            if ppid == found[i] {
                found.push(pid);
                let children = parents.iter().filter(|&&(_, parent, _)| parent == pid).count();
                let cmdline = util::cmdline_of(pid).trim_end().to_string();
                processes.push(Process { pid, state, cmdline, children });
            }
        }
        i += 1;
    }
    processes
}

fn fd_count(pid: i32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// The sum of the sizes of the files under `dir`, and of the blocks allocated to them. Files come and go
/// while it walks; those gone are skipped.
pub fn dir_size(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut allocated) = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(metadata) = entry.metadata() else { continue };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                bytes += metadata.len();
                allocated += metadata.blocks() * 512;
            }
        }
    }
    (bytes, allocated)
}

/// A sample of the server `pid`, or `None` if it is no longer running.
pub fn sample(shared: &Shared, pid: i32, state_dir: &Path, running_jobs: usize) -> Option<Sample> {
    if !util::process_alive(pid) {
        return None;
    }
    let processes = descendants(pid);
    let (state_bytes, state_allocated) = dir_size(state_dir);
    Some(Sample {
        seconds: shared.seconds(),
        fds: fd_count(pid)?,
        rss_kib: rss_kib(pid)?,
        procs: processes.len(),
        zombies: processes.iter().filter(|p| p.state == 'Z').count(),
        state_bytes,
        state_allocated,
        running_jobs,
    })
}

/// Jobs running or stopping, by every identity (the caller is admin).
pub fn running_jobs(client: &mut Client) -> Result<Vec<Job>, String> {
    let mut jobs = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListJobsRequest {
            states: vec![JobState::Running as i32, JobState::Stopping as i32],
            page_size: 1000,
            page_token: token,
        };
        let page: ListJobsResponse =
            client.unary(path::LIST_JOBS, &request, Some(CALL_TIMEOUT)).map_err(|e| format!("ListJobs: {e:?}"))?;
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        token = page.next_page_token;
    }
}

/// Sleeps until `until`, in steps of at most 100 ms; false if `stop` was set meanwhile.
fn sleep_until_unless(stop: &AtomicBool, until: Instant) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Every 5 s until `stop`: a sample, printed, checked against the state directory's bound. Sets `abort` if the
/// server is gone.
pub fn sampler(shared: Arc<Shared>, pid: i32, state_dir: PathBuf, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut client = match Client::connect(shared.settings_for("admin")) {
        Ok(client) => client,
        Err(status) => {
            shared.fail(format!("sampler: cannot connect: {status:?}"));
            return samples;
        }
    };
    let mut next = Instant::now() + SAMPLE_EVERY;
    while sleep_until_unless(&stop, next) {
        next += SAMPLE_EVERY;
        let running = match running_jobs(&mut client) {
            Ok(jobs) => jobs.len(),
            Err(message) => {
                if util::process_alive(pid) {
                    shared.fail(format!("sampler: {message}"));
                }
                0
            }
        };
        let Some(sample) = sample(&shared, pid, &state_dir, running) else {
            shared.fail(format!("the server (pid {pid}) exited during the run"));
            shared.abort.store(true, Ordering::Relaxed);
            break;
        };
        eprintln!("{}", sample.line(&shared));
        check_state_dir(&shared, &sample);
        samples.push(sample);
    }
    samples
}

/// The state directory must stay within what retention allows.
pub fn check_state_dir(shared: &Shared, sample: &Sample) {
    let limit = state_dir_limit(sample.running_jobs);
    if sample.state_max() > limit {
        shared.fail(format!(
            "at {:.1}s the state directory holds {:.1} MiB (allocated {:.1} MiB), over {:.1} MiB = \
             {STATE_LIMIT_FORMULA} with {} running",
            sample.seconds,
            sample.state_bytes as f64 / MIB,
            sample.state_allocated as f64 / MIB,
            limit as f64 / MIB,
            sample.running_jobs
        ));
    }
}

/// A job that lives for the whole run and a GetJob on it every 50 ms: the round trips in milliseconds.
pub fn probe(shared: Arc<Shared>, stop: Arc<AtomicBool>, lifetime: Duration) -> Vec<f64> {
    let mut round_trips = Vec::new();
    let mut client = match Client::connect(shared.settings_for("admin")) {
        Ok(client) => client,
        Err(status) => {
            shared.fail(format!("probe: cannot connect: {status:?}"));
            return round_trips;
        }
    };
    let request = StartJobRequest {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), r#"sleep "$1""#.into(), shared.marker.clone(), lifetime.as_secs().to_string()],
        ..Default::default()
    };
    let job: Job = match client.unary(path::START_JOB, &request, Some(CALL_TIMEOUT)) {
        Ok(job) => job,
        Err(err) => {
            shared.fail(format!("probe: StartJob: {err:?}"));
            return round_trips;
        }
    };
    // A call every 50 ms on the clock (a slow answer delays the next call, but not those after it).
    let mut next = Instant::now();
    while sleep_until_unless(&stop, next) {
        next = (next + PROBE_EVERY).max(Instant::now());
        let begun = Instant::now();
        let request = GetJobRequest { job_id: job.id.clone() };
        match client.unary::<_, Job>(path::GET_JOB, &request, Some(CALL_TIMEOUT)) {
            Ok(_) => round_trips.push(begun.elapsed().as_secs_f64() * 1e3),
            Err(_) if shared.aborted() => return round_trips,
            Err(err) => shared.fail(format!("probe: GetJob {}: {err:?}", job.id)),
        }
    }
    let stop = StopJobRequest { job_id: job.id.clone(), grace_period: Some(Duration::ZERO.try_into().unwrap()) };
    if let Err(err) = client.unary::<_, Job>(path::STOP_JOB, &stop, Some(CALL_TIMEOUT)) {
        shared.fail(format!("probe: StopJob {}: {err:?}", job.id));
    }
    round_trips
}

/// p50, p99 and max of `values` (milliseconds); zeros if there are none.
pub fn percentiles(values: &mut [f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), at(1.0))
}

/// If the run outlives `limit`, prints what every thread is doing, kills the server (its jobs die with it),
/// removes the run's scratch directories and exits 1. Returns once `done` is set.
pub fn watchdog(shared: Arc<Shared>, limit: Instant, done: Arc<AtomicBool>, server_pid: i32, scratch: Vec<PathBuf>) {
    while !done.load(Ordering::Relaxed) {
        if Instant::now() >= limit {
            eprintln!(
                "[{:7.1}s] WATCHDOG: the run outlived SOAK_MINUTES + 5 minutes; where each thread is:",
                shared.seconds()
            );
            for status in shared.statuses() {
                eprintln!("  {status}");
            }
            util::unsafe_kill(server_pid, libc::SIGKILL);
            for dir in scratch {
                let _ = fs::remove_dir_all(dir);
            }
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
