//! The edge between the job domain and the wire: the one place that turns protobuf messages into domain values
//! and back, and the one place that chooses the gRPC status for a failure ([`CallError::status`]).

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fmt;
use std::io;
use std::time::Duration;

use super::admission::{CallCap, ConnectionCap};
use crate::cgroup::{Limits, Usage};
use crate::grpc::{Code, FramingError, Status};
use crate::jobs::{clip, EndReason, Job, JobError, JobKey, JobState, StartRequest, Stream};
use crate::proto;
use crate::sys::ExitStatus;

/// Why a call fails: the job domain refused or failed, or something about the call itself is wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallError {
    /// The job table refused the request or failed to carry it out.
    Job(JobError),
    /// The path names no method this server serves.
    UnknownMethod,
    /// `grpc-timeout` is not 1 to 8 digits and a unit.
    MalformedTimeout,
    /// The connection's certificate names no identity that can own jobs; the reason says why.
    Unauthenticated(String),
    /// The request's framing was refused (a message over the size limit, or compressed).
    Framing(FramingError),
    /// More than one request message on a unary or server-streaming call.
    ExtraMessage,
    /// The request ended without a whole message: `0` bytes left over means no message at all.
    IncompleteRequest(usize),
    /// The request message does not decode as the method's request type.
    Undecodable(prost::DecodeError),
    /// A request field outside the job domain (a stop's grace period, a state filter) is invalid; the message
    /// names it.
    InvalidField(String),
    /// A health check names a service this server does not serve.
    UnknownService(String),
    /// The job the call was waiting on was evicted meanwhile; says what the call was doing.
    JobRemoved(&'static str),
    /// The job's output could not be read back from the spool.
    OutputUnreadable(io::Error),
    /// The call's `grpc-timeout` passed.
    DeadlineExceeded,
    /// The connection is over one of the server's connection caps.
    OverConnectionCap(ConnectionCap),
    /// The caller is at a per-identity cap on calls or followers.
    OverCallCap(CallCap),
}

impl From<JobError> for CallError {
    fn from(err: JobError) -> Self {
        CallError::Job(err)
    }
}

impl CallError {
    /// The status a client receives: the code for what went wrong, and a message the person can act on.
    pub fn status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    fn code(&self) -> Code {
        match self {
            CallError::Job(err) => match err {
                JobError::InvalidSpec(_) | JobError::LimitAboveMaximum { .. } | JobError::MalformedId(_) => {
                    Code::InvalidArgument
                }
                JobError::UnknownJob(_) | JobError::ExecutableNotFound(_) => Code::NotFound,
                JobError::ExecutionDenied { .. } | JobError::WorkingDirDenied { .. } => Code::PermissionDenied,
                JobError::NotExecutable { .. }
                | JobError::WorkingDirUnusable { .. }
                | JobError::LimitsUnavailable(_)
                | JobError::NoIoDevice
                | JobError::StillRunning(_) => Code::FailedPrecondition,
                JobError::TooManyRunning { .. } | JobError::TooManyJobs { .. } | JobError::NoFreeUser => {
                    Code::ResourceExhausted
                }
                JobError::OffsetPastEnd { .. } => Code::OutOfRange,
                JobError::ShuttingDown => Code::Unavailable,
                JobError::StartTimedOut(_) => Code::DeadlineExceeded,
                JobError::StateDirStalled(_) => Code::Unavailable,
                JobError::System(_) => Code::Internal,
            },
            CallError::UnknownMethod => Code::Unimplemented,
            CallError::MalformedTimeout | CallError::ExtraMessage | CallError::InvalidField(_) => Code::InvalidArgument,
            CallError::Unauthenticated(_) => Code::Unauthenticated,
            CallError::Framing(FramingError::Compressed) => Code::Unimplemented,
            CallError::Framing(FramingError::TooLarge { .. }) => Code::ResourceExhausted,
            CallError::IncompleteRequest(_) | CallError::Undecodable(_) | CallError::OutputUnreadable(_) => {
                Code::Internal
            }
            CallError::UnknownService(_) | CallError::JobRemoved(_) => Code::NotFound,
            CallError::DeadlineExceeded => Code::DeadlineExceeded,
            CallError::OverConnectionCap(_) | CallError::OverCallCap(_) => Code::ResourceExhausted,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Job(err) => err.fmt(f),
            CallError::UnknownMethod => f.write_str("unknown service or method"),
            CallError::MalformedTimeout => f.write_str("malformed grpc-timeout header"),
            CallError::Unauthenticated(reason) | CallError::InvalidField(reason) => f.write_str(reason),
            CallError::Framing(err) => err.fmt(f),
            CallError::ExtraMessage => f.write_str("more than one request message on a unary or server-streaming call"),
            CallError::IncompleteRequest(0) => f.write_str("the request has no message"),
            CallError::IncompleteRequest(n) => write!(f, "the request ends inside a message ({n} bytes)"),
            CallError::Undecodable(err) => write!(f, "cannot decode the request message: {err}"),
            CallError::UnknownService(name) => write!(f, "unknown service {:?}", clip(name)),
            CallError::JobRemoved(doing) => write!(f, "the job was removed while {doing}"),
            CallError::OutputUnreadable(err) => write!(f, "cannot read the job's output: {err}"),
            CallError::DeadlineExceeded => f.write_str("the call's deadline (grpc-timeout) passed"),
            CallError::OverConnectionCap(cap) => cap.fmt(f),
            CallError::OverCallCap(cap) => cap.fmt(f),
        }
    }
}

