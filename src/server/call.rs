//! One RPC on a connection, as a state machine the loop polls: read the request, act, answer.
//!
//! A call is polled with a context whose waker is its own, so whatever it waits for — request bytes or send
//! capacity (h2), a job's output or end (the job table), shutdown (the server) — wakes exactly this call.

use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Response};
use prost::encoding::{encode_varint, encoded_len_varint};

use super::service::{self, Action, Method};
use super::ServiceContext;
use crate::grpc::{self, encode_message, Code, MessageDecoder, Status, MESSAGE_HEADER_LEN};
use crate::jobs::{Caller, JobKey, OutputCursor, Stream};
use crate::proto::health::{health_check_response::ServingStatus, HealthCheckResponse};
use crate::proto::OutputStream;
use crate::reactor;

/// Largest output chunk in one message: large enough that framing costs little, small enough to interleave
/// followers fairly and to fit every client's default 4 MiB message limit with room to spare. Each message
/// has a fixed cost on both ends (a buffer, a `pread`, h2's and gRPC's framing, the client's decoding): at
/// 128 KiB a live follow at the retention cap cost the server 1.01–1.35 s of CPU per GiB, at 256 KiB
/// 0.95–1.10 (4 alternating rounds; replay 0.58–0.84 → 0.54–0.61). 512 KiB measured the same as 256 and
/// doubles what each streaming follower holds in flight.
const MAX_CHUNK_DATA: usize = 256 * 1024;

/// Send capacity worth waiting for before sending a partial chunk, so a trickling window does not produce a
/// stream of tiny messages.
const MIN_CHUNK_CAPACITY: usize = 16 * 1024;

/// Bytes of framing around an OutputChunk's data at most: message header, offset and stream fields, data tag
/// and length.
const MAX_CHUNK_OVERHEAD: usize = MESSAGE_HEADER_LEN + 11 + 2 + 1 + 5;

/// For placing message data relative to the spool's pages (see [`Follower::start_message`]).
const PAGE_SIZE: usize = 4096;
const CACHE_LINE: usize = 64;

pub struct Call {
    method: Option<Method>,
    caller: Result<Caller, Status>,
    body: RecvStream,
    decoder: MessageDecoder,
    request: Option<Bytes>,
    response: Responder,
    phase: Phase,
    /// A reason to refuse the call found before it was first polled (e.g. a malformed header).
    refusal: Option<Status>,
    /// This call's own task waker, made once.
    pub waker: Waker,
}

enum Responder {
    /// Nothing sent yet.
    Idle(SendResponse<Bytes>),
    /// Headers sent; messages and trailers go here.
    Open(SendStream<Bytes>),
    /// Trailers sent (or the stream was reset).
    Closed,
}

enum Phase {
    ReadRequest,
    AwaitJobEnd(JobKey),
    Follow(Follower),
    WatchHealth { sent: Option<ServingStatus> },
}

/// A StreamOutput call's reading position.
pub struct Follower {
    key: JobKey,
    cursor: OutputCursor,
    follow: bool,
    /// Reused for every message, so the allocator sees one buffer per follower, not one per chunk.
    buffer: BytesMut,
    /// Which cache line of a 4 KiB page the next message starts on (see [`Follower::start_message`]).
    page_line: usize,
}

impl Follower {
    pub fn new(key: JobKey, cursor: OutputCursor, follow: bool) -> Self {
        Follower { key, cursor, follow, buffer: BytesMut::new(), page_line: 0 }
    }

    /// Makes room for a message of `message_len` bytes whose data starts `header_len` bytes in, and places it
    /// so that the data sits at the same offset within a cache line as the spool bytes `pread` copies into it
    /// (`file_position`). The kernel copies with `rep movsb`, which on AMD Zen is about six times slower when
    /// the destination is 1 to 31 bytes past the source modulo 4 KiB (see [`crate::sys::CacheLineAllocator`]):
    /// a fixed header length would otherwise put every read of a run in that band or none. The data also sits
    /// on the next of a page's 64 cache lines from one message to the next, so a later copy whose other end
    /// runnel does not place (into rustls' record buffers) is in the band for at most one message in 64.
    fn start_message(&mut self, header_len: usize, message_len: usize, file_position: u64) {
        debug_assert!(self.buffer.is_empty(), "the previous message was split off");
        self.buffer.reserve(message_len + PAGE_SIZE);
        let data_at = self.buffer.as_ptr() as usize + header_len;
        let target = self.page_line * CACHE_LINE + file_position as usize % CACHE_LINE;
        let padding = target.wrapping_sub(data_at) % PAGE_SIZE;
        self.page_line = (self.page_line + 1) % (PAGE_SIZE / CACHE_LINE);
        self.buffer.put_bytes(0, padding);
        self.buffer.advance(padding);
    }
}

