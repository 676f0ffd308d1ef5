//! One RPC on a connection, as a state machine the loop polls: read the request, act, answer.
//!
//! A call is polled with a context whose waker is its own, so whatever it waits for — request bytes or send
//! capacity (h2), a job's output or end (the job table), shutdown (the server) — wakes exactly this call.
//!
//! Every call leaves one audit line when it is removed, however it ended (target `runnel::audit`, at info):
//! who (peer address, identity), what (method, job), how it ended (status code, or `CANCELLED` when the
//! client went away first) and how long it took.

use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;

use super::admission::Admission;
use super::follower::{FollowEnd, Follower};
use super::limits;
use super::method::Method;
use super::metrics::Metrics;
use super::reflection;
use super::service::{self, Action, PendingStart, ServiceContext};
use super::wire::{self, CallError};
use crate::grpc::{self, encode_message, Code, MessageDecoder, Responder, Status};
use crate::jobs::{Caller, JobError, JobKey};
use crate::proto::health::{health_check_response::ServingStatus, HealthCheckResponse};
use crate::proto::GetJobRequest;
use crate::reactor;

/// What the calls of one connection hold of requests that have not fully arrived, under
/// `limits::REQUEST_BYTES_PER_CONNECTION`. Past it a call stops giving HTTP/2 flow-control capacity back, so the
/// client's windows close and it can send no more until a request completes or a call ends, however many
/// streams it opens.
///
/// Over the budget one call at a time is let through (it goes on giving capacity back until its request is
/// complete), so requests that together pass the budget still finish one after another instead of all waiting
/// for each other; the most a connection holds is the budget plus one request plus its receive window.
#[derive(Debug, Default)]
pub struct RequestBudget {
    held: usize,
    /// A call is let through over the budget.
    let_through: bool,
    /// Calls waiting for room to give capacity back.
    waiting: Vec<Waker>,
}

pub struct Call {
    method: Option<Method>,
    audit: Audit,
    /// The connection's identity, or why it has none.
    caller: Result<Caller, String>,
    body: RecvStream,
    decoder: MessageDecoder,
    request: Option<Bytes>,
    response: Responder,
    phase: Phase,
    /// A reason to refuse the call found before it was first polled (e.g. a malformed header).
    refusal: Option<CallError>,
    /// Counted among its identity's calls in flight (`Admission::admit_call`).
    holds_call_slot: bool,
    /// Counted among its identity's streams (`Admission::admit_follower`): a StreamOutput or a reflection call.
    holds_stream_slot: bool,
    /// Request bytes this call holds in the connection's [`RequestBudget`].
    request_bytes: usize,
    /// Request bytes received whose flow-control capacity has not been given back yet.
    unreleased: usize,
    /// This call is the one let through over the connection's request budget.
    let_through: bool,
    /// This call's own task waker, made once.
    pub waker: Waker,
}

/// What a call's audit line says.
struct Audit {
    peer: SocketAddr,
    /// The request path (clipped), kept only when it names no method: the line shows what was asked for.
    unknown_path: Option<String>,
    begun: Instant,
    /// The job the call concerns: the one it started, or the id its request named.
    job: Option<String>,
    /// The status the call ended with; none if the client went away first.
    ended_with: Option<Code>,
}

enum Phase {
    ReadRequest,
    Start(PendingStart),
    AwaitStart(JobKey),
    AwaitJobEnd(JobKey),
    Follow(Follower),
    WatchHealth {
        sent: Option<ServingStatus>,
    },
    /// Reflection, before its first request: admitted as one of the identity's streams.
    BeginReflection,
    /// Reflection: each request is answered as it comes, a few per poll; the next is read once the answer is
    /// within flow control (`answer` holds what of it is not yet).
    Reflect {
        answer: Bytes,
    },
}

impl Call {
    pub fn new(
        path: &str,
        peer: SocketAddr,
        caller: Result<Caller, String>,
        body: RecvStream,
        respond: SendResponse<Bytes>,
        waker: Waker,
    ) -> Self {
        let method = Method::from_path(path);
        let unknown_path = method.is_none().then(|| crate::jobs::clip(path).into_owned());
        let (phase, max_message) = match method {
            Some(method) if method.streams_requests() => (Phase::BeginReflection, limits::MAX_REFLECTION_REQUEST),
            _ => (Phase::ReadRequest, grpc::MAX_REQUEST_MESSAGE),
        };
        Call {
            method,
            audit: Audit { peer, unknown_path, begun: Instant::now(), job: None, ended_with: None },
            caller,
            body,
            decoder: MessageDecoder::new(max_message),
            request: None,
            response: Responder::new(respond),
            phase,
            refusal: None,
            holds_call_slot: false,
            holds_stream_slot: false,
            request_bytes: 0,
            unreleased: 0,
            let_through: false,
            waker,
        }
    }

