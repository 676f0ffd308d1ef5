//! `runnel client`: one command against a server, printed for people (tables, raw output) or scripts (JSON
//! lines, exit codes).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::format::{self, parse_duration, parse_limit};
use super::{finish, split_at_double_dash, CliError, FlagValues};
use crate::cgroup::Limits;
use crate::client::{CallError, Client, ClientSettings, ResponseStream};
use crate::grpc::{path, Code};
use crate::jobs::LIMIT_FIELDS;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::{
    GetJobRequest, Job, JobState, ListJobsRequest, ListJobsResponse, OutputChunk, OutputStream, RemoveJobRequest,
    StartJobRequest, StopJobRequest, StreamOutputRequest, WaitJobRequest,
};
use crate::server::wire;
use crate::tls::{Fingerprint, KeySource};

pub const USAGE: &str = "\
usage: runnel client [connection options] COMMAND ...

commands:
  start [start options] -- CMD [ARG]...   start a job; prints its id
  run [--grace DUR] [start options] -- CMD [ARG]...
                                          start a job, stream its output, exit with its exit code (Ctrl-C
                                          stops the job, output goes on until it ends; Ctrl-C again leaves)
  status ID [--json] [--no-trunc]         show one job
  list [--state S]... [--since TIME] [--until TIME] [--json] [-q] [--no-trunc]
                                          show jobs (S: running, stopping, exited, killed), those started
                                          in [--since, --until] (TIME: 2026-12-01 14:00 in local time, RFC
                                          3339, or how long ago: 90m, 2h, 3d); -q: ids only
  logs [-f] [--offset N] ID               print a job's output as raw bytes (stdout→stdout, stderr→stderr);
                                          -f keeps following until the job has ended
  stop [--grace DUR] ID                   SIGTERM the job, SIGKILL after the grace period; waits for the end
  wait ID                                 wait for a job to end; exit with its exit code (128+N for signal N)
  rm ID...                                remove ended jobs: forget them and free their output
  prune [--older-than DUR] [--all]        remove your ended jobs (ended at least DUR ago); --all: every ended
                                          job you can see (an admin's: everyone's)
  version                                 print this client's version and the server's

ID: a whole job id, or its first 4 or more hex digits if no other job you can see begins with them (tables
show 8; --no-trunc shows whole ids).

