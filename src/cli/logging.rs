//! Log lines an operator can read and a log pipeline can parse: each starts with an RFC 3339 UTC timestamp
//! (milliseconds) and the level, as journald, Loki or a plain `grep` over a file expect; `--log-format json`
//! makes each line one JSON object (`time`, `level`, `target`, `message`) for pipelines that index fields.
//!
//! `RUST_LOG` still chooses what is logged (env_logger's filter); this module only decides how a line looks.

use std::io::Write as _;
use std::time::SystemTime;

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

/// The variable through which the server's helper processes (janitor, network-namespace maker) learn its log
/// format, so that their lines on its stderr are in the same one (`sys::spawn_helper` passes it on).
pub const FORMAT_VARIABLE: &str = "RUNNEL_LOG_FORMAT";

/// The target of the line that says the server listens: logged whatever `RUST_LOG` says (scripts wait for it).
pub const READY_TARGET: &str = "runnel::ready";

impl LogFormat {
    /// The format [`FORMAT_VARIABLE`] names; text if none.
    pub fn from_environment() -> LogFormat {
        std::env::var(FORMAT_VARIABLE).ok().and_then(|name| name.parse().ok()).unwrap_or_default()
    }

    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// Makes this the format of the helper processes this one starts.
    pub fn hand_down(self) {
        std::env::set_var(FORMAT_VARIABLE, self.name());
    }
}

/// Sends the `log` macros to stderr in `format`, at `default_level` unless `RUST_LOG` says otherwise.
pub fn init(default_level: &str, format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    // The most specific directive wins: `RUST_LOG=warn` still lets the ready line through.
    builder.filter_module(READY_TARGET, log::LevelFilter::Info);
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
    let time = super::format::utc_rfc3339_millis(now);
    match format {
        // A message may carry what a client sent (a command name, a path): one line always, nothing that acts
        // on a terminal, so no client can write a line of its own into the log.
        LogFormat::Text => format!("{time} {level:<5} {}\n", super::format::terminal_safe(&message.to_string())),
        LogFormat::Json => {
            let mut line = format!("{{\"time\":\"{time}\",\"level\":\"{level}\",\"target\":");
            super::format::json_string(&mut line, target);
            line.push_str(",\"message\":");
            super::format::json_string(&mut line, &message.to_string());
            line.push_str("}\n");
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(seconds: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis)
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let rfc3339_utc = super::super::format::utc_rfc3339_millis;
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
