//! [`Job`]: one job the server started: its process, its pipes, its output, and how it ended.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::task::Waker;
use std::time::SystemTime;

use super::record::JobRecord;
use super::spool::{OutputCursor, OutputLog, Stream};
use super::start::OwnWorkDir;
use super::{JobError, JobId, JobKey};
use crate::cgroup::{CgroupRoot, FinalUsage, JobCgroup, Limits, Usage};
use crate::isolation::{self, InitReport};
use crate::sys::{self, ExitStatus};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    Running,
    /// A stop was asked for; the grace period runs.
    Stopping,
    /// Ended by exit; the exit code is known.
    Exited,
    /// Ended by a signal.
    Killed,
}

/// Why a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The command exited by itself.
    Exited,
    /// A client stopped it.
    Stopped,
    /// The OOM killer ended it at its memory limit.
    OomKilled,
    /// A signal ended it that no stop sent.
    Signaled,
    /// The server stopped it on its way down.
    ServerShutdown,
    /// It was running when its server died (a crash, a kill): the next server found it gone, its exit status
    /// unknown.
    ServerLost,
}

impl EndReason {
    pub const ALL: [EndReason; 6] = [
        EndReason::Exited,
        EndReason::Stopped,
        EndReason::OomKilled,
        EndReason::Signaled,
        EndReason::ServerShutdown,
        EndReason::ServerLost,
    ];
}

/// How a job ended (set once its main process was reaped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndState {
    /// `None` only for a job lost with its server ([`EndReason::ServerLost`]).
    pub status: Option<ExitStatus>,
    pub reason: EndReason,
    pub at: SystemTime,
}

/// What a job whose command has not yet been reported started keeps for that report.
#[derive(Debug)]
pub(super) struct Starting {
    /// For the error if the command does not start.
    pub working_dir: PathBuf,
    /// Where the report comes: the exec's own pipe (closed once read), or `None` for the init's control pipe
    /// (`Job::control`, kept for the command's exit status).
    pub exec_report: Option<OwnedFd>,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    pub key: JobKey,
    pub id: JobId,
    pub owner: String,
    pub command: String,
    pub args: Vec<String>,
    /// Host pid of the job's top process: the init when isolated, else the command.
    pub pid: i32,
    pub started_at: SystemTime,
    pub end: Option<EndState>,
    pub output: OutputLog,
    /// Set once a stop was asked for: the reason the job will end with.
    pub(super) stop_reason: Option<EndReason>,
    pub(super) pidfd: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    /// Bytes the job wrote before it ended that were still in its pipes after its reap, by stream (stdout,
    /// stderr): the spool writer had no room for them yet. Its end is told once they are taken (see
    /// [`Self::has_settled`]).
    pub(super) owed: [u64; 2],
    /// The init's report pipe (isolated jobs): first whether the command started, then its exact exit status.
    pub(super) control: Option<OwnedFd>,
    /// Set until the job reports that its command started; such a job is not visible to clients yet.
    pub(super) starting: Option<Starting>,
    /// The limits the job's cgroup enforces (`None`: the host cannot enforce limits).
    pub(super) limits: Option<Limits>,
    /// The job's cgroup while it runs; its final usage once it ended.
    pub(super) cgroup: Option<JobCgroup>,
    pub(super) final_usage: Option<FinalUsage>,
    pub(super) waiters: Vec<Waker>,
    /// A working directory the server made for the job, removed with it.
    pub(super) own_work_dir: Option<OwnWorkDir>,
    /// The user an isolated job runs as, given back when its files go.
    pub(super) run_as: Option<crate::isolation::RunAs>,
}

