//! The gRPC-over-HTTP/2 wire rules, kept apart from any connection or job state so the server and the
//! `client` subcommand share one implementation.
//!
//! [`Code`]/[`Status`] are the status model; [`MessageDecoder`] turns DATA-frame bytes (whose boundaries do not
//! line up with messages) into whole messages; [`encode_message`] adds the 5-byte length prefix; the header
//! helpers parse `grpc-timeout` and percent-encode `grpc-message` as the spec requires.

mod codec;
mod status;

pub use codec::{encode_message, encode_message_into, MessageDecoder, MESSAGE_HEADER_LEN};
pub use status::{Code, Status};

use std::time::Duration;

/// Largest request message the server accepts; what gRPC servers in other languages default to.
pub const MAX_REQUEST_MESSAGE: usize = 4 * 1024 * 1024;

/// Largest response message the client accepts. Responses are bounded by the server's own choices
/// (ListJobs of `--max-jobs` jobs is the largest), so allow more than a request.
pub const MAX_RESPONSE_MESSAGE: usize = 64 * 1024 * 1024;

pub const CONTENT_TYPE: &str = "application/grpc";

/// The `:path` of every method the server serves; the server routes on these and the client calls them.
pub mod path {
    pub const START_JOB: &str = "/runnel.v1.JobService/StartJob";
    pub const STOP_JOB: &str = "/runnel.v1.JobService/StopJob";
    pub const GET_JOB: &str = "/runnel.v1.JobService/GetJob";
    pub const LIST_JOBS: &str = "/runnel.v1.JobService/ListJobs";
    pub const WAIT_JOB: &str = "/runnel.v1.JobService/WaitJob";
    pub const STREAM_OUTPUT: &str = "/runnel.v1.JobService/StreamOutput";
    pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
    pub const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
}

/// Parses a `grpc-timeout` header value: 1 to 8 ASCII digits followed by one unit letter.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
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
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' && i + 2 < value.len() {
            let hex = std::str::from_utf8(&value[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(byte) = hex {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
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
    fn message_decoding_never_fails() {
        assert_eq!(percent_decode_message(b"bad %zz and %4"), "bad %zz and %4");
        assert_eq!(percent_decode_message(b"%FF"), "\u{fffd}");
        assert_eq!(percent_decode_message(b"%"), "%");
    }
}
