//! The RPC methods: decoding each request, checking it, and turning it into an action on the job table.
//!
//! This is the one place where errors become gRPC statuses ([`status_for`]); handlers return [`JobError`]s.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::call::Follower;
use super::{ServiceContext, TimerEvent};
use crate::grpc::{encode_message, Code, Status};
use crate::jobs::{Caller, JobError, JobKey, JobSpec, OutputCursor};
use crate::proto::health::{health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse};
use crate::proto::{
    EndReason, GetJobRequest, JobState, ListJobsRequest, ListJobsResponse, StartJobRequest, StopJobRequest,
    StreamOutputRequest, WaitJobRequest,
};

/// The longest grace period a StopJob may ask for; longer is almost certainly a unit mistake.
const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The service name health checks use for the job service.
const JOB_SERVICE: &str = "runnel.v1.JobService";

/// Every method the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    StartJob,
    StopJob,
    GetJob,
    ListJobs,
    WaitJob,
    StreamOutput,
    HealthCheck,
    HealthWatch,
}

impl Method {
    pub fn from_path(path: &str) -> Option<Method> {
        use crate::grpc::path;
        Some(match path {
            path::START_JOB => Method::StartJob,
            path::STOP_JOB => Method::StopJob,
            path::GET_JOB => Method::GetJob,
            path::LIST_JOBS => Method::ListJobs,
            path::WAIT_JOB => Method::WaitJob,
            path::STREAM_OUTPUT => Method::StreamOutput,
            path::HEALTH_CHECK => Method::HealthCheck,
            path::HEALTH_WATCH => Method::HealthWatch,
            _ => return None,
        })
    }

    /// Health methods need a verified certificate (TLS checks that) but no job-owning identity.
    fn needs_identity(self) -> bool {
        !matches!(self, Method::HealthCheck | Method::HealthWatch)
    }
}

/// What a call does once its request is decoded.
pub enum Action {
    /// Answer with this message and OK.
    Reply(Bytes),
    /// End with this status.
    Fail(Status),
    /// Answer with the job once it has ended.
    AwaitJobEnd(JobKey),
    /// Stream output.
    Follow(Follower),
    /// Stream health status changes until shutdown.
    WatchHealth,
}

/// The gRPC status for a job error: the single mapping the whole server uses.
pub fn status_for(error: JobError) -> Status {
    let code = match &error {
        JobError::InvalidArgument(_) => Code::InvalidArgument,
        JobError::NotFound(_) | JobError::ExecutableNotFound(_) => Code::NotFound,
        JobError::PermissionDenied(_) => Code::PermissionDenied,
        JobError::FailedPrecondition(_) => Code::FailedPrecondition,
        JobError::ResourceExhausted(_) => Code::ResourceExhausted,
        JobError::OutOfRange(_) => Code::OutOfRange,
        JobError::ShuttingDown => Code::Unavailable,
        JobError::Internal(_) => Code::Internal,
    };
    Status::new(code, error.to_string())
}

fn decode<M: Message + Default>(body: &Bytes) -> Result<M, Status> {
    M::decode(body.clone()).map_err(|e| Status::internal(format!("cannot decode the request message: {e}")))
}

/// Runs `method` for `caller` on `body` (one whole request message).
pub fn dispatch(method: Method, caller: &Result<Caller, Status>, body: &Bytes, ctx: &mut ServiceContext<'_>) -> Action {
    match run(method, caller, body, ctx) {
        Ok(action) => action,
        Err(status) => Action::Fail(status),
    }
}