impl Job {
    /// A job a previous server ran, from its record and its output read back: ended, with no process.
    pub(super) fn restored(record: JobRecord, output: OutputLog) -> Job {
        Job {
            key: record.key,
            id: record.id,
            owner: record.owner,
            command: record.command,
            args: record.args,
            pid: record.pid,
            started_at: record.started_at,
            end: record.end,
            output,
            stop_reason: None,
            pidfd: None,
            stdout: None,
            stderr: None,
            owed: [0; 2],
            control: None,
            starting: None,
            limits: record.limits,
            cgroup: None,
            final_usage: record.final_usage,
            waiters: Vec::new(),
            own_work_dir: None,
            run_as: None,
        }
    }

    /// What the job's record on disk holds now.
    pub(super) fn record(&self) -> JobRecord {
        JobRecord {
            id: self.id,
            key: self.key,
            owner: self.owner.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            pid: self.pid,
            started_at: self.started_at,
            end: self.end,
            limits: self.limits,
            final_usage: self.final_usage,
            output_end: self.output.is_finished().then(|| self.output.end()),
            started: !self.is_starting(),
        }
    }

    /// True until the job reports that its command started (see [`JobTable::settle_start`]).
    ///
    /// [`JobTable::settle_start`]: super::JobTable::settle_start
    pub fn is_starting(&self) -> bool {
        self.starting.is_some()
    }

    pub fn is_ended(&self) -> bool {
        self.end.is_some()
    }

    /// True once the job has ended and everything it wrote before is counted in its output: what WaitJob and
    /// StopJob wait for, so that their answer reports the job's whole output.
    pub fn has_settled(&self) -> bool {
        self.is_ended() && self.owed == [0; 2]
    }

    /// True once the job has ended and all of its output has been read from its pipes and written to the spool.
    pub fn is_complete(&self) -> bool {
        self.is_ended() && self.output.is_complete()
    }

    pub fn state(&self) -> JobState {
        match (&self.end, self.stop_reason) {
            (Some(EndState { status: Some(ExitStatus::Exited(_)), .. }), _) => JobState::Exited,
            // A job lost with its server was killed with it (its init's parent-death signal).
            (Some(EndState { status: Some(ExitStatus::Signaled(_)) | None, .. }), _) => JobState::Killed,
            (None, Some(_)) => JobState::Stopping,
            (None, None) => JobState::Running,
        }
    }

    /// The limits the job's cgroup enforces; `None` where the host cannot enforce limits.
    pub fn limits(&self) -> Option<Limits> {
        self.limits
    }

    /// What the job used: the cgroup's last word once it ended, its counters now while it runs; `None` without
    /// a cgroup.
    pub fn usage(&self) -> Option<Usage> {
        match (&self.final_usage, &self.cgroup) {
            (Some(last), _) => Some(last.usage),
            (None, Some(cgroup)) => Some(cgroup.usage()),
            (None, None) => None,
        }
    }

    /// A reader of the job's output from `offset`. An offset past the end is refused once no more output can
    /// come; before that, the reader waits there for it.
    pub fn read_output_from(&self, offset: u64) -> Result<OutputCursor, JobError> {
        if offset > self.output.end() && self.is_complete() {
            return Err(JobError::OffsetPastEnd { offset, end: self.output.end() });
        }
        Ok(OutputCursor::new(offset))
    }

    /// Remembers a call to wake when the job ends.
    pub fn wait_for_end(&mut self, waker: &Waker) {
        crate::reactor::remember_waker(&mut self.waiters, waker);
    }

    /// Remembers a call to wake when the job's init reports (or fails to report) that the command started.
    pub fn wait_for_start(&mut self, waker: &Waker) {
        crate::reactor::remember_waker(&mut self.waiters, waker);
    }

    /// The read end of the job's pipe for `stream`, while it is open.
    pub(super) fn pipe(&self, stream: Stream) -> Option<RawFd> {
        let pipe = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        pipe.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Closes the job's pipe for `stream` (which also removes it from the reactor's epoll set); true once both
    /// are closed.
    pub(super) fn close_pipe(&mut self, stream: Stream) -> bool {
        match stream {
            Stream::Stdout => self.stdout = None,
            Stream::Stderr => self.stderr = None,
        }
        self.stdout.is_none() && self.stderr.is_none()
    }

