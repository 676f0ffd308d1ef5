//! The headers and trailers of a call: what a request carries, what a response starts with, and the status
//! that ends it. A status travels in `grpc-status` (decimal, required even for OK) and `grpc-message` (UTF-8,
//! percent-encoded), in the trailers or, for a call that fails before any message, in a Trailers-Only response.

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response};

use super::{Code, Status, CONTENT_TYPE};

/// Longest status message sent, in bytes before encoding: a message is for a person to read, and longer ones are
/// cut at a character boundary.
const MAX_STATUS_MESSAGE: usize = 1024;

/// The header that carries a call's deadline.
pub const TIMEOUT: &str = "grpc-timeout";
/// A response header with the server's version (`runnel client version` shows it), on every answer.
pub const SERVER_VERSION: &str = "runnel-server-version";
const STATUS: &str = "grpc-status";
const MESSAGE: &str = "grpc-message";

/// A request's headers for `path` on the server named `authority`, with a deadline if given.
pub fn request(authority: &str, path: &str, timeout: Option<Duration>) -> Request<()> {
    let mut request = Request::post(format!("https://{authority}{path}"))
        .header("content-type", CONTENT_TYPE)
        .header("te", "trailers")
        .header("user-agent", concat!("runnel/", env!("CARGO_PKG_VERSION")));
    if let Some(timeout) = timeout {
        request = request.header(TIMEOUT, format_timeout(timeout));
    }
    #[allow(
        clippy::expect_used,
        reason = "the client checked the authority when it connected; paths are the service's"
    )]
    request.body(()).expect("valid request parts")
}

/// A response's headers: 200 and the gRPC content type.
pub(super) fn response() -> Response<()> {
    #[allow(clippy::expect_used, reason = "the same constant headers every time")]
    Response::builder()
        .status(200)
        .header("content-type", CONTENT_TYPE)
        .header(SERVER_VERSION, env!("CARGO_PKG_VERSION"))
        .body(())
        .expect("static headers are valid")
}

/// The trailers (or the status part of a Trailers-Only response) that end a call with `status`.
pub(super) fn trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(STATUS, HeaderValue::from(status.code as i32));
    if !status.message.is_empty() {
        let message = clip_to_char(&status.message, MAX_STATUS_MESSAGE);
        // Percent-encoded text is visible ASCII, which a header value always takes.
        let encoded = HeaderValue::from_str(&percent_encode_message(message));
        trailers.insert(MESSAGE, encoded.unwrap_or(HeaderValue::from_static("(message not encodable)")));
    }
    trailers
}

/// The longest start of `text` of at most `max` bytes that ends on a character boundary.
fn clip_to_char(text: &str, max: usize) -> &str {
    let end = (0..=max.min(text.len())).rev().find(|&end| text.is_char_boundary(end)).unwrap_or(0);
    text.get(..end).unwrap_or_default()
}

/// The status in a header block (trailers, or a Trailers-Only response), if it has one.
pub fn status_in(headers: &HeaderMap) -> Option<Status> {
    let code = headers.get(STATUS)?;
    let code = std::str::from_utf8(code.as_bytes()).ok().and_then(|c| c.parse().ok()).unwrap_or(2);
    let message = headers.get(MESSAGE).map(|m| percent_decode_message(m.as_bytes())).unwrap_or_default();
    Some(Status::new(Code::from_i32(code), message))
}

/// Parses a `grpc-timeout` header value: 1 to 8 ASCII digits followed by one unit letter.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match *unit.first()? {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a deadline for the `grpc-timeout` header, in the finest unit that fits in 8 digits.
pub fn format_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let candidates = [
        (timeout.as_nanos(), 'n'),
        (timeout.as_micros(), 'u'),
        (timeout.as_millis(), 'm'),
        (timeout.as_secs() as u128, 'S'),
        (timeout.as_secs() as u128 / 60, 'M'),
    ];
    for (amount, unit) in candidates {
        if amount <= MAX {
            return format!("{amount}{unit}");
        }
    }
    format!("{}H", (timeout.as_secs() / 3600).min(MAX as u64))
}

/// Percent-encodes a status message for the `grpc-message` header: `%` and every byte outside 0x20–0x7E.
pub fn percent_encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes a `grpc-message` header. Never fails: a malformed escape is kept as it is, invalid UTF-8 is replaced.
pub fn percent_decode_message(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some((&byte, after)) = rest.split_first() {
        if let (b'%', Some(hex)) = (byte, after.get(..2)) {
            if let Some(decoded) = std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(decoded);
                rest = after.get(2..).unwrap_or_default();
                continue;
            }
        }
        out.push(byte);
        rest = after;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_units_and_bounds() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse_timeout(b"123456789S"), None, "more than 8 digits");
        assert_eq!(parse_timeout(b"S"), None);
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(parse_timeout(b"-1S"), None);
        assert_eq!(parse_timeout(b""), None);
    }

    #[test]
    fn timeout_round_trips() {
        for d in [Duration::from_millis(1), Duration::from_secs(5), Duration::from_secs(86_400 * 400)] {
            let parsed = parse_timeout(format_timeout(d).as_bytes()).unwrap();
            assert!(parsed <= d && d - parsed < Duration::from_secs(3600), "{d:?} -> {parsed:?}");
        }
    }

    #[test]
    fn message_encoding_round_trips_specials() {
        let message = "tab\there\r\nemoji 🎉 100% done";
        let encoded = percent_encode_message(message);
        assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        assert!(encoded.contains("%25"));
        assert_eq!(percent_decode_message(encoded.as_bytes()), message);
    }

    #[test]
    fn a_status_survives_trailers() {
        for status in [Status::ok(), Status::new(Code::NotFound, "no job 42: ünïcode\r\n100%")] {
            assert_eq!(status_in(&trailers(&status)), Some(status));
        }
        assert_eq!(status_in(&HeaderMap::new()), None);
        let long = Status::new(Code::Internal, "ü".repeat(2000));
        let read = status_in(&trailers(&long)).unwrap();
        assert_eq!(read.message, "ü".repeat(MAX_STATUS_MESSAGE / 2), "cut at a character boundary");
    }

    #[test]
    fn message_decoding_never_fails() {
        assert_eq!(percent_decode_message(b"bad %zz and %4"), "bad %zz and %4");
        assert_eq!(percent_decode_message(b"%FF"), "\u{fffd}");
        assert_eq!(percent_decode_message(b"%"), "%");
    }
}
