//! Length-prefixed message framing: 1 byte compressed flag, 4 bytes big-endian length, then the message.

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const MESSAGE_HEADER_LEN: usize = 5;

/// Frames one protobuf message.
pub fn encode_message<M: prost::Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(MESSAGE_HEADER_LEN + message.encoded_len());
    encode_message_into(message, &mut buf);
    buf.freeze()
}

/// Frames one protobuf message onto the end of `buf`.
pub fn encode_message_into<M: prost::Message>(message: &M, buf: &mut BytesMut) {
    let len = message.encoded_len();
    buf.reserve(MESSAGE_HEADER_LEN + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    #[allow(clippy::expect_used, reason = "a BytesMut grows: encoding into it never runs out of room")]
    message.encode(buf).expect("reserved enough capacity");
}

/// A message the decoder refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// The compressed flag is set; runnel speaks only the identity encoding.
    Compressed,
    /// The message announces more bytes than the limit.
    TooLarge { len: usize, max: usize },
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::Compressed => {
                f.write_str("compressed messages are not supported: send with grpc-encoding identity")
            }
            FramingError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes is larger than the limit of {max} bytes")
            }
        }
    }
}

/// Reassembles whole messages from DATA-frame bytes.
///
/// A message may span frames and a frame may hold several messages; `push` accepts bytes as they come and
/// `next_message` hands back each complete message body. Over-long messages are refused as soon as their
/// header arrives, before their body is buffered.
///
/// A frame holding whole messages (the usual case for a stream of output chunks) is not copied: its messages
/// are handed back as slices of it. Only a message split across frames is gathered into a buffer.
#[derive(Debug)]
pub struct MessageDecoder {
    /// The last frame pushed, kept as received while nothing is gathered in `buffer`.
    frame: Bytes,
    /// Bytes of a message split across frames.
    buffer: BytesMut,
    max_message: usize,
}

impl MessageDecoder {
    pub fn new(max_message: usize) -> Self {
        MessageDecoder { frame: Bytes::new(), buffer: BytesMut::new(), max_message }
    }

    pub fn push(&mut self, data: Bytes) {
        if self.frame.is_empty() && self.buffer.is_empty() {
            self.frame = data;
            return;
        }
        self.gather();
        self.buffer.extend_from_slice(&data);
    }

    /// Moves what is left of `frame` into `buffer`, so a message can continue in the next frame.
    fn gather(&mut self) {
        if !self.frame.is_empty() {
            self.buffer.extend_from_slice(&self.frame);
            self.frame = Bytes::new();
        }
    }

    /// Bytes received that do not yet form a whole message.
    pub fn buffered(&self) -> usize {
        self.frame.len() + self.buffer.len()
    }

    /// The next complete message body, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FramingError> {
        let pending: &[u8] = if self.frame.is_empty() { &self.buffer } else { &self.frame };
        let &[compressed, a, b, c, d, ..] = pending else {
            self.gather();
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if compressed != 0 {
            return Err(FramingError::Compressed);
        }
        if len > self.max_message {
            return Err(FramingError::TooLarge { len, max: self.max_message });
        }
        if pending.len() < MESSAGE_HEADER_LEN + len {
            // Only what arrived is held: reserving the announced length would let a client make the server
            // allocate the limit on every stream by sending headers alone.
            self.gather();
            return Ok(None);
        }
        if self.frame.is_empty() {
            self.buffer.advance(MESSAGE_HEADER_LEN);
            Ok(Some(self.buffer.split_to(len).freeze()))
        } else {
            self.frame.advance(MESSAGE_HEADER_LEN);
            Ok(Some(self.frame.split_to(len)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn splits_and_joins_across_pushes() {
        let mut wire = frame(b"hello");
        wire.extend(frame(b""));
        wire.extend(frame(&[0xff; 300]));
        let mut decoder = MessageDecoder::new(1024);
        let mut got = Vec::new();
        for byte in &wire {
            decoder.push(Bytes::copy_from_slice(std::slice::from_ref(byte)));
            while let Some(msg) = decoder.next_message().unwrap() {
                got.push(msg);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(&got[0][..], b"hello");
        assert!(got[1].is_empty());
        assert_eq!(&got[2][..], &[0xff; 300][..]);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn whole_messages_in_one_frame_are_not_copied() {
        let mut wire = frame(b"first");
        wire.extend(frame(&[7; 1000]));
        wire.extend(&frame(b"split across frames")[..9]);
        let wire = Bytes::from(wire);
        let mut decoder = MessageDecoder::new(4096);
        decoder.push(wire.clone());
        let first = decoder.next_message().unwrap().unwrap();
        let second = decoder.next_message().unwrap().unwrap();
        assert_eq!(&first[..], b"first");
        assert_eq!(&second[..], &[7; 1000][..]);
        // Slices of the pushed frame, not copies.
        assert_eq!(first.as_ptr(), wire[MESSAGE_HEADER_LEN..].as_ptr());
        assert_eq!(second.as_ptr(), wire[2 * MESSAGE_HEADER_LEN + 5..].as_ptr());
        // The rest of a message split across frames is gathered.
        assert_eq!(decoder.next_message().unwrap(), None);
        assert_eq!(decoder.buffered(), 9);
        decoder.push(Bytes::copy_from_slice(&frame(b"split across frames")[9..]));
        decoder.push(Bytes::copy_from_slice(&frame(b"next")));
        assert_eq!(&decoder.next_message().unwrap().unwrap()[..], b"split across frames");
        assert_eq!(&decoder.next_message().unwrap().unwrap()[..], b"next");
        assert_eq!(decoder.next_message().unwrap(), None);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn refuses_oversized_before_body_arrives() {
        let mut decoder = MessageDecoder::new(10);
        decoder.push(Bytes::from_static(&[0, 0, 0, 0, 11]));
        assert_eq!(decoder.next_message().unwrap_err(), FramingError::TooLarge { len: 11, max: 10 });
    }

    #[test]
    fn an_announced_length_is_not_allocated_before_its_bytes_arrive() {
        let mut decoder = MessageDecoder::new(4 << 20);
        decoder.push(Bytes::from_static(&[0, 0, 0x40, 0, 0, 1, 2, 3]));
        decoder.push(Bytes::from_static(&[4, 5, 6]));
        assert_eq!(decoder.next_message().unwrap(), None);
        assert_eq!(decoder.buffered(), 11);
        assert!(decoder.buffer.capacity() < 64 * 1024, "holds {} bytes", decoder.buffer.capacity());
    }

    #[test]
    fn refuses_compressed() {
        let mut decoder = MessageDecoder::new(10);
        decoder.push(Bytes::from_static(&[1, 0, 0, 0, 1, 0]));
        assert_eq!(decoder.next_message().unwrap_err(), FramingError::Compressed);
    }
}