/// A start request as the domain takes it.
pub fn start_request(request: proto::StartJobRequest) -> StartRequest {
    StartRequest {
        command: request.command,
        args: request.args,
        env: request.env,
        working_dir: request.working_dir,
        limits: request.limits.map(limits_from).unwrap_or_default(),
    }
}

/// The job states a ListJobs request filters on; an unknown or unspecified state is refused.
pub fn states(values: &[i32]) -> Result<Vec<JobState>, CallError> {
    values
        .iter()
        .map(|&value| match proto::JobState::try_from(value) {
            Ok(proto::JobState::Running) => Ok(JobState::Running),
            Ok(proto::JobState::Stopping) => Ok(JobState::Stopping),
            Ok(proto::JobState::Exited) => Ok(JobState::Exited),
            Ok(proto::JobState::Killed) => Ok(JobState::Killed),
            Ok(proto::JobState::Unspecified) | Err(_) => {
                Err(CallError::InvalidField(format!("states contains unknown job state {value}")))
            }
        })
        .collect()
}

/// Jobs in a ListJobs answer when the request sets no page size, and the most it may ask for.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// A ListJobs answer stops before its jobs take more than this (one job, however large, always fits).
pub const MAX_PAGE_BYTES: usize = 1 << 20;

/// Which page of jobs a ListJobs asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub size: usize,
    /// The page starts after this job.
    pub after: Option<JobKey>,
}

/// The page a ListJobs request asks for. A token is the key of the last job of the previous page, which
/// stays meaningful when that job is evicted (keys are never reused).
pub fn page(page_size: u32, page_token: &str) -> Result<Page, CallError> {
    let size = match page_size as usize {
        0 => DEFAULT_PAGE_SIZE,
        size if size > MAX_PAGE_SIZE => {
            return Err(CallError::InvalidField(format!(
                "page_size {size} is more than the maximum of {MAX_PAGE_SIZE}"
            )))
        }
        size => size,
    };
    let after = match page_token {
        "" => None,
        token => Some(token.parse::<JobKey>().map_err(|_| {
            CallError::InvalidField(format!(
                "page_token {:?} is not one this server gave: pass a ListJobs answer's next_page_token, or none",
                clip(token)
            ))
        })?),
    };
    Ok(Page { size, after })
}

/// The token that asks for the page after the job with key `last`.
pub fn page_token(last: JobKey) -> String {
    last.to_string()
}

/// A StopJob's grace period, if it sets one.
pub fn grace_period(value: Option<prost_types::Duration>) -> Result<Option<Duration>, CallError> {
    value
        .map(|d| {
            // Checked here rather than by prost-types' conversion, which negates `seconds` unchecked: i64::MIN
            // overflowed there (a panic with overflow checks on, found by `fuzz/request_headers`).
            if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
                return Err(CallError::InvalidField(
                    "grace_period is negative or malformed (nanos must be 0 to 999999999): give a duration ≥ 0".into(),
                ));
            }
            Ok(Duration::new(d.seconds as u64, d.nanos as u32))
        })
        .transpose()
}

/// Everything `Job` reports.
pub fn job(job: &Job) -> proto::Job {
    let (exit_code, signal) = match job.end.and_then(|e| e.status) {
        Some(ExitStatus::Exited(code)) => (Some(code), None),
        Some(ExitStatus::Signaled(signal)) => (None, Some(signal)),
        None => (None, None),
    };
    proto::Job {
        id: job.id.to_string(),
        owner: job.owner.clone(),
        command: job.command.clone(),
        args: job.args.clone(),
        state: state(job.state()) as i32,
        end_reason: job.end.map_or(proto::EndReason::Unspecified, |e| end_reason(e.reason)) as i32,
        exit_code,
        signal,
        pid: job.pid,
        started_at: Some(job.started_at.into()),
        ended_at: job.end.map(|e| e.at.into()),
        limits: job.limits().map(limits),
        usage: job.usage().map(usage),
        output_bytes: job.output.end(),
        output_start: job.output.start(),
    }
}

/// The stream an output chunk's bytes came from.
pub fn output_stream(stream: Stream) -> proto::OutputStream {
    match stream {
        Stream::Stdout => proto::OutputStream::Stdout,
        Stream::Stderr => proto::OutputStream::Stderr,
    }
}

