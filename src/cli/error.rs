//! The one error type every subcommand returns, and the exit code and one-line message it maps to.
//!
//! Every failure prints as `error: CODE: message` on stderr, where CODE is a gRPC status name, so a script can
//! match on it whether the failure came from the server or from the client's own checks. Usage errors exit 2,
//! everything else exits 1.

use std::fmt;

use crate::grpc::Code;

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The command line itself is wrong (unknown flag, missing value, bad number). Exit 2.
    Usage(String),
    /// A status from the server, or a local failure described as one (e.g. UNAVAILABLE for a refused connection,
    /// FAILED_PRECONDITION for an unreadable key file). Exit 1.
    Status { code: Code, message: String },
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }

    pub fn status(code: Code, message: impl Into<String>) -> Self {
        CliError::Status { code, message: message.into() }
    }

    /// A local precondition failed: a file that cannot be read or written, a bad certificate, and so on.
    pub fn local(message: impl Into<String>) -> Self {
        CliError::Status { code: Code::FailedPrecondition, message: message.into() }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Status { .. } => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) => write!(f, "error: {}: {}", Code::InvalidArgument.name(), message),
            CliError::Status { code, message } => write!(f, "error: {}: {}", code.name(), message),
        }
    }
}

impl From<pico_args::Error> for CliError {
    fn from(err: pico_args::Error) -> Self {
        CliError::Usage(err.to_string())
    }
}
