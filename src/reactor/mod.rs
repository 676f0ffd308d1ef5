//! The event loop's building blocks: mio tokens for every descriptor, real wakers that put a task back on the
//! ready queue, and timers.
//!
//! A *task* is a connection or one call on a connection; both are plain state machines polled by the loop with
//! a [`std::task::Context`] whose waker is the task's own. h2 stores that waker when a task must wait for the
//! connection (capacity, data, headers), and the job table stores it when a call waits for output or a job's
//! end; either way, waking it puts exactly that task on the ready queue. Socket, pipe and pidfd readiness
//! arrives from mio and is mapped to a task or a job through its [`Token`].

mod timers;
mod wake;

pub use timers::Timers;
pub use wake::{TaskId, WakeQueue};

use std::task::Waker;

use mio::Token;

use crate::jobs::{JobKey, PipeSide};

/// What a reactor token stands for. Tokens are computed, not stored, so a stale event for a closed descriptor
/// simply finds no owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Listener,
    Signals,
    Connection(u64),
    JobExit(JobKey),
    JobOutput(JobKey, PipeSide),
}

/// Connection tokens have the top bit set; job tokens pack the job key with a 2-bit kind.
const CONNECTION_BIT: usize = 1 << (usize::BITS - 1);

impl Source {
    pub fn token(self) -> Token {
        Token(match self {
            Source::Listener => 0,
            Source::Signals => 1,
            Source::Connection(id) => CONNECTION_BIT | id as usize,
            Source::JobExit(key) => (key as usize) << 2 | 1,
            Source::JobOutput(key, PipeSide::Stdout) => (key as usize) << 2 | 2,
            Source::JobOutput(key, PipeSide::Stderr) => (key as usize) << 2 | 3,
        })
    }

    pub fn from_token(token: Token) -> Source {
        let value = token.0;
        if value & CONNECTION_BIT != 0 {
            return Source::Connection((value & !CONNECTION_BIT) as u64);
        }
        let key = (value >> 2) as JobKey;
        match (key, value & 3) {
            (0, 0) => Source::Listener,
            (0, _) => Source::Signals,
            (key, 1) => Source::JobExit(key),
            (key, 2) => Source::JobOutput(key, PipeSide::Stdout),
            (key, _) => Source::JobOutput(key, PipeSide::Stderr),
        }
    }
}

/// Remembers `waker` among `waiters` (tasks to wake when something happens) unless it is already there, so a
/// task polled many times while it waits is still woken once.
pub fn remember_waker(waiters: &mut Vec<Waker>, waker: &Waker) {
    if !waiters.iter().any(|w| w.will_wake(waker)) {
        waiters.push(waker.clone());
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
            Source::JobOutput(1, PipeSide::Stdout),
            Source::JobOutput(123_456, PipeSide::Stderr),
        ] {
            assert_eq!(Source::from_token(source.token()), source);
        }
    }
}