    /// Asks the job to stop: SIGTERM to its process group, now, the first time. False if it had already ended.
    pub(super) fn request_stop(&mut self, reason: EndReason) -> bool {
        if self.is_ended() {
            return false;
        }
        if self.stop_reason.is_none() {
            self.stop_reason = Some(reason);
            log::info!("job {} stopping ({reason:?}): SIGTERM to process group {}", self.id, self.pid);
            if let Err(err) = sys::kill_process_group(self.pid, libc::SIGTERM) {
                log::warn!("cannot signal job {}: {err}", self.id);
            }
        }
        true
    }

    /// Ends a grace period: SIGKILL to the job's whole process group and its cgroup.
    pub(super) fn kill(&self) {
        if self.is_ended() {
            return;
        }
        log::info!("job {} did not stop in its grace period: SIGKILL to process group {}", self.id, self.pid);
        if let Err(err) = sys::kill_process_group(self.pid, libc::SIGKILL) {
            log::warn!("cannot kill job {}: {err}", self.id);
        }
        // The cgroup also catches processes that left the process group or forked while the kill ran.
        if let Some(Err(err)) = self.cgroup.as_ref().map(JobCgroup::kill) {
            log::warn!("cannot kill job {}'s cgroup: {err}", self.id);
        }
    }

    /// If the job's top process has exited: kills whatever it left in its process group (while the unreaped
    /// leader still reserves the group's id), reaps it, takes its cgroup's last word and records how it ended.
    /// True if the job ended now; safe to call at any time.
    pub(super) fn reap(&mut self, cgroups: Option<&mut CgroupRoot>) -> bool {
        let Some(pidfd) = self.pidfd.as_ref() else { return false };
        match sys::wait_pidfd(pidfd.as_raw_fd(), sys::Wait::PeekIfEnded) {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(err) => {
                log::error!("cannot wait for job {}: {err}", self.id);
                return false;
            }
        }
        if let Err(err) = sys::kill_process_group(self.pid, libc::SIGKILL) {
            log::warn!("cannot kill what job {} left behind: {err}", self.id);
        }
        let status = match sys::wait_pidfd(pidfd.as_raw_fd(), sys::Wait::ReapIfEnded) {
            Ok(Some(status)) => status,
            Ok(None) => return false,
            Err(err) => {
                log::error!("cannot reap job {}: {err}", self.id);
                return false;
            }
        };
        self.pidfd = None;
        // An isolated job's top process is the init: the command's own status comes over the report pipe.
        // Without one (the init was killed at the end of a stop, or by the OOM killer) the init's status stands.
        let status = match self.control.take().map(|fd| isolation::read_report(fd.as_raw_fd(), 0)) {
            Some(Ok(Some(InitReport::Ended(command_status)))) => command_status,
            _ => status,
        };
        if let (Some(cgroups), Some(cgroup)) = (cgroups, self.cgroup.take()) {
            self.final_usage = Some(cgroups.remove_job(cgroup));
        }
        let oom_killed = self.final_usage.is_some_and(|u| u.oom_killed) && matches!(status, ExitStatus::Signaled(_));
        let reason = match (oom_killed, self.stop_reason, status) {
            (true, _, _) => EndReason::OomKilled,
            (false, Some(reason), _) => reason,
            (false, None, ExitStatus::Exited(_)) => EndReason::Exited,
            (false, None, ExitStatus::Signaled(_)) => EndReason::Signaled,
        };
        self.end = Some(EndState { status: Some(status), reason, at: SystemTime::now() });
        log::info!("job {} ended: {status:?}, {reason:?}", self.id);
        true
    }

    /// Wakes every call waiting for the job's start or end, and its output's readers (who finish once it is
    /// complete).
    pub(super) fn wake_waiters(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
        self.output.wake_readers();
    }
}
