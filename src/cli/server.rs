//! `runnel server`: flags into a [`ServerConfig`], then the server loop.
//!
//! Two stages, as for `certs` and `client`: [`RawFlags::parse`] reads every flag's value (syntax only), then
//! [`RawFlags::validate`] applies the defaults and the rules that tie flags together. Before both, every flag
//! not on the command line may come from the environment ([`with_environment`]): a systemd unit's
//! `EnvironmentFile=` or a container's `env:` then says what a command line would.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::format::{parse_duration, parse_limit, parse_size};
use super::{finish, CliError, FlagValues};
use crate::cgroup::Limits;
use crate::jobs::{LimitPolicy, LIMIT_FIELDS};
use crate::server::{self, ContainmentConfig, ServerConfig};
use crate::tls::{ClientTrust, Fingerprint, KeySource};

pub const USAGE: &str = "\
usage: runnel server --cert FILE --key FILE (--client-ca FILE | --client-cert-pin sha256:HEX) [options]

Serves the runnel job API over mutual TLS (TLS 1.3, client certificate required).

  --listen ADDR                  address to listen on [default: 127.0.0.1:50051 — loopback only]
  --metrics-listen ADDR          serve Prometheus metrics over plain HTTP (GET /metrics) on ADDR; a bare PORT
                                 means 127.0.0.1:PORT [default: no metrics endpoint]
  --cert FILE                    server certificate (PEM)
  --key FILE                     server private key (PEM); or the PEM text in RUNNEL_TLS_KEY
  --client-ca FILE               CA that client certificates must chain to (PEM)
  --crl FILE                     certificates the client CA revoked (PEM CRL; repeatable)
  --client-cert-pin sha256:HEX   accept only this client certificate (repeatable; `runnel certs fingerprint`);
                                 with --client-ca, on top of it; without, self-signed clients
  --client-cert-pins FILE        the same, one fingerprint per line (# comments)
  --admin NAME                   identity that may see and act on every job (repeatable)
  --state-dir DIR                job history (records and output) and working directories [default:
                                 /var/lib/runnel as root, else $XDG_RUNTIME_DIR/runnel or /tmp/runnel-UID]
  --ephemeral                    forget every job at shutdown: the state directory is removed (and a history
                                 found in it at startup is deleted) [default: ended jobs outlive restarts]
  --max-connections N            established client connections at once [default: 4096]
  --max-connections-per-client N established connections at once per identity [default: 64]
  --max-calls-per-client N       calls in flight at once per identity, on all its connections [default: 1024]
  --max-followers-per-client N   StreamOutput calls in flight at once per identity [default: 64]
  --max-jobs N                   jobs retained, running and ended [default: 10000]
  --max-running-per-client N     running jobs per identity [default: 1000]
  --max-job-request SIZE         command, args, env and working dir of one job together [default: 256K]
  --max-output-bytes SIZE        output retained per job; older output is discarded [default: 1G]
  --max-output-total SIZE        output retained across all jobs [default: 8G]
  --stop-grace DUR               StopJob's SIGTERM→SIGKILL grace when the request sets none [default: 10s]
  --shutdown-grace DUR           grace for jobs when the server shuts down [default: 5s]

isolation (needs root; otherwise jobs run as the server's user, with a warning):
  --run-as-range FIRST:COUNT     each job runs as a user and group of its own from these ids, which no account
                                 may use [default: 1879048192:65536]
  --run-as USER[:GROUP]          instead, one user every job runs as (no capabilities either way)
  --host-network                 jobs keep the host's network (default: their own, with only lo)
  --seccomp default|off          the default seccomp filter on jobs' commands, or none [default: default]
  --tmp-size SIZE                each job's private /tmp, /var/tmp and /dev/shm (tmpfs, each) [default: 64M,
                                 or the job's memory limit if smaller]
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

  --log-format text|json         log lines as text or one JSON object each; both begin with an RFC 3339 UTC
                                 time [default: text]
Every flag may also come from the environment: --flag-name from RUNNEL_SERVER_FLAG_NAME (RUNNEL_SERVER_LISTEN,
RUNNEL_SERVER_CLIENT_CA, ...); a repeatable flag takes a comma-separated list, a switch 1/true or 0/false; the
command line wins. An unknown RUNNEL_SERVER_* variable is an error.
SIGTERM or SIGINT stops every job and exits; a second signal skips the grace period.
Logging: RUST_LOG=debug|info|warn [default: info].
";

/// Environment variables of the server's flags: `RUNNEL_SERVER_` and the flag's name in capitals, `-` as `_`.
const ENV_PREFIX: &str = "RUNNEL_SERVER_";

/// Variables with the prefix that are the client's, not the server's flags: left alone.
const CLIENT_VARIABLES: [&str; 1] = ["RUNNEL_SERVER_PIN"];

/// What follows the prefix in variables that orchestrators set for a service named `runnel-server`
/// (Kubernetes' service links: `RUNNEL_SERVER_SERVICE_HOST`, `RUNNEL_SERVER_PORT_50051_TCP`...): no server flag
/// begins so, and they are left alone.
const ORCHESTRATOR_SUFFIXES: [&str; 2] = ["SERVICE_", "PORT"];

/// How a flag takes its value, from the command line or the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagKind {
    Value,
    /// Repeatable: from the environment, a comma-separated list.
    List,
    /// No value: from the environment, 1/true/yes or 0/false/no.
    Switch,
}

/// Every server flag but the per-field limit flags (see [`server_flags`]).
const FLAGS: &[(&str, FlagKind)] = &[
    ("--listen", FlagKind::Value),
    ("--metrics-listen", FlagKind::Value),
    ("--cert", FlagKind::Value),
    ("--key", FlagKind::Value),
    ("--client-ca", FlagKind::Value),
    ("--crl", FlagKind::List),
    ("--client-cert-pin", FlagKind::List),
    ("--client-cert-pins", FlagKind::Value),
    ("--admin", FlagKind::List),
    ("--state-dir", FlagKind::Value),
    ("--ephemeral", FlagKind::Switch),
    ("--max-connections", FlagKind::Value),
    ("--max-connections-per-client", FlagKind::Value),
    ("--max-calls-per-client", FlagKind::Value),
    ("--max-followers-per-client", FlagKind::Value),
    ("--max-jobs", FlagKind::Value),
    ("--max-running-per-client", FlagKind::Value),
    ("--max-job-request", FlagKind::Value),
    ("--max-output-bytes", FlagKind::Value),
    ("--max-output-total", FlagKind::Value),
    ("--stop-grace", FlagKind::Value),
    ("--shutdown-grace", FlagKind::Value),
    ("--cgroup-root", FlagKind::Value),
    ("--io-device", FlagKind::List),
    ("--require-limits", FlagKind::Switch),
    ("--no-isolation", FlagKind::Switch),
    ("--run-as", FlagKind::Value),
    ("--run-as-range", FlagKind::Value),
    ("--host-network", FlagKind::Switch),
    ("--tmp-size", FlagKind::Value),
    ("--seccomp", FlagKind::Value),
    ("--require-isolation", FlagKind::Switch),
    ("--log-format", FlagKind::Value),
];

/// Every flag the server takes, and how.
fn server_flags() -> impl Iterator<Item = (&'static str, FlagKind)> {
    let limits = LIMIT_FIELDS.iter().flat_map(|f| [(f.default_flag, FlagKind::Value), (f.max_flag, FlagKind::Value)]);
    FLAGS.iter().copied().chain(limits)
}

/// The command line `args` with every flag it lacks that `environment` (name, value pairs) sets appended.
/// A variable with the prefix that names no flag is refused: a misspelt setting must not pass unnoticed.
fn with_environment(
    mut args: Vec<OsString>,
    environment: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<OsString>, CliError> {
    let given = |flag: &str| {
        args.iter().any(|arg| {
            let arg = arg.as_encoded_bytes();
            arg == flag.as_bytes() || arg.strip_prefix(flag.as_bytes()).is_some_and(|rest| rest.starts_with(b"="))
        })
    };
    let mut from_environment = Vec::new();
    let mut variables: Vec<(OsString, OsString)> = environment.into_iter().collect();
    variables.sort();
    for (name, value) in variables {
        let Some(name) = name.to_str() else { continue };
        let Some(suffix) = name.strip_prefix(ENV_PREFIX) else { continue };
        if CLIENT_VARIABLES.contains(&name) || ORCHESTRATOR_SUFFIXES.iter().any(|s| suffix.starts_with(s)) {
            continue;
        }
        let flag = format!("--{}", suffix.to_ascii_lowercase().replace('_', "-"));
        let Some((flag, kind)) = server_flags().find(|&(known, _)| known == flag && suffix == env_suffix(known)) else {
            return Err(CliError::usage(format!(
                "{name} names no server flag (expected RUNNEL_SERVER_ and a flag's name in capitals, e.g. \
                 RUNNEL_SERVER_LISTEN for --listen)"
            )));
        };
        if given(flag) {
            continue;
        }
        let value = value.into_string().map_err(|_| CliError::usage(format!("{name}: not valid UTF-8")))?;
        match kind {
            FlagKind::Value => from_environment.extend([flag.into(), value.into()]),
            FlagKind::List => {
                for item in value.split(',') {
                    // "Doe, John" is one identity to a reader and two to a split: refuse what is unclear.
                    if item.is_empty() || item.trim() != item {
                        return Err(CliError::usage(format!(
                            "{name}: {item:?}: items are separated by commas alone, with no spaces around them \
                             (give a value with a comma in it as {flag} on the command line)"
                        )));
                    }
                    from_environment.extend([OsString::from(flag), item.into()]);
                }
            }
            FlagKind::Switch => match value.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => from_environment.push(flag.into()),
                "0" | "false" | "no" | "" => {}
                _ => return Err(CliError::usage(format!("{name}={value:?}: expected 1/true/yes or 0/false/no"))),
            },
        }
    }
    args.extend(from_environment);
    Ok(args)
}

/// The part of `flag`'s environment variable after the prefix: `--client-ca` → `CLIENT_CA`.
fn env_suffix(flag: &str) -> String {
    flag.trim_start_matches('-').to_ascii_uppercase().replace('-', "_")
}

pub fn run(args: Vec<OsString>) -> Result<(), CliError> {
    let raw = RawFlags::parse(with_environment(args, std::env::vars_os())?)?;
    let log_format = raw.log_format.unwrap_or_default();
    super::logging::init("info", log_format);
    log_format.hand_down();
    if raw.help {
        print!("{USAGE}");
        return Ok(());
    }
    let config = raw.validate()?;
    server::run(config).map_err(|e| CliError::local(e.to_string()))
}

/// The flags as given: each value read in its own syntax, none yet checked against another or defaulted.
#[derive(Debug, Default)]
struct RawFlags {
    help: bool,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    crls: Vec<PathBuf>,
    client_cert_pins: Vec<Fingerprint>,
    client_cert_pin_file: Option<PathBuf>,
    admins: Vec<String>,
    state_dir: Option<PathBuf>,
    ephemeral: bool,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    max_calls_per_client: Option<usize>,
    max_followers_per_client: Option<usize>,
    max_jobs: Option<usize>,
    max_running_per_client: Option<usize>,
    max_job_request: Option<u64>,
    max_output_bytes: Option<u64>,
    max_output_total: Option<u64>,
    stop_grace: Option<Duration>,
    shutdown_grace: Option<Duration>,
    /// `--default-*` and `--max-*`, in the order of [`LIMIT_FIELDS`]; `Some(0)` for `none`.
    limit_defaults: [Option<u64>; LIMIT_FIELDS.len()],
    limit_maxima: [Option<u64>; LIMIT_FIELDS.len()],
    cgroup_root: Option<PathBuf>,
    io_devices: Vec<String>,
    require_limits: bool,
    no_isolation: bool,
    run_as: Option<String>,
    run_as_range: Option<(u32, u32)>,
    host_network: bool,
    tmp_size: Option<u64>,
    seccomp: Option<String>,
    require_isolation: bool,
    log_format: Option<super::logging::LogFormat>,
}

impl RawFlags {
    fn parse(args: Vec<OsString>) -> Result<RawFlags, CliError> {
        let mut args = pico_args::Arguments::from_vec(args);
        if args.contains(["-h", "--help"]) {
            return Ok(RawFlags { help: true, ..RawFlags::default() });
        }
        let (mut limit_defaults, mut limit_maxima) = ([None; LIMIT_FIELDS.len()], [None; LIMIT_FIELDS.len()]);
        for (i, field) in LIMIT_FIELDS.iter().enumerate() {
            let parse = |text: &str| parse_limit(field, text);
            limit_defaults[i] = limit_value(&mut args, field.default_flag, parse)?;
            limit_maxima[i] = limit_value(&mut args, field.max_flag, parse)?;
        }
        let raw = RawFlags {
            help: false,
            listen: args.flag_value("--listen")?,
            metrics_listen: args.flag_value_with("--metrics-listen", parse_metrics_address)?,
            cert: args.flag_value("--cert")?,
            key_file: args.flag_value("--key")?,
            client_ca: args.flag_value("--client-ca")?,
            crls: args.flag_values("--crl")?,
            client_cert_pins: args.flag_values_with("--client-cert-pin", |text: &str| Fingerprint::parse(text))?,
            client_cert_pin_file: args.flag_value("--client-cert-pins")?,
            admins: args.flag_values("--admin")?,
            state_dir: args.flag_value("--state-dir")?,
            ephemeral: args.contains("--ephemeral"),
            max_connections: args.flag_value("--max-connections")?,
            max_connections_per_client: args.flag_value("--max-connections-per-client")?,
            max_calls_per_client: args.flag_value("--max-calls-per-client")?,
            max_followers_per_client: args.flag_value("--max-followers-per-client")?,
            max_jobs: args.flag_value("--max-jobs")?,
            max_running_per_client: args.flag_value("--max-running-per-client")?,
            max_job_request: args.flag_value_with("--max-job-request", parse_size)?,
            max_output_bytes: args.flag_value_with("--max-output-bytes", parse_size)?,
            max_output_total: args.flag_value_with("--max-output-total", parse_size)?,
            stop_grace: args.flag_value_with("--stop-grace", parse_duration)?,
            shutdown_grace: args.flag_value_with("--shutdown-grace", parse_duration)?,
            limit_defaults,
            limit_maxima,
            cgroup_root: args.flag_value("--cgroup-root")?,
            io_devices: args.flag_values_with("--io-device", crate::cgroup::parse_device)?,
            require_limits: args.contains("--require-limits"),
            no_isolation: args.contains("--no-isolation"),
            run_as: args.flag_value("--run-as")?,
            run_as_range: args.flag_value_with("--run-as-range", crate::isolation::users::parse_range)?,
            host_network: args.contains("--host-network"),
            tmp_size: args.flag_value_with("--tmp-size", parse_size)?,
            seccomp: args.flag_value("--seccomp")?,
            require_isolation: args.contains("--require-isolation"),
            log_format: args.flag_value("--log-format")?,
        };
        finish(args)?;
        Ok(raw)
    }

    /// The configuration: defaults for what was not given, and every rule between flags checked.
    fn validate(self) -> Result<ServerConfig, CliError> {
        let mut policy = builtin_limit_policy();
        for (i, field) in LIMIT_FIELDS.iter().enumerate() {
            if let Some(default) = self.limit_defaults[i] {
                (field.set)(&mut policy.defaults, default);
            }
            if let Some(max) = self.limit_maxima[i] {
                (field.set)(&mut policy.maxima, max);
            }
        }
        policy.check().map_err(CliError::usage)?;
        if self.no_isolation && self.require_isolation {
            return Err(CliError::usage("--no-isolation and --require-isolation contradict each other"));
        }
        let cert = self
            .cert
            .ok_or_else(|| CliError::usage("--cert FILE is required (make one with `runnel certs server`)"))?;
        let mut pins = self.client_cert_pins;
        if let Some(file) = &self.client_cert_pin_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::usage(format!("--client-cert-pins {}: {e}", file.display())))?;
            pins.extend(
                Fingerprint::parse_file(&text)
                    .map_err(|e| CliError::usage(format!("--client-cert-pins {}: {e}", file.display())))?,
            );
        }
        if self.client_ca.is_none() && pins.is_empty() {
            return Err(CliError::usage(
                "--client-ca FILE is required (the CA's .crt), or --client-cert-pin for self-signed clients",
            ));
        }
        if self.client_ca.is_none() && !self.crls.is_empty() {
            return Err(CliError::usage("--crl needs --client-ca: a CRL is its CA's list"));
        }
        let clients = ClientTrust { ca: self.client_ca, crls: self.crls, pins };
        let key = KeySource::from_env_or(self.key_file)
            .ok_or_else(|| CliError::usage("--key FILE is required (or the PEM text in RUNNEL_TLS_KEY)"))?;
        let max_connections = self.max_connections.unwrap_or(4096);
        let max_connections_per_client = self.max_connections_per_client.unwrap_or(64);
        if max_connections == 0 || max_connections_per_client == 0 || max_connections_per_client > max_connections {
            return Err(CliError::usage(
                "--max-connections and --max-connections-per-client must be at least 1, and the second no more than \
                 the first",
            ));
        }
        let max_calls_per_client = self.max_calls_per_client.unwrap_or(1024);
        let max_followers_per_client = self.max_followers_per_client.unwrap_or(64);
        if max_calls_per_client == 0 || max_followers_per_client == 0 {
            return Err(CliError::usage("--max-calls-per-client and --max-followers-per-client must be at least 1"));
        }
        let max_jobs = self.max_jobs.unwrap_or(10_000);
        let max_running_per_client = self.max_running_per_client.unwrap_or(1_000);
        if max_jobs == 0 || max_running_per_client == 0 {
            return Err(CliError::usage("--max-jobs and --max-running-per-client must be at least 1"));
        }
        // Past a few MiB the request could not reach the server anyway (4 MiB messages), nor exec (ARG_MAX).
        let no_seccomp = match self.seccomp.as_deref() {
            None | Some("default") => false,
            Some("off") => true,
            Some(other) => return Err(CliError::usage(format!("--seccomp {other:?}: expected default or off"))),
        };
        let tmp_size = self.tmp_size.unwrap_or(64 << 20);
        if tmp_size < 4096 {
            return Err(CliError::usage("--tmp-size must be at least 4K (one page)"));
        }
        let max_request_bytes = match self.max_job_request.unwrap_or(256 << 10) {
            bytes @ 1024..=0x100_0000 => bytes as usize,
            _ => return Err(CliError::usage("--max-job-request must be between 1K and 16M")),
        };
        let max_output_bytes = self.max_output_bytes.unwrap_or(1 << 30);
        let max_output_total = self.max_output_total.unwrap_or(8 << 30);
        if max_output_bytes == 0 || max_output_total < max_output_bytes {
            return Err(CliError::usage("--max-output-bytes must be > 0 and no more than --max-output-total"));
        }
        Ok(ServerConfig {
            listen: self.listen.unwrap_or_else(|| "127.0.0.1:50051".parse().expect("valid")),
            metrics_listen: self.metrics_listen,
            cert,
            key,
            clients,
            admins: self.admins,
            max_connections,
            max_connections_per_client,
            max_calls_per_client,
            max_followers_per_client,
            state_dir: self.state_dir.unwrap_or_else(default_state_dir),
            ephemeral: self.ephemeral,
            max_jobs,
            max_running_per_client,
            max_request_bytes,
            max_output_bytes,
            max_output_total,
            stop_grace: self.stop_grace.unwrap_or(Duration::from_secs(10)),
            shutdown_grace: self.shutdown_grace.unwrap_or(Duration::from_secs(5)),
            containment: ContainmentConfig {
                cgroup_root: self.cgroup_root,
                io_devices: self.io_devices,
                policy,
                require_limits: self.require_limits,
                no_isolation: self.no_isolation,
                run_as: self.run_as,
                run_as_range: self.run_as_range,
                host_network: self.host_network,
                tmp_size,
                no_seccomp,
                require_isolation: self.require_isolation,
            },
        })
    }
}