impl Call {
    pub fn new(
        path: &str,
        caller: Result<Caller, Status>,
        body: RecvStream,
        respond: SendResponse<Bytes>,
        waker: Waker,
    ) -> Self {
        Call {
            method: Method::from_path(path),
            caller,
            body,
            decoder: MessageDecoder::new(grpc::MAX_REQUEST_MESSAGE),
            request: None,
            response: Responder::Idle(respond),
            phase: Phase::ReadRequest,
            refusal: None,
            waker,
        }
    }

    /// Makes the call end with `status` when it is first polled.
    pub fn refuse(&mut self, status: Status) {
        self.refusal = Some(status);
    }

    /// True for calls that stream until something else happens (followers, watches), which shutdown waits for.
    pub fn is_follower(&self) -> bool {
        matches!(self.phase, Phase::Follow(_))
    }

    /// Moves the call forward. `Ready(())` when it is finished and can be dropped.
    pub fn poll(&mut self, cx: &mut Context<'_>, ctx: &mut ServiceContext<'_>) -> Poll<()> {
        if self.method.is_none() {
            return self.finish(Status::new(Code::Unimplemented, "unknown service or method"));
        }
        if let Some(status) = self.refusal.take() {
            return self.finish(status);
        }
        loop {
            match &mut self.phase {
                Phase::ReadRequest => match self.read_request(cx) {
                    Poll::Ready(Ok(body)) => {
                        let method = self.method.expect("checked");
                        match service::dispatch(method, &self.caller, &body, ctx) {
                            Action::Reply(message) => return self.reply(message),
                            Action::Fail(status) => return self.finish(status),
                            Action::AwaitJobEnd(key) => self.phase = Phase::AwaitJobEnd(key),
                            Action::Follow(follower) => self.phase = Phase::Follow(follower),
                            Action::WatchHealth => self.phase = Phase::WatchHealth { sent: None },
                        }
                        continue;
                    }
                    Poll::Ready(Err(Some(status))) => return self.finish(status),
                    Poll::Ready(Err(None)) => return Poll::Ready(()),
                    Poll::Pending => {}
                },
                Phase::AwaitJobEnd(key) => match ctx.jobs.get_mut(*key) {
                    None => return self.finish(Status::not_found("the job was removed while waiting for it")),
                    Some(job) if job.is_ended() => {
                        let message = encode_message(&job.to_proto());
                        return self.reply(message);
                    }
                    Some(job) => job.wait_for_end(cx.waker()),
                },
                Phase::Follow(_) => return self.poll_follow(cx, ctx),
                Phase::WatchHealth { sent } => {
                    let status = if ctx.shutting_down { ServingStatus::NotServing } else { ServingStatus::Serving };
                    if *sent != Some(status) {
                        *sent = Some(status);
                        let message = encode_message(&HealthCheckResponse { status: status as i32 });
                        if self.send_message(message).is_err() {
                            return Poll::Ready(());
                        }
                    }
                    if ctx.shutting_down {
                        return self.finish(Status::ok());
                    }
                    reactor::remember_waker(ctx.shutdown_waiters, cx.waker());
                }
            }
            // Waiting: notice a client cancel at once so its resources are freed.
            return if self.poll_cancelled(cx) { Poll::Ready(()) } else { Poll::Pending };
        }
    }

    /// Reads the single request message. `Err(None)` means the client reset the stream.
    fn read_request(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, Option<Status>>> {
        loop {
            match self.body.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(chunk);
                    match self.decoder.next_message() {
                        Ok(None) => {}
                        Ok(Some(message)) if self.request.is_none() => self.request = Some(message),
                        Ok(Some(_)) => {
                            return Poll::Ready(Err(Some(Status::invalid_argument(
                                "more than one request message on a unary or server-streaming call",
                            ))))
                        }
                        Err(status) => return Poll::Ready(Err(Some(status))),
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(None)),
                Poll::Ready(None) => {
                    return Poll::Ready(match (self.request.take(), self.decoder.buffered()) {
                        (Some(message), 0) => Ok(message),
                        (_, 0) => Err(Some(Status::internal("the request has no message"))),
                        (_, n) => Err(Some(Status::internal(format!("the request ends inside a message ({n} bytes)")))),
                    });
                }
            }
        }
    }

