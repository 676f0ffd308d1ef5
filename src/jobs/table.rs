//! [`JobTable`]: the registry of jobs, in start order, with the rules that span them: who may see which job,
//! how many each owner may run, how many are retained, and which output goes first when the spool is full.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use super::counters::{JobCensus, JobCounters};
use super::history::{self, PreviousServer};
use super::janitor::Janitor;
use super::job::Starting;
use super::launch::{self, Launcher, StartReport, START_TIMEOUT};
use super::limits::LimitPolicy;
use super::spool::mover::SegmentMover;
use super::spool::writer::SpoolWriter;
use super::spool::{Drain, Ingested, JobDirs, Spool, Stream, PIPE_CAPACITY};
use super::start::{HalfStarted, Started};
use super::{Caller, EndReason, Job, JobError, JobId, JobKey, JobSpec, JobState, StartRequest};
use crate::cgroup::{CgroupRoot, Limits};
use crate::isolation::shell_pool::ShellPool;
use crate::isolation::{self, InitReport, Isolation, RunAs};
use crate::sys::{self, SpawnReport};

/// The server settings the table enforces.
#[derive(Debug)]
pub struct JobTableConfig {
    pub state_dir: PathBuf,
    pub max_jobs: usize,
    pub max_running_per_client: usize,
    /// Most bytes of a start request (command, args, env, working directory) a job keeps.
    pub max_request_bytes: usize,
    pub max_output_bytes: u64,
    pub max_output_total: u64,
    /// The server's own executable, to start its helper processes from: the janitor (see `jobs::janitor`) and
    /// the shell pool (see `isolation::shell_pool`). `None` (unit tests): files are removed on the loop and
    /// each isolated job's start forks into new namespaces.
    pub helper_executable: Option<PathBuf>,
    /// The state directory's lock (see `server::state_dir`), which the helpers that write in the directory hold
    /// too: a server that follows this one waits until they have exited.
    pub state_dir_lock: Option<OwnedFd>,
    /// Whether ended jobs outlive the server: `None` (`--ephemeral`), or how the previous server stopped, whose
    /// jobs are read back (see `jobs::history`).
    pub history: Option<PreviousServer>,
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

/// What the reactor must watch for a job that just started.
#[derive(Debug, Clone, Copy)]
pub struct StartedJob {
    pub key: JobKey,
    pub pidfd: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// The pipe the job reports its command's start on: readable once it has (see [`JobTable::settle_start`]),
    /// which it must do within [`START_TIMEOUT`].
    pub start_report: RawFd,
}

/// Jobs' directories kept asked of the segment mover ahead of the starts that take them: a burst of more starts
/// than this waits for the mover to make more (see [`JobTable::poll_job_dirs`]).
pub const JOB_DIRS_AHEAD: usize = 4;

/// How long no directories are asked for ahead after some could not be made.
const JOB_DIRS_RETRY: Duration = Duration::from_secs(1);

pub struct JobTable {
    config: JobTableConfig,
    jobs: BTreeMap<JobKey, Job>,
    by_id: HashMap<JobId, JobKey>,
    running_by_owner: HashMap<String, usize>,
    next_key: JobKey,
    work_dir: PathBuf,
    containment: Containment,
    launcher: Launcher,
    spool: Spool,
    /// Why recent starts failed, for their StartJob calls to take (see [`JobTable::poll_start`]). A call that
    /// went away leaves its entry behind: at most `max_jobs` are kept, oldest dropped first.
    start_failures: VecDeque<(JobKey, JobError)>,
    /// Inits of failed starts that were killed but had not exited yet: reaped when their pidfd (still watched by
    /// the reactor as the job's) turns readable, so a start never waits for a process to die.
    killed_inits: HashMap<JobKey, OwnedFd>,
    /// Jobs whose start has not been reported yet (see [`JobTable::replenish_shells`]).
    starts_pending: usize,
    /// Jobs with output on its way to the disk through the spool writer (see [`JobTable::take_confirmations`]).
    awaiting_writer: BTreeSet<JobKey>,
    /// Ids of jobs to come whose directories the segment mover was asked to make, with its tickets, oldest
    /// first (see [`JobTable::make_job_dirs_ahead`]).
    dirs_ahead: VecDeque<(u64, JobId)>,
    /// Of those, the ones made, with their output's first segment file, oldest first: what starts take.
    dirs_made: VecDeque<(JobId, File)>,
    /// Starts waiting for directories to be made (see [`JobTable::poll_job_dirs`]).
    dirs_waiters: Vec<Waker>,
    /// Until when no more directories are asked for, after some could not be made.
    dirs_ahead_paused_until: Option<Instant>,
    shutting_down: bool,
    counters: JobCounters,
}

impl JobTable {
    /// Creates the table and its directories under the state dir (which must exist).
    pub fn new(config: JobTableConfig, containment: Containment) -> io::Result<JobTable> {
        let work_dir = config.state_dir.join("work");
        // Working directories belong to the users jobs run as, who must be able to pass through `work/` to their
        // own directory, but not list it.
        fs::DirBuilder::new().mode(0o711).create(&work_dir)?;
        fs::set_permissions(&work_dir, fs::Permissions::from_mode(0o711))?;
        let lock = config.state_dir_lock.as_ref().map(|lock| lock.as_fd());
        let janitor = Janitor::start(config.state_dir.join("trash"), config.helper_executable.as_deref(), lock)?;
        let mover = config.helper_executable.as_deref().and_then(|executable| {
            SegmentMover::start(executable, &config.state_dir, lock)
                .inspect_err(|err| {
                    log::warn!("cannot start the segment mover ({err}); spool files will be made on the event loop")
                })
                .ok()
        });
        let writer = config.helper_executable.as_deref().and_then(|executable| {
            SpoolWriter::start(executable, lock)
                .inspect_err(|err| {
                    log::warn!("cannot start the spool writer ({err}); spool files will be written on the event loop")
                })
                .ok()
        });
        let (max_per_job, max_total) = (config.max_output_bytes, config.max_output_total);
        let spool = Spool::create(&config.state_dir, max_per_job, max_total, janitor, mover, writer)?;
        // Not where jobs get cgroups: a shell's init would live outside its job's cgroup (see
        // `isolation::shell_pool`), and those starts fork into the job's cgroup instead.
        let shell_pool = match (&config.helper_executable, &containment.isolation, &containment.cgroups) {
            (Some(executable), Some(isolation), None) => Some(ShellPool::start(executable, isolation.own_network)),
            _ => None,
        };
        let mut table = JobTable {
            config,
            jobs: BTreeMap::new(),
            by_id: HashMap::new(),
            running_by_owner: HashMap::new(),
            next_key: 1,
            starts_pending: 0,
            awaiting_writer: BTreeSet::new(),
            dirs_ahead: VecDeque::new(),
            dirs_made: VecDeque::new(),
            dirs_waiters: Vec::new(),
            dirs_ahead_paused_until: None,
            work_dir,
            containment,
            launcher: Launcher::new(shell_pool)?,
            spool,
            start_failures: VecDeque::new(),
            killed_inits: HashMap::new(),
            shutting_down: false,
            counters: JobCounters::default(),
        };
        if let Some(previous) = table.config.history {
            table.restore(previous)?;
        }
        Ok(table)
    }

