//! Deadlines the loop sleeps until: grace periods, call deadlines, handshake and idle limits.
//!
//! A binary heap of `(when, event)`. Timers are never cancelled; whoever handles an expired event checks that
//! it still applies (the job still runs, the call still exists), which keeps every other path free of timer
//! bookkeeping.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

pub struct Timers<E> {
    heap: BinaryHeap<Reverse<(Instant, u64, E)>>,
    sequence: u64,
}

impl<E: Ord> Default for Timers<E> {
    fn default() -> Self {
        Timers { heap: BinaryHeap::new(), sequence: 0 }
    }
}

impl<E: Ord> Timers<E> {
    pub fn schedule(&mut self, at: Instant, event: E) {
        self.sequence += 1;
        self.heap.push(Reverse((at, self.sequence, event)));
    }

    /// Time until the earliest timer, `None` if there is none.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, _, _))| at.saturating_duration_since(now))
    }

    /// Removes and returns the earliest timer that is due.
    pub fn pop_due(&mut self, now: Instant) -> Option<E> {
        if self.heap.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
            return self.heap.pop().map(|Reverse((_, _, event))| event);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order() {
        let mut timers = Timers::default();
        let now = Instant::now();
        timers.schedule(now + Duration::from_secs(2), 2);
        timers.schedule(now + Duration::from_secs(1), 1);
        timers.schedule(now + Duration::from_secs(3), 3);
        assert_eq!(timers.next_timeout(now), Some(Duration::from_secs(1)));
        assert_eq!(timers.pop_due(now), None);
        let later = now + Duration::from_secs(2);
        assert_eq!(timers.pop_due(later), Some(1));
        assert_eq!(timers.pop_due(later), Some(2));
        assert_eq!(timers.pop_due(later), None);
    }
}
