//! Who an isolated job runs as: by default a user of its own, taken from a range of ids no account uses
//! (`--run-as-range`), in the manner of systemd's `DynamicUser=`; or one fixed user for every job (`--run-as`).
//!
//! A user of its own is what keeps jobs apart where namespaces do not reach: files on the host a job can write
//! (its working directory, world-writable directories), signals and `/proc` entries, and the count of
//! processes a user may have (`RLIMIT_NPROC`), which then bounds each job's processes even on a host without
//! cgroup v2. Ids are handed out in turn through the whole range, and one goes back only when its job's files
//! are removed (the job is evicted), so the next job given the same id cannot reach what the previous one left
//! in its working directory, and reuse is as far apart as the range allows. The group is the same number.

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeSet;
use std::ops::Range;

use super::{IsolationError, RunAs};

/// `--run-as-range`'s default: 65 536 ids from 1 879 048 192 (0x70000000), above the 16-bit ids of system and
/// login users, systemd's dynamic users (61184-65519), the usual subordinate ranges of `/etc/subuid` (from
/// 100000, 65 536 per user) and systemd-nspawn's own pick range (524288-1879048191), and below 2^31.
pub const DEFAULT_RANGE: (u32, u32) = (0x7000_0000, 65_536);

/// Where jobs' users come from.
#[derive(Debug)]
pub enum JobUsers {
    /// `--run-as USER[:GROUP]`: every job runs as this user.
    Fixed(RunAs),
    /// A user of its own for each job.
    Range(UserRange),
}

impl JobUsers {
    /// A user for a new job; `None` when every id of the range is taken.
    pub fn allocate(&mut self) -> Option<RunAs> {
        match self {
            JobUsers::Fixed(run_as) => Some(*run_as),
            JobUsers::Range(range) => range.allocate(),
        }
    }

    /// Gives back what [`Self::allocate`] returned, once the job's files are gone.
    pub fn release(&mut self, run_as: RunAs) {
        if let JobUsers::Range(range) = self {
            range.in_use.remove(&run_as.uid);
        }
    }

    /// True when each job has a user of its own, so that a per-user limit is a per-job limit.
    pub fn one_per_job(&self) -> bool {
        matches!(self, JobUsers::Range(_))
    }

    /// A user jobs may run as, for checks that hold for all of them (none owns the server's directories).
    pub fn example(&self) -> RunAs {
        match self {
            JobUsers::Fixed(run_as) => *run_as,
            JobUsers::Range(range) => RunAs { uid: range.ids.start, gid: range.ids.start },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            JobUsers::Fixed(run_as) => format!("uid {} gid {}", run_as.uid, run_as.gid),
            JobUsers::Range(range) => {
                format!("a uid and gid of their own from {}-{}", range.ids.start, range.ids.end - 1)
            }
        }
    }
}

/// Ids `ids` of which those in `in_use` belong to jobs; the next one handed out is the first free one from
/// `next` on.
#[derive(Debug)]
pub struct UserRange {
    ids: Range<u32>,
    in_use: BTreeSet<u32>,
    next: u32,
}

