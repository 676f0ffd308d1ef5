//! The small parsers of text and bytes from outside: the command line's sizes, durations, times, CPUs, job states
//! and limits, certificate fingerprints, `--run-as-range` and the account files it is checked against,
//! `--io-device`, and the job init's 12-byte report. No panic, and
//! what parses round-trips where a printed form exists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel::cli::format;
use runnel::isolation::{users, InitReport, REPORT_LEN};
use runnel::jobs::LIMIT_FIELDS;
use runnel::tls::Fingerprint;

fuzz_target!(|data: &[u8]| {
    if let Ok(bytes) = <[u8; REPORT_LEN]>::try_from(data) {
        if let Some(report) = InitReport::decode(&bytes) {
            assert_eq!(InitReport::decode(&report.encode()), Some(report));
        }
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = format::parse_size(text);
    let _ = format::parse_duration(text);
    // `list --since/--until`, at the ends of time too.
    for now in [std::time::UNIX_EPOCH, std::time::SystemTime::now()] {
        let _ = format::parse_time(text, now);
    }
    let _ = format::parse_cpu(text);
    let _ = format::parse_state(text);
    for field in &LIMIT_FIELDS {
        let _ = format::parse_limit(field, text);
    }
    if let Ok((first, count)) = users::parse_range(text) {
        let _ = users::UserRange::new(first, count, "", "", "");
    }
    // The host's account files, as `--run-as-range` reads them: passwd, group and subuid text split at NULs.
    let mut files = text.splitn(3, '\0');
    if let (Some(passwd), Some(group), Some(subordinate)) = (files.next(), files.next(), files.next()) {
        let _ = users::UserRange::new(0x7000_0000, 65536, passwd, group, subordinate);
    }
    let _ = runnel::cgroup::parse_device(text);
    if let Ok(pin) = Fingerprint::parse(text) {
        assert_eq!(Fingerprint::parse(&pin.to_string()), Ok(pin));
    }
    let _ = Fingerprint::parse_file(text);
    let escaped = format::terminal_safe(text);
    assert!(!escaped.chars().any(char::is_control), "{escaped:?}");
});