    /// Takes in the jobs a previous server left (see `jobs::history`), within this server's caps: past
    /// `--max-jobs` the oldest are forgotten, past `--max-output-total` the oldest output.
    fn restore(&mut self, previous: PreviousServer) -> io::Result<()> {
        let begun = std::time::Instant::now();
        let damaged = self.config.state_dir.join("damaged");
        let mut restored = history::restore(&mut self.spool, previous, &damaged)?;
        restored.sort_by_key(|job| (job.key, job.started_at));
        let count = restored.len();
        self.next_key = restored.iter().map(|job| job.key + 1).max().unwrap_or(1).max(self.next_key);
        for mut job in restored {
            let renumbered = self.jobs.contains_key(&job.key);
            if renumbered {
                // Two histories merged (backups of two servers restored into one directory): the later job of
                // the pair is listed after everything else.
                log::warn!("job {} has the start order of another; it is listed after the others", job.id);
                job.key = self.next_key;
                self.next_key += 1;
            }
            let key = job.key;
            self.by_id.insert(job.id, key);
            self.jobs.insert(key, job);
            if renumbered {
                self.save_record(key);
            }
        }
        self.evict_ended(self.config.max_jobs);
        self.enforce_output_total();
        if count > 0 {
            log::info!(
                "{} jobs kept from before this server started ({} bytes of their output), read back in {} ms",
                self.jobs.len(),
                self.spool.retained_total(),
                begun.elapsed().as_millis()
            );
        }
        Ok(())
    }

    /// Writes job `key`'s record into its directory (created when it was launched), if ended jobs outlive the
    /// server. A record that cannot be written costs the job its history (a warning says so), never its run.
    fn save_record(&mut self, key: JobKey) {
        let Some(job) = self.jobs.get(&key).filter(|_| self.config.history.is_some()) else { return };
        self.spool.save_record(job.output.dir(), job.record().encode());
    }

    pub fn get(&self, key: JobKey) -> Option<&Job> {
        self.jobs.get(&key)
    }

    pub fn get_mut(&mut self, key: JobKey) -> Option<&mut Job> {
        self.jobs.get_mut(&key)
    }

    /// Finds a job by its id text, if `caller` may see it. A job that exists but is not the caller's is as
    /// unknown as one that does not exist, so a caller learns nothing about jobs that are not theirs; nor is
    /// one still starting, whose id nobody has been told yet.
    pub fn find(&self, caller: &Caller, id: &str) -> Result<JobKey, JobError> {
        let parsed = JobId::parse(id).ok_or_else(|| JobError::MalformedId(id.to_string()))?;
        self.by_id
            .get(&parsed)
            .copied()
            .filter(|key| Self::visible(caller, &self.jobs[key]))
            .ok_or_else(|| JobError::UnknownJob(id.to_string()))
    }

