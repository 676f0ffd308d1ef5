//! The RPC methods: decoding each request, checking it, and turning it into an action on the job table.
//!
//! Handlers see the job table and nothing else of the loop: what they need from it (watching a new job's
//! descriptors, a kill at the end of a grace period) they ask for as [`Effect`]s, which the loop carries out
//! once the call has been polled.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::admission::Admission;
use super::follower::Follower;
use super::method::Method;
use super::metrics::Metrics;
use super::reflection;
use super::wire::{self, CallError};
use crate::grpc::encode_message;
use crate::jobs::{Caller, EndReason, Job, JobError, JobKey, JobSpec, JobTable, StartedJob, START_TIMEOUT};
use crate::proto::health::{health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse};
use crate::proto::{
    GetJobRequest, ListJobsRequest, ListJobsResponse, RemoveJobRequest, StartJobRequest, StopJobRequest,
    StreamOutputRequest, WaitJobRequest,
};

/// The longest grace period a StopJob may ask for; longer is almost certainly a unit mistake.
const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The service name health checks use for the job service.
const JOB_SERVICE: &str = "runnel.v1.JobService";

/// What a call may touch while it runs.
pub struct ServiceContext<'a> {
    pub jobs: &'a mut JobTable,
    /// The per-identity caps (a StreamOutput counts among its identity's followers).
    pub admission: &'a mut Admission,
    /// What the loop is to do once the call has been polled.
    pub effects: &'a mut Vec<Effect>,
    /// StopJob's grace period when the request sets none.
    pub stop_grace: Duration,
    pub shutting_down: bool,
    pub metrics: &'a mut Metrics,
}

/// Something a call needs from the loop beyond the job table.
#[derive(Debug, Clone, Copy)]
pub enum Effect {
    /// A job just started: watch its pidfd, pipes and init report, and give its init its deadline.
    WatchJob(StartedJob),
    /// A job was asked to stop: kill it at the end of its grace period.
    KillJobAt(JobKey, Instant),
}

/// What a call does once its request is decoded.
pub enum Action {
    /// Answer with this message and OK.
    Reply(Bytes),
    /// Start the job once its directories are made, then answer with it once its command runs (an isolated
    /// job's init reports that through the loop).
    Start(PendingStart),
    /// Answer with the job once it has ended.
    AwaitJobEnd(JobKey),
    /// Stream output.
    Follow(Follower),
    /// Stream health status changes until shutdown.
    WatchHealth,
}

/// A valid StartJob waiting for its job's directories to be made (see [`JobTable::poll_job_dirs`]); most find
/// some made ahead and start at their first poll.
pub struct PendingStart {
    owner: String,
    /// Until the job is started.
    spec: Option<Box<JobSpec>>,
    since: Instant,
}

impl PendingStart {
    /// Starts the job once its directories are there: its key, to await its start with.
    pub fn poll(&mut self, cx: &mut Context<'_>, ctx: &mut ServiceContext<'_>) -> Poll<Result<JobKey, CallError>> {
        if ctx.shutting_down {
            return Poll::Ready(Err(JobError::ShuttingDown.into()));
        }
        if ctx.jobs.poll_job_dirs(cx.waker()).is_pending() {
            if self.since.elapsed() >= START_TIMEOUT {
                return Poll::Ready(Err(JobError::StateDirStalled(START_TIMEOUT).into()));
            }
            return Poll::Pending;
        }
        let Some(spec) = self.spec.take() else {
            return Poll::Ready(Err(
                JobError::System("a started job's StartJob was asked to start it again".into()).into()
            ));
        };
        let started = ctx.jobs.start_valid(&self.owner, *spec)?;
        ctx.effects.push(Effect::WatchJob(started));
        Poll::Ready(Ok(started.key))
    }
}

/// Lets a reflection stream begin. Like a job method it needs an identity, and it counts among the identity's
/// streams (`--max-followers-per-client`) until it ends: each may hold up to h2's send buffer of answers.
pub fn begin_reflection(caller: &Result<Caller, String>, ctx: &mut ServiceContext<'_>) -> Result<(), CallError> {
    let caller = caller.as_ref().map_err(|reason| CallError::Unauthenticated(reason.clone()))?;
    if ctx.shutting_down {
        return Err(JobError::ShuttingDown.into());
    }
    ctx.admission.admit_follower(&caller.identity).map_err(CallError::OverCallCap)
}

/// The health status the server reports.
pub fn serving_status(shutting_down: bool) -> ServingStatus {
    if shutting_down {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    }
}

fn decode<M: Message + Default>(body: &Bytes) -> Result<M, CallError> {
    M::decode(body.clone()).map_err(CallError::Undecodable)
}

fn check_health_service(request: &HealthCheckRequest) -> Result<(), CallError> {
    if request.service.is_empty() || request.service == JOB_SERVICE {
        Ok(())
    } else {
        Err(CallError::UnknownService(request.service.clone()))
    }
}