start options:
  --env NAME=VALUE     environment entry (repeatable); the job sees only these, plus a default PATH
  --cwd DIR            absolute working directory [default: a fresh directory on the server]
  --cpu N              CPUs (0.5 = half a CPU)           --memory SIZE     memory limit (256M, 1G)
  --io-read-bps SIZE   disk read bytes/s                 --io-write-bps SIZE  disk write bytes/s
  --io-read-iops N     disk read operations/s            --io-write-iops N    disk write operations/s
  --pids N             maximum number of processes
  (limits need a server on a cgroup v2 host; unset ones take the server's defaults)

connection options (or environment variables):
  --server HOST:PORT   [RUNNEL_SERVER, default 127.0.0.1:50051]
  --cert FILE          client certificate [RUNNEL_CERT]
  --key FILE           client private key [RUNNEL_KEY; or the PEM text in RUNNEL_TLS_KEY]
  --ca FILE            CA that signed the server's certificate [RUNNEL_CA]
  --server-pin sha256:HEX  connect only to the server certificate with this fingerprint (`runnel certs
                       fingerprint`); with --ca, on top of it; without, a self-signed server [RUNNEL_SERVER_PIN]
  --server-name NAME   name the server's certificate must carry [default: the host of --server]
  --timeout DUR        give up on each call after DUR (30s, 5m) with DEADLINE_EXCEEDED [default: none]

Errors print as `error: CODE: message`; usage errors exit 2, others 1.
";

/// The help of one client command: its lines of [`USAGE`], with the start options for `start` and `run`.
fn command_usage(command: &str) -> Option<String> {
    let section = |title: &str| -> Vec<&str> {
        USAGE.lines().skip_while(|l| *l != title).skip(1).take_while(|l| !l.is_empty()).collect()
    };
    // A command's line, and the lines that continue it (indented past the command column).
    let is_command_line = |l: &&str| l.starts_with("  ") && !l.starts_with("   ");
    let mut lines = section("commands:")
        .into_iter()
        .skip_while(|l| !(is_command_line(l) && l.split_whitespace().next() == Some(command)));
    let first = lines.next()?;
    // "  start [options] -- CMD [ARG]...   start a job; ...": the usage, then what it does.
    let (synopsis, description) = first.trim_start().split_once("   ").unwrap_or((first.trim_start(), ""));
    let mut text = format!("usage: runnel client [connection options] {synopsis}\n\n");
    let continued = lines.take_while(|l| l.starts_with("        ")).map(str::trim);
    for line in std::iter::once(description.trim()).chain(continued).filter(|l| !l.is_empty()) {
        text.push_str(line);
        text.push('\n');
    }
    if matches!(command, "start" | "run") {
        text.push_str("\nstart options:\n");
        for line in section("start options:") {
            text.push_str(line);
            text.push('\n');
        }
    }
    if USAGE.contains("\nID: ") && first.contains(" ID") {
        text.push('\n');
        text.extend(
            USAGE
                .lines()
                .skip_while(|l| !l.starts_with("ID: "))
                .take_while(|l| !l.is_empty())
                .map(|l| format!("{l}\n")),
        );
    }
    text.push_str("\nconnection options: see `runnel client --help`\n");
    Some(text)
}

fn call_error(err: CallError) -> CliError {
    match err {
        // The server's words, printed on the user's terminal: nothing in them may act on it.
        CallError::Status(status) => CliError::status(status.code, format::terminal_safe(&status.message)),
        CallError::Interrupted => CliError::status(Code::Cancelled, "interrupted"),
    }
}

fn path_setting(args: &mut pico_args::Arguments, flag: &'static str, env: &str) -> Result<Option<PathBuf>, CliError> {
    Ok(args.flag_value::<PathBuf>(flag)?.or_else(|| std::env::var_os(env).map(PathBuf::from)))
}

pub fn run(args: Vec<OsString>) -> Result<i32, CliError> {
    // Output streams free a buffer per message: keep that memory for reuse instead of faulting it back in.
    // Process-wide, so the command line sets it, not the library's `Client` (embedders decide for themselves).
    crate::sys::retain_freed_memory();
    let (flags, command_line) = split_at_double_dash(args);
    let mut args = pico_args::Arguments::from_vec(flags);
    let server: Option<String> = args.flag_value("--server")?;
    let cert = path_setting(&mut args, "--cert", "RUNNEL_CERT")?;
    let key = path_setting(&mut args, "--key", "RUNNEL_KEY")?;
    let ca = path_setting(&mut args, "--ca", "RUNNEL_CA")?;
    let server_name: Option<String> = args.flag_value("--server-name")?;
    let timeout = args.flag_value_with("--timeout", parse_duration)?;
    let server_pin = match args.flag_value::<String>("--server-pin")? {
        Some(text) => Some(text),
        None => std::env::var("RUNNEL_SERVER_PIN").ok(),
    };
    let server_pin = server_pin
        .map(|text| Fingerprint::parse(&text).map_err(|e| CliError::usage(format!("--server-pin {e}"))))
        .transpose()?;
    let help = args.contains(["-h", "--help"]);
    let command = args.subcommand()?;
    if help || command.as_deref() == Some("help") {
        // `client start --help`: start's own lines; `client --help`, or a command there is none of: everything.
        let usage = command.as_deref().and_then(command_usage);
        print!("{}", usage.as_deref().unwrap_or(USAGE));
        return Ok(0);
    }
    let Some(command) = command else {
        return Err(CliError::usage("no client command given; see `runnel client --help`"));
    };

    let parsed = parse_command(&command, &mut args, command_line)?;
    finish(args)?;

    let settings = ClientSettings {
        server: server.or_else(|| std::env::var("RUNNEL_SERVER").ok()).unwrap_or_else(|| "127.0.0.1:50051".into()),
        cert: cert.ok_or_else(|| CliError::usage("no client certificate: pass --cert FILE or set RUNNEL_CERT"))?,
        key: KeySource::from_env_or(key)
            .ok_or_else(|| CliError::usage("no client key: pass --key FILE, set RUNNEL_KEY or RUNNEL_TLS_KEY"))?,
        ca: match (ca, server_pin) {
            (None, None) => {
                return Err(CliError::usage(
                    "no CA certificate: pass --ca FILE or set RUNNEL_CA (or pin the server with --server-pin)",
                ))
            }
            (ca, _) => ca,
        },
        server_pin,
        server_name,
    };
    let mut client =
        Client::connect(&settings).map_err(|s| CliError::status(s.code, format::terminal_safe(&s.message)))?;
    let identity = identity_of(&settings.cert);
    parsed.execute(&mut Session { client: &mut client, identity, timeout })
}

/// `list --since/--until`: the window a job's start must fall in (inclusive), each end open if unset.
#[derive(Debug, Default)]
struct StartWindow {
    since: Option<SystemTime>,
    until: Option<SystemTime>,
}

impl StartWindow {
    fn holds(&self, job: &Job) -> bool {
        let Some(started) = job.started_at.and_then(|at| SystemTime::try_from(at).ok()) else {
            return self.since.is_none() && self.until.is_none();
        };
        self.since.is_none_or(|since| started >= since) && self.until.is_none_or(|until| started <= until)
    }
}

/// A parsed client command.
enum Command {
    Start(StartJobRequest),
    Run { request: StartJobRequest, grace: Option<Duration> },
    Status { id: String, json: bool, whole_ids: bool },
    List { states: Vec<i32>, started: StartWindow, json: bool, quiet: bool, whole_ids: bool },
    Logs { id: String, offset: u64, follow: bool },
    Stop { id: String, grace: Option<Duration> },
    Wait { id: String },
    Remove { ids: Vec<String> },
    Prune { older_than: Option<Duration>, all: bool },
    Version,
}

/// A connected client and what every call of the command shares.
struct Session<'a> {
    client: &'a mut Client,
    /// The identity the client's certificate names (whose jobs `prune` removes without `--all`).
    identity: String,
    /// `--timeout`: each call's deadline.
    timeout: Option<Duration>,
}