fn run(
    method: Method,
    caller: &Result<Caller, Status>,
    body: &Bytes,
    ctx: &mut ServiceContext<'_>,
) -> Result<Action, Status> {
    let serving = if ctx.shutting_down { ServingStatus::NotServing } else { ServingStatus::Serving };
    let caller = match (method.needs_identity(), caller) {
        (false, _) => None,
        (true, Ok(caller)) => Some(caller),
        (true, Err(status)) => return Err(status.clone()),
    };
    if ctx.shutting_down && method.needs_identity() {
        return Err(status_for(JobError::ShuttingDown));
    }
    let job_error = |e: JobError| status_for(e);
    Ok(match method {
        Method::HealthCheck => {
            let request: HealthCheckRequest = decode(body)?;
            if !request.service.is_empty() && request.service != JOB_SERVICE {
                return Err(Status::not_found(format!("unknown service {:?}", request.service)));
            }
            Action::Reply(encode_message(&HealthCheckResponse { status: serving as i32 }))
        }
        Method::HealthWatch => {
            let request: HealthCheckRequest = decode(body)?;
            if !request.service.is_empty() && request.service != JOB_SERVICE {
                return Err(Status::not_found(format!("unknown service {:?}", request.service)));
            }
            Action::WatchHealth
        }
        Method::StartJob => {
            let caller = caller.expect("identity checked");
            let request: StartJobRequest = decode(body)?;
            let spec = JobSpec::from_request(request).map_err(job_error)?;
            let started = ctx.jobs.start(&caller.identity, spec).map_err(job_error)?;
            ctx.watch_job(started);
            Action::Reply(encode_message(&ctx.jobs.get(started.key).expect("just started").to_proto()))
        }
        Method::GetJob => {
            let request: GetJobRequest = decode(body)?;
            let key = ctx.jobs.find(caller.expect("identity checked"), &request.job_id).map_err(job_error)?;
            Action::Reply(encode_message(&ctx.jobs.get(key).expect("found").to_proto()))
        }
        Method::ListJobs => {
            let request: ListJobsRequest = decode(body)?;
            let mut states = Vec::with_capacity(request.states.len());
            for value in request.states {
                match JobState::try_from(value) {
                    Ok(JobState::Unspecified) | Err(_) => {
                        return Err(Status::invalid_argument(format!("states contains unknown job state {value}")))
                    }
                    Ok(state) => states.push(state),
                }
            }
            let jobs = ctx.jobs.list(caller.expect("identity checked"), &states);
            Action::Reply(encode_message(&ListJobsResponse { jobs }))
        }
        Method::WaitJob => {
            let request: WaitJobRequest = decode(body)?;
            let key = ctx.jobs.find(caller.expect("identity checked"), &request.job_id).map_err(job_error)?;
            Action::AwaitJobEnd(key)
        }
        Method::StopJob => {
            let request: StopJobRequest = decode(body)?;
            let grace = match request.grace_period {
                None => ctx.stop_grace,
                Some(d) => {
                    let grace = Duration::try_from(d).map_err(|_| {
                        Status::invalid_argument("grace_period is negative or malformed: give a duration ≥ 0")
                    })?;
                    if grace > MAX_GRACE {
                        return Err(Status::invalid_argument(format!(
                            "grace_period {grace:?} is longer than the maximum of {MAX_GRACE:?}"
                        )));
                    }
                    grace
                }
            };
            let key = ctx.jobs.find(caller.expect("identity checked"), &request.job_id).map_err(job_error)?;
            if ctx.jobs.request_stop(key, EndReason::Stopped) {
                ctx.timers.schedule(Instant::now() + grace, TimerEvent::KillJob(key));
            }
            Action::AwaitJobEnd(key)
        }
        Method::StreamOutput => {
            let request: StreamOutputRequest = decode(body)?;
            let key = ctx.jobs.find(caller.expect("identity checked"), &request.job_id).map_err(job_error)?;
            let job = ctx.jobs.get(key).expect("found");
            if request.offset > job.output.end() && job.is_complete() {
                return Err(status_for(JobError::OutOfRange(format!(
                    "offset {} is past the end of the job's output ({} bytes)",
                    request.offset,
                    job.output.end()
                ))));
            }
            Action::Follow(Follower::new(key, OutputCursor::new(request.offset), request.follow))
        }
    })
}
