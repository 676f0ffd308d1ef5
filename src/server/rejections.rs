//! Log lines about connections the server turns away: failed TLS handshakes (unknown CA, revoked or unpinned
//! certificate, not TLS at all), refused identities, connections over a cap, handshakes that never finished.
//!
//! An operator needs to see them at the default level (a client whose certificate is refused gets no other
//! trace on the server), but a client that opens connections in a loop must not be able to fill the disk or
//! drown everything else in the log. So at most [`BURST`] such lines are written a second; the rest are
//! counted, and the next line written says how many were left out.
//!
//! Every connection turned away is also counted, once, under the first reason it was turned away for
//! ([`Rejection`]), logged or not, for the server's metrics.

use std::fmt;
use std::time::{Duration, Instant};

/// Rejection lines written per [`WINDOW`] at most.
pub const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

/// Why a connection was turned away, or closed before it could be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The TLS handshake failed: an unknown CA, a revoked or unpinned certificate, not TLS at all.
    TlsFailed,
    /// TLS was established but the HTTP/2 handshake failed (not a gRPC client): not logged at info.
    Http2Failed,
    /// The certificate was verified but names no identity.
    NoIdentity,
    /// Over `--max-connections` or `--max-connections-per-client`.
    OverCap,
    /// The handshakes did not finish in time.
    HandshakeTimeout,
    /// Closed by the peer during the TLS handshake (a port check, a client giving up): not logged at info.
    ClosedDuringHandshake,
    /// An unfinished handshake closed to make room for a new connection: not logged at info.
    Evicted,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::TlsFailed,
        Rejection::Http2Failed,
        Rejection::NoIdentity,
        Rejection::OverCap,
        Rejection::HandshakeTimeout,
        Rejection::ClosedDuringHandshake,
        Rejection::Evicted,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::TlsFailed => "tls",
            Rejection::Http2Failed => "http2",
            Rejection::NoIdentity => "no_identity",
            Rejection::OverCap => "over_cap",
            Rejection::HandshakeTimeout => "handshake_timeout",
            Rejection::ClosedDuringHandshake => "closed_during_handshake",
            Rejection::Evicted => "evicted",
        }
    }
}

#[derive(Debug)]
pub struct RejectionLog {
    window_start: Instant,
    written_in_window: u32,
    /// Lines left out since the last one written.
    left_out: u64,
    /// Rejections of each kind so far (indexed as [`Rejection::ALL`]).
    counts: [u64; Rejection::ALL.len()],
}

impl Default for RejectionLog {
    fn default() -> Self {
        RejectionLog::starting_at(Instant::now())
    }
}

impl RejectionLog {
    fn starting_at(window_start: Instant) -> Self {
        RejectionLog { window_start, written_in_window: 0, left_out: 0, counts: [0; Rejection::ALL.len()] }
    }

    /// A connection is turned away for `kind`: counted under it unless `counted` says the connection already
    /// was (under an earlier reason), and `line` logged at info unless this second's lines are used up (no line:
    /// the caller logs at debug if at all).
    pub fn reject(&mut self, counted: &mut bool, kind: Rejection, line: Option<fmt::Arguments<'_>>) {
        if !std::mem::replace(counted, true) {
            if let Some(count) = Rejection::ALL.iter().position(|k| *k == kind).and_then(|i| self.counts.get_mut(i)) {
                *count += 1;
            }
        }
        if let Some(line) = line {
            self.log_at(Instant::now(), line);
        }
    }

    /// Rejections so far, by kind.
    pub fn counts(&self) -> [(Rejection, u64); Rejection::ALL.len()] {
        std::array::from_fn(|i| (Rejection::ALL[i], self.counts[i]))
    }

    fn log_at(&mut self, now: Instant, line: fmt::Arguments<'_>) {
        if now.duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.written_in_window = 0;
        }
        if self.written_in_window >= BURST {
            self.left_out += 1;
            return;
        }
        self.written_in_window += 1;
        match std::mem::take(&mut self.left_out) {
            0 => log::info!("{line}"),
            left_out => log::info!("{line} ({left_out} more rejections not logged before this one)"),
        }
    }

    /// Lines left out since the last one written, for tests.
    #[cfg(test)]
    fn left_out(&self) -> u64 {
        self.left_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_a_burst_a_second_and_the_next_line_counts_what_was_left_out() {
        let start = Instant::now();
        let mut rejections = RejectionLog::starting_at(start);
        for i in 0..25 {
            rejections.log_at(start + Duration::from_millis(i * 10), format_args!("refused {i}"));
        }
        assert_eq!(rejections.written_in_window, BURST);
        assert_eq!(rejections.left_out(), 25 - u64::from(BURST));
        rejections.log_at(start + Duration::from_millis(1001), format_args!("refused again"));
        assert_eq!((rejections.written_in_window, rejections.left_out()), (1, 0));
    }

    #[test]
    fn every_connection_turned_away_is_counted_once_logged_or_not() {
        let mut rejections = RejectionLog::default();
        for _ in 0..30 {
            rejections.reject(&mut false, Rejection::TlsFailed, Some(format_args!("refused")));
        }
        let mut counted = false;
        rejections.reject(&mut counted, Rejection::NoIdentity, Some(format_args!("no identity")));
        rejections.reject(&mut counted, Rejection::Evicted, None);
        rejections.reject(&mut false, Rejection::Evicted, None);
        let counts = rejections.counts();
        assert_eq!(counts[0], (Rejection::TlsFailed, 30), "lines left out are still counted");
        assert_eq!(counts[2], (Rejection::NoIdentity, 1));
        assert_eq!(counts[6], (Rejection::Evicted, 1), "a connection already counted is not counted again");
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 32);
    }
}
