//! [`JobTable`]: the jobs, in start order, with their processes, pipes, output logs and owners.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::task::Waker;
use std::time::SystemTime;

use super::ingest::{Destination, Drain, Ingester, PIPE_READS_PER_TURN};
use super::launch::{Launched, Launcher};
use super::limits::LimitPolicy;
use super::output::{OutputLog, Stream};
use super::spares::SpareSegments;
use super::spec::JobSpec;
use super::JobError;
use crate::cgroup::{CgroupRoot, FinalUsage, JobCgroup};
use crate::isolation::{self, InitReport, Isolation};
use crate::proto::{self, EndReason, JobState, ResourceLimits};
use crate::sys::{self, ExitStatus};

/// A job's place in the table: start order, never reused. Also used to derive the job's reactor tokens.
pub type JobKey = u64;

/// A job's public id: a random UUID v4.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobId([u8; 16]);

impl JobId {
    fn random() -> JobId {
        let mut bytes: [u8; 16] = rand::random();
        bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
        JobId(bytes)
    }

    /// Parses the hyphenated form (either case); `None` for anything else.
    pub fn parse(text: &str) -> Option<JobId> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
            return None;
        }
        let hex: Vec<u8> = bytes.iter().copied().filter(|&b| b != b'-').collect();
        let mut id = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            id[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        (hex.len() == 32).then_some(JobId(id))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The server settings the table enforces.
#[derive(Debug, Clone)]
pub struct JobTableConfig {
    pub state_dir: PathBuf,
    pub max_jobs: usize,
    pub max_running_per_client: usize,
    pub max_output_bytes: u64,
    pub max_output_total: u64,
}

/// How jobs are contained on this host, decided once at server startup.
#[derive(Debug, Default)]
pub struct Containment {
    /// The cgroup subtree jobs are limited in; `None` where the host cannot enforce limits.
    pub cgroups: Option<CgroupRoot>,
    /// Why limits are unavailable (set when `cgroups` is `None`), for the error a request with limits gets.
    pub limits_unavailable: Option<String>,
    pub policy: LimitPolicy,
    /// `None`: jobs run without namespaces, as the server's user.
    pub isolation: Option<Isolation>,
}

/// One of a job's two output pipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeSide {
    Stdout = 0,
    Stderr = 1,
}

impl PipeSide {
    fn stream(self) -> Stream {
        match self {
            PipeSide::Stdout => Stream::Stdout,
            PipeSide::Stderr => Stream::Stderr,
        }
    }
}

/// How a job ended (set once its main process was reaped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndState {
    pub status: ExitStatus,
    pub reason: EndReason,
    pub at: SystemTime,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    pub key: JobKey,
    pub id: JobId,
    pub owner: String,
    pub command: String,
    pub args: Vec<String>,
    pub pid: i32,
    pub started_at: SystemTime,
    pub end: Option<EndState>,
    pub output: OutputLog,
    /// Set once a stop was asked for: the reason the job will end with.
    stop_reason: Option<EndReason>,
    pidfd: Option<OwnedFd>,
    pipes: [Option<OwnedFd>; 2],
    /// The init's report pipe (isolated jobs): where the command's exact exit status arrives.
    control: Option<OwnedFd>,
    /// The limits the job's cgroup enforces (`None`: the host cannot enforce limits).
    limits: Option<ResourceLimits>,
    /// The job's cgroup while it runs; its final usage once it ended.
    cgroup: Option<JobCgroup>,
    final_usage: Option<FinalUsage>,
    end_waiters: Vec<Waker>,
    /// A working directory the server made for the job, removed with it.
    own_work_dir: Option<PathBuf>,
}

impl Job {
    pub fn is_ended(&self) -> bool {
        self.end.is_some()
    }

    /// True once the job has ended and all of its output has been read from its pipes.
    pub fn is_complete(&self) -> bool {
        self.is_ended() && self.output.is_finished()
    }

    pub fn state(&self) -> JobState {
        match (&self.end, self.stop_reason) {
            (Some(EndState { status: ExitStatus::Exited(_), .. }), _) => JobState::Exited,
            (Some(EndState { status: ExitStatus::Signaled(_), .. }), _) => JobState::Killed,
            (None, Some(_)) => JobState::Stopping,
            (None, None) => JobState::Running,
        }
    }

