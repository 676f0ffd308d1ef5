//! What can go wrong with a job request, phrased for the person who sent it.

use std::fmt;

/// A job request that cannot be carried out. The gRPC status for each is chosen in `server::status`.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobError {
    /// A request field is malformed; the message names the field and what is wrong.
    InvalidArgument(String),
    /// No such job, or one the caller may not see (the two are deliberately indistinguishable).
    NotFound(String),
    /// The command names no executable in the job's PATH.
    ExecutableNotFound(String),
    /// The executable exists but may not be executed.
    PermissionDenied(String),
    /// The host or the request's circumstances forbid it now (missing working directory, limits unavailable).
    FailedPrecondition(String),
    /// A server-side quota is full.
    ResourceExhausted(String),
    /// A requested output offset lies past the end of a finished job's output.
    OutOfRange(String),
    /// The server is shutting down and takes no new jobs.
    ShuttingDown,
    /// A system call failed where the request was not at fault.
    Internal(String),
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::InvalidArgument(m)
            | JobError::NotFound(m)
            | JobError::PermissionDenied(m)
            | JobError::FailedPrecondition(m)
            | JobError::ResourceExhausted(m)
            | JobError::OutOfRange(m)
            | JobError::Internal(m) => f.write_str(m),
            JobError::ExecutableNotFound(name) => write!(f, "executable not found: {name}"),
            JobError::ShuttingDown => f.write_str("the server is shutting down and accepts no new work"),
        }
    }
}