fn parse_command(
    command: &str,
    args: &mut pico_args::Arguments,
    command_line: Option<Vec<OsString>>,
) -> Result<Command, CliError> {
    if !matches!(command, "start" | "run") && command_line.is_some() {
        return Err(CliError::usage(format!("{command} takes no `-- CMD`")));
    }
    let id = |args: &mut pico_args::Arguments| -> Result<String, CliError> {
        args.opt_free_from_str()?.ok_or_else(|| CliError::usage(format!("{command} needs a job ID")))
    };
    let parsed = match command {
        "start" => Command::Start(parse_start(args, command_line)?),
        "run" => {
            let grace = args.flag_value_with("--grace", parse_duration)?;
            Command::Run { request: parse_start(args, command_line)?, grace }
        }
        "status" => {
            let (json, whole_ids) = (args.contains("--json"), args.contains("--no-trunc"));
            Command::Status { id: id(args)?, json, whole_ids }
        }
        "list" => {
            let (json, whole_ids) = (args.contains("--json"), args.contains("--no-trunc"));
            let quiet = args.contains(["-q", "--quiet"]);
            let states = args.flag_values_with("--state", format::parse_state)?;
            let time = |text: &str| format::parse_time(text, SystemTime::now());
            let started = StartWindow {
                since: args.flag_value_with("--since", time)?,
                until: args.flag_value_with("--until", time)?,
            };
            let states = states.into_iter().map(|s| s as i32).collect();
            Command::List { states, started, json, quiet, whole_ids }
        }
        "logs" => {
            let follow = args.contains(["-f", "--follow"]);
            let offset = args.flag_value("--offset")?.unwrap_or(0);
            Command::Logs { id: id(args)?, offset, follow }
        }
        "stop" => {
            let grace = args.flag_value_with("--grace", parse_duration)?;
            Command::Stop { id: id(args)?, grace }
        }
        "wait" => Command::Wait { id: id(args)? },
        "version" => Command::Version,
        "rm" => {
            let mut ids = Vec::new();
            while let Some(id) = args.opt_free_from_str::<String>()? {
                ids.push(id);
            }
            if ids.is_empty() {
                return Err(CliError::usage("rm needs a job ID (or several)"));
            }
            Command::Remove { ids }
        }
        "prune" => {
            let older_than = args.flag_value_with("--older-than", parse_duration)?;
            Command::Prune { older_than, all: args.contains("--all") }
        }
        other => return Err(CliError::usage(format!("unknown client command {other:?}; see `runnel client --help`"))),
    };
    Ok(parsed)
}