    /// Remembers a call to wake when the job ends.
    pub fn wait_for_end(&mut self, waker: &Waker) {
        crate::reactor::remember_waker(&mut self.end_waiters, waker);
    }

    pub fn to_proto(&self) -> proto::Job {
        let (exit_code, signal) = match self.end.map(|e| e.status) {
            Some(ExitStatus::Exited(code)) => (Some(code), None),
            Some(ExitStatus::Signaled(signal)) => (None, Some(signal)),
            None => (None, None),
        };
        proto::Job {
            id: self.id.to_string(),
            owner: self.owner.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            state: self.state() as i32,
            end_reason: self.end.map_or(EndReason::Unspecified, |e| e.reason) as i32,
            exit_code,
            signal,
            pid: self.pid,
            started_at: Some(self.started_at.into()),
            ended_at: self.end.map(|e| e.at.into()),
            limits: self.limits,
            usage: match (&self.final_usage, &self.cgroup) {
                (Some(last), _) => Some(last.usage),
                (None, Some(cgroup)) => Some(cgroup.usage()),
                (None, None) => None,
            },
            output_bytes: self.output.end(),
            output_start: self.output.start(),
        }
    }
}

/// Who is asking: an authenticated identity, and whether it may act on every job.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: String,
    pub admin: bool,
}

impl Caller {
    fn may_see(&self, job: &Job) -> bool {
        self.admin || job.owner == self.identity
    }
}

/// What the reactor must watch for a job that just started.
#[derive(Debug, Clone, Copy)]
pub struct StartedJob {
    pub key: JobKey,
    pub pidfd: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
}

pub struct JobTable {
    config: JobTableConfig,
    jobs: BTreeMap<JobKey, Job>,
    by_id: HashMap<JobId, JobKey>,
    running_by_owner: HashMap<String, usize>,
    /// Output bytes retained across all jobs, kept up to date so the total cap costs nothing per append.
    retained_total: u64,
    next_key: JobKey,
    output_dir: PathBuf,
    work_dir: PathBuf,
    containment: Containment,
    launcher: Launcher,
    ingester: Ingester,
    /// Discarded segment files kept for new segments to be written over.
    spares: SpareSegments,
    shutting_down: bool,
}

impl JobTable {
    /// Creates the table and its directories under the state dir (which must exist).
    pub fn new(config: JobTableConfig, containment: Containment) -> io::Result<JobTable> {
        let output_dir = config.state_dir.join("output");
        let work_dir = config.state_dir.join("work");
        // Output is the server's alone. Working directories belong to the users jobs run as, who must be able to
        // pass through `work/` to their own directory, but not list it.
        fs::DirBuilder::new().mode(0o700).create(&output_dir)?;
        fs::DirBuilder::new().mode(0o711).create(&work_dir)?;
        fs::set_permissions(&work_dir, fs::Permissions::from_mode(0o711))?;
        let spares = SpareSegments::create(config.state_dir.join("spare"), config.max_output_total / 4)?;
        Ok(JobTable {
            config,
            jobs: BTreeMap::new(),
            by_id: HashMap::new(),
            running_by_owner: HashMap::new(),
            retained_total: 0,
            next_key: 1,
            output_dir,
            work_dir,
            containment,
            launcher: Launcher::new()?,
            ingester: Ingester::default(),
            spares,
            shutting_down: false,
        })
    }

    pub fn get(&self, key: JobKey) -> Option<&Job> {
        self.jobs.get(&key)
    }

    pub fn get_mut(&mut self, key: JobKey) -> Option<&mut Job> {
        self.jobs.get_mut(&key)
    }

    /// Finds a job by its id text, if `caller` may see it. Every failure is NOT_FOUND or INVALID_ARGUMENT, so
    /// a caller learns nothing about jobs that are not theirs.
    pub fn find(&self, caller: &Caller, id: &str) -> Result<JobKey, JobError> {
        let parsed = JobId::parse(id).ok_or_else(|| {
            JobError::InvalidArgument(format!(
                "job_id {id:?} is not a UUID (like 123e4567-e89b-42d3-a456-426614174000)"
            ))
        })?;
        self.by_id
            .get(&parsed)
            .copied()
            .filter(|key| caller.may_see(&self.jobs[key]))
            .ok_or_else(|| JobError::NotFound(format!("no job {id}")))
    }