/// One page of `jobs`: at most `size` of them, stopping short of [`wire::MAX_PAGE_BYTES`], with the token for
/// the next page if any job is left.
fn list_page<'a>(jobs: impl Iterator<Item = &'a Job>, size: usize) -> ListJobsResponse {
    let mut page = ListJobsResponse::default();
    let mut bytes = 0;
    let mut last = None;
    for job in jobs {
        let message = wire::job(job);
        let len = message.encoded_len();
        if page.jobs.len() == size || (!page.jobs.is_empty() && bytes + len > wire::MAX_PAGE_BYTES) {
            page.next_page_token = wire::page_token(last.expect("a job before this one"));
            break;
        }
        bytes += len;
        last = Some(job.key);
        page.jobs.push(message);
    }
    page
}

/// Runs `method` for `caller` (or the reason the connection has no identity) on `body`, one whole request
/// message.
pub fn dispatch(
    method: Method,
    caller: &Result<Caller, String>,
    body: &Bytes,
    ctx: &mut ServiceContext<'_>,
) -> Result<Action, CallError> {
    let caller = match (method.needs_identity(), caller) {
        (false, _) => None,
        (true, Ok(caller)) => Some(caller),
        (true, Err(reason)) => return Err(CallError::Unauthenticated(reason.clone())),
    };
    if ctx.shutting_down && method.needs_identity() {
        return Err(JobError::ShuttingDown.into());
    }
    let caller = || caller.expect("identity checked");
    Ok(match method {
        Method::HealthCheck => {
            check_health_service(&decode(body)?)?;
            let status = serving_status(ctx.shutting_down);
            Action::Reply(encode_message(&HealthCheckResponse { status: status as i32 }))
        }
        Method::HealthWatch => {
            check_health_service(&decode(body)?)?;
            Action::WatchHealth
        }
        // Not reached: a reflection call begins with `begin_reflection` and answers each request as it comes
        // (`Call`'s reflection phase); were one whole request to arrive here, this is its answer.
        Method::ReflectionV1 | Method::ReflectionV1Alpha => Action::Reply(reflection::answer(body)?),
        Method::StartJob => {
            let request: StartJobRequest = decode(body)?;
            let spec = ctx.jobs.validate_start(wire::start_request(request))?;
            let owner = caller().identity.clone();
            Action::Start(PendingStart { owner, spec: Some(Box::new(spec)), since: Instant::now() })
        }
        Method::GetJob => {
            let request: GetJobRequest = decode(body)?;
            let key = ctx.jobs.find(caller(), &request.job_id)?;
            Action::Reply(encode_message(&wire::job(ctx.jobs.get(key).expect("found"))))
        }
        Method::ListJobs => {
            let request: ListJobsRequest = decode(body)?;
            let states = wire::states(&request.states)?;
            let page = wire::page(request.page_size, &request.page_token)?;
            Action::Reply(encode_message(&list_page(ctx.jobs.list(caller(), &states, page.after), page.size)))
        }
        Method::WaitJob => {
            let request: WaitJobRequest = decode(body)?;
            Action::AwaitJobEnd(ctx.jobs.find(caller(), &request.job_id)?)
        }
        Method::StopJob => {
            let request: StopJobRequest = decode(body)?;
            let grace = match wire::grace_period(request.grace_period)? {
                Some(grace) if grace > MAX_GRACE => {
                    return Err(CallError::InvalidField(format!(
                        "grace_period {grace:?} is longer than the maximum of {MAX_GRACE:?}"
                    )));
                }
                Some(grace) => grace,
                None => ctx.stop_grace,
            };
            let key = ctx.jobs.find(caller(), &request.job_id)?;
            if ctx.jobs.request_stop(key, EndReason::Stopped) {
                ctx.effects.push(Effect::KillJobAt(key, Instant::now() + grace));
            }
            Action::AwaitJobEnd(key)
        }
        Method::RemoveJob => {
            let request: RemoveJobRequest = decode(body)?;
            let key = ctx.jobs.find(caller(), &request.job_id)?;
            // Its last record, as it was: once removed there is nothing left to describe.
            let last = encode_message(&wire::job(ctx.jobs.get(key).expect("found")));
            ctx.jobs.remove(key)?;
            Action::Reply(last)
        }
        Method::StreamOutput => {
            let request: StreamOutputRequest = decode(body)?;
            let key = ctx.jobs.find(caller(), &request.job_id)?;
            let cursor = ctx.jobs.get(key).expect("found").read_output_from(request.offset)?;
            // Counted from here until the call ends (`Call::release`).
            ctx.admission.admit_follower(&caller().identity).map_err(CallError::OverCallCap)?;
            Action::Follow(Follower::new(key, cursor, request.follow))
        }
    })
}
