//! [`JobCgroup`]: one job's cgroup, `<root>/jobs/<job-id>`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::{cpu, io, memory, open_dir, pids, write, CgroupError, Limits, Usage, KILL};

/// A job's cgroup directory.
#[derive(Debug)]
pub struct JobCgroup {
    path: PathBuf,
}

/// What a job's cgroup said last, kept after it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalUsage {
    pub usage: Usage,
    pub oom_killed: bool,
}

impl JobCgroup {
    pub(super) fn new(path: PathBuf) -> JobCgroup {
        JobCgroup { path }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory for `CLONE_INTO_CGROUP`; the caller closes it once the job's process exists (a
    /// descriptor per running job would count against the server's open-file limit for nothing).
    pub fn open(&self) -> Result<OwnedFd, CgroupError> {
        open_dir(&self.path)
    }

    /// Writes every limit but the CPU's (see [`JobCgroup::limit_cpu`]), before the job's first process is
    /// created in the cgroup.
    pub(super) fn write_limits(&self, limits: &Limits, io_devices: &[String]) -> Result<(), CgroupError> {
        memory::limit(&self.path, limits.memory_bytes)?;
        pids::limit(&self.path, limits.max_pids)?;
        io::limit(&self.path, limits, io_devices)
    }

    /// Writes the CPU limit. The server does this right after the spawn returns, never before: a spawn that
    /// held the loop until its child's exec (a `vfork`) would hold it for several of the quota's 100 ms periods
    /// under a small quota. The init's setup and the command run capped.
    pub fn limit_cpu(&self, limits: &Limits) -> Result<(), CgroupError> {
        cpu::limit(&self.path, limits.cpu_millicores)
    }

    /// Usage so far: CPU time, peak memory, bytes read and written.
    pub fn usage(&self) -> Usage {
        let (io_read_bytes, io_write_bytes) = io::bytes(&self.path);
        Usage {
            cpu_usec: cpu::usage_usec(&self.path).unwrap_or(0),
            memory_peak_bytes: memory::peak_bytes(&self.path).unwrap_or(0),
            io_read_bytes,
            io_write_bytes,
        }
    }

    /// The usage to keep once the job ended, and whether the OOM killer ended it.
    pub(super) fn final_usage(&self) -> FinalUsage {
        FinalUsage { usage: self.usage(), oom_killed: memory::oom_kills(&self.path) > 0 }
    }

    /// Kills every process in the cgroup at once (`cgroup.kill`), forks racing the kill included.
    pub fn kill(&self) -> Result<(), CgroupError> {
        write(&self.path.join(KILL), "1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;
    use std::fs;

    #[test]
    fn limits_are_written_in_the_kernels_formats() {
        // A plain directory stands in for the cgroup: each file then holds the last value written.
        let scratch = ScratchDir::new("cgroup");
        let cgroup = JobCgroup::new(scratch.path().to_path_buf());
        let limits = Limits {
            cpu_millicores: 200,
            memory_bytes: 32 << 20,
            io_write_bps: 1 << 20,
            io_read_iops: 50,
            max_pids: 10,
            ..Default::default()
        };
        fs::write(scratch.join("memory.swap.max"), "max").unwrap();
        cgroup.write_limits(&limits, &["259:0".to_string()]).unwrap();
        assert!(!scratch.join("cpu.max").exists(), "the CPU limit is written once the spawn returned");
        cgroup.limit_cpu(&limits).unwrap();
        let file = |name: &str| fs::read_to_string(scratch.join(name)).unwrap();
        assert_eq!(file("cpu.max"), "20000 100000");
        assert_eq!(file("memory.max"), "33554432");
        assert_eq!(file("memory.swap.max"), "0");
        assert_eq!(file("memory.oom.group"), "1");
        assert_eq!(file("pids.max"), "10");
        assert_eq!(file("io.max"), "259:0 wbps=1048576 riops=50");

        fs::write(scratch.join("cpu.stat"), "usage_usec 600000\nuser_usec 1\n").unwrap();
        fs::write(scratch.join("memory.peak"), "33554432\n").unwrap();
        fs::write(scratch.join("io.stat"), "259:0 rbytes=10 wbytes=4194304 rios=1 wios=4\n8:0 rbytes=5 wbytes=0\n")
            .unwrap();
        fs::write(scratch.join("memory.events"), "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(
            cgroup.final_usage(),
            FinalUsage {
                usage: Usage {
                    cpu_usec: 600000,
                    memory_peak_bytes: 32 << 20,
                    io_read_bytes: 15,
                    io_write_bytes: 4 << 20
                },
                oom_killed: true
            }
        );
    }

    #[test]
    fn an_unlimited_job_writes_only_the_oom_group() {
        let scratch = ScratchDir::new("cgroup-unlimited");
        let cgroup = JobCgroup::new(scratch.path().to_path_buf());
        cgroup.write_limits(&Limits::default(), &["259:0".to_string()]).unwrap();
        cgroup.limit_cpu(&Limits::default()).unwrap();
        let names: Vec<String> =
            fs::read_dir(scratch.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["memory.oom.group"]);
    }
}