    /// The jobs `caller` may see, oldest first, filtered by state (empty = all).
    pub fn list(&self, caller: &Caller, states: &[JobState]) -> Vec<proto::Job> {
        self.jobs
            .values()
            .filter(|job| caller.may_see(job))
            .filter(|job| states.is_empty() || states.contains(&job.state()))
            .map(Job::to_proto)
            .collect()
    }

    pub fn running_jobs(&self) -> impl Iterator<Item = JobKey> + '_ {
        self.jobs.values().filter(|j| !j.is_ended()).map(|j| j.key)
    }

    pub fn has_running(&self) -> bool {
        self.jobs.values().any(|j| !j.is_ended())
    }

    /// Starts a job for `owner`. Returns once the command has been exec'd; on failure nothing is left behind.
    pub fn start(&mut self, owner: &str, spec: JobSpec) -> Result<StartedJob, JobError> {
        if self.shutting_down {
            return Err(JobError::ShuttingDown);
        }
        let limits = match &self.containment.cgroups {
            Some(cgroups) => {
                let limits = self.containment.policy.resolve(spec.limits.requested.as_ref())?;
                if LimitPolicy::has_io(&limits) && cgroups.io_devices().is_empty() {
                    return Err(JobError::FailedPrecondition(
                        "io limits need a block device, and this host has none the server could find: start the \
                         server with --io-device MAJ:MIN"
                            .into(),
                    ));
                }
                Some(limits)
            }
            None if spec.limits.any_set() => {
                let reason = self.containment.limits_unavailable.as_deref().unwrap_or("no cgroup v2");
                return Err(JobError::FailedPrecondition(format!(
                    "resource limits are unavailable on this host: {reason}"
                )));
            }
            None => None,
        };
        let running = self.running_by_owner.get(owner).copied().unwrap_or(0);
        if running >= self.config.max_running_per_client {
            return Err(JobError::ResourceExhausted(format!(
                "{owner} already has {running} running jobs, the server's limit (--max-running-per-client); \
                 wait for or stop some"
            )));
        }
        self.evict_ended(self.config.max_jobs.saturating_sub(1));
        if self.jobs.len() >= self.config.max_jobs {
            return Err(JobError::ResourceExhausted(format!(
                "the server retains {} jobs, its limit (--max-jobs), and none has ended yet",
                self.jobs.len()
            )));
        }

        let id = JobId::random();
        let internal = |what: &str, err: io::Error| JobError::Internal(format!("{what}: {err}"));
        let mut output = OutputLog::create(self.output_dir.join(id.to_string()), self.config.max_output_bytes)
            .map_err(|e| internal("cannot create the job's output spool", e))?;
        let (working_dir, own_work_dir) = match &spec.working_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = self.work_dir.join(id.to_string());
                if let Err(err) = self.make_work_dir(&dir) {
                    output.remove(&mut self.spares);
                    return Err(internal("cannot create the job's working directory", err));
                }
                (dir.clone(), Some(dir))
            }
        };
        let cleanup = |output: &mut OutputLog, spares: &mut SpareSegments| {
            output.remove(spares);
            if let Some(dir) = &own_work_dir {
                let _ = fs::remove_dir_all(dir);
            }
        };
        let cgroup = match (&self.containment.cgroups, &limits) {
            (Some(cgroups), Some(limits)) => match cgroups.create_job(&id.to_string(), limits) {
                Ok(cgroup) => Some(cgroup),
                Err(err) => {
                    cleanup(&mut output, &mut self.spares);
                    return Err(JobError::Internal(format!("cannot create the job's cgroup: {err}")));
                }
            },
            _ => None,
        };
        let hostname = isolation::hostname_for(&id.to_string());
        let launched =
            self.launcher.launch(&spec, &hostname, &working_dir, self.containment.isolation.as_ref(), cgroup.as_ref());
        let launched = launched.and_then(|launched| {
            let Some(Err(err)) = cgroup.as_ref().zip(limits.as_ref()).map(|(cg, l)| cg.limit_cpu(l)) else {
                return Ok(launched);
            };
            let _ = sys::signal_process(launched.pid, libc::SIGKILL);
            let _ = sys::wait_pidfd(launched.pidfd.as_raw_fd(), sys::Wait::Reap);
            Err(JobError::Internal(format!("cannot limit the job's CPU: {err}")))
        });
        let Launched { pid, pidfd, pipes, control } = match launched {
            Ok(launched) => launched,
            Err(err) => {
                cleanup(&mut output, &mut self.spares);
                if let (Some(cgroups), Some(cgroup)) = (self.containment.cgroups.as_mut(), cgroup) {
                    cgroups.remove_job(cgroup);
                }
                return Err(err);
            }
        };
        let key = self.next_key;
        self.next_key += 1;
        let started =
            StartedJob { key, pidfd: pidfd.as_raw_fd(), stdout: pipes[0].as_raw_fd(), stderr: pipes[1].as_raw_fd() };
        let [stdout, stderr] = pipes;
        let job = Job {
            key,
            id,
            owner: owner.to_string(),
            command: spec.command,
            args: spec.args,
            pid,
            started_at: SystemTime::now(),
            end: None,
            output,
            stop_reason: None,
            pidfd: Some(pidfd),
            pipes: [Some(stdout), Some(stderr)],
            control,
            limits,
            cgroup,
            final_usage: None,
            end_waiters: Vec::new(),
            own_work_dir,
        };
        log::info!("job {id} started for {owner}: pid {pid}, {:?}", job.command);
        *self.running_by_owner.entry(owner.to_string()).or_default() += 1;
        self.by_id.insert(id, key);
        self.jobs.insert(key, job);
        Ok(started)
    }

    /// Makes a job's fresh working directory, owned by the user its command runs as.
    fn make_work_dir(&self, dir: &std::path::Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(0o700).create(dir)?;
        if let Some(isolation) = &self.containment.isolation {
            let (uid, gid) = (isolation.run_as.uid, isolation.run_as.gid);
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Asks a job to stop: SIGTERM to its process group, now. Returns false if it had already ended (stop is
    /// idempotent). The caller schedules [`Self::kill`] after the grace period.
    pub fn request_stop(&mut self, key: JobKey, reason: EndReason) -> bool {
        let Some(job) = self.jobs.get_mut(&key) else { return false };
        if job.is_ended() {
            return false;
        }
        if job.stop_reason.is_none() {
            job.stop_reason = Some(reason);
            log::info!("job {} stopping ({reason:?}): SIGTERM to process group {}", job.id, job.pid);
            if let Err(err) = sys::kill_process_group(job.pid, libc::SIGTERM) {
                log::warn!("cannot signal job {}: {err}", job.id);
            }
        }
        true
    }

    /// Ends a job's grace period: SIGKILL to its whole process group.
    pub fn kill(&mut self, key: JobKey) {
        let Some(job) = self.jobs.get(&key) else { return };
        if !job.is_ended() {
            log::info!("job {} did not stop in its grace period: SIGKILL to process group {}", job.id, job.pid);
            if let Err(err) = sys::kill_process_group(job.pid, libc::SIGKILL) {
                log::warn!("cannot kill job {}: {err}", job.id);
            }
            // The cgroup also catches processes that left the process group or forked while the kill ran.
            if let Some(Err(err)) = job.cgroup.as_ref().map(JobCgroup::kill) {
                log::warn!("cannot kill job {}'s cgroup: {err}", job.id);
            }
        }
    }

    /// Handles a readable pidfd. If the job's main process has exited: kills whatever it left in its process
    /// group (while the unreaped leader still reserves the group's id), reaps it, takes what is already in the
    /// pipes, and marks the job ended. Returns true if the job ended now; safe to call at any time.
    pub fn reap(&mut self, key: JobKey) -> bool {
        let Some(job) = self.jobs.get_mut(&key) else { return false };
        let Some(pidfd) = job.pidfd.as_ref() else { return false };
        match sys::wait_pidfd(pidfd.as_raw_fd(), sys::Wait::PeekIfEnded) {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(err) => {
                log::error!("cannot wait for job {}: {err}", job.id);
                return false;
            }
        }
        if let Err(err) = sys::kill_process_group(job.pid, libc::SIGKILL) {
            log::warn!("cannot kill what job {} left behind: {err}", job.id);
        }
        let status = match sys::wait_pidfd(pidfd.as_raw_fd(), sys::Wait::ReapIfEnded) {
            Ok(Some(status)) => status,
            Ok(None) => return false,
            Err(err) => {
                log::error!("cannot reap job {}: {err}", job.id);
                return false;
            }
        };
        job.pidfd = None;
        // An isolated job's top process is the init: the command's own status comes over the report pipe.
        // Without one (the init was killed at the end of a stop, or by the OOM killer) the init's status stands.
        let status = match job.control.take().map(|fd| isolation::read_report(fd.as_raw_fd(), 0)) {
            Some(Ok(Some(InitReport::Ended(command_status)))) => command_status,
            _ => status,
        };
        if let (Some(cgroups), Some(cgroup)) = (self.containment.cgroups.as_mut(), job.cgroup.take()) {
            job.final_usage = Some(cgroups.remove_job(cgroup));
        }
        let oom_killed = job.final_usage.is_some_and(|u| u.oom_killed) && matches!(status, ExitStatus::Signaled(_));
        let reason = match (oom_killed, job.stop_reason, status) {
            (true, _, _) => EndReason::OomKilled,
            (false, Some(reason), _) => reason,
            (false, None, ExitStatus::Exited(_)) => EndReason::Exited,
            (false, None, ExitStatus::Signaled(_)) => EndReason::Signaled,
        };
        job.end = Some(EndState { status, reason, at: SystemTime::now() });
        log::info!("job {} ended: {status:?}, {reason:?}", job.id);
        let owner = job.owner.clone();
        if let Some(count) = self.running_by_owner.get_mut(&owner) {
            *count -= 1;
            if *count == 0 {
                self.running_by_owner.remove(&owner);
            }
        }
        // Take everything the job wrote before it ended, so a WaitJob answered now reports its full output.
        for side in [PipeSide::Stdout, PipeSide::Stderr] {
            while self.drain(key, side, PIPE_READS_PER_TURN) == Drain::More {}
        }
        let job = self.jobs.get_mut(&key).expect("present");
        for waker in job.end_waiters.drain(..) {
            waker.wake();
        }
        job.output.wake_readers();
        true
    }

    /// Moves what a job's pipe holds into its output log, at most `budget` reads (the reactor passes
    /// [`PIPE_READS_PER_TURN`]).
    pub fn drain(&mut self, key: JobKey, side: PipeSide, budget: usize) -> Drain {
        let Some(job) = self.jobs.get_mut(&key) else { return Drain::Closed };
        let Some(pipe) = job.pipes[side as usize].as_ref() else { return Drain::Closed };
        let fd = pipe.as_raw_fd();
        let (retained_before, end_before) = (job.output.retained(), job.output.end());
        let to = Destination { log: &mut job.output, spares: &mut self.spares, job: &job.id, stream: side.stream() };
        let result = self.ingester.ingest(to, fd, budget);
        if result == Drain::Closed {
            // Closing the descriptor also removes it from the reactor's epoll set.
            job.pipes[side as usize] = None;
            if job.pipes.iter().all(Option::is_none) {
                job.output.finish(&mut self.spares);
            }
        }
        let appended = job.output.end() != end_before;
        if appended {
            job.output.wake_readers();
        }
        let retained_after = job.output.retained();
        self.retained_total = self.retained_total - retained_before + retained_after;
        if appended {
            self.enforce_output_total();
        }
        result
    }

    /// Keeps the output retained across all jobs under `--max-output-total`: first the output of the oldest
    /// ended jobs goes, then the oldest segments of the oldest running jobs.
    fn enforce_output_total(&mut self) {
        if self.retained_total <= self.config.max_output_total {
            return;
        }
        let ended_first: Vec<JobKey> = self
            .jobs
            .values()
            .filter(|j| j.is_ended())
            .chain(self.jobs.values().filter(|j| !j.is_ended()))
            .map(|j| j.key)
            .collect();
        for key in ended_first {
            let job = self.jobs.get_mut(&key).expect("present");
            while self.retained_total > self.config.max_output_total {
                let freed = job.output.discard_oldest_segment(&mut self.spares);
                if freed == 0 {
                    break;
                }
                self.retained_total -= freed;
            }
            if self.retained_total <= self.config.max_output_total {
                return;
            }
        }
    }

    /// Evicts the oldest ended jobs until at most `keep` remain (or only running ones are left).
    fn evict_ended(&mut self, keep: usize) {
        while self.jobs.len() > keep {
            let Some(key) = self.jobs.values().find(|j| j.is_ended()).map(|j| j.key) else { return };
            let mut job = self.jobs.remove(&key).expect("present");
            self.by_id.remove(&job.id);
            self.retained_total -= job.output.retained();
            log::debug!("evicting ended job {}", job.id);
            remove_job_files(&mut job, &mut self.spares);
        }
    }

    /// Refuses new jobs from now on (server shutdown).
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Shutdown, once every job ended: hands back the cgroup subtree so the server can take it down.
    pub fn take_cgroups(&mut self) -> Option<CgroupRoot> {
        self.containment.cgroups.take()
    }

    /// Deletes every job's files (server shutdown, after every job ended).
    pub fn remove_all(&mut self) {
        for job in self.jobs.values_mut() {
            remove_job_files(job, &mut self.spares);
        }
        self.jobs.clear();
        self.by_id.clear();
        self.retained_total = 0;
    }
}

fn remove_job_files(job: &mut Job, spares: &mut SpareSegments) {
    job.output.remove(spares);
    if let Some(dir) = job.own_work_dir.take() {
        if let Err(err) = fs::remove_dir_all(&dir) {
            log::warn!("cannot remove working directory {}: {err}", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::ingest::Ingest;
    use crate::proto::StartJobRequest;
    use std::time::{Duration, Instant};

    fn table(name: &str) -> (JobTable, PathBuf) {
        table_with_output_caps(name, 1 << 20, 8 << 20)
    }

    fn table_with_output_caps(name: &str, per_job: u64, total: u64) -> (JobTable, PathBuf) {
        let state_dir = std::env::temp_dir().join(format!("runnel-table-{name}-{}", rand::random::<u64>()));
        fs::create_dir(&state_dir).unwrap();
        let config = JobTableConfig {
            state_dir: state_dir.clone(),
            max_jobs: 3,
            max_running_per_client: 2,
            max_output_bytes: per_job,
            max_output_total: total,
        };
        let containment = Containment { limits_unavailable: Some("test host".into()), ..Default::default() };
        (JobTable::new(config, containment).unwrap(), state_dir)
    }

    fn spec(command: &str, args: &[&str]) -> JobSpec {
        JobSpec::from_request(StartJobRequest {
            command: command.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn run_to_end(table: &mut JobTable, key: JobKey) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !table.reap(key) {
            assert!(Instant::now() < deadline, "job did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        for side in [PipeSide::Stdout, PipeSide::Stderr] {
            while table.drain(key, side, PIPE_READS_PER_TURN) != Drain::Closed {
                assert!(Instant::now() < deadline, "pipe did not close");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Like `run_to_end`, but drains the pipes while the job runs, so it can write more than they hold.
    fn run_draining(table: &mut JobTable, key: JobKey) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !table.reap(key) {
            assert!(Instant::now() < deadline, "job did not end");
            let stdout = table.drain(key, PipeSide::Stdout, PIPE_READS_PER_TURN);
            let stderr = table.drain(key, PipeSide::Stderr, PIPE_READS_PER_TURN);
            if stdout != Drain::More && stderr != Drain::More {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for side in [PipeSide::Stdout, PipeSide::Stderr] {
            while table.drain(key, side, PIPE_READS_PER_TURN) != Drain::Closed {
                assert!(Instant::now() < deadline, "pipe did not close");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Runs a job writing 3 MiB of every byte value twice to stdout and a NUL-bearing line to stderr, and checks
    /// that the log holds exactly that, per stream, with contiguous offsets.
    fn ingest_is_byte_exact(ingest: Ingest) {
        let (mut table, dir) = table_with_output_caps("ingest", 64 << 20, 64 << 20);
        table.ingester.mode = ingest;
        let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let file = dir.join("data");
        fs::write(&file, &data).unwrap();
        let script = format!("cat {0}; printf 'e\\000rr' >&2; cat {0}", file.display());
        let started = table.start("alice", spec("sh", &["-c", &script])).unwrap();
        run_draining(&mut table, started.key);
        let job = table.get(started.key).unwrap();
        assert_eq!(job.end.unwrap().status, ExitStatus::Exited(0));
        assert_eq!(job.output.end(), 2 * data.len() as u64 + 4);
        assert_eq!(table.ingester.mode, ingest, "the state directory supports {ingest:?}");

        let mut cursor = crate::jobs::OutputCursor::new(0);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(span) = job.output.next_span(&mut cursor, 100_000).unwrap() {
            assert_eq!(span.offset, (stdout.len() + stderr.len()) as u64, "offsets are contiguous");
            let mut buf = bytes::BytesMut::new();
            job.output.read_span(&mut cursor, span.len, &mut buf).unwrap();
            match span.stream {
                Stream::Stdout => stdout.extend_from_slice(&buf),
                Stream::Stderr => stderr.extend_from_slice(&buf),
            }
        }
        assert_eq!(stderr, b"e\0rr");
        assert!(stdout.len() == 2 * data.len() && stdout[..data.len()] == data[..] && stdout[data.len()..] == data[..]);
        // From an offset inside the output: the same bytes.
        let mut cursor = crate::jobs::OutputCursor::new(data.len() as u64 / 2);
        let span = job.output.next_span(&mut cursor, 1000).unwrap().unwrap();
        let mut buf = bytes::BytesMut::new();
        job.output.read_span(&mut cursor, span.len, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[data.len() / 2..data.len() / 2 + 1000]);
        table.remove_all();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_silent_job_leaves_no_segment_file() {
        let (mut table, dir) = table("silent");
        let started = table.start("alice", spec("true", &[])).unwrap();
        run_to_end(&mut table, started.key);
        let job = table.get(started.key).unwrap();
        assert!(job.is_complete());
        assert_eq!(fs::read_dir(dir.join("output").join(job.id.to_string())).unwrap().count(), 0);
        table.remove_all();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn splice_ingest_is_byte_exact() {
        ingest_is_byte_exact(Ingest::Splice);
    }

    #[test]
    fn read_ingest_is_byte_exact() {
        ingest_is_byte_exact(Ingest::Read);
    }

    fn read_output(job: &Job) -> Vec<(Stream, Vec<u8>)> {
        let mut cursor = crate::jobs::OutputCursor::new(0);
        let mut out = Vec::new();
        while let Some(span) = job.output.next_span(&mut cursor, 1 << 20).unwrap() {
            let mut buf = bytes::BytesMut::new();
            job.output.read_span(&mut cursor, span.len, &mut buf).unwrap();
            out.push((span.stream, buf.to_vec()));
        }
        out
    }

    #[test]
    fn runs_a_job_and_captures_both_streams_and_exit_code() {
        let (mut table, dir) = table("run");
        let started = table.start("alice", spec("sh", &["-c", "echo out; echo err >&2; exit 3"])).unwrap();
        run_to_end(&mut table, started.key);
        let job = table.get(started.key).unwrap();
        assert_eq!(job.end.unwrap().status, ExitStatus::Exited(3));
        assert_eq!(job.state(), JobState::Exited);
        assert!(job.is_complete());
        let mut out = read_output(job);
        out.sort_by_key(|(stream, _)| *stream as u8);
        assert_eq!(out, vec![(Stream::Stdout, b"out\n".to_vec()), (Stream::Stderr, b"err\n".to_vec())]);
        table.remove_all();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn job_sees_only_its_own_environment() {
        // The test harness's own environment (cargo sets CARGO_* for every test) is what must not leak; no
        // variable is set here, as the process is multi-threaded and shared by every test.
        assert!(std::env::vars_os().any(|(name, _)| name != "PATH"), "the test process has an environment");
        let (mut table, dir) = table("env");
        let started = table.start("alice", spec("/usr/bin/env", &[])).unwrap();
        run_to_end(&mut table, started.key);
        let out = read_output(table.get(started.key).unwrap());
        let text: Vec<u8> = out.into_iter().flat_map(|(_, d)| d).collect();
        assert_eq!(String::from_utf8(text).unwrap(), format!("PATH={}\n", super::super::spec::DEFAULT_PATH));
        table.remove_all();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn exec_failures_map_to_errors_and_leave_nothing() {
        let (mut table, dir) = table("fail");
        assert!(matches!(table.start("a", spec("no-such-program-xyz", &[])), Err(JobError::ExecutableNotFound(_))));
        assert!(matches!(table.start("a", spec("/etc/passwd", &[])), Err(JobError::PermissionDenied(_))));
        let mut missing_dir = spec("true", &[]);
        missing_dir.working_dir = Some(PathBuf::from("/no/such/dir"));
        assert!(matches!(table.start("a", missing_dir), Err(JobError::FailedPrecondition(_))));
        assert_eq!(fs::read_dir(dir.join("output")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.join("work")).unwrap().count(), 0);
        assert!(table.list(&Caller { identity: "a".into(), admin: true }, &[]).is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn quotas_and_visibility() {
        let (mut table, dir) = table("quota");
        let a = table.start("alice", spec("sleep", &["30"])).unwrap();
        let _b = table.start("alice", spec("sleep", &["30"])).unwrap();
        assert!(matches!(table.start("alice", spec("true", &[])), Err(JobError::ResourceExhausted(_))));
        let _c = table.start("bob", spec("sleep", &["30"])).unwrap();
        assert!(matches!(table.start("bob", spec("true", &[])), Err(JobError::ResourceExhausted(_))), "max_jobs");

        let id = table.get(a.key).unwrap().id.to_string();
        let alice = Caller { identity: "alice".into(), admin: false };
        let bob = Caller { identity: "bob".into(), admin: false };
        let admin = Caller { identity: "root".into(), admin: true };
        assert_eq!(table.find(&alice, &id).unwrap(), a.key);
        assert!(matches!(table.find(&bob, &id), Err(JobError::NotFound(_))));
        assert_eq!(table.find(&admin, &id).unwrap(), a.key);
        assert_eq!(table.list(&bob, &[]).len(), 1);
        assert_eq!(table.list(&admin, &[]).len(), 3);

        for key in table.running_jobs().collect::<Vec<_>>() {
            table.request_stop(key, EndReason::Stopped);
            run_to_end(&mut table, key);
            let job = table.get(key).unwrap();
            assert_eq!(job.end.unwrap().status, ExitStatus::Signaled(libc::SIGTERM));
            assert_eq!(job.end.unwrap().reason, EndReason::Stopped);
        }
        // Room again: the oldest ended job is evicted to make space.
        table.start("bob", spec("true", &[])).unwrap();
        assert!(matches!(table.find(&admin, &id), Err(JobError::NotFound(_))));
        table.remove_all();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn total_output_cap_discards_the_oldest_ended_jobs_output_first() {
        let (mut table, dir) = table_with_output_caps("total", 1 << 20, 1 << 20);
        let old = table.start("a", spec("head", &["-c", "1048576", "/dev/zero"])).unwrap();
        run_to_end(&mut table, old.key);
        assert_eq!(table.get(old.key).unwrap().output.retained(), 1 << 20);
        let new = table.start("a", spec("head", &["-c", "524288", "/dev/zero"])).unwrap();
        run_to_end(&mut table, new.key);
        let (old_job, new_job) = (table.get(old.key).unwrap(), table.get(new.key).unwrap());
        assert_eq!(new_job.output.retained(), 512 * 1024, "the newest output is kept whole");
        assert!(old_job.output.start() > 0, "the oldest output was discarded first");
        assert!(old_job.output.retained() + new_job.output.retained() <= 1 << 20);
        assert_eq!(old_job.output.end(), 1 << 20, "offsets keep their meaning");
        table.remove_all();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn job_ids_are_v4_and_round_trip() {
        let id = JobId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(text, text.to_lowercase());
        assert_eq!(JobId::parse(&text), Some(id));
        assert_eq!(JobId::parse(&text.to_uppercase()), Some(id));
        assert_eq!(JobId::parse("not-a-uuid"), None);
        assert_eq!(JobId::parse(&text.replace('-', "x")), None);
        assert_eq!(JobId::parse("123e4567-e89b-42d3-a456-42661417400g"), None);
    }
}
