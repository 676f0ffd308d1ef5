//! The server's limit policy: what a job gets for each resource it did not ask about, and the most it may ask
//! for. `--default-*` and `--max-*` flags fill it; [`LimitPolicy::resolve`] turns a request into the limits the
//! job's cgroup enforces.

use super::JobError;
use crate::proto::ResourceLimits;

/// Defaults and maxima, one [`ResourceLimits`] each; 0 in `defaults` means no limit unless asked, 0 in
/// `maxima` means no maximum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitPolicy {
    pub defaults: ResourceLimits,
    pub maxima: ResourceLimits,
}

/// One resource as the policy sees it: the request field's name, the server flag's suffix, and accessors.
struct Field {
    name: &'static str,
    flag: &'static str,
    get: fn(&ResourceLimits) -> u64,
    set: fn(&mut ResourceLimits, u64),
}

const FIELDS: [Field; 7] = [
    Field {
        name: "cpu_millicores",
        flag: "cpu",
        get: |l| l.cpu_millicores.into(),
        set: |l, v| l.cpu_millicores = v as u32,
    },
    Field { name: "memory_bytes", flag: "memory", get: |l| l.memory_bytes, set: |l, v| l.memory_bytes = v },
    Field { name: "io_read_bps", flag: "io-read-bps", get: |l| l.io_read_bps, set: |l, v| l.io_read_bps = v },
    Field { name: "io_write_bps", flag: "io-write-bps", get: |l| l.io_write_bps, set: |l, v| l.io_write_bps = v },
    Field { name: "io_read_iops", flag: "io-read-iops", get: |l| l.io_read_iops, set: |l, v| l.io_read_iops = v },
    Field { name: "io_write_iops", flag: "io-write-iops", get: |l| l.io_write_iops, set: |l, v| l.io_write_iops = v },
    Field { name: "max_pids", flag: "pids", get: |l| l.max_pids.into(), set: |l, v| l.max_pids = v as u32 },
];

impl LimitPolicy {
    /// The limits a job gets: each requested field (non-zero), else the default; every value at most the
    /// maximum. Out-of-range requests fail naming the bound and the flag that sets it.
    pub fn resolve(&self, requested: Option<&ResourceLimits>) -> Result<ResourceLimits, JobError> {
        let requested = requested.cloned().unwrap_or_default();
        let mut limits = ResourceLimits::default();
        for field in &FIELDS {
            let asked = (field.get)(&requested);
            let max = (field.get)(&self.maxima);
            if asked > 0 && max > 0 && asked > max {
                return Err(JobError::InvalidArgument(format!(
                    "limits.{} {asked} is above the server's maximum of {max} (--max-{})",
                    field.name, field.flag
                )));
            }
            let value = if asked > 0 { asked } else { (field.get)(&self.defaults) };
            (field.set)(&mut limits, value);
        }
        Ok(limits)
    }

    /// Checks the policy itself: no default above its maximum. The error names both flags.
    pub fn check(&self) -> Result<(), String> {
        for field in &FIELDS {
            let (default, max) = ((field.get)(&self.defaults), (field.get)(&self.maxima));
            if max > 0 && default > max {
                return Err(format!("--default-{flag} {default} is above --max-{flag} {max}", flag = field.flag));
            }
        }
        Ok(())
    }

    /// True if any io limit would apply to a job with these limits.
    pub fn has_io(limits: &ResourceLimits) -> bool {
        limits.io_read_bps > 0 || limits.io_write_bps > 0 || limits.io_read_iops > 0 || limits.io_write_iops > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LimitPolicy {
        LimitPolicy {
            defaults: ResourceLimits { max_pids: 1024, memory_bytes: 512 << 20, ..Default::default() },
            maxima: ResourceLimits {
                cpu_millicores: 2000,
                memory_bytes: 1 << 30,
                max_pids: 4096,
                ..Default::default()
            },
        }
    }

    #[test]
    fn unset_fields_take_defaults_and_set_fields_win() {
        let asked = ResourceLimits { cpu_millicores: 500, max_pids: 10, ..Default::default() };
        let got = policy().resolve(Some(&asked)).unwrap();
        assert_eq!(
            got,
            ResourceLimits { cpu_millicores: 500, memory_bytes: 512 << 20, max_pids: 10, ..Default::default() }
        );
        assert_eq!(policy().resolve(None).unwrap().max_pids, 1024);
        assert_eq!(policy().resolve(None).unwrap().cpu_millicores, 0, "no default: unlimited");
    }

    #[test]
    fn above_the_maximum_names_the_bound_and_flag() {
        let asked = ResourceLimits { memory_bytes: 2 << 30, ..Default::default() };
        let err = policy().resolve(Some(&asked)).unwrap_err().to_string();
        assert_eq!(err, "limits.memory_bytes 2147483648 is above the server's maximum of 1073741824 (--max-memory)");
        let asked = ResourceLimits { io_write_bps: u64::MAX, ..Default::default() };
        assert!(policy().resolve(Some(&asked)).is_ok(), "no io maximum set");
    }

    #[test]
    fn a_default_above_its_maximum_is_refused() {
        let mut bad = policy();
        bad.defaults.max_pids = 5000;
        assert_eq!(bad.check().unwrap_err(), "--default-pids 5000 is above --max-pids 4096");
        assert!(policy().check().is_ok());
    }
}
