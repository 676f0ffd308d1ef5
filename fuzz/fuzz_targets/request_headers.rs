//! What the server reads from a request's headers and small fields: the `grpc-timeout` value, a
//! percent-encoded `grpc-message`, ListJobs' page token and state filter, StopJob's grace period; and the
//! metrics endpoint's HTTP request head; a server reflection request. None may panic; a deadline must not
//! overflow the clock, what we print we read back, a request head once complete means the same whatever follows
//! it, and a reflection request is refused or answered with one well-formed response.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use runnel::grpc as headers;
use prost::Message;
use runnel::proto::reflection::ServerReflectionResponse;
use runnel::server::reflection;
use runnel::server::scrape::{self, Request};
use runnel::server::wire;

#[derive(Arbitrary, Debug)]
struct Input {
    timeout: Vec<u8>,
    message: Vec<u8>,
    page_size: u32,
    page_token: String,
    states: Vec<i32>,
    grace_seconds: i64,
    grace_nanos: i32,
    metrics_head: Vec<u8>,
    after_head: Vec<u8>,
    reflection_request: Vec<u8>,
}

fuzz_target!(|input: Input| {
    if let Some(timeout) = headers::parse_timeout(&input.timeout) {
        // The server schedules the call's deadline at now + timeout: that must not overflow.
        assert!(std::time::Instant::now().checked_add(timeout).is_some(), "{timeout:?}");
        // What we print, we read back.
        let again = headers::parse_timeout(headers::format_timeout(timeout).as_bytes());
        assert!(again.is_some(), "{timeout:?} did not survive its own format");
    }
    let decoded = headers::percent_decode_message(&input.message);
    assert_eq!(headers::percent_decode_message(headers::percent_encode_message(&decoded).as_bytes()), decoded);
    if let Ok(page) = wire::page(input.page_size, &input.page_token) {
        let _ = page;
    }
    let _ = wire::states(&input.states);
    // Any duration converts or is refused (the service then caps what converts at its maximum grace).
    let _ = wire::grace_period(Some(prost_types_duration(input.grace_seconds, input.grace_nanos)));
    if let Some(request) = scrape::parse_request(&input.metrics_head).filter(|r| *r != Request::HeadTooLarge) {
        let longer = [input.metrics_head.as_slice(), input.after_head.as_slice()].concat();
        assert_eq!(scrape::parse_request(&longer), Some(request), "bytes after a complete head changed it");
        let _ = scrape::response(request, "");
    }
    if let Ok(framed) = reflection::answer(&bytes::Bytes::from(input.reflection_request)) {
        let mut decoder = headers::MessageDecoder::new(1 << 24);
        decoder.push(framed);
        let message = decoder.next_message().ok().flatten().expect("one whole message");
        let response = ServerReflectionResponse::decode(message).expect("a response that decodes");
        assert!(response.message_response.is_some(), "every answer says something");
    }
});

fn prost_types_duration(seconds: i64, nanos: i32) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos }
}
