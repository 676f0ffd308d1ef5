//! `runnel server`: flags into a [`ServerConfig`], then the server loop.

use std::ffi::OsString;
use std::path::PathBuf;

use super::format::{parse_duration, parse_size};
use super::{finish, CliError};
use crate::server::{self, ServerConfig};
use crate::tls::KeySource;

pub const USAGE: &str = "\
usage: runnel server --cert FILE --key FILE --client-ca FILE [options]

Serves the runnel job API over mutual TLS (TLS 1.3, client certificate required).

  --listen ADDR                  address to listen on [default: 127.0.0.1:50051 — loopback only]
  --cert FILE                    server certificate (PEM)
  --key FILE                     server private key (PEM); or the PEM text in RUNNEL_TLS_KEY
  --client-ca FILE               CA that client certificates must chain to (PEM)
  --admin NAME                   identity that may see and act on every job (repeatable)
  --state-dir DIR                job output and working directories [default: /var/lib/runnel as root,
                                 else $XDG_RUNTIME_DIR/runnel or /tmp/runnel-UID]; removed at shutdown
  --max-jobs N                   jobs retained, running and ended [default: 10000]
  --max-running-per-client N     running jobs per identity [default: 1000]
  --max-output-bytes SIZE        output retained per job; older output is discarded [default: 1G]
  --max-output-total SIZE        output retained across all jobs [default: 8G]
  --stop-grace DUR               StopJob's SIGTERM→SIGKILL grace when the request sets none [default: 10s]
  --shutdown-grace DUR           grace for jobs when the server shuts down [default: 5s]

SIGTERM or SIGINT stops every job and exits; a second signal skips the grace period.
Logging: RUST_LOG=debug|info|warn [default: info].
";

pub fn run(args: Vec<OsString>) -> Result<(), CliError> {
    let config = parse(args)?;
    let Some(config) = config else {
        print!("{USAGE}");
        return Ok(());
    };
    server::run(config).map_err(|e| CliError::local(e.to_string()))
}

fn parse(args: Vec<OsString>) -> Result<Option<ServerConfig>, CliError> {
    let mut args = pico_args::Arguments::from_vec(args);
    if args.contains(["-h", "--help"]) {
        return Ok(None);
    }
    let listen = args.opt_value_from_str("--listen")?.unwrap_or_else(|| "127.0.0.1:50051".parse().expect("valid"));
    let cert: Option<PathBuf> = args.opt_value_from_str("--cert")?;
    let key_file: Option<PathBuf> = args.opt_value_from_str("--key")?;
    let client_ca: Option<PathBuf> = args.opt_value_from_str("--client-ca")?;
    let admins: Vec<String> = args.values_from_str("--admin")?;
    let state_dir: Option<PathBuf> = args.opt_value_from_str("--state-dir")?;
    let max_jobs: usize = args.opt_value_from_str("--max-jobs")?.unwrap_or(10_000);
    let max_running_per_client: usize = args.opt_value_from_str("--max-running-per-client")?.unwrap_or(1_000);
    let max_output_bytes = args.opt_value_from_fn("--max-output-bytes", parse_size)?.unwrap_or(1 << 30);
    let max_output_total = args.opt_value_from_fn("--max-output-total", parse_size)?.unwrap_or(8 << 30);
    let stop_grace =
        args.opt_value_from_fn("--stop-grace", parse_duration)?.unwrap_or(std::time::Duration::from_secs(10));
    let shutdown_grace =
        args.opt_value_from_fn("--shutdown-grace", parse_duration)?.unwrap_or(std::time::Duration::from_secs(5));
    finish(args)?;

    let cert = cert.ok_or_else(|| CliError::usage("--cert FILE is required (make one with `runnel certs server`)"))?;
    let client_ca = client_ca.ok_or_else(|| CliError::usage("--client-ca FILE is required (the CA's .crt)"))?;
    let key = KeySource::from_env_or(key_file)
        .ok_or_else(|| CliError::usage("--key FILE is required (or the PEM text in RUNNEL_TLS_KEY)"))?;
    if max_jobs == 0 || max_running_per_client == 0 {
        return Err(CliError::usage("--max-jobs and --max-running-per-client must be at least 1"));
    }
    if max_output_bytes == 0 || max_output_total < max_output_bytes {
        return Err(CliError::usage("--max-output-bytes must be > 0 and no more than --max-output-total"));
    }
    Ok(Some(ServerConfig {
        listen,
        cert,
        key,
        client_ca,
        admins,
        state_dir: state_dir.unwrap_or_else(default_state_dir),
        max_jobs,
        max_running_per_client,
        max_output_bytes,
        max_output_total,
        stop_grace,
        shutdown_grace,
    }))
}

fn default_state_dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/var/lib/runnel");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("runnel"),
        _ => PathBuf::from(format!("/tmp/runnel-{uid}")),
    }
}
