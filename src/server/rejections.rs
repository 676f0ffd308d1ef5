//! Log lines about connections the server turns away: failed TLS handshakes (unknown CA, revoked or unpinned
//! certificate, not TLS at all), refused identities, connections over a cap, handshakes that never finished.
//!
//! An operator needs to see them at the default level (a client whose certificate is refused gets no other
//! trace on the server), but a client that opens connections in a loop must not be able to fill the disk or
//! drown everything else in the log. So at most [`BURST`] such lines are written a second; the rest are
//! counted, and the next line written says how many were left out.

use std::fmt;
use std::time::{Duration, Instant};

/// Rejection lines written per [`WINDOW`] at most.
pub const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct RejectionLog {
    window_start: Instant,
    written_in_window: u32,
    /// Lines left out since the last one written.
    left_out: u64,
}

impl Default for RejectionLog {
    fn default() -> Self {
        RejectionLog { window_start: Instant::now(), written_in_window: 0, left_out: 0 }
    }
}

impl RejectionLog {
    /// Logs `line` at info unless this second's lines are used up.
    pub fn log(&mut self, line: fmt::Arguments<'_>) {
        self.log_at(Instant::now(), line);
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
        let mut rejections = RejectionLog { window_start: start, written_in_window: 0, left_out: 0 };
        for i in 0..25 {
            rejections.log_at(start + Duration::from_millis(i * 10), format_args!("refused {i}"));
        }
        assert_eq!(rejections.written_in_window, BURST);
        assert_eq!(rejections.left_out(), 25 - u64::from(BURST));
        rejections.log_at(start + Duration::from_millis(1001), format_args!("refused again"));
        assert_eq!((rejections.written_in_window, rejections.left_out()), (1, 0));
    }
}
