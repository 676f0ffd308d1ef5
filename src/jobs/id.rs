//! How jobs are named: a [`JobKey`] inside the server, a [`JobId`] (a random UUID) to clients.

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fmt;

/// A job's place in the table: start order, never reused. The server also derives the job's reactor tokens
/// from it.
pub type JobKey = u64;

/// A job's public id: a random UUID v4.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobId([u8; 16]);

impl JobId {
    pub(super) fn random() -> JobId {
        let mut bytes: [u8; 16] = rand::random();
        bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
        JobId(bytes)
    }

    /// Parses the hyphenated form (either case); `None` for anything else.
    pub fn parse(text: &str) -> Option<JobId> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes.get(i) != Some(&b'-')) {
            return None;
        }
        let hex: Vec<u8> = bytes.iter().copied().filter(|&b| b != b'-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (byte, pair) in id.iter_mut().zip(hex.chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(JobId(id))
    }

    /// The hostname a job sees: the id's first 8 hex digits.
    pub fn hostname(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_v4_and_round_trip() {
        let id = JobId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(text, text.to_lowercase());
        assert_eq!(JobId::parse(&text), Some(id));
        assert_eq!(JobId::parse(&text.to_uppercase()), Some(id));
        assert_eq!(JobId::parse("not-a-uuid"), None);
        assert_eq!(JobId::parse(&text.replace('-', "x")), None);
        assert_eq!(JobId::parse("123e4567-e89b-42d3-a456-42661417400g"), None);
    }

    #[test]
    fn hostnames_are_the_id_prefix() {
        let id = JobId::parse("0f3c9a1e-7b2d-4c55-9e0a-1234567890ab").unwrap();
        assert_eq!(id.hostname(), "0f3c9a1e");
    }
}
