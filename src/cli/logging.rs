//! Log lines an operator can read and a log pipeline can parse: each starts with an RFC 3339 UTC timestamp
//! (milliseconds) and the level, as journald, Loki or a plain `grep` over a file expect; `--log-format json`
//! makes each line one JSON object (`time`, `level`, `target`, `message`) for pipelines that index fields.
//!
//! `RUST_LOG` still chooses what is logged (env_logger's filter); this module only decides how a line looks.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// How each log line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-01T22:36:09.123Z INFO  message`.
    #[default]
    Text,
    /// `{"time":"2026-12-01T22:36:09.123Z","level":"INFO","target":"runnel::server","message":"..."}`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{text:?}: expected text or json")),
        }
    }
}

/// Sends the `log` macros to stderr in `format`, at `default_level` unless `RUST_LOG` says otherwise.
pub fn init(default_level: &str, format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    builder.format(move |out, record| {
        let line = format_line(format, SystemTime::now(), record.level(), record.target(), record.args());
        out.write_all(line.as_bytes())
    });
    // A second init (a test that runs two commands in one process) keeps the first logger.
    let _ = builder.try_init();
}

/// One whole line, newline included: written in one `write`, so lines from the server and its helper
/// processes sharing stderr never interleave mid-line.
fn format_line(
    format: LogFormat,
    now: SystemTime,
    level: log::Level,
    target: &str,
    message: &std::fmt::Arguments<'_>,
) -> String {
    let time = rfc3339_utc(now);
    match format {
        LogFormat::Text => format!("{time} {level:<5} {message}\n"),
        LogFormat::Json => {
            let mut line = format!("{{\"time\":\"{time}\",\"level\":\"{level}\",\"target\":");
            push_json_string(&mut line, target);
            line.push_str(",\"message\":");
            push_json_string(&mut line, &message.to_string());
            line.push_str("}\n");
            line
        }
    }
}

/// `text` as a JSON string literal: quotes, backslashes and every control character escaped.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `time` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC). A clock before 1970 prints as the epoch.
fn rfc3339_utc(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(seconds: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis)
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_utc(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // `date -u -d @951782400`: the leap day of a year divisible by 400.
        assert_eq!(rfc3339_utc(at(951_782_400, 7)), "2000-02-29T00:00:00.007Z");
        assert_eq!(rfc3339_utc(at(1_796_167_569, 123)), "2026-12-01T23:26:09.123Z");
        assert_eq!(rfc3339_utc(at(4_107_542_399, 999)), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339_utc(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn text_and_json_lines() {
        let now = at(1_796_167_569, 123);
        let line = format_line(LogFormat::Text, now, log::Level::Warn, "runnel::server", &format_args!("a b"));
        assert_eq!(line, "2026-12-01T23:26:09.123Z WARN  a b\n");
        let message = format_args!("job \"x\"\tsaid \\ \u{1b}[2J\n");
        let line = format_line(LogFormat::Json, now, log::Level::Info, "runnel::jobs", &message);
        assert_eq!(
            line,
            "{\"time\":\"2026-12-01T23:26:09.123Z\",\"level\":\"INFO\",\"target\":\"runnel::jobs\",\
             \"message\":\"job \\\"x\\\"\\tsaid \\\\ \\u001b[2J\\n\"}\n"
        );
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("expected text or json"));
    }
}
