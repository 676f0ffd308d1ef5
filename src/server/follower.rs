//! [`Follower`]: a StreamOutput call's reading position in a job's output, and the output messages it builds.
//!
//! A woken follower asks the job's log for the next span at its cursor, waits for HTTP/2 send capacity, and
//! builds one `OutputChunk` message no larger than h2 grants: the gRPC and protobuf headers written by hand,
//! the data `pread` straight into the message buffer, which the follower reuses. A client that stops reading
//! grants no capacity, and its follower waits in h2 at no other cost.

use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use h2::SendStream;
use prost::encoding::{encode_varint, encoded_len_varint};

use super::metrics::Metrics;
use super::wire::{self, CallError};
use crate::grpc::MESSAGE_HEADER_LEN;
use crate::jobs::{JobKey, JobTable, OutputCursor, Stream};
use crate::proto::OutputStream;

/// Largest output chunk in one message: large enough that framing costs little, small enough to interleave
/// followers fairly and to fit every client's default 4 MiB message limit with room to spare. Each message
/// has a fixed cost on both ends (a buffer, a `pread`, h2's and gRPC's framing, the client's decoding);
/// twice this measured no cheaper and doubles what each follower holds in flight (`docs/performance.md`).
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

/// How a follow ended.
pub enum FollowEnd {
    /// Everything there is to send was sent (the job is complete, or the call did not ask to follow).
    Done,
    /// The client went away or reset the stream.
    Gone,
    /// It cannot go on.
    Failed(CallError),
}

/// A StreamOutput call's reading position.
pub struct Follower {
    key: JobKey,
    cursor: OutputCursor,
    follow: bool,
    /// Without `follow`: where the output ended when the call was first polled, which it sends up to ("what
    /// exists now"), waiting for the spool writer where it has not written all of that yet.
    until: Option<u64>,
    /// Reused for every message, so the allocator sees one buffer per follower, not one per chunk.
    buffer: BytesMut,
    /// Which cache line of a 4 KiB page the next message starts on (see [`Follower::start_message`]).
    page_line: usize,
}

impl Follower {
    pub fn new(key: JobKey, cursor: OutputCursor, follow: bool) -> Self {
        Follower { key, cursor, follow, until: None, buffer: BytesMut::new(), page_line: 0 }
    }

    /// Sends what output there is on `send`, as far as h2 grants capacity. `Pending` while waiting for output
    /// or capacity (the waker is with the job's log or with h2).
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        jobs: &mut JobTable,
        send: &mut SendStream<bytes::Bytes>,
        metrics: &mut Metrics,
    ) -> Poll<FollowEnd> {
        loop {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(FollowEnd::Gone);
            }
            let Some(job) = jobs.get_mut(self.key) else {
                return Poll::Ready(FollowEnd::Failed(CallError::JobRemoved("its output was streamed")));
            };
            let until = match (self.follow, self.until) {
                (true, _) => u64::MAX,
                (false, Some(until)) => until,
                (false, None) => *self.until.insert(job.output.end()),
            };
            let wanted = until.saturating_sub(self.cursor.offset()).min(MAX_CHUNK_DATA as u64) as usize;
            let span = match job.output.next_span(&mut self.cursor, wanted) {
                Ok(Some(span)) if wanted > 0 => span,
                Ok(_) => {
                    if self.cursor.offset() >= until || job.is_complete() {
                        return Poll::Ready(FollowEnd::Done);
                    }
                    job.output.wait_for_output(cx.waker());
                    return Poll::Pending;
                }
                Err(err) => return Poll::Ready(FollowEnd::Failed(CallError::OutputUnreadable(err))),
            };
            let wanted = span.len + MAX_CHUNK_OVERHEAD;
            send.reserve_capacity(wanted);
            let capacity = send.capacity();
            if capacity < wanted.min(MIN_CHUNK_CAPACITY) {
                match send.poll_capacity(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(None | Some(Err(_))) => return Poll::Ready(FollowEnd::Gone),
                }
            }
            let len = span.len.min(capacity - MAX_CHUNK_OVERHEAD);
            let stream = wire::output_stream(span.stream);
            let (header_len, message_len) = chunk_lengths(span.offset, stream, len);
            self.start_message(header_len, message_len, span.position);
            put_chunk_header(&mut self.buffer, span.offset, stream, len);
            debug_assert_eq!(self.buffer.len(), header_len);
            if let Err(err) = job.output.read_span(&mut self.cursor, len, &mut self.buffer) {
                self.buffer.clear();
                return Poll::Ready(FollowEnd::Failed(CallError::OutputUnreadable(err)));
            }
            let message = self.buffer.split().freeze();
            if send.send_data(message, false).is_err() {
                return Poll::Ready(FollowEnd::Gone);
            }
            metrics.record_output_sent(span.stream == Stream::Stderr, len as u64);
        }
    }

    /// Makes room for a message of `message_len` bytes whose data starts `header_len` bytes in, and places it
    /// so that the data sits at the same offset within a cache line as the spool bytes `pread` copies into it
    /// (`file_position`). The kernel copies with `rep movsb`, which on AMD Zen is several times slower when
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
    use crate::grpc::MessageDecoder;
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
