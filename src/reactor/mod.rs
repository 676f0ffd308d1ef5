//! The event loop's building blocks: real wakers that put a task back on the ready queue, and timers.
//!
//! A *task* is a connection or one call on a connection; both are plain state machines polled by the loop with
//! a [`std::task::Context`] whose waker is the task's own. h2 stores that waker when a task must wait for the
//! connection (capacity, data, headers), and the job table stores it when a call waits for output or a job's
//! end; either way, waking it puts exactly that task on the ready queue. Socket, pipe and pidfd readiness
//! arrives from mio; the server maps each token to its owner.

mod timers;
mod wake;

pub use timers::Timers;
pub use wake::{TaskId, WakeQueue};

use std::task::Waker;

/// Remembers `waker` among `waiters` (tasks to wake when something happens) unless it is already there, so a
/// task polled many times while it waits is still woken once.
pub fn remember_waker(waiters: &mut Vec<Waker>, waker: &Waker) {
    if !waiters.iter().any(|w| w.will_wake(waker)) {
        waiters.push(waker.clone());
    }
}