    /// The jobs `caller` may see, oldest first, in one of `states` (empty = all), started after the job with
    /// key `after` (`None`: from the oldest; the job itself need not exist any more).
    pub fn list<'a>(
        &'a self,
        caller: &'a Caller,
        states: &'a [JobState],
        after: Option<JobKey>,
    ) -> impl Iterator<Item = &'a Job> + 'a {
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.jobs
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, job)| job)
            .filter(move |job| Self::visible(caller, job))
            .filter(move |job| states.is_empty() || states.contains(&job.state()))
    }

    fn visible(caller: &Caller, job: &Job) -> bool {
        !job.is_starting() && caller.may_see(job)
    }

    pub fn running_jobs(&self) -> impl Iterator<Item = JobKey> + '_ {
        self.jobs.values().filter(|j| !j.is_ended()).map(|j| j.key)
    }

    pub fn has_running(&self) -> bool {
        self.jobs.values().any(|j| !j.is_ended())
    }

    /// True while an ended job's output that was in its pipes when it ended is not all taken in (the spool
    /// writer had no room for it yet): shutdown waits for it, as WaitJob does.
    pub fn has_output_owed(&self) -> bool {
        self.jobs.values().any(|j| j.is_ended() && !j.has_settled())
    }

    /// What the table has done since it was made (for metrics).
    pub fn counters(&self) -> &JobCounters {
        &self.counters
    }

    /// How many jobs are in each state now, and the output the spool retains for them in bytes (for metrics).
    pub fn census(&self) -> (JobCensus, u64) {
        (JobCensus::count(self.jobs.values()), self.spool.retained_total())
    }

    /// Checks `request` and starts it as a job of `owner` (see [`Self::start_valid`]).
    pub fn start(&mut self, owner: &str, request: StartRequest) -> Result<StartedJob, JobError> {
        let spec = self.validate_start(request)?;
        self.start_valid(owner, spec)
    }

    /// Checks every field of a start request, and what the job would keep of it.
    pub fn validate_start(&self, request: StartRequest) -> Result<JobSpec, JobError> {
        JobSpec::validate(request, self.config.max_request_bytes)
    }

    /// Starts `spec` as a job of `owner`; on failure nothing is left behind. Whether the command started is
    /// reported later (see [`Self::poll_start`]); until then the job counts against its owner's limits but is
    /// not visible. Ask [`Self::poll_job_dirs`] first, or the start may make the job's directories on the loop.
    pub fn start_valid(&mut self, owner: &str, spec: JobSpec) -> Result<StartedJob, JobError> {
        let limits = self.admit(owner, &spec)?;
        let run_as = match self.containment.isolation.as_mut() {
            Some(isolation) => Some(isolation.users.allocate().ok_or(JobError::NoFreeUser)?),
            None => None,
        };
        let started = self.start_as(owner, spec, limits, run_as);
        if let (Err(_), Some(run_as), Some(isolation)) = (&started, run_as, self.containment.isolation.as_mut()) {
            isolation.users.release(run_as);
        }
        started
    }

    /// The rest of [`Self::start`], as `run_as` (for an isolated job), which the caller gives back on failure.
    fn start_as(
        &mut self,
        owner: &str,
        spec: JobSpec,
        limits: Option<Limits>,
        run_as: Option<RunAs>,
    ) -> Result<StartedJob, JobError> {
        let made_ahead = self.take_job_dirs();
        let id = made_ahead.as_ref().map_or_else(JobId::random, |(id, _)| *id);
        // Limits go to a cgroup where there is one (without, only pids is enforced, by the user's own count).
        let cgroup_limits = limits.filter(|_| self.containment.cgroups.is_some());
        let mut start = HalfStarted::new(id, &mut self.spool, self.containment.cgroups.as_mut());
        let working_dir = if let Some((_, first_segment)) = made_ahead {
            start.adopt_output(first_segment);
            // Made whether the job wants it or not: one it does not use stays empty and goes with the job.
            let own = start.adopt_work_dir(&self.work_dir);
            spec.working_dir.clone().unwrap_or(own)
        } else {
            start.create_output()?;
            match &spec.working_dir {
                Some(dir) => dir.clone(),
                None => start.create_work_dir(&self.work_dir)?,
            }
        };
        if let Some(limits) = &cgroup_limits {
            start.create_cgroup(limits)?;
        }
        let sandbox = self.containment.isolation.as_ref().zip(run_as);
        start.launch(&mut self.launcher, &spec, &working_dir, sandbox, limits.as_ref())?;
        if let Some(limits) = &cgroup_limits {
            start.limit_cpu(limits)?;
        }
        let Started { output, own_work_dir, cgroup, process } = start.done();

        let key = self.next_key;
        self.next_key += 1;
        let [stdout, stderr] = process.pipes;
        let started = StartedJob {
            key,
            pidfd: process.pidfd.as_raw_fd(),
            stdout: stdout.as_raw_fd(),
            stderr: stderr.as_raw_fd(),
            start_report: match &process.report {
                StartReport::Exec(fd) | StartReport::Init(fd) => fd.as_raw_fd(),
            },
        };
        let (starting, control) = match process.report {
            StartReport::Exec(fd) => (Starting { working_dir, exec_report: Some(fd) }, None),
            StartReport::Init(fd) => (Starting { working_dir, exec_report: None }, Some(fd)),
        };
        let job = Job {
            key,
            id,
            owner: owner.to_string(),
            command: spec.command,
            args: spec.args,
            pid: process.pid,
            started_at: SystemTime::now(),
            end: None,
            output,
            stop_reason: None,
            pidfd: Some(process.pidfd),
            stdout: Some(stdout),
            stderr: Some(stderr),
            owed: [0; 2],
            starting: Some(starting),
            control,
            limits,
            cgroup,
            final_usage: None,
            waiters: Vec::new(),
            own_work_dir,
            run_as,
        };
        match run_as {
            Some(run_as) => {
                log::info!("job {id} launched for {owner}: pid {}, {:?}, as uid {}", job.pid, job.command, run_as.uid)
            }
            None => log::info!("job {id} launched for {owner}: pid {}, {:?}", job.pid, job.command),
        }
        *self.running_by_owner.entry(owner.to_string()).or_default() += 1;
        self.starts_pending += 1;
        self.by_id.insert(id, key);
        self.jobs.insert(key, job);
        self.save_record(key);
        Ok(started)
    }

    /// Where the start of job `key` stands for its StartJob call: pending (with `waker` remembered) until the job
    /// reports, the job once its command runs, or why it failed (told once).
    pub fn poll_start(&mut self, key: JobKey, waker: &Waker) -> Poll<Result<&Job, JobError>> {
        if let Some(job) = self.jobs.get_mut(&key) {
            if job.is_starting() {
                job.wait_for_start(waker);
                return Poll::Pending;
            }
            return Poll::Ready(Ok(job));
        }
        let failure = self.start_failures.iter().position(|(failed, _)| *failed == key);
        Poll::Ready(Err(match failure.and_then(|at| self.start_failures.remove(at)) {
            Some((_, error)) => error,
            None => JobError::System("the job was removed before its start was reported".into()),
        }))
    }

    /// Settles a job's start once it has reported (its exec's pipe, or its init's), or ended without a report:
    /// the job runs (and becomes visible), or it is taken back and its StartJob call told why. Called when the
    /// report pipe turns readable and when the job's top process ends; before either it does nothing.
    pub fn settle_start(&mut self, key: JobKey) {
        let Some(job) = self.jobs.get_mut(&key) else { return };
        let (Some(starting), Some(pidfd)) = (&job.starting, &job.pidfd) else { return };
        let failure = match &starting.exec_report {
            Some(report) => match sys::read_spawn_report(report.as_raw_fd()) {
                Ok(SpawnReport::Pending) => return,
                Ok(SpawnReport::Execd) => None,
                Ok(SpawnReport::Failed(failure)) => {
                    Some(launch::exec_error(&job.command, &starting.working_dir, failure))
                }
                Err(err) => Some(JobError::system("cannot read the job's exec report", err)),
            },
            None => match job.control.as_ref().map(|fd| isolation::read_report(fd.as_raw_fd(), 0)) {
                Some(Ok(Some(InitReport::Started))) => None,
                Some(Ok(Some(report))) => Some(launch::init_failure(report, &job.command, &starting.working_dir)),
                // Nothing to read: either not yet, or the init closed the pipe without a word.
                Some(Ok(None)) | None => match sys::wait_pidfd(pidfd.as_raw_fd(), sys::Wait::PeekIfEnded) {
                    Ok(None) => return,
                    Ok(Some(status)) => Some(JobError::System(format!(
                        "the job's init ended ({status:?}) without starting the command"
                    ))),
                    Err(err) => Some(JobError::system("cannot wait for the job's init", err)),
                },
                Some(Err(err)) => Some(JobError::system("cannot read the job's init report", err)),
            },
        };
        match failure {
            None => {
                job.starting = None;
                self.starts_pending -= 1;
                self.counters.started += 1;
                log::info!("job {} started: {:?} exec'd", job.id, job.command);
                job.wake_waiters();
                self.save_record(key);
            }
            Some(failure) => self.fail_start(key, failure),
        }
    }

    /// Job `key` has had [`START_TIMEOUT`] to report that its command started: if it still has not, it is
    /// killed and its start fails.
    pub fn start_overdue(&mut self, key: JobKey) {
        // A report may have arrived in this very turn, before the loop read it.
        self.settle_start(key);
        if self.jobs.get(&key).is_some_and(Job::is_starting) {
            self.fail_start(key, JobError::StartTimedOut(START_TIMEOUT));
        }
    }

    /// Takes back a job whose start failed: kills its init, removes its cgroup, output and working directory,
    /// and keeps `error` for its StartJob call. Never waits: an init that has not exited yet is reaped later.
    fn fail_start(&mut self, key: JobKey, error: JobError) {
        let Some(mut job) = self.jobs.remove(&key) else { return };
        self.by_id.remove(&job.id);
        count_ended(&mut self.running_by_owner, &job.owner);
        if job.is_starting() {
            self.starts_pending -= 1;
        }
        self.counters.start_failures += 1;
        log::info!("job {} did not start: {error}", job.id);
        if let Some(pidfd) = job.pidfd.take() {
            let _ = sys::signal_process(job.pid, libc::SIGKILL);
            if !matches!(sys::wait_pidfd(pidfd.as_raw_fd(), sys::Wait::ReapIfEnded), Ok(Some(_))) {
                self.killed_inits.insert(key, pidfd);
            }
        }
        if let (Some(cgroups), Some(cgroup)) = (self.containment.cgroups.as_mut(), job.cgroup.take()) {
            cgroups.remove_job(cgroup);
        }
        job.wake_waiters();
        self.remove_files(job);
        self.start_failures.push_back((key, error));
        while self.start_failures.len() > self.config.max_jobs {
            self.start_failures.pop_front();
        }
    }

    /// Checks that `owner` may start `spec` now and makes room for it: the limits its cgroup will enforce
    /// (`None`: the host enforces none), the owner's running jobs, and the table's size (evicting the oldest
    /// ended job if it is full).
    fn admit(&mut self, owner: &str, spec: &JobSpec) -> Result<Option<Limits>, JobError> {
        if self.shutting_down {
            return Err(JobError::ShuttingDown);
        }
        let limits = match &self.containment.cgroups {
            Some(cgroups) => {
                let limits = self.containment.policy.resolve(&spec.limits)?;
                if limits.has_io() && cgroups.io_devices().is_empty() {
                    return Err(JobError::NoIoDevice);
                }
                Some(limits)
            }
            // Without cgroups, a user of the job's own still bounds its processes (RLIMIT_NPROC); nothing else can.
            None if self.containment.isolation.as_ref().is_some_and(|i| i.users.one_per_job()) => {
                let pids_only = Limits { max_pids: spec.limits.max_pids, ..Limits::default() };
                if spec.limits != pids_only {
                    let reason = self.containment.limits_unavailable.as_deref().unwrap_or("no cgroup v2");
                    return Err(JobError::LimitsUnavailable(format!(
                        "{reason} (only pids is enforced here, through the job's own user)"
                    )));
                }
                let pids = self.containment.policy.resolve(&pids_only)?.max_pids;
                (pids > 0).then_some(Limits { max_pids: pids, ..Limits::default() })
            }
            None if !spec.limits.is_unlimited() => {
                let reason = self.containment.limits_unavailable.as_deref().unwrap_or("no cgroup v2");
                return Err(JobError::LimitsUnavailable(reason.to_string()));
            }
            None => None,
        };
        let running = self.running_by_owner.get(owner).copied().unwrap_or(0);
        if running >= self.config.max_running_per_client {
            return Err(JobError::TooManyRunning { owner: owner.to_string(), running });
        }
        self.evict_ended(self.config.max_jobs.saturating_sub(1));
        if self.jobs.len() >= self.config.max_jobs {
            return Err(JobError::TooManyJobs { retained: self.jobs.len() });
        }
        Ok(limits)
    }

    /// Asks a job to stop: SIGTERM to its process group, now. Returns false if it had already ended (stop is
    /// idempotent). The caller schedules [`Self::kill`] after the grace period.
    pub fn request_stop(&mut self, key: JobKey, reason: EndReason) -> bool {
        self.jobs.get_mut(&key).is_some_and(|job| job.request_stop(reason))
    }

    /// Ends a job's grace period: SIGKILL to its whole process group.
    pub fn kill(&mut self, key: JobKey) {
        if let Some(job) = self.jobs.get(&key) {
            job.kill();
        }
    }

    /// Handles a readable pidfd. If the job's main process has exited, marks the job ended and takes what is
    /// already in its pipes. Returns true if the job ended now; safe to call at any time.
    pub fn reap(&mut self, key: JobKey) -> bool {
        if let Some(pidfd) = self.killed_inits.get(&key) {
            if !matches!(sys::wait_pidfd(pidfd.as_raw_fd(), sys::Wait::ReapIfEnded), Ok(None)) {
                self.killed_inits.remove(&key);
            }
            return false;
        }
        if self.jobs.get(&key).is_some_and(Job::is_starting) {
            // The job's process ended before the loop read its report: the report, or its absence, settles the
            // start.
            self.settle_start(key);
        }
        let Some(job) = self.jobs.get_mut(&key) else { return false };
        if job.is_starting() || !job.reap(self.containment.cgroups.as_mut()) {
            return false;
        }
        if let Some(end) = &job.end {
            self.counters.count_end(end.reason);
        }
        count_ended(&mut self.running_by_owner, &job.owner);
        // Take everything the job wrote before it ended (at most a full pipe each), so a WaitJob answered now
        // reports its full output. What a process that escaped the job writes later comes as any output does.
        // Output the spool writer has no room for yet is owed: WaitJob waits for it (see `Job::has_settled`).
        for stream in [Stream::Stdout, Stream::Stderr] {
            let (ingested, _) = self.take_output(key, stream, PIPE_CAPACITY);
            // `More` too: the writer's room, not the pipe, may have ended the take.
            if let (Drain::Waiting | Drain::More, Some(job)) = (ingested.drain, self.jobs.get_mut(&key)) {
                let left = job.pipe(stream).map_or(Ok(0), sys::pipe_holds).unwrap_or(0);
                job.owed[stream.index()] = left as u64;
            }
        }
        if let Some(job) = self.jobs.get_mut(&key) {
            job.wake_waiters();
        }
        self.save_record(key);
        true
    }

    /// Moves what a job's pipe holds into its output log, at most `budget` bytes (the loop's share for it).
    pub fn drain(&mut self, key: JobKey, stream: Stream, budget: usize) -> Ingested {
        let (ingested, finished) = self.take_output(key, stream, budget);
        // The output of a job that has ended is complete now: its record says how much there was.
        if finished && self.jobs.get(&key).is_some_and(Job::is_ended) {
            self.save_record(key);
        }
        ingested
    }

    /// [`Self::drain`], without the record; also says whether the job's output finished now.
    fn take_output(&mut self, key: JobKey, stream: Stream, budget: usize) -> (Ingested, bool) {
        let closed = Ingested { drain: Drain::Closed, bytes: 0 };
        let Some(job) = self.jobs.get_mut(&key) else { return (closed, false) };
        let Some(fd) = job.pipe(stream) else { return (closed, false) };
        let ingested = self.spool.ingest(&mut job.output, &job.id, stream, fd, budget);
        self.counters.count_output(stream, ingested.bytes);
        let owed = &mut job.owed[stream.index()];
        if *owed > 0 {
            *owed = match ingested.drain {
                Drain::Empty | Drain::Closed => 0,
                Drain::More | Drain::Waiting => owed.saturating_sub(ingested.bytes),
            };
            if job.has_settled() {
                job.wake_waiters();
            }
        }
        let finished = ingested.drain == Drain::Closed && job.close_pipe(stream);
        if finished {
            self.spool.finish(&mut job.output);
        }
        if job.output.awaits_writer() {
            self.awaiting_writer.insert(key);
        }
        if ingested.bytes > 0 {
            self.enforce_output_total();
        }
        (ingested, finished)
    }

    /// Keeps the output retained across all jobs under `--max-output-total`: first the output of the oldest
    /// ended jobs goes, then the oldest segments of the oldest running jobs.
    fn enforce_output_total(&mut self) {
        if !self.spool.is_over_total() {
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
            while self.spool.is_over_total() && self.spool.discard_oldest_segment(&mut job.output) > 0 {}
            if !self.spool.is_over_total() {
                return;
            }
        }
    }

    /// Forgets the ended job `key` and frees its output and working directory (RemoveJob). Its readers end as
    /// for an evicted job.
    pub fn remove(&mut self, key: JobKey) -> Result<(), JobError> {
        let job = self.jobs.get(&key).ok_or_else(|| JobError::UnknownJob(format!("{key:?}")))?;
        if !job.is_ended() {
            return Err(JobError::StillRunning(job.id.to_string()));
        }
        let job = self.jobs.remove(&key).ok_or_else(|| JobError::UnknownJob(format!("{key:?}")))?;
        self.by_id.remove(&job.id);
        log::debug!("removing ended job {} on request", job.id);
        self.counters.removed += 1;
        self.remove_files(job);
        Ok(())
    }

    /// Evicts the oldest ended jobs until at most `keep` remain (or only running ones are left).
    fn evict_ended(&mut self, keep: usize) {
        while self.jobs.len() > keep {
            let Some(key) = self.jobs.values().find(|j| j.is_ended()).map(|j| j.key) else { return };
            let job = self.jobs.remove(&key).expect("present");
            self.by_id.remove(&job.id);
            log::debug!("evicting ended job {}", job.id);
            self.counters.evicted += 1;
            self.remove_files(job);
        }
    }

    /// Asks for the shells the turn's starts took to be replaced (see `isolation::shell_pool`): once per turn,
    /// after its calls were served.
    pub fn replenish_shells(&mut self) {
        self.launcher.replenish_shells(self.starts_pending > 0);
    }

    /// True while files to remove wait for room in the janitor's pipe (it is behind); the loop then calls
    /// [`Self::retry_removals`] a little later, since nothing else may come to push them on.
    pub fn has_removals_waiting(&self) -> bool {
        self.spool.has_removals_waiting()
    }

    /// Hands the janitor what waited for room in its pipe.
    pub fn retry_removals(&mut self) {
        self.spool.retry_removals();
    }

    /// The segment mover's socket, which the loop watches for its answers; `None` without a mover.
    pub fn segment_mover_socket(&self) -> Option<RawFd> {
        self.spool.mover_socket()
    }

    /// The spool writer's socket, which the loop watches for its confirmations; `None` without a writer.
    pub fn spool_writer_socket(&mut self) -> Option<RawFd> {
        self.spool.writer_socket()
    }

    /// Takes the spool writer's confirmations: what it wrote becomes readable, and the readers waiting for it
    /// are woken. True if it wrote anything, which makes room for more output.
    pub fn take_confirmations(&mut self) -> bool {
        let Some(confirmed) = self.spool.receive_confirmations() else { return false };
        let jobs = &mut self.jobs;
        self.awaiting_writer.retain(|key| jobs.get_mut(key).is_some_and(|job| job.output.confirm(confirmed)));
        true
    }

    /// Keeps [`JOB_DIRS_AHEAD`] jobs' directories asked of the segment mover ahead of the starts that will take
    /// them: a start that makes its own creates three inodes on the loop, and ext4 can hold each one while it
    /// reads an inode table block behind the output being written back (see `spool::mover`). Once a turn, and
    /// when a start finds none made; wakes the starts waiting for them if some are.
    pub fn make_job_dirs_ahead(&mut self) {
        self.wake_dirs_waiters_if_made();
        if self.dirs_ahead_paused_until.is_some_and(|until| Instant::now() < until) {
            return;
        }
        while !self.shutting_down && self.dirs_ahead.len() + self.dirs_made.len() < JOB_DIRS_AHEAD {
            let id = JobId::random();
            let (output, work) = self.job_dir_paths(id);
            // No mover: starts make their own.
            let Some(ticket) = self.spool.make_job_dirs(&output, &work) else { return };
            self.dirs_ahead.push_back((ticket, id));
        }
    }

    /// The output and working directories of job `id`.
    fn job_dir_paths(&self, id: JobId) -> (PathBuf, PathBuf) {
        let name = id.to_string();
        (self.spool.jobs_dir().join(&name), self.work_dir.join(name))
    }

    /// Whether a start may go on (`Ready`), or should wait for the segment mover to make a job's directories
    /// (`Pending`, `waker` remembered): none made ahead is left, and more are on their way. Without a mover, or
    /// while the mover cannot make them (a full disk), a start makes its own on the loop. Waiting is what keeps
    /// a burst of starts from each creating three inodes on the loop; a stalled disk makes the starts wait,
    /// never the loop (they fail at [`START_TIMEOUT`], see `server::service::PendingStart`).
    pub fn poll_job_dirs(&mut self, waker: &Waker) -> Poll<()> {
        self.collect_job_dirs();
        if self.dirs_made.is_empty() {
            self.make_job_dirs_ahead();
        }
        if !self.dirs_made.is_empty() || self.dirs_ahead.is_empty() || self.shutting_down {
            return Poll::Ready(());
        }
        crate::reactor::remember_waker(&mut self.dirs_waiters, waker);
        Poll::Pending
    }

    /// The segment mover answered (its socket is readable): takes its answers in, and wakes the starts waiting
    /// for directories if some were made.
    pub fn take_mover_replies(&mut self) {
        self.spool.collect_mover_replies();
        self.wake_dirs_waiters_if_made();
    }

    /// Wakes every start waiting for directories, made or not (each checks how long it has waited).
    pub fn wake_dirs_waiters(&mut self) {
        for waker in self.dirs_waiters.drain(..) {
            waker.wake();
        }
    }

    fn wake_dirs_waiters_if_made(&mut self) {
        if self.dirs_waiters.is_empty() {
            return;
        }
        self.collect_job_dirs();
        if !self.dirs_made.is_empty() || self.dirs_ahead.is_empty() {
            self.wake_dirs_waiters();
        }
    }

    /// Moves the directories the mover made, oldest first, from those asked for to those made.
    fn collect_job_dirs(&mut self) {
        while let Some(&(ticket, id)) = self.dirs_ahead.front() {
            match self.spool.job_dirs(ticket) {
                JobDirs::Waiting => return,
                JobDirs::Made(first_segment) => {
                    self.dirs_ahead.pop_front();
                    self.dirs_made.push_back((id, first_segment));
                }
                JobDirs::Failed => {
                    // Whatever failed (a full disk) would likely fail the next ones too: not for a while.
                    self.dirs_ahead.pop_front();
                    self.dirs_ahead_paused_until = Some(Instant::now() + JOB_DIRS_RETRY);
                }
            }
        }
    }

    /// The id of a job to come whose directories the mover has made, with its first segment file, if there is
    /// one yet.
    fn take_job_dirs(&mut self) -> Option<(JobId, File)> {
        // A StartJob call asked `poll_job_dirs` just before: only a start that did not looks for replies here.
        if self.dirs_made.is_empty() {
            self.collect_job_dirs();
        }
        self.dirs_made.pop_front()
    }

    /// Sends the spool writer what the turn asked of it (segments closed, logs removed).
    pub fn send_spool_writes(&mut self) {
        self.spool.send_writes();
    }

    /// Why the spool writer is gone, if it is (see `jobs::spool::writer`): the server must stop.
    pub fn spool_writer_failure(&mut self) -> Option<String> {
        self.spool.writer_failure()
    }

    /// Refuses new jobs from now on (server shutdown).
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.wake_dirs_waiters();
    }

    /// Shutdown, once every job ended: hands back the cgroup subtree so the server can take it down.
    pub fn take_cgroups(&mut self) -> Option<CgroupRoot> {
        self.containment.cgroups.take()
    }

    /// Server shutdown, after every job ended: deletes every job's working directory, and its output and record
    /// too unless ended jobs outlive the server; ends the helper processes, and waits until both are done (the
    /// helpers live in the server's cgroup, which is removed next).
    pub fn remove_all(&mut self) {
        for mut job in std::mem::take(&mut self.jobs).into_values() {
            if self.config.history.is_some() {
                self.release_process_files(&mut job);
            } else {
                self.remove_files(job);
            }
        }
        self.by_id.clear();
        for (ticket, id) in std::mem::take(&mut self.dirs_ahead) {
            let (output, work) = self.job_dir_paths(id);
            self.spool.abandon_job_dirs(ticket, &output, &work);
        }
        for (id, _first_segment) in std::mem::take(&mut self.dirs_made) {
            let (output, work) = self.job_dir_paths(id);
            self.spool.dispose(&output);
            self.spool.dispose(&work);
        }
        self.spool.finish_removals();
        self.launcher.finish();
    }

    /// Hands a job's output and working directory to the janitor, and its user back: nothing it left in its
    /// working directory is reachable by a later job given the same user.
    fn remove_files(&mut self, mut job: Job) {
        // A job ended may still be taking its output in: whoever waits for it (a follower, a WaitJob) learns
        // now that it is gone, not at its deadline.
        job.wake_waiters();
        self.spool.remove(&mut job.output);
        self.release_process_files(&mut job);
    }

    /// Hands the job's working directory to the janitor and its user back; its output stays.
    fn release_process_files(&mut self, job: &mut Job) {
        if let Some(dir) = job.own_work_dir.take() {
            self.spool.dispose(&dir.into_path());
        }
        if let (Some(run_as), Some(isolation)) = (job.run_as.take(), self.containment.isolation.as_mut()) {
            isolation.users.release(run_as);
        }
    }
}

