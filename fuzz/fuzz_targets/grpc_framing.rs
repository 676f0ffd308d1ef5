//! gRPC message framing (`grpc::codec::MessageDecoder`) fed the same bytes whole and split at arbitrary points:
//! the same messages, or the same error, must come out, and nothing may panic or buffer more than arrived.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use runnel::grpc::MessageDecoder;

#[derive(Arbitrary, Debug)]
struct Input {
    max_message: u16,
    cuts: Vec<u16>,
    data: Vec<u8>,
}

/// Every message (or the first error) from pushing `chunks` in turn, draining after each push.
fn decode<'a>(max_message: usize, chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Vec<u8>>, Option<String>) {
    let mut decoder = MessageDecoder::new(max_message);
    let (mut messages, mut pushed) = (Vec::new(), 0);
    for chunk in chunks {
        decoder.push(Bytes::copy_from_slice(chunk));
        pushed += chunk.len();
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    assert!(message.len() <= max_message, "a message over the limit came out");
                    messages.push(message.to_vec());
                }
                Ok(None) => break,
                Err(err) => return (messages, Some(err.to_string())),
            }
        }
        assert!(decoder.buffered() <= pushed, "buffered more than arrived");
    }
    (messages, None)
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max_message);
    let whole = decode(max, std::iter::once(&input.data[..]));
    let mut cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c) % (input.data.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let bounds: Vec<usize> = std::iter::once(0).chain(cuts).chain(std::iter::once(input.data.len())).collect();
    let pieces = bounds.windows(2).map(|w| &input.data[w[0]..w[1]]);
    assert_eq!(decode(max, pieces), whole, "splitting the bytes changed what was decoded");
});