    /// Counts the call among its identity's calls in flight, or refuses it over the cap.
    pub fn admit(&mut self, admission: &mut Admission) {
        let Ok(caller) = &self.caller else { return };
        match admission.admit_call(&caller.identity) {
            Ok(()) => self.holds_call_slot = true,
            Err(cap) => self.refuse(CallError::OverCallCap(cap)),
        }
    }

    /// Gives back what the call held: its place among its identity's calls and followers, and its request
    /// bytes. Called once, as the call is removed.
    pub fn release(&mut self, admission: &mut Admission, requests: &mut RequestBudget, metrics: &mut Metrics) {
        self.log_audit_line();
        metrics.record_call(self.method, self.audit.ended_with, self.audit.begun.elapsed());
        if let (true, Ok(caller)) = (std::mem::take(&mut self.holds_call_slot), &self.caller) {
            admission.release_call(&caller.identity);
            if std::mem::take(&mut self.holds_stream_slot) {
                admission.release_follower(&caller.identity);
            }
        }
        self.give_back_request_bytes(requests);
    }

    /// The call's one audit line (see the module documentation).
    fn log_audit_line(&self) {
        if !log::log_enabled!(target: "runnel::audit", log::Level::Info) {
            return;
        }
        let audit = &self.audit;
        let identity = match &self.caller {
            Ok(caller) => format!("{:?}", caller.identity),
            Err(_) => "-".into(),
        };
        let method = match (self.method, &audit.unknown_path) {
            (Some(method), _) => method.name().to_string(),
            (None, Some(path)) => format!("{path:?}"),
            (None, None) => "-".into(),
        };
        let job = audit.job.as_deref().unwrap_or("-");
        let status = audit.ended_with.map_or("CANCELLED", Code::name);
        let millis = audit.begun.elapsed().as_secs_f64() * 1e3;
        log::info!(
            target: "runnel::audit",
            "rpc peer={} identity={identity} method={method} job={job} status={status} duration_ms={millis:.3}",
            audit.peer
        );
    }

    /// Makes the call end with `error` when it is first polled.
    pub fn refuse(&mut self, error: CallError) {
        self.refusal = Some(error);
    }