/// `--metrics-listen`: `HOST:PORT`, or a bare `PORT` (or `:PORT`) on loopback, so the endpoint is never
/// exposed beyond the host unless an address says so.
fn parse_metrics_address(text: &str) -> Result<SocketAddr, String> {
    let port = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| format!("{text:?} is not HOST:PORT (e.g. 127.0.0.1:9464) or a port"))
}

/// A limit flag's value: `none` (or 0) for no limit.
fn limit_value(
    args: &mut pico_args::Arguments,
    flag: &'static str,
    parse: impl Fn(&str) -> Result<u64, String>,
) -> Result<Option<u64>, CliError> {
    let Some(text) = args.flag_value::<String>(flag)? else { return Ok(None) };
    if text.eq_ignore_ascii_case("none") {
        return Ok(Some(0));
    }
    parse(&text).map(Some).map_err(|e| CliError::usage(format!("{flag}: {e}")))
}

/// The limits a server applies when no flag says otherwise: 1024 processes per job by default; at most all of
/// the host's CPUs and memory, and 65536 processes.
fn builtin_limit_policy() -> LimitPolicy {
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64 * 1000;
    let host_memory = nix::sys::sysinfo::sysinfo().map_or(0, |info| info.ram_total());
    LimitPolicy {
        defaults: Limits { max_pids: 1024, ..Limits::default() },
        maxima: Limits {
            cpu_millicores: u32::try_from(host_cpus).unwrap_or(u32::MAX),
            memory_bytes: host_memory,
            max_pids: 65536,
            ..Limits::default()
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn environment(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(name, value)| (OsString::from(name), OsString::from(value))).collect()
    }

    #[test]
    fn flags_missing_from_the_command_line_come_from_the_environment() {
        let env = environment(&[
            ("RUNNEL_SERVER_LISTEN", "0.0.0.0:7000"),
            ("RUNNEL_SERVER_CERT", "from-env.crt"),
            ("RUNNEL_SERVER_ADMIN", "alice,bob"),
            // Kubernetes' service links for a Service named runnel-server.
            ("RUNNEL_SERVER_SERVICE_HOST", "10.0.0.1"),
            ("RUNNEL_SERVER_PORT_50051_TCP", "tcp://10.0.0.1:50051"),
            ("RUNNEL_SERVER_HOST_NETWORK", "true"),
            ("RUNNEL_SERVER_NO_ISOLATION", "0"),
            ("RUNNEL_SERVER_MAX_PIDS", "100"),
            ("RUNNEL_SERVER_STATE_DIR", "/from/env"),
            // The client's settings, which one shell may hold beside the server's.
            ("RUNNEL_SERVER", "host:1"),
            ("RUNNEL_SERVER_PIN", "sha256:00"),
            ("RUNNEL_CERT", "client.crt"),
        ]);
        let got = with_environment(args(&["--cert", "cli.crt", "--state-dir=/from/cli"]), env).unwrap();
        let raw = RawFlags::parse(got).unwrap();
        assert_eq!(raw.cert, Some("cli.crt".into()), "the command line wins");
        assert_eq!(raw.state_dir, Some("/from/cli".into()), "--flag=value counts as given");
        assert_eq!(raw.listen, Some("0.0.0.0:7000".parse().unwrap()));
        assert_eq!(raw.admins, ["alice", "bob"]);
        assert!(raw.host_network && !raw.no_isolation);
        let pids = LIMIT_FIELDS.iter().position(|f| f.max_flag == "--max-pids").unwrap();
        assert_eq!(raw.limit_maxima[pids], Some(100));
    }

    #[test]
    fn the_metrics_address_is_loopback_unless_an_address_is_given() {
        assert_eq!(parse_metrics_address("9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse_metrics_address(":9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse_metrics_address("0.0.0.0:9464"), Ok("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(parse_metrics_address("[::1]:9464"), Ok("[::1]:9464".parse().unwrap()));
        let error = parse_metrics_address("localhost:x").unwrap_err();
        assert!(error.contains("HOST:PORT"), "{error}");
        let raw = RawFlags::parse(args(&["--metrics-listen", "9100"])).unwrap();
        assert_eq!(raw.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn a_server_variable_that_names_no_flag_or_a_bad_switch_is_refused() {
        let refused =
            |pairs: &[(&str, &str)]| with_environment(Vec::new(), environment(pairs)).unwrap_err().to_string();
        assert!(refused(&[("RUNNEL_SERVER_LISTNE", "x")]).contains("RUNNEL_SERVER_LISTNE names no server flag"));
        // Only the spelling the help gives: capitals, underscores.
        assert!(refused(&[("RUNNEL_SERVER_client-ca", "x")]).contains("names no server flag"));
        assert!(refused(&[("RUNNEL_SERVER_HOST_NETWORK", "maybe")]).contains("expected 1/true/yes"));
        // One identity with a comma and a space, or two? Neither is guessed.
        assert!(
            refused(&[("RUNNEL_SERVER_ADMIN", "Doe, John")]).contains("\" John\": items are separated by commas alone")
        );
        assert!(refused(&[("RUNNEL_SERVER_ADMIN", "alice,,bob")]).contains("\"\""));
    }

    #[test]
    fn every_flag_in_the_help_can_come_from_the_environment() {
        let in_help: std::collections::BTreeSet<&str> = USAGE
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
            .filter(|word| word.starts_with("--") && word.len() > 2 && !word.ends_with('-'))
            // The help's own example of the naming rule.
            .filter(|&word| word != "--flag-name")
            .collect();
        let known: std::collections::BTreeSet<&str> = server_flags().map(|(flag, _)| flag).collect();
        assert_eq!(in_help, known);
    }

    #[test]
    fn limit_flags_fill_the_policy_over_the_builtin_one() {
        let raw = RawFlags::parse(args(&[
            "--cert",
            "c",
            "--key",
            "k",
            "--client-ca",
            "ca",
            "--default-cpu",
            "0.5",
            "--max-memory",
            "1G",
            "--max-pids",
            "none",
            "--default-io-write-bps",
            "1M",
        ]))
        .unwrap();
        let policy = raw.validate().unwrap().containment.policy;
        assert_eq!(
            policy.defaults,
            Limits { cpu_millicores: 500, io_write_bps: 1 << 20, max_pids: 1024, ..Limits::default() }
        );
        assert_eq!((policy.maxima.memory_bytes, policy.maxima.max_pids), (1 << 30, 0));
    }

    #[test]
    fn rules_between_flags_are_checked_after_parsing() {
        let validate =
            |words: &[&str]| RawFlags::parse(args(words)).and_then(RawFlags::validate).unwrap_err().to_string();
        let base = ["--cert", "c", "--key", "k", "--client-ca", "ca"];
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        assert!(validate(&with(&["--default-pids", "10", "--max-pids", "5"]))
            .contains("--default-pids 10 is above --max-pids 5"));
        assert!(validate(&with(&["--no-isolation", "--require-isolation"])).contains("contradict"));
        assert!(
            validate(&with(&["--max-output-bytes", "2G", "--max-output-total", "1G"])).contains("--max-output-bytes")
        );
        assert!(validate(&["--cert", "c", "--key", "k"]).contains("--client-ca FILE is required"));
        assert!(validate(&with(&["--max-pids", "5x"])).contains("--max-pids: \"5x\" is not a whole number"));
    }
}
