//! Parsing the CLI's human units (sizes, durations, CPUs) and printing jobs as tables or JSON lines.

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::jobs::{LimitField, LimitUnit};
use crate::proto::{EndReason, Job, JobState};

/// Parses a size: a whole number with an optional binary unit, `K`, `M`, `G` or `T` (`256M`, `1G`, `4096`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let upper = text.trim().to_ascii_uppercase();
    let trimmed = upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).unwrap_or(&upper);
    let (digits, shift) = match trimmed.chars().last() {
        Some('K') => (&trimmed[..trimmed.len() - 1], 10),
        Some('M') => (&trimmed[..trimmed.len() - 1], 20),
        Some('G') => (&trimmed[..trimmed.len() - 1], 30),
        Some('T') => (&trimmed[..trimmed.len() - 1], 40),
        _ => (trimmed, 0),
    };
    let value: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (like 512K, 256M, 1G)"))?;
    value.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: a number with `ms`, `s`, `m` or `h` (`500ms`, `10s`, `1.5m`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (like 500ms, 10s, 2m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a duration ≥ 0"));
    }
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("{text:?} is too long"))
}

/// Parses a point in time for `list --since/--until`: RFC 3339 (`2026-12-01T13:00:00Z`, `...+01:00`, a space for
/// the `T`), a date and time without a zone in the local one (`2026-12-01 14:00`, `2026-12-01T14:00:05`, or a
/// date alone for its midnight), or how long before `now` (`90m`, `2h`, `3d`).
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    let bad = || {
        format!("{text:?} is not a time: give 2026-12-01 14:00 (local time), RFC 3339 (2026-12-01T13:00:00Z), or how long ago (90m, 2h, 3d)")
    };
    if !text.is_ascii() {
        return Err(bad());
    }
    if let Some(days) = text.strip_suffix('d').and_then(|days| days.parse::<u64>().ok()) {
        let ago = days.checked_mul(86_400).map(Duration::from_secs);
        return ago.and_then(|ago| now.checked_sub(ago)).ok_or_else(bad);
    }
    if let Ok(ago) = parse_duration(text) {
        if text.ends_with(|c: char| c.is_ascii_alphabetic()) {
            return now.checked_sub(ago).ok_or_else(bad);
        }
    }
    let digits = |part: &str| -> Option<u32> { part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())? };
    let (date, rest) = text.split_at(text.len().min(10));
    let (Some(year), Some(month), Some(day)) =
        (digits(&date[..4.min(date.len())]), date.get(5..7).and_then(digits), date.get(8..10).and_then(digits))
    else {
        return Err(bad());
    };
    if date.len() != 10
        || &date[4..5] != "-"
        || &date[7..8] != "-"
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
    {
        return Err(bad());
    }
    let rest = rest.strip_prefix(['T', 't', ' ']).unwrap_or(rest);
    // The zone, if any: Z or ±HH:MM at the end.
    let (clock, offset) = if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        (clock, Some(0i64))
    } else if let Some(at) = rest.rfind(['+', '-']).filter(|&at| at > 0 && rest.len() - at == 6) {
        let (hours, minutes) = (digits(&rest[at + 1..at + 3]), digits(&rest[at + 4..]));
        let (Some(hours), Some(minutes), ":") = (hours, minutes, &rest[at + 3..at + 4]) else { return Err(bad()) };
        let (hours, minutes) = (i64::from(hours), i64::from(minutes));
        let sign = if rest[at..].starts_with('-') { -1 } else { 1 };
        (&rest[..at], Some(sign * (hours * 3600 + minutes * 60)))
    } else {
        (rest, None)
    };
    let mut hms = clock.split(':');
    let mut next = |max: u32| -> Result<(u32, u32), String> {
        match hms.next() {
            None | Some("") => Ok((0, 0)),
            Some(part) => {
                let whole = part.split('.').next().unwrap_or(part);
                let nanos = part.split_once('.').map_or(Some(0), |(_, f)| {
                    (!f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| digits(format!("{f:0<9}").get(..9).unwrap_or("")))?
                });
                let nanos = nanos.ok_or_else(bad)?;
                match digits(whole) {
                    Some(value) if value <= max && whole.len() == 2 => Ok((value, nanos)),
                    _ => Err(bad()),
                }
            }
        }
    };
    let ((hour, _), (minute, _), (second, nanos)) = (next(23)?, next(59)?, next(60)?);
    if hms.next().is_some() || (offset.is_some() && clock.is_empty()) {
        return Err(bad());
    }
    let seconds = match offset {
        Some(offset) => {
            let days = days_from_civil(i64::from(year), i64::from(month), i64::from(day));
            days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset
        }
        None => crate::sys::local_time_to_unix(year as i32, month, day, hour, minute, second).map_err(|_| bad())?,
    };
    let since_epoch = Duration::new(seconds.unsigned_abs(), nanos);
    Ok(if seconds >= 0 { UNIX_EPOCH + since_epoch } else { UNIX_EPOCH - since_epoch })
}