    fn poll_follow(&mut self, cx: &mut Context<'_>, ctx: &mut ServiceContext<'_>) -> Poll<()> {
        if let Responder::Idle(_) = self.response {
            if self.open().is_err() {
                return Poll::Ready(());
            }
        }
        let Phase::Follow(follower) = &mut self.phase else { unreachable!("called in the follow phase") };
        let Responder::Open(send) = &mut self.response else { return Poll::Ready(()) };
        loop {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            let Some(job) = ctx.jobs.get_mut(follower.key) else {
                return self.finish(Status::not_found("the job was removed while its output was streamed"));
            };
            let span = match job.output.next_span(&mut follower.cursor, MAX_CHUNK_DATA) {
                Ok(Some(span)) => span,
                Ok(None) => {
                    if !follower.follow || job.is_complete() {
                        return self.finish(Status::ok());
                    }
                    job.output.wait_for_output(cx.waker());
                    return Poll::Pending;
                }
                Err(err) => return self.finish(Status::internal(format!("cannot read the job's output: {err}"))),
            };
            let wanted = span.len + MAX_CHUNK_OVERHEAD;
            send.reserve_capacity(wanted);
            let capacity = send.capacity();
            if capacity < wanted.min(MIN_CHUNK_CAPACITY) {
                match send.poll_capacity(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(None | Some(Err(_))) => return Poll::Ready(()),
                }
            }
            let len = span.len.min(capacity - MAX_CHUNK_OVERHEAD);
            let stream = match span.stream {
                Stream::Stdout => OutputStream::Stdout,
                Stream::Stderr => OutputStream::Stderr,
            };
            let (header_len, message_len) = chunk_lengths(span.offset, stream, len);
            follower.start_message(header_len, message_len, span.position);
            let buffer = &mut follower.buffer;
            put_chunk_header(buffer, span.offset, stream, len);
            debug_assert_eq!(buffer.len(), header_len);
            if let Err(err) = job.output.read_span(&mut follower.cursor, len, buffer) {
                buffer.clear();
                return self.finish(Status::internal(format!("cannot read the job's output: {err}")));
            }
            let message = buffer.split().freeze();
            if send.send_data(message, false).is_err() {
                return Poll::Ready(());
            }
        }
    }

    /// True if the client has reset the stream.
    fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> bool {
        let reset = match &mut self.response {
            Responder::Idle(respond) => respond.poll_reset(cx),
            Responder::Open(send) => send.poll_reset(cx),
            Responder::Closed => return true,
        };
        reset.is_ready()
    }

    /// Sends the response headers.
    fn open(&mut self) -> Result<(), h2::Error> {
        if let Responder::Idle(respond) = &mut self.response {
            let response = Response::builder()
                .status(200)
                .header("content-type", grpc::CONTENT_TYPE)
                .body(())
                .expect("static headers are valid");
            let send = respond.send_response(response, false);
            self.response = match send {
                Ok(send) => Responder::Open(send),
                Err(e) => {
                    self.response = Responder::Closed;
                    return Err(e);
                }
            };
        }
        Ok(())
    }

    fn send_message(&mut self, message: Bytes) -> Result<(), h2::Error> {
        self.open()?;
        match &mut self.response {
            Responder::Open(send) => send.send_data(message, false),
            _ => Ok(()),
        }
    }

    /// Sends one message and OK.
    fn reply(&mut self, message: Bytes) -> Poll<()> {
        if self.send_message(message).is_ok() {
            return self.finish(Status::ok());
        }
        Poll::Ready(())
    }

