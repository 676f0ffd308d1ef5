//! The server's limit policy: what a job gets for each resource it did not ask about, and the most it may ask
//! for. `--default-*` and `--max-*` flags fill it; [`LimitPolicy::resolve`] turns a request into the limits the
//! job's cgroup enforces.
//!
//! [`LIMIT_FIELDS`] is the one list of resources: a request's field names, the server's and client's flags,
//! and the unit the command line reads each in, all come from it.

use super::JobError;
use crate::cgroup::Limits;

/// Defaults and maxima; 0 in `defaults` means no limit unless asked, 0 in `maxima` means no maximum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitPolicy {
    pub defaults: Limits,
    pub maxima: Limits,
}

/// How a limit is counted, so the command line knows how to read one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitUnit {
    /// Thousandths of a CPU; written as CPUs (`0.5`).
    Millicores,
    /// Bytes, or bytes per second; written as a size (`256M`).
    Bytes,
    /// Operations per second, or processes: a whole number.
    Count,
}

/// One resource: its name in a request (`limits.NAME`), the flags that set it (the client's per job, the
/// server's default and maximum), its unit, and its place in [`Limits`].
pub struct LimitField {
    pub name: &'static str,
    pub client_flag: &'static str,
    pub default_flag: &'static str,
    pub max_flag: &'static str,
    pub unit: LimitUnit,
    /// The largest value the field holds.
    pub max_value: u64,
    pub get: fn(&Limits) -> u64,
    pub set: fn(&mut Limits, u64),
}

/// A [`LimitField`] for the [`Limits`] field `$name` of type `$ty`, set by `--$flag` on a start request and
/// `--default-$flag` / `--max-$flag` on the server.
macro_rules! limit_field {
    ($name:ident, $flag:literal, $unit:ident, $ty:ty) => {
        LimitField {
            name: stringify!($name),
            client_flag: concat!("--", $flag),
            default_flag: concat!("--default-", $flag),
            max_flag: concat!("--max-", $flag),
            unit: LimitUnit::$unit,
            max_value: <$ty>::MAX as u64,
            get: |limits| limits.$name as u64,
            set: |limits, value| limits.$name = value as $ty,
        }
    };
}

/// Every resource a job can be limited in.
pub const LIMIT_FIELDS: [LimitField; 7] = [
    limit_field!(cpu_millicores, "cpu", Millicores, u32),
    limit_field!(memory_bytes, "memory", Bytes, u64),
    limit_field!(io_read_bps, "io-read-bps", Bytes, u64),
    limit_field!(io_write_bps, "io-write-bps", Bytes, u64),
    limit_field!(io_read_iops, "io-read-iops", Count, u64),
    limit_field!(io_write_iops, "io-write-iops", Count, u64),
    limit_field!(max_pids, "pids", Count, u32),
];

impl LimitPolicy {
    /// The limits a job gets: each requested field (non-zero), else the default; every value at most the
    /// maximum. Out-of-range requests fail naming the bound and the flag that sets it.
    pub fn resolve(&self, requested: &Limits) -> Result<Limits, JobError> {
        let mut limits = Limits::default();
        for field in &LIMIT_FIELDS {
            let asked = (field.get)(requested);
            let max = (field.get)(&self.maxima);
            if asked > 0 && max > 0 && asked > max {
                return Err(JobError::LimitAboveMaximum { field: field.name, asked, max, flag: field.max_flag });
            }
            let value = if asked > 0 { asked } else { (field.get)(&self.defaults) };
            (field.set)(&mut limits, value);
        }
        Ok(limits)
    }

    /// Checks the policy itself: no default above its maximum. The error names both flags.
    pub fn check(&self) -> Result<(), String> {
        for field in &LIMIT_FIELDS {
            let (default, max) = ((field.get)(&self.defaults), (field.get)(&self.maxima));
            if max > 0 && default > max {
                return Err(format!("{} {default} is above {} {max}", field.default_flag, field.max_flag));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LimitPolicy {
        LimitPolicy {
            defaults: Limits { max_pids: 1024, memory_bytes: 512 << 20, ..Default::default() },
            maxima: Limits { cpu_millicores: 2000, memory_bytes: 1 << 30, max_pids: 4096, ..Default::default() },
        }
    }

    #[test]
    fn unset_fields_take_defaults_and_set_fields_win() {
        let asked = Limits { cpu_millicores: 500, max_pids: 10, ..Default::default() };
        let got = policy().resolve(&asked).unwrap();
        assert_eq!(got, Limits { cpu_millicores: 500, memory_bytes: 512 << 20, max_pids: 10, ..Default::default() });
        assert_eq!(policy().resolve(&Limits::default()).unwrap().max_pids, 1024);
        assert_eq!(policy().resolve(&Limits::default()).unwrap().cpu_millicores, 0, "no default: unlimited");
    }

    #[test]
    fn above_the_maximum_names_the_bound_and_flag() {
        let asked = Limits { memory_bytes: 2 << 30, ..Default::default() };
        let err = policy().resolve(&asked).unwrap_err().to_string();
        assert_eq!(err, "limits.memory_bytes 2147483648 is above the server's maximum of 1073741824 (--max-memory)");
        let asked = Limits { io_write_bps: u64::MAX, ..Default::default() };
        assert!(policy().resolve(&asked).is_ok(), "no io maximum set");
    }

    #[test]
    fn a_default_above_its_maximum_is_refused() {
        let mut bad = policy();
        bad.defaults.max_pids = 5000;
        assert_eq!(bad.check().unwrap_err(), "--default-pids 5000 is above --max-pids 4096");
        assert!(policy().check().is_ok());
    }

    #[test]
    fn every_field_is_its_own_place_in_the_limits() {
        let mut limits = Limits::default();
        for (i, field) in LIMIT_FIELDS.iter().enumerate() {
            (field.set)(&mut limits, i as u64 + 1);
        }
        for (i, field) in LIMIT_FIELDS.iter().enumerate() {
            assert_eq!((field.get)(&limits), i as u64 + 1, "{}", field.name);
            assert!(field.max_value >= u32::MAX as u64, "{}", field.name);
            let suffix = field.client_flag.strip_prefix("--").unwrap();
            assert_eq!(field.default_flag, format!("--default-{suffix}"));
            assert_eq!(field.max_flag, format!("--max-{suffix}"));
        }
    }
}
