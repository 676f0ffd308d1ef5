//! The command line: `runnel server`, `runnel client`, `runnel certs`, `runnel version`.
//!
//! Two stages, as in ripgrep: pico-args turns raw arguments into values, then each subcommand checks them into
//! a typed configuration. [`main`] maps every failure to one `error: CODE: message` line and an exit code.

pub mod certs;
mod client;
mod error;
pub mod format;
pub mod logging;
mod server;

pub use error::CliError;

use std::ffi::OsString;

pub const USAGE: &str = "\
runnel: run Linux jobs for remote clients over mutual-TLS gRPC

usage:
  runnel server --cert FILE --key FILE --client-ca FILE [options]   serve the job API (see `runnel server --help`)
  runnel client [connection options] COMMAND ...                    talk to a server (see `runnel client --help`)
  runnel certs ca|server|client ...                                 make a PKI for mutual TLS (see `runnel certs --help`)
  runnel version                                                    print the version
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
        logging::init("warn", logging::LogFormat::Text);
    }
    match command.to_str() {
        Some("server") => server::run(args).map(|()| 0),
        Some("client") => client::run(args),
        Some(crate::isolation::INIT_COMMAND) => crate::isolation::init::main(args),
        Some(crate::jobs::janitor::JANITOR_COMMAND) => crate::jobs::janitor::main(args),
        Some(crate::isolation::network_pool::NETWORK_POOL_COMMAND) => crate::isolation::network_pool::main(args),
        Some("certs") => certs::run(pico_args::Arguments::from_vec(args)).map(|()| 0),
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

/// Fails if any argument was left unparsed, naming it.
fn finish(args: pico_args::Arguments) -> Result<(), CliError> {
    let rest = args.finish();
    if rest.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = rest.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    Err(CliError::usage(format!("unexpected argument(s): {}", names.join(" "))))
}