fn parse_start(
    args: &mut pico_args::Arguments,
    command_line: Option<Vec<OsString>>,
) -> Result<StartJobRequest, CliError> {
    let env: Vec<String> = args.flag_values("--env")?;
    for entry in &env {
        if !entry.contains('=') || entry.starts_with('=') {
            return Err(CliError::usage(format!("--env {entry:?}: write NAME=VALUE")));
        }
    }
    let working_dir: Option<String> = args.flag_value("--cwd")?;
    let mut limits = Limits::default();
    for field in &LIMIT_FIELDS {
        let Some(text) = args.flag_value::<String>(field.client_flag)? else { continue };
        let value = parse_limit(field, &text).map_err(|e| CliError::usage(format!("{}: {e}", field.client_flag)))?;
        if value == 0 {
            return Err(CliError::usage(format!("{} must be greater than 0", field.client_flag)));
        }
        (field.set)(&mut limits, value);
    }
    let words = command_line.unwrap_or_default();
    let mut words = words.into_iter().map(|w| {
        w.into_string().map_err(|w| CliError::usage(format!("{w:?} is not valid UTF-8 (the API carries strings)")))
    });
    let command = words
        .next()
        .transpose()?
        .ok_or_else(|| CliError::usage("give the command after `--`: start -- CMD [ARG]..."))?;
    Ok(StartJobRequest {
        command,
        args: words.collect::<Result<_, _>>()?,
        env,
        working_dir: working_dir.unwrap_or_default(),
        limits: (!limits.is_unlimited()).then(|| wire::limits(limits)),
    })
}

/// The exit code a shell would give for a job: its exit code, or 128 + the signal that killed it.
fn job_exit_code(job: &Job) -> i32 {
    match (job.exit_code, job.signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        _ => 1,
    }
}

impl Command {
    fn execute(self, session: &mut Session<'_>) -> Result<i32, CliError> {
        let timeout = session.timeout;
        match self {
            Command::Start(request) => {
                let job: Job = session.client.unary(path::START_JOB, &request, timeout).map_err(call_error)?;
                print_stdout(&format!("{}\n", format::terminal_safe(&job.id)));
                Ok(0)
            }
            Command::Status { id, json, whole_ids } => {
                let job_id = session.resolve(&id)?;
                let job: Job =
                    session.client.unary(path::GET_JOB, &GetJobRequest { job_id }, timeout).map_err(call_error)?;
                print_jobs(&[job], json, whole_ids);
                Ok(0)
            }
            Command::List { states, started, json, quiet, whole_ids } => {
                let mut jobs = session.list(states)?;
                jobs.retain(|job| started.holds(job));
                if quiet {
                    print_stdout(&jobs.iter().map(|job| format::terminal_safe(&job.id) + "\n").collect::<String>());
                } else {
                    print_jobs(&jobs, json, whole_ids);
                }
                Ok(0)
            }
            Command::Logs { id, offset, follow } => {
                let request = StreamOutputRequest { job_id: session.resolve(&id)?, offset, follow };
                let mut stream =
                    session.client.start_call(path::STREAM_OUTPUT, &request, timeout).map_err(call_error)?;
                match copy_output(session.client, &mut stream) {
                    Ok(()) => Ok(0),
                    Err(CopyError::Call(err)) => Err(call_error(err)),
                    Err(CopyError::ClosedOutput) => Ok(0),
                }
            }
            Command::Stop { id, grace } => {
                let request = stop_request(session.resolve(&id)?, grace);
                let job: Job = session.client.unary(path::STOP_JOB, &request, timeout).map_err(call_error)?;
                print_jobs(&[job], false, false);
                Ok(0)
            }
            Command::Wait { id } => {
                let request = WaitJobRequest { job_id: session.resolve(&id)? };
                let job: Job = session.client.unary(path::WAIT_JOB, &request, timeout).map_err(call_error)?;
                Ok(job_exit_code(&job))
            }
            Command::Run { request, grace } => run_job(session, request, grace),
            Command::Remove { ids } => {
                // Each one, as `docker rm` does: one that cannot go is said and the others still go.
                let mut failed = None;
                for id in ids {
                    match session.resolve(&id).and_then(|job_id| session.remove(job_id)) {
                        Ok(job) => print_stdout(&format!("{}\n", format::terminal_safe(&job.id))),
                        Err(err) => {
                            eprintln!("{err}");
                            failed = Some(err.exit_code());
                        }
                    }
                }
                Ok(failed.unwrap_or(0))
            }
            Command::Prune { older_than, all } => {
                let ended = [JobState::Exited as i32, JobState::Killed as i32].to_vec();
                let cutoff = older_than.and_then(|age| SystemTime::now().checked_sub(age));
                let mut removed = 0;
                for job in session.list(ended)? {
                    let ended_at = job.ended_at.and_then(|t| SystemTime::try_from(t).ok());
                    let old_enough = match (cutoff, ended_at) {
                        (Some(cutoff), Some(ended_at)) => ended_at <= cutoff,
                        (Some(_), None) => false,
                        (None, _) => true,
                    };
                    if !old_enough || (!all && job.owner != session.identity) {
                        continue;
                    }
                    match session.remove(job.id.clone()) {
                        Ok(_) => removed += 1,
                        // Removed meanwhile by someone else, or evicted: what prune wanted.
                        Err(err) if err.to_string().contains("NOT_FOUND") => {}
                        Err(err) => return Err(err),
                    }
                }
                print_stdout(&format!("removed {removed} ended job{}\n", if removed == 1 { "" } else { "s" }));
                Ok(0)
            }
            Command::Version => {
                let request = HealthCheckRequest::default();
                let mut call = session.client.start_call(path::HEALTH_CHECK, &request, timeout).map_err(call_error)?;
                let _: Option<HealthCheckResponse> = session.client.next_message(&mut call).map_err(call_error)?;
                let server = call.server_version().map(format::terminal_safe);
                let server = server.as_deref().unwrap_or("unknown (it did not say)");
                print_stdout(&format!("client {}\nserver {server}\n", env!("CARGO_PKG_VERSION")));
                Ok(0)
            }
        }
    }
}

