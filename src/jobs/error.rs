//! What can go wrong with a job request, in the job domain's own terms and phrased for the person who sent it.
//! Which gRPC status each becomes is the service's choice, made in one place (`server::wire`).

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most bytes of a client's own input an error message repeats: enough to recognise it, too few for a request
/// to make the server write megabytes back.
pub const QUOTE_LIMIT: usize = 200;

/// `text` as an error message may repeat it: whole up to [`QUOTE_LIMIT`] bytes, else its first bytes (cut at a
/// character boundary) and how long it was.
pub fn clip(text: &str) -> Cow<'_, str> {
    if text.len() <= QUOTE_LIMIT {
        return Cow::Borrowed(text);
    }
    let mut end = QUOTE_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

fn clip_path(path: &Path) -> String {
    clip(&path.to_string_lossy()).into_owned()
}

/// A job request that cannot be carried out.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobError {
    /// A field of a start request is malformed; the message names the field and what is wrong with it.
    InvalidSpec(String),
    /// A requested limit is above the server's maximum for it, which `flag` sets.
    LimitAboveMaximum { field: &'static str, asked: u64, max: u64, flag: &'static str },
    /// A job id that is not a UUID.
    MalformedId(String),
    /// No such job, or one the caller may not see (the two are deliberately indistinguishable).
    UnknownJob(String),
    /// The command names no executable in the job's PATH.
    ExecutableNotFound(String),
    /// The job's user may not execute the command.
    ExecutionDenied { command: String, reason: io::Error },
    /// The command exists but cannot be executed (not an executable format, a directory, ...).
    NotExecutable { command: String, reason: io::Error },
    /// The job's user may not enter the working directory.
    WorkingDirDenied { dir: PathBuf, reason: io::Error },
    /// The working directory does not exist or is not a directory.
    WorkingDirUnusable { dir: PathBuf, reason: io::Error },
    /// The request sets limits and this host cannot enforce any; the reason says why.
    LimitsUnavailable(String),
    /// The request sets io limits and the server knows no block device to apply them to.
    NoIoDevice,
    /// The owner already runs `--max-running-per-client` jobs.
    TooManyRunning { owner: String, running: usize },
    /// The table holds `--max-jobs` jobs and none has ended, so none can be evicted.
    TooManyJobs { retained: usize },
    /// Every id of `--run-as-range` belongs to a job whose files are still kept.
    NoFreeUser,
    /// Only an ended job can be removed.
    StillRunning(String),
    /// An output offset past the end of a finished job's output.
    OffsetPastEnd { offset: u64, end: u64 },
    /// The job did not report within this long that its command started; it was killed.
    StartTimedOut(Duration),
    /// The job's directories were not made within this long (the state directory's disk stalls): nothing was
    /// started.
    StateDirStalled(Duration),
    /// The server is shutting down and takes no new jobs.
    ShuttingDown,
    /// The server could not do its part (a system call failed where the request was not at fault); the message
    /// says what it was doing.
    System(String),
}

impl JobError {
    /// A failed system call, with what the server was doing.
    pub(super) fn system(what: &str, err: impl fmt::Display) -> JobError {
        JobError::System(format!("{what}: {err}"))
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::InvalidSpec(message) | JobError::System(message) => f.write_str(message),
            JobError::LimitAboveMaximum { field, asked, max, flag } => {
                write!(f, "limits.{field} {asked} is above the server's maximum of {max} ({flag})")
            }
            JobError::MalformedId(id) => {
                write!(f, "job_id {:?} is not a UUID (like 123e4567-e89b-42d3-a456-426614174000)", clip(id))
            }
            JobError::UnknownJob(id) => write!(f, "no job {id}"),
            JobError::StillRunning(id) => {
                write!(f, "job {id} is still running: stop it first (StopJob; `runnel client stop`), then remove it")
            }
            JobError::ExecutableNotFound(name) => write!(f, "executable not found: {}", clip(name)),
            JobError::ExecutionDenied { command, reason } | JobError::NotExecutable { command, reason } => {
                write!(f, "cannot execute {}: {reason}", clip(command))
            }
            JobError::WorkingDirDenied { dir, reason } => {
                write!(f, "cannot enter working directory {}: {reason}", clip_path(dir))
            }
            JobError::WorkingDirUnusable { dir, reason } => {
                write!(f, "working directory {} is not usable: {reason}", clip_path(dir))
            }
            JobError::LimitsUnavailable(reason) => {
                write!(f, "resource limits are unavailable on this host: {reason}")
            }
            JobError::NoIoDevice => f.write_str(
                "io limits need a block device, and this host has none the server could find: start the server \
                 with --io-device MAJ:MIN",
            ),
            JobError::TooManyRunning { owner, running } => write!(
                f,
                "{} already has {running} running jobs, the server's limit (--max-running-per-client); wait for or \
                 stop some",
                clip(owner)
            ),
            JobError::NoFreeUser => f.write_str(
                "every user id of --run-as-range belongs to a job still retained: wait for jobs to be evicted, or \
                 widen the range",
            ),
            JobError::TooManyJobs { retained } => {
                write!(f, "the server retains {retained} jobs, its limit (--max-jobs), and none has ended yet")
            }
            JobError::OffsetPastEnd { offset, end } => {
                write!(f, "offset {offset} is past the end of the job's output ({end} bytes)")
            }
            JobError::StartTimedOut(after) => write!(
                f,
                "the command did not start within {} s, so the job was killed: is its working directory or a PATH \
                 directory on a slow or hung file system?",
                after.as_secs()
            ),
            JobError::StateDirStalled(after) => write!(
                f,
                "the job's directories were not made within {} s, so nothing was started: the disk of the server's \
                 state directory is stalled or failing; try again later",
                after.as_secs()
            ),
            JobError::ShuttingDown => f.write_str("the server is shutting down and accepts no new work"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_input_is_quoted_short() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(300);
        let clipped = clip(&long);
        assert!(clipped.len() < QUOTE_LIMIT + 20, "{}", clipped.len());
        assert!(clipped.starts_with("éé") && clipped.ends_with("… (600 bytes)"), "{clipped}");
        let message = JobError::MalformedId("x".repeat(4 << 20)).to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        let message = JobError::ExecutableNotFound("y".repeat(1 << 20)).to_string();
        assert!(message.len() < 300 && message.contains("(1048576 bytes)"), "{message}");
    }
}
