//! What each reactor token stands for. Tokens are computed from ids, not stored, so a stale event for a closed
//! descriptor simply finds no owner.

use mio::Token;

use crate::jobs::{JobKey, Stream};

/// Where a readiness event comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Listener,
    Signals,
    Connection(u64),
    JobExit(JobKey),
    JobOutput(JobKey, Stream),
    /// The pipe a starting job reports its command's start on (its exec's, or its init's).
    JobStartReport(JobKey),
    /// The metrics endpoint's listener (`--metrics-listen`).
    MetricsListener,
    /// A connection to the metrics endpoint.
    MetricsExchange(u64),
    /// The spool writer's socket: it confirms the job output it wrote (see `jobs::spool::writer`).
    SpoolWriter,
    /// The segment mover's socket: it answers what it was asked (see `jobs::spool::mover`).
    SegmentMover,
}

/// Connection tokens have the top bit set; job and metrics exchange tokens pack the key or id with a 3-bit kind.
/// Key 0 (never a job's nor an exchange's) holds the listeners and the signalfd.
const CONNECTION_BIT: usize = 1 << (usize::BITS - 1);

impl Source {
    pub fn token(self) -> Token {
        Token(match self {
            Source::Listener => 0,
            Source::Signals => 1,
            Source::Connection(id) => CONNECTION_BIT | id as usize,
            Source::JobExit(key) => (key as usize) << 3 | 1,
            Source::JobOutput(key, Stream::Stdout) => (key as usize) << 3 | 2,
            Source::JobOutput(key, Stream::Stderr) => (key as usize) << 3 | 3,
            Source::JobStartReport(key) => (key as usize) << 3 | 4,
            Source::MetricsListener => 2,
            Source::SpoolWriter => 3,
            Source::SegmentMover => 4,
            Source::MetricsExchange(id) => (id as usize) << 3 | 5,
        })
    }

    pub fn from_token(token: Token) -> Source {
        let value = token.0;
        if value & CONNECTION_BIT != 0 {
            return Source::Connection((value & !CONNECTION_BIT) as u64);
        }
        let key = (value >> 3) as JobKey;
        match (key, value & 7) {
            (0, 0) => Source::Listener,
            (0, 2) => Source::MetricsListener,
            (0, 3) => Source::SpoolWriter,
            (0, 4) => Source::SegmentMover,
            (0, _) => Source::Signals,
            (key, 1) => Source::JobExit(key),
            (key, 2) => Source::JobOutput(key, Stream::Stdout),
            (key, 3) => Source::JobOutput(key, Stream::Stderr),
            (id, 5) => Source::MetricsExchange(id),
            (key, _) => Source::JobStartReport(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for source in [
            Source::Listener,
            Source::Signals,
            Source::Connection(0),
            Source::Connection(77),
            Source::JobExit(1),
            Source::JobOutput(1, Stream::Stdout),
            Source::JobOutput(123_456, Stream::Stderr),
            Source::JobStartReport(1),
            Source::JobStartReport(987_654_321),
            Source::MetricsListener,
            Source::MetricsExchange(1),
            Source::MetricsExchange(123_456),
            Source::SpoolWriter,
            Source::SegmentMover,
        ] {
            assert_eq!(Source::from_token(source.token()), source);
        }
    }
}