impl Session<'_> {
    /// Removes the ended job `job_id`; its last record.
    fn remove(&mut self, job_id: String) -> Result<Job, CliError> {
        self.client.unary(path::REMOVE_JOB, &RemoveJobRequest { job_id }, self.timeout).map_err(call_error)
    }

    /// Every job of `states` (all if empty) the caller may see, every page of them.
    fn list(&mut self, states: Vec<i32>) -> Result<Vec<Job>, CliError> {
        let mut jobs = Vec::new();
        let mut request = ListJobsRequest { states, ..Default::default() };
        loop {
            let page: ListJobsResponse =
                self.client.unary(path::LIST_JOBS, &request, self.timeout).map_err(call_error)?;
            jobs.extend(page.jobs);
            if page.next_page_token.is_empty() {
                return Ok(jobs);
            }
            request.page_token = page.next_page_token;
        }
    }

    /// The whole id `id` stands for: itself if it is one, else the one job the caller can see whose id begins
    /// with it (one ListJobs, as `docker` and `git` resolve short ids on the client).
    fn resolve(&mut self, id: &str) -> Result<String, CliError> {
        if crate::jobs::JobId::parse(id).is_some() || !is_id_prefix(id) {
            // Whole, or not a prefix at all: the server says what is wrong with it.
            return Ok(id.to_string());
        }
        let jobs = self.list(Vec::new())?;
        match_prefix(id, &jobs).map(str::to_string)
    }
}

/// At least four hex digits (hyphens allowed where a job id has them), and no longer than an id.
fn is_id_prefix(text: &str) -> bool {
    let digits = text.chars().filter(char::is_ascii_hexdigit).count();
    digits >= 4 && text.len() <= 36 && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The one job in `jobs` whose id begins with `prefix` (either case).
fn match_prefix<'a>(prefix: &str, jobs: &'a [Job]) -> Result<&'a str, CliError> {
    let prefix = prefix.to_ascii_lowercase();
    let matches: Vec<&Job> = jobs.iter().filter(|job| job.id.starts_with(&prefix)).collect();
    match matches.as_slice() {
        [job] => Ok(&job.id),
        [] => Err(CliError::status(Code::NotFound, format!("no job you can see has an id beginning with {prefix}"))),
        several => {
            let shown: Vec<String> = several
                .iter()
                .take(5)
                .map(|job| format!("{} ({})", format::terminal_safe(&job.id), format::command_line(job)))
                .collect();
            let more = several.len().saturating_sub(shown.len());
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            Err(CliError::status(
                Code::InvalidArgument,
                format!(
                    "{prefix} is ambiguous: {} jobs begin with it: {}{more}; give more digits",
                    several.len(),
                    shown.join(", ")
                ),
            ))
        }
    }
}

