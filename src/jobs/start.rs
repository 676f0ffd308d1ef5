//! Starting a job is several steps that each create something (its output log, its working directory, its
//! cgroup, its process) and any of which can fail. [`HalfStarted`] holds what the steps made so far; dropped
//! before it is [`done`](HalfStarted::done), it takes all of it back, so a failed start leaves nothing behind
//! whichever step failed. What a start makes on the disk was made ahead by the segment mover where it could be
//! (the job's directories and first segment file), and what it takes back goes to the mover and the janitor
//! (`Spool::dispose`), so a start waits for the disk only when nothing was made ahead.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::launch::{Launched, Launcher, Sandbox};
use super::spool::{OutputLog, Spool};
use super::{JobError, JobId, JobSpec};
use crate::cgroup::{CgroupRoot, JobCgroup, Limits};
use crate::isolation::{Isolation, RunAs};
use crate::sys;

/// A job part way through starting.
pub(super) struct HalfStarted<'a> {
    id: JobId,
    spool: &'a mut Spool,
    cgroups: Option<&'a mut CgroupRoot>,
    output: Option<OutputLog>,
    own_work_dir: Option<OwnWorkDir>,
    cgroup: Option<JobCgroup>,
    process: Option<Launched>,
}

/// Everything a started job was given.
pub(super) struct Started {
    pub output: OutputLog,
    pub own_work_dir: Option<OwnWorkDir>,
    pub cgroup: Option<JobCgroup>,
    pub process: Launched,
}

impl<'a> HalfStarted<'a> {
    pub fn new(id: JobId, spool: &'a mut Spool, cgroups: Option<&'a mut CgroupRoot>) -> Self {
        HalfStarted { id, spool, cgroups, output: None, own_work_dir: None, cgroup: None, process: None }
    }

    /// Creates the job's output log.
    pub fn create_output(&mut self) -> Result<(), JobError> {
        let log = self.spool.create_log(&self.id.to_string());
        self.output = Some(log.map_err(|e| JobError::system("cannot create the job's output spool", e))?);
        Ok(())
    }

    /// Takes the job's output log, whose directory and first segment file, `first_segment`, the segment mover
    /// made ahead of the start.
    pub fn adopt_output(&mut self, first_segment: fs::File) {
        self.output = Some(self.spool.adopt_log(&self.id.to_string(), first_segment));
    }

    /// Takes the working directory the segment mover made for the job under `parent`, and returns it. It is
    /// private to the server: an isolated job's init gives it to the job's user (`Sandbox::own_working_dir`).
    pub fn adopt_work_dir(&mut self, parent: &Path) -> PathBuf {
        let dir = OwnWorkDir(parent.join(self.id.to_string()));
        self.own_work_dir.insert(dir).path().to_path_buf()
    }

    /// Creates a fresh working directory for the job under `parent`, private to the server as
    /// [`Self::adopt_work_dir`]'s, and returns it.
    pub fn create_work_dir(&mut self, parent: &Path) -> Result<PathBuf, JobError> {
        let dir = OwnWorkDir::create(parent.join(self.id.to_string()))
            .map_err(|e| JobError::system("cannot create the job's working directory", e))?;
        Ok(self.own_work_dir.insert(dir).path().to_path_buf())
    }

    /// Creates the job's cgroup with `limits` written (all but the CPU's: see [`Self::limit_cpu`]).
    pub fn create_cgroup(&mut self, limits: &Limits) -> Result<(), JobError> {
        // Limits are resolved only where there is a cgroup root; without one, refuse rather than run unlimited.
        let Some(cgroups) = self.cgroups.as_deref() else {
            return Err(JobError::System("limits were resolved without a cgroup subtree to enforce them".into()));
        };
        let cgroup = cgroups.create_job(&self.id.to_string(), limits);
        self.cgroup = Some(cgroup.map_err(|e| JobError::system("cannot create the job's cgroup", e))?);
        Ok(())
    }

    /// Starts the job's process (see [`Launcher::launch`]), as `run_as` inside `isolation` when there is one.
    pub fn launch(
        &mut self,
        launcher: &mut Launcher,
        spec: &JobSpec,
        working_dir: &Path,
        isolation: Option<(&Isolation, RunAs)>,
        limits: Option<&Limits>,
    ) -> Result<(), JobError> {
        let hostname = self.id.hostname();
        let sandbox = isolation.map(|(isolation, run_as)| Sandbox {
            isolation,
            run_as,
            memory_limit: limits.map(|l| l.memory_bytes).filter(|&bytes| bytes > 0),
            // A per-user count is a per-job count only when the user is the job's own. One less than pids: the init
            // joins the count once it gives up root, after the command started, and pids.max counts it too (a
            // job with a cgroup has a forked init, created in it).
            max_processes: limits
                .map(|l| l.max_pids)
                .filter(|&pids| pids > 0 && isolation.users.one_per_job())
                .map(|pids| pids - 1),
            own_working_dir: self.own_work_dir.as_ref().is_some_and(|own| own.path() == working_dir),
        });
        self.process = Some(launcher.launch(spec, &hostname, working_dir, sandbox, self.cgroup.as_ref())?);
        Ok(())
    }

    /// Caps the job's CPU, once its process exists (see `JobCgroup::limit_cpu` for why not before).
    pub fn limit_cpu(&mut self, limits: &Limits) -> Result<(), JobError> {
        let Some(cgroup) = &self.cgroup else { return Ok(()) };
        cgroup.limit_cpu(limits).map_err(|e| JobError::system("cannot limit the job's CPU", e))
    }

    /// The start succeeded: hands over what the job was given, to be released with the job.
    pub fn done(mut self) -> Started {
        Started {
            output: self.output.take().expect("create_output came first"),
            own_work_dir: self.own_work_dir.take(),
            cgroup: self.cgroup.take(),
            process: self.process.take().expect("launch came first"),
        }
    }
}

impl Drop for HalfStarted<'_> {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            let _ = sys::signal_process(process.pid, libc::SIGKILL);
            let _ = sys::wait_pidfd(process.pidfd.as_raw_fd(), sys::Wait::Reap);
        }
        if let (Some(cgroups), Some(cgroup)) = (self.cgroups.as_deref_mut(), self.cgroup.take()) {
            cgroups.remove_job(cgroup);
        }
        if let Some(dir) = self.own_work_dir.take() {
            self.spool.dispose(&dir.into_path());
        }
        if let Some(mut output) = self.output.take() {
            self.spool.remove(&mut output);
        }
    }
}

/// A working directory the server made for a job: handed to the spool to remove with [`OwnWorkDir::into_path`]
/// (the start failed, the job was removed, the server is stopping); dropped otherwise, it removes itself, with
/// whatever the job left in it, on the spot.
#[derive(Debug)]
pub(super) struct OwnWorkDir(PathBuf);

impl OwnWorkDir {
    /// Makes `dir`, private to the server.
    fn create(dir: PathBuf) -> io::Result<OwnWorkDir> {
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(OwnWorkDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory, no longer removed when this is dropped: for a caller that removes it another way.
    pub fn into_path(self) -> PathBuf {
        let mut kept = std::mem::ManuallyDrop::new(self);
        std::mem::take(&mut kept.0)
    }
}

impl Drop for OwnWorkDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            log::warn!("cannot remove working directory {}: {err}", self.0.display());
        }
    }
}