fn state(state: JobState) -> proto::JobState {
    match state {
        JobState::Running => proto::JobState::Running,
        JobState::Stopping => proto::JobState::Stopping,
        JobState::Exited => proto::JobState::Exited,
        JobState::Killed => proto::JobState::Killed,
    }
}

fn end_reason(reason: EndReason) -> proto::EndReason {
    match reason {
        EndReason::Exited => proto::EndReason::Exited,
        EndReason::Stopped => proto::EndReason::Stopped,
        EndReason::OomKilled => proto::EndReason::OomKilled,
        EndReason::Signaled => proto::EndReason::Signaled,
        EndReason::ServerShutdown => proto::EndReason::ServerShutdown,
        EndReason::ServerLost => proto::EndReason::ServerLost,
    }
}

/// Moves the named fields from a `$from_ty` into a `$to`. Both the pattern and the struct literal must name every
/// field of their type, so either side gaining a field the list lacks fails to compile.
macro_rules! same_fields {
    ($value:expr, $from_ty:path => $to:path { $($field:ident),* }) => {{
        let $from_ty { $($field),* } = $value;
        $to { $($field),* }
    }};
}

/// Limits as the API carries them.
pub fn limits(limits: Limits) -> proto::ResourceLimits {
    same_fields!(limits, Limits => proto::ResourceLimits {
        cpu_millicores, memory_bytes, io_read_bps, io_write_bps, io_read_iops, io_write_iops, max_pids
    })
}

fn limits_from(limits: proto::ResourceLimits) -> Limits {
    same_fields!(limits, proto::ResourceLimits => Limits {
        cpu_millicores, memory_bytes, io_read_bps, io_write_bps, io_read_iops, io_write_iops, max_pids
    })
}

fn usage(usage: Usage) -> proto::ResourceUsage {
    same_fields!(usage, Usage => proto::ResourceUsage { cpu_usec, memory_peak_bytes, io_read_bytes, io_write_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods_out_of_range_are_refused_not_a_panic() {
        let duration = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        // Found by fuzz/request_headers: prost-types' own conversion negated i64::MIN.
        assert!(grace_period(duration(i64::MIN, -1)).is_err());
        assert!(grace_period(duration(-1, 0)).is_err());
        assert!(grace_period(duration(0, 1_000_000_000)).is_err());
        assert!(grace_period(duration(1, -1)).is_err());
        assert_eq!(
            grace_period(duration(i64::MAX, 999_999_999)).unwrap(),
            Some(Duration::new(i64::MAX as u64, 999_999_999))
        );
        assert_eq!(grace_period(duration(2, 500)).unwrap(), Some(Duration::new(2, 500)));
        assert_eq!(grace_period(None).unwrap(), None);
    }

    #[test]
    fn limits_cross_the_wire_field_for_field() {
        let domain = Limits {
            cpu_millicores: 1,
            memory_bytes: 2,
            io_read_bps: 3,
            io_write_bps: 4,
            io_read_iops: 5,
            io_write_iops: 6,
            max_pids: 7,
        };
        let wire = limits(domain);
        assert_eq!(
            (wire.cpu_millicores, wire.memory_bytes, wire.io_read_bps, wire.io_write_bps),
            (1, 2, 3, 4),
            "{wire:?}"
        );
        assert_eq!((wire.io_read_iops, wire.io_write_iops, wire.max_pids), (5, 6, 7), "{wire:?}");
        assert_eq!(limits_from(wire), domain);
    }

    #[test]
    fn every_state_filter_maps_and_unknown_ones_are_refused() {
        let all =
            [proto::JobState::Running, proto::JobState::Stopping, proto::JobState::Exited, proto::JobState::Killed];
        let domain = states(&all.map(|s| s as i32)).unwrap();
        assert_eq!(domain.iter().map(|&s| state(s)).collect::<Vec<_>>(), all);
        for bad in [0, 99, -1] {
            let err = states(&[bad]).unwrap_err();
            assert_eq!(err.status().code, Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn failures_get_the_codes_clients_act_on() {
        let code = |err: JobError| CallError::Job(err).status().code;
        assert_eq!(code(JobError::UnknownJob("x".into())), Code::NotFound);
        assert_eq!(code(JobError::MalformedId("x".into())), Code::InvalidArgument);
        assert_eq!(code(JobError::TooManyJobs { retained: 1 }), Code::ResourceExhausted);
        assert_eq!(code(JobError::OffsetPastEnd { offset: 2, end: 1 }), Code::OutOfRange);
        assert_eq!(code(JobError::ShuttingDown), Code::Unavailable);
        let denied = JobError::ExecutionDenied { command: "x".into(), reason: io::Error::from_raw_os_error(13) };
        assert_eq!(code(denied), Code::PermissionDenied);
        assert_eq!(CallError::IncompleteRequest(0).status().message, "the request has no message");
    }
}