/// The identity the certificate in `cert` names, as the server reads it; empty if it names none (the server
/// then refuses the connection anyway).
fn identity_of(cert: &std::path::Path) -> String {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let first = CertificateDer::pem_file_iter(cert).ok().and_then(|mut certs| certs.next()).and_then(Result::ok);
    first.and_then(|der| crate::pki::identity_from_cert_der(&der).ok()).unwrap_or_default()
}

fn stop_request(job_id: String, grace: Option<Duration>) -> StopJobRequest {
    // parse_duration bounds what it accepts far below what a protobuf Duration holds.
    StopJobRequest { job_id, grace_period: grace.and_then(|g| g.try_into().ok()) }
}

fn print_jobs(jobs: &[Job], json: bool, whole_ids: bool) {
    if json {
        print_stdout(&jobs.iter().map(|job| format::json(job) + "\n").collect::<String>());
    } else {
        print_stdout(&format::table(jobs, whole_ids));
    }
}

/// Writes `text` to stdout. A closed stdout (`runnel client list | head -1`) is not an error: the reader has
/// what it wanted, as with `logs` (see [`copy_output`]); `println!` would panic there instead.
fn print_stdout(text: &str) {
    let mut stdout = io::stdout().lock();
    if let Err(err) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        if err.kind() != io::ErrorKind::BrokenPipe {
            eprintln!("runnel: cannot write to stdout: {err}");
        }
    }
}

enum CopyError {
    Call(CallError),
    /// Our stdout or stderr was closed (`runnel client logs ID | head`): stop quietly.
    ClosedOutput,
}

/// Writes a job's output chunks to our stdout and stderr, byte for byte, until the stream ends.
///
/// Each chunk goes out with one unbuffered `write` on duplicates of descriptors 1 and 2: Rust's stdout is
/// line-buffered, which would scan every chunk for a newline and split binary output into pieces. A stream
/// whose descriptor is closed is discarded, as Rust's own stdout does.
fn copy_output(client: &mut Client, stream: &mut ResponseStream) -> Result<(), CopyError> {
    let write_error = |err: io::Error| {
        if err.kind() == io::ErrorKind::BrokenPipe {
            return CopyError::ClosedOutput;
        }
        CopyError::Call(CallError::Status(crate::grpc::Status::new(
            Code::Unknown,
            format!("cannot write output: {err}"),
        )))
    };
    let raw = |fd: std::os::fd::BorrowedFd<'_>| match fd.try_clone_to_owned() {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(err) if err.raw_os_error() == Some(libc::EBADF) => Ok(None),
        Err(err) => Err(err),
    };
    io::stdout().flush().map_err(write_error)?;
    let mut stdout = raw(io::stdout().as_fd()).map_err(write_error)?;
    let mut stderr = raw(io::stderr().as_fd()).map_err(write_error)?;
    while let Some(chunk) = client.next_message::<OutputChunk>(stream).map_err(CopyError::Call)? {
        let out = if chunk.stream == OutputStream::Stderr as i32 { &mut stderr } else { &mut stdout };
        if let Some(out) = out {
            out.write_all(&chunk.data).map_err(write_error)?;
        }
    }
    Ok(())
}

