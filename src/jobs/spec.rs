//! Turning a [`StartRequest`] into a validated [`JobSpec`], and a spec into what the spawn call needs.
//!
//! Everything a client sends is checked here, before anything is created, so a bad request changes nothing.

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::error::clip;
use super::JobError;
use crate::cgroup::Limits;

/// PATH a job gets when its request sets none: the usual system directories, never the server's own PATH.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Limits on request sizes that keep one request from costing the server much: argv and env beyond these are
/// far past what `execve` accepts anyway (`ARG_MAX` is 2 MiB on Linux).
const MAX_ARGS: usize = 16 * 1024;
const MAX_ENV: usize = 16 * 1024;

/// Limits on the job's PATH, which bound the search for its executable: each directory costs one path
/// lookup, which symlink chains can make slow. Generous next to real PATHs (a dozen or so directories, a few
/// hundred bytes; Nix profiles reach a few dozen).
pub const MAX_PATH_DIRS: usize = 64;
pub const MAX_PATH_BYTES: usize = 4096;

/// Smallest limits that make sense; below them a job cannot start (and a client probably meant a bigger unit).
const MIN_CPU_MILLICORES: u32 = 10;
const MIN_MEMORY_BYTES: u64 = 1024 * 1024;
const MIN_IO_BPS: u64 = 4096;
/// The job's init counts against `pids.max` too: below 2 the command itself could not start.
const MIN_PIDS: u32 = 2;

/// A start request as the client sent it: nothing in it is checked yet.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Empty: a fresh directory under the state dir.
    pub working_dir: String,
    /// The limits asked for; 0 fields take the server's defaults.
    pub limits: Limits,
}

/// A start request that passed validation.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// `None`: a fresh directory under the state dir.
    pub working_dir: Option<PathBuf>,
    /// The limits asked for; 0 fields take the server's defaults.
    pub limits: Limits,
}

impl JobSpec {
    /// Checks every field of `request`, and that what the job would keep of it (command, args, env and working
    /// directory together) is at most `max_bytes`.
    pub fn validate(request: StartRequest, max_bytes: usize) -> Result<JobSpec, JobError> {
        let invalid = |m: String| Err(JobError::InvalidSpec(m));
        let size = request.command.len()
            + request.args.iter().chain(&request.env).map(String::len).sum::<usize>()
            + request.working_dir.len();
        if size > max_bytes {
            return invalid(format!(
                "the request's command, args, env and working_dir take {size} bytes, more than the server's limit \
                 of {max_bytes} (--max-job-request)"
            ));
        }
        if request.command.is_empty() {
            return invalid("command is empty: give an absolute path or a name to look up in PATH".into());
        }
        check_no_nul("command", &request.command)?;
        if request.args.len() > MAX_ARGS {
            return invalid(format!("{} args is more than the limit of {MAX_ARGS}", request.args.len()));
        }
        for (i, arg) in request.args.iter().enumerate() {
            check_no_nul(&format!("args[{i}]"), arg)?;
        }
        if request.env.len() > MAX_ENV {
            return invalid(format!("{} env entries is more than the limit of {MAX_ENV}", request.env.len()));
        }
        for (i, entry) in request.env.iter().enumerate() {
            check_no_nul(&format!("env[{i}]"), entry)?;
            match entry.split_once('=') {
                None => return invalid(format!("env[{i}] {:?} has no '=': write NAME=value", clip(entry))),
                Some(("", _)) => {
                    return invalid(format!("env[{i}] {:?} has an empty name: write NAME=value", clip(entry)))
                }
                Some(("PATH", path)) => check_path(i, path)?,
                Some(_) => {}
            }
        }
        let working_dir = if request.working_dir.is_empty() {
            None
        } else {
            check_no_nul("working_dir", &request.working_dir)?;
            let dir = PathBuf::from(&request.working_dir);
            if !dir.is_absolute() {
                return invalid(format!("working_dir {:?} is not absolute", clip(&request.working_dir)));
            }
            Some(dir)
        };
        check_limits(&request.limits)?;
        Ok(JobSpec {
            command: request.command,
            args: request.args,
            env: request.env,
            working_dir,
            limits: request.limits,
        })
    }

    /// The job's environment: exactly the requested entries, plus a default PATH if they set none.
    pub fn environment(&self) -> Vec<String> {
        let mut env = self.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        env
    }

    /// The paths `execve` will try, in order: the command itself if it contains a `/`, otherwise the command in
    /// each directory of the job's PATH (the last PATH entry wins if the request repeats it, as a shell would).
    pub fn exec_candidates(&self) -> Vec<PathBuf> {
        if self.command.contains('/') {
            return vec![PathBuf::from(&self.command)];
        }
        let env = self.environment();
        let path = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
        path.split(':').filter(|dir| !dir.is_empty()).map(|dir| Path::new(dir).join(&self.command)).collect()
    }
}

/// Checks the PATH of `env[i]` against [`MAX_PATH_BYTES`] and [`MAX_PATH_DIRS`].
fn check_path(i: usize, path: &str) -> Result<(), JobError> {
    let dirs = path.split(':').filter(|dir| !dir.is_empty()).count();
    if path.len() > MAX_PATH_BYTES || dirs > MAX_PATH_DIRS {
        return Err(JobError::InvalidSpec(format!(
            "env[{i}] PATH has {dirs} directories in {} bytes, more than the limit of {MAX_PATH_DIRS} directories \
             or {MAX_PATH_BYTES} bytes: name the command by its absolute path, or shorten PATH",
            path.len()
        )));
    }
    Ok(())
}