    /// Ends the call with `status`: trailers after a response, or a Trailers-Only response if nothing was sent.
    ///
    /// If the client is still sending, no reset is sent here: an explicit reset would discard the queued status.
    /// When the call is dropped, h2 sends RST_STREAM(NO_ERROR) itself, after the queued frames, as RFC 9113
    /// §8.1 asks.
    fn finish(&mut self, status: Status) -> Poll<()> {
        if status.code != Code::Ok {
            log::debug!("call {:?} ends with {status}", self.method);
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from(status.code as i32));
        if !status.message.is_empty() {
            let encoded = grpc::percent_encode_message(&status.message);
            trailers.insert("grpc-message", HeaderValue::from_str(&encoded).expect("percent-encoded is visible ASCII"));
        }
        match std::mem::replace(&mut self.response, Responder::Closed) {
            Responder::Idle(mut respond) => {
                let mut response = Response::builder()
                    .status(200)
                    .header("content-type", grpc::CONTENT_TYPE)
                    .body(())
                    .expect("static headers are valid");
                response.headers_mut().extend(trailers);
                let _ = respond.send_response(response, true);
            }
            Responder::Open(mut send) => {
                let _ = send.send_trailers(trailers);
            }
            Responder::Closed => {}
        }
        Poll::Ready(())
    }

    /// Ends the call early (deadline, shutdown) if it is still running.
    pub fn abort(&mut self, status: Status) {
        let _ = self.finish(status);
    }
}

/// An OutputChunk message with `len` bytes of data: (bytes before the data, whole message with its gRPC header).
fn chunk_lengths(offset: u64, stream: OutputStream, len: usize) -> (usize, usize) {
    let fields = 1 + encoded_len_varint(offset) + 1 + encoded_len_varint(stream as u64) + 1;
    let header_len = MESSAGE_HEADER_LEN + fields + encoded_len_varint(len as u64);
    (header_len, header_len + len)
}

/// Writes the gRPC message header and the OutputChunk fields that come before `len` bytes of data.
fn put_chunk_header(buffer: &mut BytesMut, offset: u64, stream: OutputStream, len: usize) {
    let (header_len, total_len) = chunk_lengths(offset, stream, len);
    buffer.reserve(header_len);
    buffer.put_u8(0);
    buffer.put_u32((total_len - MESSAGE_HEADER_LEN) as u32);
    buffer.put_u8(0x08); // field 1 (offset), varint
    encode_varint(offset, buffer);
    buffer.put_u8(0x10); // field 2 (stream), varint
    encode_varint(stream as u64, buffer);
    buffer.put_u8(0x1a); // field 3 (data), length-delimited
    encode_varint(len as u64, buffer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::OutputChunk;
    use prost::Message;

    #[test]
    fn message_data_matches_the_spool_within_a_cache_line_and_moves_through_the_page() {
        let mut follower = Follower::new(0, OutputCursor::new(0), true);
        let mut lines = std::collections::HashSet::new();
        for (i, position) in [0u64, 1, 63, 64, 4095, 123_457, 1 << 33].into_iter().cycle().take(200).enumerate() {
            let header_len = 10 + i % 9;
            follower.start_message(header_len, 1000, position);
            let data_at = follower.buffer.as_ptr() as usize + header_len;
            assert_eq!(data_at % CACHE_LINE, position as usize % CACHE_LINE, "message {i}");
            assert!(follower.buffer.capacity() >= 1000, "room for the message");
            lines.insert(data_at / CACHE_LINE % (PAGE_SIZE / CACHE_LINE));
            follower.buffer.put_bytes(7, 1000);
            drop(follower.buffer.split());
        }
        assert_eq!(lines.len(), PAGE_SIZE / CACHE_LINE, "the data moves through every line of a page");
    }

    #[test]
    fn hand_built_chunk_decodes_as_output_chunk() {
        for (offset, len) in [(0u64, 0usize), (1, 1), (300, 127), (u64::MAX / 3, 70_000)] {
            let mut buffer = BytesMut::new();
            put_chunk_header(&mut buffer, offset, OutputStream::Stderr, len);
            assert!(buffer.len() <= MAX_CHUNK_OVERHEAD);
            buffer.extend(std::iter::repeat_n(0xab, len));
            let mut decoder = MessageDecoder::new(1 << 20);
            decoder.push(buffer.freeze());
            let body = decoder.next_message().unwrap().unwrap();
            let chunk = OutputChunk::decode(body).unwrap();
            assert_eq!(chunk.offset, offset);
            assert_eq!(chunk.stream, OutputStream::Stderr as i32);
            assert_eq!(chunk.data, vec![0xab; len]);
        }
    }
}