/// `run`: start, follow the output live, exit with the job's code. The first Ctrl-C asks the server to stop
/// the job (SIGTERM, then SIGKILL after `grace`) and goes on streaming: a job that traps SIGTERM may have more
/// to say, and it all comes until the job ends. The second Ctrl-C leaves at once.
fn run_job(session: &mut Session<'_>, request: StartJobRequest, grace: Option<Duration>) -> Result<i32, CliError> {
    let (client, timeout) = (&mut *session.client, session.timeout);
    client.catch_interrupts().map_err(|e| CliError::local(format!("cannot catch Ctrl-C: {e}")))?;
    let job: Job = client.unary(path::START_JOB, &request, timeout).map_err(call_error)?;
    // Asked now, so the answer comes even if the server shuts down (refusing new calls) while output streams.
    let wait = WaitJobRequest { job_id: job.id.clone() };
    let ended_call = client.send_call(path::WAIT_JOB, &wait, timeout).map_err(call_error)?;
    let follow = StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true };
    let mut stream = client.start_call(path::STREAM_OUTPUT, &follow, timeout).map_err(call_error)?;
    // The stop's answer (the ended job) is not waited for: the output stream and the WaitJob end with the job.
    let mut stop_call = None;
    loop {
        match copy_output(client, &mut stream) {
            Ok(()) | Err(CopyError::ClosedOutput) => break,
            Err(CopyError::Call(CallError::Interrupted)) if stop_call.is_none() => {
                eprintln!("runnel: stopping job {} (Ctrl-C again to leave it)", format::terminal_safe(&job.id));
                let stop = stop_request(job.id.clone(), grace);
                match client.send_call(path::STOP_JOB, &stop, timeout) {
                    Ok(call) => stop_call = Some(call),
                    // Ctrl-C again while the stop was being sent: leave, as at any other moment.
                    Err(CallError::Interrupted) => return Ok(130),
                    Err(err) => return Err(call_error(err)),
                }
            }
            Err(CopyError::Call(CallError::Interrupted)) => return Ok(130),
            Err(CopyError::Call(err)) => return Err(call_error(err)),
        }
    }
    drop(stop_call);
    let ended: Job = match client.finish_unary(ended_call) {
        Ok(job) => job,
        Err(CallError::Interrupted) => return Ok(130),
        Err(err) => return Err(call_error(err)),
    };
    Ok(job_exit_code(&ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(ids: &[&str]) -> Vec<Job> {
        ids.iter().map(|id| Job { id: id.to_string(), command: "true".into(), ..Default::default() }).collect()
    }

    #[test]
    fn each_command_has_help_of_its_own() {
        for command in ["start", "run", "status", "list", "logs", "stop", "wait", "rm", "prune", "version"] {
            let help = command_usage(command).unwrap_or_else(|| panic!("no help for {command}"));
            assert!(help.starts_with(&format!("usage: runnel client [connection options] {command}")), "{help}");
            assert!(!help.contains("\ncommands:"), "{command}: the whole help:\n{help}");
            assert_eq!(help.contains("--cwd DIR"), matches!(command, "start" | "run"), "{help}");
        }
        assert!(command_usage("logs").unwrap().contains("-f keeps following"));
        assert!(command_usage("stop").unwrap().contains("ID: a whole job id, or its first 4"));
        assert_eq!(command_usage("nosuch"), None);
        assert_eq!(command_usage("show"), None, "a word of a description is no command");
    }

    #[test]
    fn a_prefix_names_the_one_job_it_begins_or_says_why_not() {
        let jobs = jobs(&[
            "3b4b07b8-0000-4000-8000-000000000001",
            "3b4b9999-0000-4000-8000-000000000002",
            "aaaa0000-0000-4000-8000-000000000003",
        ]);
        assert_eq!(match_prefix("3b4b07", &jobs).unwrap(), jobs[0].id);
        assert_eq!(match_prefix("AAAA", &jobs).unwrap(), jobs[2].id, "either case");
        assert_eq!(match_prefix("3b4b9999-00", &jobs).unwrap(), jobs[1].id, "hyphens where ids have them");
        let ambiguous = match_prefix("3b4b", &jobs).unwrap_err().to_string();
        assert!(ambiguous.contains("3b4b is ambiguous: 2 jobs begin with it"), "{ambiguous}");
        assert!(ambiguous.contains(&jobs[0].id) && ambiguous.contains(&jobs[1].id), "{ambiguous}");
        let missing = match_prefix("ffff", &jobs).unwrap_err().to_string();
        assert!(missing.contains("NOT_FOUND") && missing.contains("beginning with ffff"), "{missing}");

        assert!(is_id_prefix("3b4b") && is_id_prefix("3b4b07b8-0"));
        assert!(!is_id_prefix("3b4") && !is_id_prefix("nope") && !is_id_prefix("3b4b/"));
    }
}