fn check_no_nul(field: &str, value: &str) -> Result<(), JobError> {
    if value.contains('\0') {
        return Err(JobError::InvalidSpec(format!("{field} contains a NUL byte")));
    }
    Ok(())
}

fn check_limits(limits: &Limits) -> Result<(), JobError> {
    let too_small = |field: &str, value: u64, min: u64, unit: &str| {
        if value != 0 && value < min {
            Err(JobError::InvalidSpec(format!(
                "limits.{field} {value} is below the minimum of {min} {unit} (0 means the server default)"
            )))
        } else {
            Ok(())
        }
    };
    too_small("cpu_millicores", limits.cpu_millicores.into(), MIN_CPU_MILLICORES.into(), "millicores")?;
    too_small("memory_bytes", limits.memory_bytes, MIN_MEMORY_BYTES, "bytes")?;
    too_small("io_read_bps", limits.io_read_bps, MIN_IO_BPS, "bytes/s")?;
    too_small("io_write_bps", limits.io_write_bps, MIN_IO_BPS, "bytes/s")?;
    too_small("max_pids", limits.max_pids.into(), MIN_PIDS.into(), "processes (the job's init counts)")?;
    Ok(())
}

/// Converts to a C string; callers have already rejected NUL bytes.
pub fn c_string(value: impl Into<Vec<u8>>) -> CString {
    #[allow(clippy::expect_used, reason = "validation refused NUL bytes in every value a request brings")]
    CString::new(value).expect("validated: no NUL bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 64 * 1024;

    fn request(command: &str) -> StartRequest {
        StartRequest { command: command.into(), ..Default::default() }
    }

    fn invalid(request: StartRequest) -> String {
        match JobSpec::validate(request, LIMIT) {
            Err(JobError::InvalidSpec(m)) => m,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_input_with_the_field_named() {
        assert!(invalid(request("")).contains("command is empty"));
        assert!(invalid(request("a\0b")).contains("command contains a NUL"));
        let mut r = request("ls");
        r.args = vec!["ok".into(), "b\0d".into()];
        assert!(invalid(r).contains("args[1]"));
        let mut r = request("ls");
        r.env = vec!["NOEQUALS".into()];
        assert!(invalid(r).contains("has no '='"));
        let mut r = request("ls");
        r.env = vec!["=value".into()];
        assert!(invalid(r).contains("empty name"));
        let mut r = request("ls");
        r.working_dir = "relative/dir".into();
        assert!(invalid(r).contains("not absolute"));
        let mut r = request("ls");
        r.limits = Limits { memory_bytes: 100, ..Default::default() };
        assert!(invalid(r).contains("memory_bytes 100 is below the minimum"));
        let mut r = request("ls");
        r.args = vec!["a".repeat(LIMIT / 2), "b".repeat(LIMIT / 2)];
        assert!(invalid(r).contains(&format!("take {} bytes, more than the server's limit of {LIMIT}", LIMIT + 2)));
        let mut r = request("ls");
        r.env = vec![format!("X={}", "v".repeat(LIMIT - 10))];
        assert!(JobSpec::validate(r, LIMIT).is_ok(), "just under the limit");
    }

    #[test]
    fn environment_gets_default_path_only_when_missing() {
        let spec = JobSpec::validate(request("ls"), LIMIT).unwrap();
        assert_eq!(spec.environment(), vec![format!("PATH={DEFAULT_PATH}")]);
        let mut r = request("ls");
        r.env = vec!["PATH=/opt/bin".into(), "A=b=c".into()];
        let spec = JobSpec::validate(r, LIMIT).unwrap();
        assert_eq!(spec.environment(), vec!["PATH=/opt/bin".to_string(), "A=b=c".to_string()]);
        assert_eq!(spec.exec_candidates(), vec![PathBuf::from("/opt/bin/ls")]);
    }

    #[test]
    fn path_is_capped_in_directories_and_bytes() {
        let with_path = |path: String| {
            let mut r = request("tool");
            r.env = vec!["HOME=/root".into(), format!("PATH={path}")];
            JobSpec::validate(r, LIMIT).map(|_| ()).map_err(|e| e.to_string())
        };
        let dirs = |n: usize| (0..n).map(|i| format!("/d{i}")).collect::<Vec<_>>().join(":");
        assert_eq!(with_path(dirs(MAX_PATH_DIRS)), Ok(()));
        let refused = with_path(dirs(MAX_PATH_DIRS + 1)).unwrap_err();
        assert!(refused.contains("env[1] PATH has 65 directories") && refused.contains("absolute path"), "{refused}");
        // Empty entries cost no lookup and are not counted; bytes are.
        assert_eq!(with_path(":".repeat(MAX_PATH_BYTES - 1)), Ok(()));
        assert!(with_path("/".repeat(MAX_PATH_BYTES + 1)).unwrap_err().contains("4097 bytes"));
    }

    #[test]
    fn candidates_follow_path_or_use_a_path_as_is() {
        let mut r = request("tool");
        r.env = vec!["PATH=/a::/b".into()];
        let spec = JobSpec::validate(r, LIMIT).unwrap();
        assert_eq!(spec.exec_candidates(), vec![PathBuf::from("/a/tool"), PathBuf::from("/b/tool")]);
        let spec = JobSpec::validate(request("./x/tool"), LIMIT).unwrap();
        assert_eq!(spec.exec_candidates(), vec![PathBuf::from("./x/tool")]);
    }
}
