//! The command line: `runnel server`, `runnel client`, `runnel certs`, `runnel version`.
//!
//! Two stages, as in ripgrep: pico-args turns raw arguments into values, then each subcommand checks them into
//! a typed configuration. [`main`] maps every failure to one `error: CODE: message` line and an exit code.

pub mod certs;
mod client;
mod completions;
mod error;
pub mod format;
pub mod logging;
mod server;

pub use error::CliError;

use std::ffi::OsString;
use std::fmt;
use std::str::FromStr;

pub const USAGE: &str = "\
runnel: run Linux jobs for remote clients over mutual-TLS gRPC

usage:
  runnel server --cert FILE --key FILE --client-ca FILE [options]   serve the job API (see `runnel server --help`)
  runnel client [connection options] COMMAND ...                    talk to a server (see `runnel client --help`)
  runnel certs ca|server|client ...                                 make a PKI for mutual TLS (see `runnel certs --help`)
  runnel version                                                    print the version
  runnel completions bash|zsh|fish                                  a shell completion script to install
";

/// Runs the command line and returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{err}");
            err.exit_code()
        }
    }
}

fn run(mut args: Vec<OsString>) -> Result<i32, CliError> {
    if args.is_empty() {
        return Err(CliError::usage("no command given; see `runnel --help`"));
    }
    let command = args.remove(0);
    if command != "server" {
        // The server logs its lifecycle at info, in the format its flags choose; everything else speaks only
        // through its output and errors.
        logging::init("warn", logging::LogFormat::from_environment());
    }
    match command.to_str() {
        Some("server") => server::run(args).map(|()| 0),
        Some("client") => client::run(args),
        Some(crate::isolation::INIT_COMMAND) => crate::isolation::init::main(args),
        Some(crate::jobs::janitor::JANITOR_COMMAND) => crate::jobs::janitor::main(args),
        Some(crate::jobs::SEGMENT_MOVER_COMMAND) => crate::jobs::segment_mover_main(args),
        Some(crate::jobs::SPOOL_WRITER_COMMAND) => crate::jobs::spool_writer_main(args),
        Some(crate::isolation::shell_pool::SHELL_POOL_COMMAND) => crate::isolation::shell_pool::main(args),
        Some("certs") => certs::run(pico_args::Arguments::from_vec(args)).map(|()| 0),
        Some("completions") => completions::run(pico_args::Arguments::from_vec(args)),
        Some("version" | "--version" | "-V") => {
            println!("runnel {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            Ok(0)
        }
        _ => Err(CliError::usage(format!("unknown command {command:?}; see `runnel --help`"))),
    }
}

/// Splits arguments at the first `--`: flags before it, a job's command line after it.
fn split_at_double_dash(args: Vec<OsString>) -> (Vec<OsString>, Option<Vec<OsString>>) {
    match args.iter().position(|a| a == "--") {
        Some(i) => {
            let mut flags = args;
            let rest = flags.split_off(i + 1);
            flags.pop();
            (flags, Some(rest))
        }
        None => (args, None),
    }
}

/// Flag values that fail with an error naming the flag and the form it takes (`--max-jobs: "5x" is not a
/// whole number`), where pico-args alone says only `failed to parse '5x'`.
trait FlagValues {
    fn flag_value<T: FromStr>(&mut self, flag: &'static str) -> Result<Option<T>, CliError>
    where
        T::Err: fmt::Display;
    fn flag_value_with<T, E: fmt::Display>(
        &mut self,
        flag: &'static str,
        parse: fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, CliError>;
    fn flag_values<T: FromStr>(&mut self, flag: &'static str) -> Result<Vec<T>, CliError>
    where
        T::Err: fmt::Display;
    fn flag_values_with<T, E: fmt::Display>(
        &mut self,
        flag: &'static str,
        parse: fn(&str) -> Result<T, E>,
    ) -> Result<Vec<T>, CliError>;
}

impl FlagValues for pico_args::Arguments {
    fn flag_value<T: FromStr>(&mut self, flag: &'static str) -> Result<Option<T>, CliError>
    where
        T::Err: fmt::Display,
    {
        self.opt_value_from_fn(flag, from_str::<T>).map_err(|e| flag_error(flag, e))
    }

    fn flag_value_with<T, E: fmt::Display>(
        &mut self,
        flag: &'static str,
        parse: fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, CliError> {
        self.opt_value_from_fn(flag, parse).map_err(|e| flag_error(flag, e))
    }

    fn flag_values<T: FromStr>(&mut self, flag: &'static str) -> Result<Vec<T>, CliError>
    where
        T::Err: fmt::Display,
    {
        self.values_from_fn(flag, from_str::<T>).map_err(|e| flag_error(flag, e))
    }

    fn flag_values_with<T, E: fmt::Display>(
        &mut self,
        flag: &'static str,
        parse: fn(&str) -> Result<T, E>,
    ) -> Result<Vec<T>, CliError> {
        self.values_from_fn(flag, parse).map_err(|e| flag_error(flag, e))
    }
}

/// `text` parsed as a `T`, or what it is not.
fn from_str<T: FromStr>(text: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    let form = match std::any::type_name::<T>() {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number",
        "core::net::socket_addr::SocketAddr" | "std::net::SocketAddr" => "an address like 127.0.0.1:50051",
        _ => return text.parse().map_err(|e: T::Err| e.to_string()),
    };
    text.parse().map_err(|_| format!("{text:?} is not {form}"))
}

/// A pico-args error on `flag`, naming it.
fn flag_error(flag: &str, err: pico_args::Error) -> CliError {
    let what = match err {
        pico_args::Error::ArgumentParsingFailed { cause } => cause,
        // Most parsers quote the value in their message already.
        pico_args::Error::Utf8ArgumentParsingFailed { value, cause } if cause.contains(&value) => cause,
        pico_args::Error::Utf8ArgumentParsingFailed { value, cause } => format!("{value:?}: {cause}"),
        pico_args::Error::OptionWithoutAValue(_) => "needs a value".to_string(),
        pico_args::Error::NonUtf8Argument => "not valid UTF-8".to_string(),
        other => other.to_string(),
    };
    CliError::usage(format!("{flag}: {what}"))
}

/// Fails if any argument was left unparsed, naming it.
fn finish(args: pico_args::Arguments) -> Result<(), CliError> {
    let rest = args.finish();
    if rest.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = rest.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    Err(CliError::usage(format!("unexpected argument(s): {}", names.join(" "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(words: &[&str], read: impl FnOnce(&mut pico_args::Arguments) -> Result<(), CliError>) -> String {
        let mut args = pico_args::Arguments::from_vec(words.iter().map(OsString::from).collect());
        read(&mut args).unwrap_err().to_string()
    }

    #[test]
    fn a_flag_that_does_not_parse_is_named_with_the_form_it_takes() {
        let number = |args: &mut pico_args::Arguments| args.flag_value::<usize>("--max-jobs").map(drop);
        assert_eq!(
            error_of(&["--max-jobs", "5x"], number),
            "error: INVALID_ARGUMENT: --max-jobs: \"5x\" is not a whole number"
        );
        assert_eq!(error_of(&["--max-jobs"], number), "error: INVALID_ARGUMENT: --max-jobs: needs a value");
        let address = |args: &mut pico_args::Arguments| args.flag_value::<std::net::SocketAddr>("--listen").map(drop);
        assert!(
            error_of(&["--listen", "x"], address).ends_with("--listen: \"x\" is not an address like 127.0.0.1:50051")
        );
        let size = |args: &mut pico_args::Arguments| args.flag_values_with("--size", format::parse_size).map(drop);
        assert!(error_of(&["--size", "1G", "--size", "9q"], size)
            .ends_with("--size: \"9q\" is not a size (like 512K, 256M, 1G)"));
        let mut args = pico_args::Arguments::from_vec(vec!["--max-jobs".into(), "12".into()]);
        assert_eq!(args.flag_value::<usize>("--max-jobs").unwrap(), Some(12));
    }
}
