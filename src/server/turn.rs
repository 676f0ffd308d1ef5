//! Where a loop turn's time went. Every call on the server waits for the turn in progress, so a turn is meant to
//! take a few milliseconds (`docs/architecture.md`); the metrics count how many took longer
//! (`runnel_loop_turn_duration_seconds`), and this module says why: a turn over [`SLOW_TURN`] writes a log line
//! with the time each part of the turn took and its slowest single step (an event's handling, a piece of
//! output copied, a call's or a connection's poll), so that a stall a client saw can be traced to what the loop
//! was doing then.
//!
//! Timing costs a clock read per step. The line is rate-limited: a server that is slow all the time says so
//! once a second, with how many slow turns it did not describe.

use std::fmt;
use std::time::{Duration, Instant};

use super::source::Source;
use super::TimerEvent;
use crate::jobs::{JobKey, Stream};

fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

/// A turn longer than this is described in the log.
pub const SLOW_TURN: Duration = Duration::from_millis(25);

/// At most one slow turn is described per this long.
const DESCRIBE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The parts of a turn, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Handling what the reactor reported ready (and what arrived during the last turn's copy of output).
    Arrivals,
    /// Timers that came due.
    Timers,
    /// Polling woken connections and calls.
    Calls,
    /// Copying job output into the spool.
    Output,
    /// Asking for shells, handing over files to remove.
    Upkeep,
}

const PARTS: [Part; 5] = [Part::Arrivals, Part::Timers, Part::Calls, Part::Output, Part::Upkeep];

/// One step of a turn, named for the log.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Event(Source),
    /// Copying a piece of a job's output from its pipe into the spool.
    Copy(JobKey, Stream),
    /// A timer that came due.
    Timer(TimerEvent),
    /// Asking the shell helper for shells.
    Shells,
    /// A connection's poll (its TLS and HTTP/2 work).
    Connection(u64),
    /// A call's poll, with its method if it named one.
    Call {
        connection: u64,
        method: Option<&'static str>,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Event(source) => match source {
                Source::Listener => write!(f, "accepting connections"),
                Source::Signals => write!(f, "handling signals"),
                Source::Connection(id) => write!(f, "connection {id} becoming ready"),
                Source::JobExit(key) => write!(f, "the exit of job key {key}"),
                Source::JobOutput(key, stream) => write!(f, "the {} of job key {key}", stream_name(*stream)),
                Source::JobStartReport(key) => write!(f, "the start report of job key {key}"),
                Source::MetricsListener => write!(f, "accepting metrics scrapes"),
                Source::MetricsExchange(id) => write!(f, "metrics scrape {id}"),
                Source::SpoolWriter => write!(f, "the spool writer's confirmations"),
                Source::SegmentMover => write!(f, "the segment mover's answers"),
            },
            Step::Copy(key, stream) => write!(f, "copying the {} of job key {key}", stream_name(*stream)),
            Step::Timer(event) => write!(f, "the timer {event:?}"),
            Step::Shells => write!(f, "asking for shells"),
            Step::Connection(id) => write!(f, "connection {id}"),
            Step::Call { connection, method: Some(method) } => write!(f, "a {method} call on connection {connection}"),
            Step::Call { connection, method: None } => write!(f, "a call on connection {connection}"),
        }
    }
}

/// The clock of the turn in progress.
pub struct TurnClock {
    begun: Instant,
    part_begun: Instant,
    spent: [Duration; PARTS.len()],
    steps: usize,
    slowest: Option<(Step, Duration)>,
    /// Job output bytes the turn copied.
    output_bytes: u64,
    /// The turn's length, once [`TurnClock::finish`] has measured it.
    took: Option<Duration>,
}

impl TurnClock {
    pub fn start() -> Self {
        let now = Instant::now();
        TurnClock {
            begun: now,
            part_begun: now,
            spent: [Duration::ZERO; PARTS.len()],
            steps: 0,
            slowest: None,
            output_bytes: 0,
            took: None,
        }
    }

    /// Times `step`, run by `run`.
    pub fn step<T>(&mut self, step: Step, run: impl FnOnce() -> T) -> T {
        let begun = Instant::now();
        let result = run();
        let took = begun.elapsed();
        self.steps += 1;
        if self.slowest.is_none_or(|(_, slowest)| took > slowest) {
            self.slowest = Some((step, took));
        }
        result
    }

    /// The part of the turn that began at the end of the last one is over.
    pub fn part_done(&mut self, part: Part) {
        let now = Instant::now();
        let index = PARTS.iter().position(|p| *p == part).expect("every part is listed");
        self.spent[index] += now - self.part_begun;
        self.part_begun = now;
    }

    pub fn copied_output(&mut self, bytes: u64) {
        self.output_bytes += bytes;
    }

    /// Ends the turn: its length, which the metrics, the slow-turn check and the log line all use.
    pub fn finish(&mut self) -> Duration {
        *self.took.insert(self.begun.elapsed())
    }