/// One fewer running job for `owner`.
fn count_ended(running_by_owner: &mut HashMap<String, usize>, owner: &str) {
    if let Some(count) = running_by_owner.get_mut(owner) {
        *count -= 1;
        if *count == 0 {
            running_by_owner.remove(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::spool::{Ingest, OutputCursor};
    use crate::scratch::ScratchDir;
    use crate::sys::ExitStatus;
    use std::time::{Duration, Instant};

    /// A table over a scratch state directory; the directory goes when the test ends.
    fn table(name: &str) -> (JobTable, ScratchDir) {
        table_with_output_caps(name, 1 << 20, 8 << 20)
    }

    fn table_with_output_caps(name: &str, per_job: u64, total: u64) -> (JobTable, ScratchDir) {
        let state_dir = ScratchDir::new(&format!("table-{name}"));
        let config = JobTableConfig {
            state_dir: state_dir.path().to_path_buf(),
            max_jobs: 3,
            max_running_per_client: 2,
            max_request_bytes: 64 * 1024,
            max_output_bytes: per_job,
            max_output_total: total,
            helper_executable: None,
            state_dir_lock: None,
            history: None,
        };
        let containment = Containment { limits_unavailable: Some("test host".into()), ..Default::default() };
        (JobTable::new(config, containment).unwrap(), state_dir)
    }

    fn spec(command: &str, args: &[&str]) -> StartRequest {
        StartRequest {
            command: command.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Starts `request` for `owner` and waits for the start's outcome, as the StartJob call does.
    fn start_settled(table: &mut JobTable, owner: &str, request: StartRequest) -> Result<JobKey, JobError> {
        let key = table.start(owner, request)?.key;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            table.settle_start(key);
            if let Poll::Ready(outcome) = table.poll_start(key, std::task::Waker::noop()) {
                return outcome.map(|job| job.key);
            }
            assert!(Instant::now() < deadline, "the start was not reported");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn reap_within_10_s(table: &mut JobTable, key: JobKey) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !table.reap(key) {
            assert!(Instant::now() < deadline, "job did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn run_to_end(table: &mut JobTable, key: JobKey) {
        reap_within_10_s(table, key);
        let deadline = Instant::now() + Duration::from_secs(10);
        for stream in [Stream::Stdout, Stream::Stderr] {
            while table.drain(key, stream, PIPE_CAPACITY).drain != Drain::Closed {
                assert!(Instant::now() < deadline, "pipe did not close");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Like `run_to_end`, but drains the pipes while the job runs, so it can write more than they hold, in
    /// shares of an odd size that no drain may exceed.
    fn run_draining(table: &mut JobTable, key: JobKey) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let share = 100_003;
        let drain = |table: &mut JobTable, stream| {
            let ingested = table.drain(key, stream, share);
            assert!(ingested.bytes <= share as u64, "{} bytes moved on a share of {share}", ingested.bytes);
            ingested.drain
        };
        while !table.reap(key) {
            assert!(Instant::now() < deadline, "job did not end");
            let stdout = drain(table, Stream::Stdout);
            let stderr = drain(table, Stream::Stderr);
            if stdout != Drain::More && stderr != Drain::More {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for stream in [Stream::Stdout, Stream::Stderr] {
            while drain(table, stream) != Drain::Closed {
                assert!(Instant::now() < deadline, "pipe did not close");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Runs a job writing 3 MiB of every byte value twice to stdout and a NUL-bearing line to stderr, and checks
    /// that the log holds exactly that, per stream, with contiguous offsets.
    fn ingest_is_byte_exact(ingest: Ingest) {
        let (mut table, dir) = table_with_output_caps("ingest", 64 << 20, 64 << 20);
        *table.spool.ingest_mode() = ingest;
        let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let file = dir.join("data");
        fs::write(&file, &data).unwrap();
        let script = format!("cat {0}; printf 'e\\000rr' >&2; cat {0}", file.display());
        let started = table.start("alice", spec("sh", &["-c", &script])).unwrap();
        run_draining(&mut table, started.key);
        assert_eq!(*table.spool.ingest_mode(), ingest, "the state directory supports {ingest:?}");
        let job = table.get(started.key).unwrap();
        assert_eq!(job.end.unwrap().status, Some(ExitStatus::Exited(0)));
        assert_eq!(job.output.end(), 2 * data.len() as u64 + 4);

        let mut cursor = OutputCursor::new(0);
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
        let mut cursor = OutputCursor::new(data.len() as u64 / 2);
        let span = job.output.next_span(&mut cursor, 1000).unwrap().unwrap();
        let mut buf = bytes::BytesMut::new();
        job.output.read_span(&mut cursor, span.len, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[data.len() / 2..data.len() / 2 + 1000]);
        table.remove_all();
    }

    #[test]
    fn a_silent_job_leaves_no_segment_file() {
        let (mut table, dir) = table("silent");
        let started = table.start("alice", spec("true", &[])).unwrap();
        run_to_end(&mut table, started.key);
        let job = table.get(started.key).unwrap();
        assert!(job.is_complete());
        assert_eq!(fs::read_dir(dir.join("jobs").join(job.id.to_string())).unwrap().count(), 0);
        table.remove_all();
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
        let mut cursor = OutputCursor::new(0);
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
        let (mut table, _state_dir) = table("run");
        let started = table.start("alice", spec("sh", &["-c", "echo out; echo err >&2; exit 3"])).unwrap();
        run_to_end(&mut table, started.key);
        let job = table.get(started.key).unwrap();
        assert_eq!(job.end.unwrap().status, Some(ExitStatus::Exited(3)));
        assert_eq!(job.state(), JobState::Exited);
        assert!(job.is_complete());
        let mut out = read_output(job);
        out.sort_by_key(|(stream, _)| *stream as u8);
        assert_eq!(out, vec![(Stream::Stdout, b"out\n".to_vec()), (Stream::Stderr, b"err\n".to_vec())]);
        table.remove_all();
    }

    #[test]
    fn job_sees_only_its_own_environment() {
        // The test harness's own environment (cargo sets CARGO_* for every test) is what must not leak; no
        // variable is set here, as the process is multi-threaded and shared by every test.
        assert!(std::env::vars_os().any(|(name, _)| name != "PATH"), "the test process has an environment");
        let (mut table, _state_dir) = table("env");
        let started = table.start("alice", spec("/usr/bin/env", &[])).unwrap();
        run_to_end(&mut table, started.key);
        let out = read_output(table.get(started.key).unwrap());
        let text: Vec<u8> = out.into_iter().flat_map(|(_, d)| d).collect();
        assert_eq!(String::from_utf8(text).unwrap(), format!("PATH={}\n", crate::jobs::spec::DEFAULT_PATH));
        table.remove_all();
    }

    #[test]
    fn exec_failures_map_to_errors_and_leave_nothing() {
        let (mut table, dir) = table("fail");
        let mut start = |request| start_settled(&mut table, "a", request);
        assert!(matches!(start(spec("no-such-program-xyz", &[])), Err(JobError::ExecutableNotFound(_))));
        assert!(matches!(start(spec("/etc/passwd", &[])), Err(JobError::ExecutionDenied { .. })));
        let mut missing_dir = spec("true", &[]);
        missing_dir.working_dir = "/no/such/dir".into();
        assert!(matches!(start(missing_dir), Err(JobError::WorkingDirUnusable { .. })));
        assert_eq!(fs::read_dir(dir.join("jobs")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.join("work")).unwrap().count(), 0);
        assert!(table.list(&Caller { identity: "a".into(), admin: true }, &[], None).next().is_none());
        assert!(!table.has_running(), "a failed start counts as no running job");
        assert_eq!(table.starts_pending, 0, "a failed start is no longer pending");
    }

    #[test]
    fn quotas_and_visibility() {
        let (mut table, _state_dir) = table("quota");
        let a = start_settled(&mut table, "alice", spec("sleep", &["30"])).unwrap();
        let b = table.start("alice", spec("sleep", &["30"])).unwrap().key;
        assert_eq!(table.starts_pending, 1, "b has not reported yet");
        assert!(matches!(table.start("alice", spec("true", &[])), Err(JobError::TooManyRunning { .. })));
        assert_eq!(
            table.list(&Caller { identity: "alice".into(), admin: false }, &[], None).count(),
            1,
            "one starting"
        );
        assert!(matches!(start_settled(&mut table, "alice", spec("true", &[])), Err(JobError::TooManyRunning { .. })));
        while table.get(b).unwrap().is_starting() {
            table.settle_start(b);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(table.starts_pending, 0, "b has reported");
        let _c = start_settled(&mut table, "bob", spec("sleep", &["30"])).unwrap();
        assert!(
            matches!(table.start("bob", spec("true", &[])), Err(JobError::TooManyJobs { retained: 3 })),
            "max_jobs"
        );

        let id = table.get(a).unwrap().id.to_string();
        let alice = Caller { identity: "alice".into(), admin: false };
        let bob = Caller { identity: "bob".into(), admin: false };
        let admin = Caller { identity: "root".into(), admin: true };
        assert_eq!(table.find(&alice, &id).unwrap(), a);
        assert!(matches!(table.find(&bob, &id), Err(JobError::UnknownJob(_))));
        assert_eq!(table.find(&admin, &id).unwrap(), a);
        assert_eq!(table.list(&bob, &[], None).count(), 1);
        assert_eq!(table.list(&admin, &[], None).count(), 3);
        let keys: Vec<JobKey> = table.list(&admin, &[], None).map(|j| j.key).collect();
        let after_first: Vec<JobKey> = table.list(&admin, &[], Some(keys[0])).map(|j| j.key).collect();
        assert_eq!(after_first, keys[1..], "a page starts after the key it is given");

        for key in table.running_jobs().collect::<Vec<_>>() {
            table.request_stop(key, EndReason::Stopped);
            run_to_end(&mut table, key);
            let job = table.get(key).unwrap();
            assert_eq!(job.end.unwrap().status, Some(ExitStatus::Signaled(libc::SIGTERM)));
            assert_eq!(job.end.unwrap().reason, EndReason::Stopped);
        }
        // Room again: the oldest ended job is evicted to make space.
        start_settled(&mut table, "bob", spec("true", &[])).unwrap();
        assert!(matches!(table.find(&admin, &id), Err(JobError::UnknownJob(_))));
        table.remove_all();
    }

    #[test]
    fn total_output_cap_discards_the_oldest_ended_jobs_output_first() {
        let (mut table, _state_dir) = table_with_output_caps("total", 1 << 20, 1 << 20);
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
        assert_total_is_exact(&table);
        table.remove_all();
        assert_eq!(table.spool.retained_total(), 0);
    }

    /// The spool's running total of retained output is what the logs hold.
    fn assert_total_is_exact(table: &JobTable) {
        let sum: u64 = table.jobs.values().map(|job| job.output.retained()).sum();
        assert_eq!(table.spool.retained_total(), sum);
    }

    /// Starts a job that ends while a process it left behind keeps its output pipe open, and reaps it: the job has
    /// ended, its output has not (a reader of it waits).
    fn ended_with_output_still_open(table: &mut JobTable) -> JobKey {
        let key = start_settled(table, "a", spec("sh", &["-c", "sleep 2 & exit 0"])).unwrap();
        reap_within_10_s(table, key);
        assert_ne!(table.drain(key, Stream::Stdout, PIPE_CAPACITY).drain, Drain::Closed, "the sleep holds it");
        let job = table.get(key).unwrap();
        assert!(job.is_ended() && !job.is_complete());
        key
    }

    #[test]
    fn a_job_removed_or_evicted_while_taking_its_output_in_wakes_its_readers() {
        use crate::reactor::{TaskId, WakeQueue};
        let (mut table, _state_dir) = table("wake");
        // The loop's own wakers: a woken reader's task id is on the ready queue.
        let queue = std::sync::Arc::new(WakeQueue::default());
        let reader = TaskId { connection: 1, call: 1 };
        let waits = |table: &mut JobTable, key| {
            table.jobs.get_mut(&key).unwrap().output.wait_for_output(&queue.waker(reader));
        };

        let removed = ended_with_output_still_open(&mut table);
        waits(&mut table, removed);
        table.remove(removed).unwrap();
        assert_eq!(queue.take(), [reader], "RemoveJob woke the reader");

        let evicted = ended_with_output_still_open(&mut table);
        waits(&mut table, evicted);
        for _ in 0..3 {
            let started = table.start("b", spec("true", &[])).unwrap();
            run_to_end(&mut table, started.key);
        }
        assert!(table.get(evicted).is_none(), "the oldest ended job was evicted past --max-jobs");
        assert_eq!(queue.take(), [reader], "eviction woke the reader");
        table.remove_all();
    }

    #[test]
    fn the_retained_total_stays_exact_through_evictions_and_removal() {
        let (mut table, _state_dir) = table("evict");
        for round in 0..5 {
            let started = table.start("a", spec("head", &["-c", "307200", "/dev/zero"])).unwrap();
            run_to_end(&mut table, started.key);
            assert_total_is_exact(&table);
            assert_eq!(table.jobs.len(), (round + 1).min(3), "the oldest ended job is evicted past --max-jobs");
        }
        assert_eq!(table.spool.retained_total(), 3 * 307_200);
        table.remove_all();
        assert_eq!(table.spool.retained_total(), 0);
    }
}