    /// The method the call named, if it named one the server serves (for the log).
    pub fn method_name(&self) -> Option<&'static str> {
        self.method.map(Method::name)
    }

    /// True for calls that stream until something else happens (followers, watches), which shutdown waits for.
    pub fn is_follower(&self) -> bool {
        matches!(self.phase, Phase::Follow(_))
    }

    /// Moves the call forward. `Ready(())` when it is finished: remove it, then [`Self::release`] it.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        ctx: &mut ServiceContext<'_>,
        requests: &mut RequestBudget,
    ) -> Poll<()> {
        let Some(method) = self.method else { return self.fail(CallError::UnknownMethod) };
        if let Some(error) = self.refusal.take() {
            return self.fail(error);
        }
        // Reflection requests answered in this poll.
        let mut answered = 0;
        loop {
            match &mut self.phase {
                Phase::ReadRequest => match self.read_request(cx, requests) {
                    Poll::Ready(Ok(body)) => {
                        if log::log_enabled!(target: "runnel::audit", log::Level::Info) {
                            self.audit.job = requested_job(method, &body);
                        }
                        match service::dispatch(method, &self.caller, &body, ctx) {
                            Ok(Action::Reply(message)) => return self.reply(message),
                            Ok(Action::Start(start)) => self.phase = Phase::Start(start),
                            Ok(Action::AwaitJobEnd(key)) => self.phase = Phase::AwaitJobEnd(key),
                            Ok(Action::Follow(follower)) => {
                                // `dispatch` counted it among the identity's streams.
                                self.holds_stream_slot = true;
                                self.phase = Phase::Follow(follower);
                            }
                            Ok(Action::WatchHealth) => self.phase = Phase::WatchHealth { sent: None },
                            Err(error) => return self.fail(error),
                        }
                        continue;
                    }
                    Poll::Ready(Err(Some(error))) => return self.fail(error),
                    Poll::Ready(Err(None)) => return Poll::Ready(()),
                    Poll::Pending => {}
                },
                Phase::Start(start) => match start.poll(cx, ctx) {
                    Poll::Ready(Ok(key)) => {
                        self.await_start(key, ctx);
                        continue;
                    }
                    Poll::Ready(Err(error)) => return self.fail(error),
                    Poll::Pending => {}
                },
                // A StartJob that goes away meanwhile does not stop the start: the job is the owner's to find.
                Phase::AwaitStart(key) => match ctx.jobs.poll_start(*key, cx.waker()) {
                    Poll::Ready(Ok(job)) => return self.reply(encode_message(&wire::job(job))),
                    Poll::Ready(Err(error)) => return self.fail(error.into()),
                    Poll::Pending => {}
                },
                Phase::AwaitJobEnd(key) => match ctx.jobs.get_mut(*key) {
                    None => return self.fail(CallError::JobRemoved("waiting for it")),
                    Some(job) if job.has_settled() => return self.reply(encode_message(&wire::job(job))),
                    Some(job) => job.wait_for_end(cx.waker()),
                },
                Phase::Follow(follower) => {
                    let Some(send) = self.response.open() else { return Poll::Ready(()) };
                    return match follower.poll(cx, ctx.jobs, send, ctx.metrics) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(FollowEnd::Done) => self.finish(&Status::ok()),
                        Poll::Ready(FollowEnd::Gone) => Poll::Ready(()),
                        Poll::Ready(FollowEnd::Failed(error)) => self.fail(error),
                    };
                }
                Phase::WatchHealth { sent } => {
                    let status = service::serving_status(ctx.shutting_down);
                    if *sent != Some(status) {
                        *sent = Some(status);
                        let message = encode_message(&HealthCheckResponse { status: status as i32 });
                        if !self.response.send_message(message) {
                            return Poll::Ready(());
                        }
                    }
                    if ctx.shutting_down {
                        return self.finish(&Status::ok());
                    }
                }
                Phase::BeginReflection => match service::begin_reflection(&self.caller, ctx) {
                    Ok(()) => {
                        self.holds_stream_slot = true;
                        self.phase = Phase::Reflect { answer: Bytes::new() };
                        continue;
                    }
                    Err(error) => return self.fail(error),
                },
                Phase::Reflect { answer } => {
                    let mut unsent = std::mem::take(answer);
                    match self.response.poll_send_within_capacity(cx, &mut unsent) {
                        Poll::Ready(true) => {}
                        Poll::Ready(false) => return Poll::Ready(()),
                        Poll::Pending => {
                            self.phase = Phase::Reflect { answer: unsent };
                            return Poll::Pending;
                        }
                    }
                    if ctx.shutting_down {
                        return self.fail(JobError::ShuttingDown.into());
                    }
                    if answered == limits::REFLECTION_ANSWERS_PER_POLL {
                        // Enough for one poll: every other woken task is polled before this one's next requests.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    match self.read_message(cx, requests) {
                        Poll::Ready(Ok(Some(request))) => {
                            self.give_back_request_bytes(requests);
                            // What arrived of the next requests stays counted.
                            self.count_request_bytes(self.decoder.buffered(), requests);
                            match reflection::answer(&request) {
                                Ok(answer) => self.phase = Phase::Reflect { answer },
                                Err(error) => return self.fail(error),
                            }
                            answered += 1;
                            continue;
                        }
                        // The client has sent its last request, and every answer is on its way.
                        Poll::Ready(Ok(None)) => return self.finish(&Status::ok()),
                        Poll::Ready(Err(Some(error))) => return self.fail(error),
                        Poll::Ready(Err(None)) => return Poll::Ready(()),
                        Poll::Pending => {}
                    }
                }
            }
            // Waiting: notice a client cancel at once so its resources are freed.
            return if self.response.poll_cancelled(cx) { Poll::Ready(()) } else { Poll::Pending };
        }
    }

    /// Reads the single request message. `Err(None)` means the client reset the stream.
    fn read_request(
        &mut self,
        cx: &mut Context<'_>,
        requests: &mut RequestBudget,
    ) -> Poll<Result<Bytes, Option<CallError>>> {
        let read = self.read_request_bytes(cx, requests);
        if read.is_ready() {
            self.give_back_request_bytes(requests);
        }
        read
    }

    /// Reads until the client ends its stream: exactly one message, or an error.
    fn read_request_bytes(
        &mut self,
        cx: &mut Context<'_>,
        requests: &mut RequestBudget,
    ) -> Poll<Result<Bytes, Option<CallError>>> {
        loop {
            match std::task::ready!(self.read_message(cx, requests)) {
                Ok(Some(message)) if self.request.is_none() => self.request = Some(message),
                Ok(Some(_)) => return Poll::Ready(Err(Some(CallError::ExtraMessage))),
                Ok(None) => return Poll::Ready(self.request.take().ok_or(Some(CallError::IncompleteRequest(0)))),
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    /// The next request message: `Ok(None)` once the client has ended its stream with no partial message left,
    /// `Err(None)` if it reset the stream.
    fn read_message(
        &mut self,
        cx: &mut Context<'_>,
        requests: &mut RequestBudget,
    ) -> Poll<Result<Option<Bytes>, Option<CallError>>> {
        self.release_capacity_within(cx, requests);
        loop {
            match self.decoder.next_message() {
                Ok(Some(message)) => return Poll::Ready(Ok(Some(message))),
                Ok(None) => {}
                Err(framing) => return Poll::Ready(Err(Some(CallError::Framing(framing)))),
            }
            match self.body.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    self.count_request_bytes(chunk.len(), requests);
                    self.unreleased += chunk.len();
                    self.release_capacity_within(cx, requests);
                    self.decoder.push(chunk);
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(None)),
                Poll::Ready(None) => {
                    return Poll::Ready(match self.decoder.buffered() {
                        0 => Ok(None),
                        left => Err(Some(CallError::IncompleteRequest(left))),
                    });
                }
            }
        }
    }

    /// Counts `len` bytes of requests still to be answered in the connection's budget.
    fn count_request_bytes(&mut self, len: usize, requests: &mut RequestBudget) {
        self.request_bytes += len;
        requests.held += len;
    }

    /// Gives the client back the flow-control capacity of what arrived, while the connection's request bytes are
    /// within budget; otherwise waits for room.
    fn release_capacity_within(&mut self, cx: &mut Context<'_>, requests: &mut RequestBudget) {
        if self.unreleased == 0 {
            return;
        }
        if requests.held > limits::REQUEST_BYTES_PER_CONNECTION && !self.let_through {
            if requests.let_through {
                reactor::remember_waker(&mut requests.waiting, cx.waker());
                return;
            }
            requests.let_through = true;
            self.let_through = true;
        }
        let _ = self.body.flow_control().release_capacity(std::mem::take(&mut self.unreleased));
    }

    /// The request is complete (or the call is over): its bytes leave the budget, and the calls waiting for room
    /// are woken.
    fn give_back_request_bytes(&mut self, requests: &mut RequestBudget) {
        if self.unreleased > 0 {
            let _ = self.body.flow_control().release_capacity(std::mem::take(&mut self.unreleased));
        }
        if std::mem::take(&mut self.let_through) {
            requests.let_through = false;
        }
        if self.request_bytes > 0 {
            requests.held -= std::mem::take(&mut self.request_bytes);
            for waker in requests.waiting.drain(..) {
                waker.wake();
            }
        }
    }

    /// Sends one message and OK.
    fn reply(&mut self, message: Bytes) -> Poll<()> {
        if self.response.send_message(message) {
            return self.finish(&Status::ok());
        }
        Poll::Ready(())
    }

    /// The job `key` was launched: the call answers once its command runs.
    fn await_start(&mut self, key: JobKey, ctx: &ServiceContext<'_>) {
        self.audit.job = ctx.jobs.get(key).map(|job| job.id.to_string());
        self.phase = Phase::AwaitStart(key);
    }

    /// Ends the call with the status for `error`.
    fn fail(&mut self, error: CallError) -> Poll<()> {
        let status = error.status();
        log::debug!("call {:?} ends with {status}", self.method);
        self.finish(&status)
    }

    /// Ends the call with `status`.
    fn finish(&mut self, status: &Status) -> Poll<()> {
        self.audit.ended_with = Some(status.code);
        self.response.finish(status);
        Poll::Ready(())
    }

    /// Ends the call early (deadline, shutdown) if it is still running.
    pub fn abort(&mut self, error: CallError) {
        let _ = self.fail(error);
    }
}

/// The job id a request names, for the methods that name one (every such request has it as field 1, so one
/// decoding serves them all): as the server writes ids if it is one, else quoted and clipped as sent.
fn requested_job(method: Method, body: &Bytes) -> Option<String> {
    match method {
        Method::StopJob | Method::GetJob | Method::WaitJob | Method::StreamOutput | Method::RemoveJob => {
            let id = prost::Message::decode(body.clone()).map(|request: GetJobRequest| request.job_id).ok()?;
            Some(match crate::jobs::JobId::parse(&id) {
                Some(id) => id.to_string(),
                None => format!("{:?}", crate::jobs::clip(&id)),
            })
        }
        _ => None,
    }
}