/// Days since 1970-01-01 of a date (Howard Hinnant's days_from_civil, the inverse of [`utc_parts`]'s).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a CPU amount (`0.5`, `2`) into millicores.
pub fn parse_cpu(text: &str) -> Result<u32, String> {
    let value: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number of CPUs (like 0.5 or 2)"))?;
    let millicores = (value * 1000.0).round();
    if !(1.0..=u32::MAX as f64).contains(&millicores) {
        return Err(format!("{text:?} CPUs is out of range"));
    }
    Ok(millicores as u32)
}

/// Parses a limit in `field`'s unit: CPUs (`0.5`), a size (`256M`) or a whole number.
pub fn parse_limit(field: &LimitField, text: &str) -> Result<u64, String> {
    let value = match field.unit {
        LimitUnit::Millicores => parse_cpu(text)?.into(),
        LimitUnit::Bytes => parse_size(text)?,
        LimitUnit::Count => text.trim().parse().map_err(|_| format!("{text:?} is not a whole number"))?,
    };
    if value > field.max_value {
        return Err(format!("{text:?} is too large"));
    }
    Ok(value)
}

/// A job state's short name: RUNNING, STOPPING, EXITED, KILLED.
pub fn state_name(state: i32) -> &'static str {
    JobState::try_from(state).map_or("UNKNOWN", |s| s.as_str_name().trim_start_matches("JOB_STATE_"))
}

fn end_reason_name(reason: i32) -> &'static str {
    EndReason::try_from(reason).map_or("UNKNOWN", |r| r.as_str_name().trim_start_matches("END_REASON_"))
}

/// Parses a state name for `list --state` (case-insensitive, with or without the JOB_STATE_ prefix).
pub fn parse_state(text: &str) -> Result<JobState, String> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("JOB_STATE_") { upper.clone() } else { format!("JOB_STATE_{upper}") };
    match JobState::from_str_name(&name) {
        Some(JobState::Unspecified) | None => {
            Err(format!("{text:?} is not a job state (running, stopping, exited, killed)"))
        }
        Some(state) => Ok(state),
    }
}

fn system_time(ts: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts.as_ref()?;
    SystemTime::try_from(*ts).ok()
}

/// UTC `YYYY-MM-DD HH:MM:SS` (or with `T`/`Z` for RFC 3339).
fn utc(time: SystemTime, rfc3339: bool) -> String {
    let ((year, month, day), (h, m, s)) = utc_parts(time);
    if rfc3339 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}")
    }
}

/// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`, for log lines.
pub(super) fn utc_rfc3339_millis(time: SystemTime) -> String {
    let ((year, month, day), (h, m, s)) = utc_parts(time);
    let millis = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

/// The UTC date and time of day of `time` (a time before 1970 as the epoch), computed without a date library.
fn utc_parts(time: SystemTime) -> ((i64, i64, i64), (i64, i64, i64)) {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    ((year, month, day), (rem / 3600, rem % 3600 / 60, rem % 60))
}

fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// "0", "sig 9", or "-" for a running job.
fn exit_text(job: &Job) -> String {
    match (job.exit_code, job.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("sig {signal}"),
        // Running when its server died: no status is known.
        _ if job.end_reason == EndReason::ServerLost as i32 => "lost".into(),
        _ => "-".into(),
    }
}

/// Characters that would act on a terminal instead of showing: control characters (escape sequences, line
/// breaks), and those that make one thing look like another (invisible ones, direction changes: the set an
/// identity may not contain, `pki::misleads_reader`).
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || crate::pki::misleads_reader(c)
}