impl UserRange {
    /// The range `FIRST:COUNT`, checked against the accounts in `passwd` and `group` (the contents of
    /// `/etc/passwd` and `/etc/group`) and the subordinate ranges in `subordinate` (`/etc/subuid` and
    /// `/etc/subgid`, `name:first:count` lines): no id in it may belong to an account, or a job would act as that
    /// account, nor to a user's subordinate range, whose containers' files a job would own. Accounts served by
    /// other databases (LDAP, SSSD) are not seen here: on such hosts, choose a range outside theirs.
    pub fn new(
        first: u32,
        count: u32,
        passwd: &str,
        group: &str,
        subordinate: &str,
    ) -> Result<UserRange, IsolationError> {
        let refuse = |m: String| Err(IsolationError::UnknownUser(m));
        let end = match first.checked_add(count) {
            Some(end) if first > 0 && count > 0 && end <= 1 << 31 => end,
            _ => return refuse(format!("--run-as-range {first}:{count}: expected FIRST:COUNT, from 1, below 2^31")),
        };
        for (file, text) in [("/etc/passwd", passwd), ("/etc/group", group)] {
            for line in text.lines() {
                let mut fields = line.split(':');
                let (Some(name), Some(id)) = (fields.next(), fields.nth(1).and_then(|id| id.parse::<u32>().ok()))
                else {
                    continue;
                };
                if (first..end).contains(&id) {
                    return refuse(format!(
                        "--run-as-range {first}:{count}: {file} has {name:?} with id {id} in it; choose a range no \
                         account uses"
                    ));
                }
            }
        }
        for line in subordinate.lines() {
            let mut fields = line.split(':');
            let (Some(name), Some(start), Some(length)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            let (Ok(start), Ok(length)) = (start.parse::<u64>(), length.parse::<u64>()) else { continue };
            if start < u64::from(end) && u64::from(first) < start.saturating_add(length) {
                return refuse(format!(
                    "--run-as-range {first}:{count}: it overlaps {name:?}'s subordinate ids {start}:{length} \
                     (/etc/subuid or /etc/subgid); choose a range outside them"
                ));
            }
        }
        Ok(UserRange { ids: first..end, in_use: BTreeSet::new(), next: first })
    }

    fn allocate(&mut self) -> Option<RunAs> {
        let free = (self.next..self.ids.end).chain(self.ids.start..self.next).find(|id| !self.in_use.contains(id))?;
        self.in_use.insert(free);
        self.next = if free + 1 == self.ids.end { self.ids.start } else { free + 1 };
        Some(RunAs { uid: free, gid: free })
    }
}

/// Parses `FIRST:COUNT`.
pub fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let parsed = text.split_once(':').and_then(|(first, count)| Some((first.parse().ok()?, count.parse().ok()?)));
    parsed.ok_or_else(|| format!("{text:?}: expected FIRST:COUNT, two whole numbers (e.g. 1879048192:65536)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

    #[test]
    fn ids_go_round_the_range_and_come_back_only_when_released() {
        let mut users = JobUsers::Range(UserRange::new(1000, 3, "", "", "").unwrap());
        let taken: Vec<u32> = (0..3).map(|_| users.allocate().unwrap().uid).collect();
        assert_eq!(taken, [1000, 1001, 1002]);
        assert_eq!(users.allocate(), None, "every id is taken");
        users.release(RunAs { uid: 1001, gid: 1001 });
        assert_eq!(users.allocate(), Some(RunAs { uid: 1001, gid: 1001 }));
        users.release(RunAs { uid: 1000, gid: 1000 });
        users.release(RunAs { uid: 1002, gid: 1002 });
        // In turn from after the last one handed out, not the lowest free one.
        assert_eq!(users.allocate().unwrap().uid, 1002);
        assert_eq!(users.allocate().unwrap().uid, 1000);
    }

    #[test]
    fn a_range_an_account_uses_or_out_of_bounds_is_refused() {
        assert!(UserRange::new(DEFAULT_RANGE.0, DEFAULT_RANGE.1, PASSWD, GROUP, "alice:100000:65536\n").is_ok());
        let err = UserRange::new(65000, 1000, PASSWD, GROUP, "").unwrap_err().to_string();
        assert!(err.contains("nobody") && err.contains("/etc/passwd"), "{err}");
        let err = UserRange::new(65534, 1, "", GROUP, "").unwrap_err().to_string();
        assert!(err.contains("nogroup") && err.contains("/etc/group"), "{err}");
        assert!(UserRange::new(0, 10, "", "", "").is_err());
        assert!(UserRange::new(u32::MAX - 5, 10, "", "", "").is_err());
        let err = UserRange::new(200000, 10, "", "", "alice:100000:65536\nbob:165536:65536\n").unwrap_err();
        assert!(err.to_string().contains("\"bob\"'s subordinate ids 165536:65536"), "{err}");
        // A subordinate range running to the end of the id space overlaps, however its end is written (its
        // end once wrapped past zero and the overlap went unseen; found while extending the `values` fuzz target to the account files).
        assert!(UserRange::new(200000, 10, "", "", "carol:1:18446744073709551615\n").is_err());
        assert_eq!(parse_range("100:5"), Ok((100, 5)));
        assert!(parse_range("100").is_err());
    }
}
