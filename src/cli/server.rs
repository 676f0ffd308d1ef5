//! `runnel server`: flags into a [`ServerConfig`], then the server loop.

use std::ffi::OsString;
use std::path::PathBuf;

use super::format::{parse_cpu, parse_duration, parse_size};
use super::{finish, CliError};
use crate::jobs::LimitPolicy;
use crate::proto::ResourceLimits;
use crate::server::{self, ContainmentConfig, ServerConfig};
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

isolation (needs root; otherwise jobs run as the server's user, with a warning):
  --run-as USER[:GROUP]          user jobs run as, with no capabilities [default: nobody:nogroup]
  --host-network                 jobs keep the host's network (default: their own, with only lo)
  --no-isolation                 run jobs in the host's namespaces as the server's user
  --require-isolation            refuse to start if jobs cannot be isolated

resource limits (cgroup v2; otherwise jobs run without limits, with a warning):
  --cgroup-root DIR              cgroup the server manages [default: its own cgroup, e.g. a systemd unit's
                                 with Delegate=yes]; it moves itself to DIR/supervisor, jobs go to DIR/jobs/ID
  --require-limits               refuse to start if limits cannot be enforced
  --io-device MAJ:MIN            device io limits apply to (repeatable) [default: every whole disk]
  --default-cpu N  --max-cpu N                 CPUs per job [default: none; max: all CPUs]
  --default-memory SIZE  --max-memory SIZE     memory per job, no swap [default: none; max: all RAM]
  --default-pids N  --max-pids N               processes per job [default: 1024; max: 65536]
  --default-io-read-bps SIZE   --max-io-read-bps SIZE     disk read bytes/s [default: none; max: none]
  --default-io-write-bps SIZE  --max-io-write-bps SIZE    disk write bytes/s [default: none; max: none]
  --default-io-read-iops N     --max-io-read-iops N       disk read operations/s [default: none; max: none]
  --default-io-write-iops N    --max-io-write-iops N      disk write operations/s [default: none; max: none]
  A request's unset limits take the defaults; a request above a maximum is refused; none = no limit.

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
    let containment = parse_containment(&mut args)?;
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
        containment,
    }))
}

/// A limit flag's value: `none` (or 0) for no limit.
fn limit_value(
    args: &mut pico_args::Arguments,
    flag: &'static str,
    parse: fn(&str) -> Result<u64, String>,
) -> Result<Option<u64>, CliError> {
    let Some(text) = args.opt_value_from_str::<_, String>(flag)? else { return Ok(None) };
    if text.eq_ignore_ascii_case("none") {
        return Ok(Some(0));
    }
    parse(&text).map(Some).map_err(|e| CliError::usage(format!("{flag}: {e}")))
}

fn parse_count(text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("{text:?} is not a whole number"))
}

fn parse_cpus(text: &str) -> Result<u64, String> {
    parse_cpu(text).map(u64::from)
}

fn parse_pids(text: &str) -> Result<u64, String> {
    parse_count(text).and_then(|n| if n <= u64::from(u32::MAX) { Ok(n) } else { Err(format!("{n} is too large")) })
}

fn parse_containment(args: &mut pico_args::Arguments) -> Result<ContainmentConfig, CliError> {
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64 * 1000;
    let host_memory = nix::sys::sysinfo::sysinfo().map_or(0, |info| info.ram_total());
    type Setter = fn(&mut ResourceLimits, u64);
    type Parser = fn(&str) -> Result<u64, String>;
    // (field setter, default flag, max flag, parser, default, maximum)
    let fields: [(Setter, &'static str, &'static str, Parser, u64, u64); 7] = [
        (|l, v| l.cpu_millicores = v as u32, "--default-cpu", "--max-cpu", parse_cpus, 0, host_cpus),
        (|l, v| l.memory_bytes = v, "--default-memory", "--max-memory", parse_size, 0, host_memory),
        (|l, v| l.max_pids = v as u32, "--default-pids", "--max-pids", parse_pids, 1024, 65536),
        (|l, v| l.io_read_bps = v, "--default-io-read-bps", "--max-io-read-bps", parse_size, 0, 0),
        (|l, v| l.io_write_bps = v, "--default-io-write-bps", "--max-io-write-bps", parse_size, 0, 0),
        (|l, v| l.io_read_iops = v, "--default-io-read-iops", "--max-io-read-iops", parse_count, 0, 0),
        (|l, v| l.io_write_iops = v, "--default-io-write-iops", "--max-io-write-iops", parse_count, 0, 0),
    ];
    let mut policy = LimitPolicy::default();
    for (set, default_flag, max_flag, parse, default, max) in fields {
        let default = limit_value(args, default_flag, parse)?.unwrap_or(default);
        let max = limit_value(args, max_flag, parse)?.unwrap_or(max);
        set(&mut policy.defaults, default);
        set(&mut policy.maxima, max);
    }
    policy.check().map_err(CliError::usage)?;
    let config = ContainmentConfig {
        cgroup_root: args.opt_value_from_str("--cgroup-root")?,
        io_devices: args.values_from_fn("--io-device", crate::cgroup::parse_device)?,
        policy,
        require_limits: args.contains("--require-limits"),
        no_isolation: args.contains("--no-isolation"),
        run_as: args.opt_value_from_str("--run-as")?,
        host_network: args.contains("--host-network"),
        require_isolation: args.contains("--require-isolation"),
    };
    if config.no_isolation && config.require_isolation {
        return Err(CliError::usage("--no-isolation and --require-isolation contradict each other"));
    }
    Ok(config)
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