/// `c` as an escape that shows instead of acting: `\n`, `\t`, `\r`, `\xNN`, `\uNNNN`.
fn push_escaped(out: &mut String, c: char) {
    let _ = match c {
        '\n' => write!(out, "\\n"),
        '\t' => write!(out, "\\t"),
        '\r' => write!(out, "\\r"),
        c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{:04x}", c as u32),
    };
}

/// A field from the server, safe to print on a terminal: what would act on it is escaped (see
/// [`acts_on_terminal`]); anything else, the text as it is.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts_on_terminal(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// The command and its arguments as a shell would take them back: plain words as they are, others in single
/// quotes, and words with characters that act on a terminal in bash's `$'...'`, escaped.
pub fn command_line(job: &Job) -> String {
    std::iter::once(&job.command)
        .chain(&job.args)
        .map(|word| {
            if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
                word.clone()
            } else if !word.chars().any(acts_on_terminal) {
                format!("'{}'", word.replace('\'', r"'\''"))
            } else {
                let mut quoted = String::from("$'");
                for c in word.chars() {
                    match c {
                        '\\' | '\'' => {
                            quoted.push('\\');
                            quoted.push(c);
                        }
                        c if acts_on_terminal(c) => push_escaped(&mut quoted, c),
                        c => quoted.push(c),
                    }
                }
                quoted.push('\'');
                quoted
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An aligned table, one row per job.
/// Hex digits of a job id a table shows unless asked for whole ids: as many as `git log --oneline` and
/// `docker ps` show, and what every command accepts back as a prefix.
pub const SHORT_ID_LEN: usize = 8;

/// Jobs as a table; ids cut to [`SHORT_ID_LEN`] unless `whole_ids`.
pub fn table(jobs: &[Job], whole_ids: bool) -> String {
    let now = SystemTime::now();
    let header = ["ID", "OWNER", "STATE", "EXIT", "STARTED (UTC)", "DURATION", "COMMAND"].map(String::from);
    let rows: Vec<[String; 7]> = jobs
        .iter()
        .map(|job| {
            let started = system_time(&job.started_at);
            let ended = system_time(&job.ended_at).unwrap_or(now);
            let duration = started.and_then(|s| ended.duration_since(s).ok()).unwrap_or_default();
            [
                match whole_ids {
                    true => terminal_safe(&job.id).into_owned(),
                    false => terminal_safe(job.id.get(..SHORT_ID_LEN).unwrap_or(&job.id)).into_owned(),
                },
                terminal_safe(&job.owner).into_owned(),
                state_name(job.state).to_string(),
                exit_text(job),
                started.map_or("-".into(), |s| utc(s, false)),
                human_duration(duration),
                command_line(job),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths.get(i).copied().unwrap_or(0));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `value` as a JSON string literal.
pub(super) fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Control characters all escaped (C1 and DEL too, which JSON would allow raw): the line is safe to
            // print, and a JSON reader gets the exact value back.
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One JSON object on one line.
pub fn json(job: &Job) -> String {
    let mut out = String::from("{\"id\":");
    json_string(&mut out, &job.id);
    out.push_str(",\"owner\":");
    json_string(&mut out, &job.owner);
    out.push_str(",\"command\":");
    json_string(&mut out, &job.command);
    out.push_str(",\"args\":[");
    for (i, arg) in job.args.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, arg);
    }
    let optional = |v: Option<i32>| v.map_or("null".to_string(), |v| v.to_string());
    let time =
        |t: &Option<prost_types::Timestamp>| system_time(t).map_or("null".into(), |t| format!("\"{}\"", utc(t, true)));
    let _ = write!(
        out,
        "],\"state\":\"{}\",\"end_reason\":\"{}\",\"exit_code\":{},\"signal\":{},\"pid\":{},\"started_at\":{},\
         \"ended_at\":{},\"output_bytes\":{},\"output_start\":{},\"limits\":{},\"usage\":{}}}",
        state_name(job.state),
        end_reason_name(job.end_reason),
        optional(job.exit_code),
        optional(job.signal),
        job.pid,
        time(&job.started_at),
        time(&job.ended_at),
        job.output_bytes,
        job.output_start,
        job.limits.as_ref().map_or("null".into(), |l| format!(
            "{{\"cpu_millicores\":{},\"memory_bytes\":{},\"io_read_bps\":{},\"io_write_bps\":{},\
             \"io_read_iops\":{},\"io_write_iops\":{},\"max_pids\":{}}}",
            l.cpu_millicores,
            l.memory_bytes,
            l.io_read_bps,
            l.io_write_bps,
            l.io_read_iops,
            l.io_write_iops,
            l.max_pids
        )),
        job.usage.as_ref().map_or("null".into(), |u| format!(
            "{{\"cpu_usec\":{},\"memory_peak_bytes\":{},\"io_read_bytes\":{},\"io_write_bytes\":{}}}",
            u.cpu_usec, u.memory_peak_bytes, u.io_read_bytes, u.io_write_bytes
        )),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_for_list_filters() {
        let utc = |text: &str| parse_time(text, UNIX_EPOCH).unwrap().duration_since(UNIX_EPOCH).unwrap();
        // 2026-12-01T13:00:00Z, as `date -u -d 2026-12-01T13:00:00Z +%s` says.
        assert_eq!(utc("2026-12-01T13:00:00Z"), Duration::from_secs(1_796_130_000));
        assert_eq!(utc("2026-12-01 14:30:00+01:30"), Duration::from_secs(1_796_130_000));
        assert_eq!(utc("2026-12-01t08:00-05:00"), Duration::from_secs(1_796_130_000));
        assert_eq!(utc("2026-12-01T13:00:00.25Z"), Duration::new(1_796_130_000, 250_000_000));
        assert_eq!(utc("1970-01-01T00:00:00Z"), Duration::ZERO);
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_time("2h", now), Ok(now - Duration::from_secs(7200)));
        assert_eq!(parse_time("90m", now), Ok(now - Duration::from_secs(5400)));
        assert_eq!(parse_time("3d", now), Ok(now - Duration::from_secs(3 * 86_400)));
        // Without a zone: the local one, as the C library has it (this process's TZ).
        let local = crate::sys::local_time_to_unix(2026, 12, 1, 14, 0, 5).unwrap();
        assert_eq!(parse_time("2026-12-01 14:00:05", now), Ok(UNIX_EPOCH + Duration::from_secs(local as u64)));
        let midnight = crate::sys::local_time_to_unix(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(parse_time("2026-12-01", now), Ok(UNIX_EPOCH + Duration::from_secs(midnight as u64)));
        for bad in [
            "",
            "yesterday",
            "10",
            "2026-13-01",
            "2026-12-32 10:00",
            "2026-12-01T25:00Z",
            "2026-12-01T10:60",
            "2026-12-01T1:00",
            "2026-12-01T10:00+1",
            "2026-12-01T10:00:00:00",
            "2026-12-01 1\u{e9}:00+01:00",
            "26-12-01",
            "-2h",
            "18410184179887988d",
            "+026-12-01",
            "2026-+1-01",
            "2026-12-01T10:00+-1:00",
            "2026-12-01T10:00:00.Z",
            "2026-12-01T10:00:00.+5Z",
            "2026-12-01T10:00:00.1234567890xZ",
        ] {
            let err = parse_time(bad, now).unwrap_err();
            assert!(err.contains("is not a time") || err.contains("duration"), "{bad:?}: {err}");
        }
        // The inverse of the table's UTC dates, across leap days and centuries.
        for days in [0i64, 59, 60, 365, 789, 10_957, 11_016, 20_788, 1_000_000] {
            let ((year, month, day), _) = utc_parts(UNIX_EPOCH + Duration::from_secs(days as u64 * 86_400));
            assert_eq!(days_from_civil(year, month, day), days, "{year}-{month}-{day}");
        }
    }

    #[test]
    fn sizes_durations_cpus() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("M").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert!(parse_cpu("0").is_err());
    }

    #[test]
    fn limits_in_each_fields_unit() {
        let field = |flag: &str| crate::jobs::LIMIT_FIELDS.iter().find(|f| f.client_flag == flag).unwrap();
        assert_eq!(parse_limit(field("--cpu"), "0.5"), Ok(500));
        assert_eq!(parse_limit(field("--memory"), "1G"), Ok(1 << 30));
        assert_eq!(parse_limit(field("--io-write-iops"), "300"), Ok(300));
        assert_eq!(parse_limit(field("--pids"), "4294967295"), Ok(u32::MAX as u64));
        assert!(parse_limit(field("--pids"), "4294967296").unwrap_err().contains("too large"));
        assert!(parse_limit(field("--pids"), "5x").unwrap_err().contains("not a whole number"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH, true), "1970-01-01T00:00:00Z");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(951_782_400), false), "2000-02-29 00:00:00");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(1_795_430_096), true), "2026-11-23T10:34:56Z");
    }

    #[test]
    fn json_escapes_and_nulls() {
        let job = Job {
            id: "x".into(),
            command: "echo".into(),
            args: vec!["a\"b\n".into(), "\u{1}".into()],
            state: JobState::Running as i32,
            ..Default::default()
        };
        let line = json(&job);
        assert!(line.contains(r#""args":["a\"b\n","\u0001"]"#), "{line}");
        assert!(line.contains(r#""exit_code":null"#));
        assert!(line.contains(r#""state":"RUNNING""#));
        assert!(line.ends_with(r#""limits":null,"usage":null}"#), "{line}");
        assert!(!line.contains('\n'));
        let limited = Job {
            limits: Some(crate::proto::ResourceLimits { memory_bytes: 33554432, max_pids: 10, ..Default::default() }),
            usage: Some(crate::proto::ResourceUsage { cpu_usec: 5, ..Default::default() }),
            ..job
        };
        let line = json(&limited);
        assert!(line.contains(r#""memory_bytes":33554432,"#) && line.contains(r#""max_pids":10}"#), "{line}");
        assert!(line.contains(r#""usage":{"cpu_usec":5,"memory_peak_bytes":0,"#), "{line}");
    }

    #[test]
    fn table_aligns_and_quotes() {
        let job = Job {
            id: "abc".into(),
            owner: "alice".into(),
            command: "sh".into(),
            args: vec!["-c".into(), "echo hi".into()],
            exit_code: Some(0),
            state: JobState::Exited as i32,
            ..Default::default()
        };
        let text = table(&[job], true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("OWNER"), lines[1].find("alice"));
        assert!(lines[1].ends_with("sh -c 'echo hi'"));
    }

    #[test]
    fn fields_that_would_act_on_a_terminal_are_escaped_one_row_per_job() {
        let job = Job {
            id: "abc".into(),
            owner: "mallory\u{1b}[2J".into(),
            command: "printf".into(),
            args: vec!["\u{1b}[31mred\nline two\ttab".into(), "it's \\ \u{9b}\u{202e}".into(), "plain words".into()],
            state: JobState::Running as i32,
            ..Default::default()
        };
        let text = table(&[job.clone(), job.clone()], true);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("mallory\\x1b[2J"), "{row}");
        assert!(row.ends_with(r"printf $'\x1b[31mred\nline two\ttab' $'it\'s \\ \u009b\u202e' 'plain words'"), "{row}");
        let line = json(&job);
        assert!(line.contains(r#""mallory\u001b[2J""#) && line.contains(r"\u009b"), "{line}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert_eq!(terminal_safe("plain"), "plain");
    }
}