    /// The turn's length if it has finished, or so far.
    pub fn took(&self) -> Duration {
        self.took.unwrap_or_else(|| self.begun.elapsed())
    }
}

impl fmt::Display for TurnClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(f, "a loop turn took {:.1} ms:", ms(self.took()))?;
        for (part, spent) in PARTS.iter().zip(self.spent) {
            write!(f, " {} {:.1} ms,", format!("{part:?}").to_lowercase(), ms(spent))?;
        }
        let plural = if self.steps == 1 { "" } else { "s" };
        write!(f, " {} step{plural}, {} KiB of output copied", self.steps, self.output_bytes >> 10)?;
        if let Some((step, took)) = self.slowest {
            write!(f, "; the slowest step: {step} ({:.1} ms)", ms(took))?;
        }
        Ok(())
    }
}

/// Describes slow turns in the log, at most once per [`DESCRIBE_AT_MOST_EVERY`].
#[derive(Default)]
pub struct SlowTurnLog {
    last_described: Option<Instant>,
    undescribed: u64,
}

impl SlowTurnLog {
    /// Logs `turn` if it was slow and the last line is old enough; counts it otherwise.
    pub fn finished(&mut self, turn: &TurnClock) {
        if let Some(line) = self.describe(turn, Instant::now()) {
            log::warn!("{line}");
        }
    }

    /// The line for `turn`, ended at `now`: `None` for a fast turn, or a slow one within
    /// [`DESCRIBE_AT_MOST_EVERY`] of the last line (counted for the next).
    fn describe(&mut self, turn: &TurnClock, now: Instant) -> Option<String> {
        if turn.took() <= SLOW_TURN {
            return None;
        }
        if self.last_described.is_some_and(|last| now - last < DESCRIBE_AT_MOST_EVERY) {
            self.undescribed += 1;
            return None;
        }
        self.last_described = Some(now);
        Some(match std::mem::take(&mut self.undescribed) {
            0 => turn.to_string(),
            undescribed => format!("{turn} ({undescribed} more slow turns since the last line)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_names_its_parts_and_its_slowest_step() {
        let mut turn = TurnClock::start();
        turn.step(Step::Event(Source::JobOutput(7, Stream::Stderr)), || ());
        turn.step(Step::Call { connection: 3, method: Some("GetJob") }, || {
            std::thread::sleep(Duration::from_millis(5))
        });
        turn.part_done(Part::Arrivals);
        turn.part_done(Part::Timers);
        turn.copied_output(3 << 10);
        turn.part_done(Part::Output);
        let line = turn.to_string();
        assert!(line.starts_with("a loop turn took "), "{line}");
        assert!(line.contains("2 steps, 3 KiB of output copied"), "{line}");
        assert_eq!(Step::Event(Source::JobOutput(7, Stream::Stderr)).to_string(), "the stderr of job key 7");
        assert_eq!(Step::Copy(7, Stream::Stdout).to_string(), "copying the stdout of job key 7");
        assert!(line.contains("the slowest step: a GetJob call on connection 3 ("), "{line}");
        let part = |name: &str| -> f64 {
            line.split(&format!("{name} ")).nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
        };
        // Each part is measured from the end of the one before: the sleep is the arrivals', not the timers'.
        assert!(part("arrivals") >= 5.0 && part("timers") < 5.0, "{line}");
        assert_eq!(Step::Timer(TimerEvent::TrimMemory).to_string(), "the timer TrimMemory");
    }

    #[test]
    fn a_fast_turn_is_not_described_and_slow_ones_are_rate_limited() {
        let mut log = SlowTurnLog::default();
        let now = Instant::now();
        let mut fast = TurnClock::start();
        fast.finish();
        assert_eq!(log.describe(&fast, now), None);
        let mut slow = TurnClock::start();
        slow.took = Some(SLOW_TURN * 2);
        let first = log.describe(&slow, now).expect("a slow turn is described");
        assert!(first.starts_with("a loop turn took 50.0 ms:") && !first.contains("more slow turns"), "{first}");
        assert_eq!(log.describe(&slow, now + Duration::from_millis(10)), None);
        assert_eq!(log.describe(&slow, now + Duration::from_millis(990)), None);
        let next = log.describe(&slow, now + DESCRIBE_AT_MOST_EVERY).expect("a second later, the next one is");
        assert!(next.ends_with(" (2 more slow turns since the last line)"), "{next}");
        // The count starts again from the line that reported it.
        assert_eq!(log.describe(&slow, now + DESCRIBE_AT_MOST_EVERY + Duration::from_millis(1)), None);
        let third = log.describe(&slow, now + DESCRIBE_AT_MOST_EVERY * 2).expect("and again a second later");
        assert!(third.ends_with(" (1 more slow turns since the last line)"), "{third}");
    }
}
