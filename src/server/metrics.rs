//! What the server counts for a monitoring system, and the Prometheus text exposition of it (format 0.0.4),
//! which `server::scrape` serves on `--metrics-listen`.
//!
//! Counting costs the loop an addition where something happens: a call ends ([`Metrics::record_call`]), a
//! turn ends ([`Metrics::record_turn`]), output is sent. What is a state rather than an event — jobs by state,
//! spool bytes, connections open, the process's memory and descriptors — is read only when scraped
//! ([`Observed`]), so nothing is kept twice. The job table keeps its own counters ([`JobCounters`]), as the
//! rejection log does; this module names and renders them all.
//!
//! Label values come from closed sets only (method names, status codes, end reasons): a client's request
//! path never becomes a label, so no client can grow the exposition.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::method::Method;
use super::rejections::Rejection;
use crate::grpc::Code;
use crate::jobs::{EndReason, JobCensus, JobCounters};

/// Upper bounds (seconds) of the RPC latency buckets: from a GetJob on an idle server to a long WaitJob.
const CALL_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds (seconds) of the loop-turn buckets: a turn is meant to stay within a few milliseconds.
const TURN_BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Calls are counted per method, plus one row for paths that name no method.
const METHOD_ROWS: usize = Method::ALL.len() + 1;

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), the last one past every bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0 }
    }

    fn observe(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = self.bounds.iter().position(|bound| seconds <= *bound).unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `_bucket`, `_sum` and `_count` lines, each with `labels` (`name="value",` pairs, possibly empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count());
        let labels = match labels.trim_end_matches(',') {
            "" => String::new(),
            labels => format!("{{{labels}}}"),
        };
        let _ = writeln!(out, "{name}_sum{labels} {}", self.sum);
        let _ = writeln!(out, "{name}_count{labels} {}", self.count());
    }
}

/// The counters and histograms the loop keeps.
#[derive(Debug, Clone)]
pub struct Metrics {
    started_at: SystemTime,
    /// Calls ended, by method row and status code.
    calls: [[u64; Code::ALL.len()]; METHOD_ROWS],
    /// Call durations, by method row.
    call_durations: Vec<Histogram>,
    turns: Histogram,
    /// Turns whose copy of job output stopped early because something else was ready.
    output_copies_cut_short: u64,
    connections_accepted: u64,
    /// Output bytes sent to StreamOutput callers, stdout then stderr.
    output_sent: [u64; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started_at: SystemTime::now(),
            calls: [[0; Code::ALL.len()]; METHOD_ROWS],
            call_durations: vec![Histogram::new(&CALL_BUCKETS); METHOD_ROWS],
            turns: Histogram::new(&TURN_BUCKETS),
            output_copies_cut_short: 0,
            connections_accepted: 0,
            output_sent: [0; 2],
        }
    }
}

/// What is read from the rest of the server when scraped.
#[derive(Debug, Default, Clone)]
pub struct Observed<'a> {
    pub census: JobCensus,
    pub jobs: JobCounters,
    pub spool_bytes: u64,
    pub spool_limit_bytes: u64,
    pub connections_handshaking: u64,
    pub connections_established: u64,
    /// Connections turned away, by reason (see [`Rejection`]).
    pub rejections: &'a [(Rejection, u64)],
    pub process: ProcessFigures,
}

/// The process's own figures, under the names every Prometheus client library uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFigures {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// Reads the process's figures now; one that cannot be read is 0 (Prometheus clients do likewise).
pub fn process_figures() -> ProcessFigures {
    use nix::sys::resource::{getrlimit, getrusage, Resource, UsageWho};
    let cpu_seconds = getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |usage| {
        let seconds = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
        seconds(usage.user_time()) + seconds(usage.system_time())
    });
    let resident_kib = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count() as u64);
    ProcessFigures {
        cpu_seconds,
        resident_bytes: resident_kib.unwrap_or(0) * 1024,
        // read_dir's own descriptor is among those counted.
        open_fds: open_fds.saturating_sub(1),
        max_fds: getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft),
    }
}

fn method_row(method: Option<Method>) -> usize {
    method.and_then(|m| Method::ALL.iter().position(|each| *each == m)).unwrap_or(Method::ALL.len())
}

fn method_label(row: usize) -> &'static str {
    Method::ALL.get(row).map_or("unknown", |method| method.name())
}

fn end_reason_label(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Exited => "exited",
        EndReason::Stopped => "stopped",
        EndReason::OomKilled => "oom_killed",
        EndReason::Signaled => "signaled",
        EndReason::ServerShutdown => "server_shutdown",
        EndReason::ServerLost => "server_lost",
    }
}

/// Writes a metric's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes a metric with one sample per value of its one label: `name{label="value"} count` for each row.
fn labelled<'a>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) {
    header(out, name, kind, help);
    for (value, count) in rows {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
    }
}

/// Writes a metric with one sample and no labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

impl Metrics {
    /// A call ended with `code` (`None`: the client went away first, counted as CANCELLED) after `duration`.
    pub fn record_call(&mut self, method: Option<Method>, code: Option<Code>, duration: Duration) {
        let row = method_row(method);
        let code = code.unwrap_or(Code::Cancelled);
        if let Some(count) = self.calls.get_mut(row).and_then(|codes| codes.get_mut(code as usize)) {
            *count += 1;
        }
        if let Some(histogram) = self.call_durations.get_mut(row) {
            histogram.observe(duration);
        }
    }

    /// A turn of the loop did its work (everything but waiting for events) in `duration`.
    pub fn record_turn(&mut self, duration: Duration) {
        self.turns.observe(duration);
    }

    /// A turn stopped copying job output early, to serve what arrived meanwhile.
    pub fn record_output_copy_cut_short(&mut self) {
        self.output_copies_cut_short += 1;
    }

    pub fn record_connection(&mut self) {
        self.connections_accepted += 1;
    }

    /// Bytes of job output sent to a follower (`stderr` false: stdout).
    pub fn record_output_sent(&mut self, stderr: bool, bytes: u64) {
        self.output_sent[usize::from(stderr)] += bytes;
    }

    /// The Prometheus text exposition of everything counted and `observed`.
    pub fn render(&self, observed: &Observed<'_>) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let out = &mut out;
        let version = env!("CARGO_PKG_VERSION");
        header(out, "runnel_build_info", "gauge", "The running server's version.");
        let _ = writeln!(out, "runnel_build_info{{version=\"{version}\"}} 1");

        let census = observed.census;
        labelled(
            out,
            (
                "runnel_jobs",
                "gauge",
                "Jobs in the table, by state (starting: the command is not yet reported started).",
            ),
            "state",
            [
                ("starting", census.starting),
                ("running", census.running),
                ("stopping", census.stopping),
                ("exited", census.exited),
                ("killed", census.killed),
            ],
        );
        let jobs = &observed.jobs;
        single(out, "runnel_jobs_started_total", "counter", "Jobs whose command started.", jobs.started);
        single(
            out,
            "runnel_job_start_failures_total",
            "counter",
            "Jobs launched whose command never ran: not executable, the init failed, or no report in time.",
            jobs.start_failures,
        );
        labelled(
            out,
            ("runnel_job_ends_total", "counter", "Jobs ended, by reason."),
            "reason",
            EndReason::ALL.iter().map(|reason| end_reason_label(*reason)).zip(jobs.ended),
        );
        labelled(
            out,
            (
                "runnel_jobs_forgotten_total",
                "counter",
                "Ended jobs forgotten: evicted past --max-jobs, or removed by RemoveJob.",
            ),
            "reason",
            [("evicted", jobs.evicted), ("removed", jobs.removed)],
        );
        let streams = |by_stream: [u64; 2]| ["stdout", "stderr"].into_iter().zip(by_stream);
        labelled(
            out,
            ("runnel_output_received_bytes_total", "counter", "Output bytes read from jobs into the spool, by stream."),
            "stream",
            streams(jobs.output_bytes),
        );
        labelled(
            out,
            ("runnel_output_sent_bytes_total", "counter", "Output bytes sent to StreamOutput callers, by stream."),
            "stream",
            streams(self.output_sent),
        );
        single(out, "runnel_spool_bytes", "gauge", "Output bytes retained for all jobs.", observed.spool_bytes);
        single(
            out,
            "runnel_spool_limit_bytes",
            "gauge",
            "The retained output's cap (--max-output-total).",
            observed.spool_limit_bytes,
        );

        single(
            out,
            "runnel_connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            self.connections_accepted,
        );
        labelled(
            out,
            (
                "runnel_connections",
                "gauge",
                "Connections open, by phase (handshaking: TLS or HTTP/2 handshake not finished).",
            ),
            "phase",
            [("handshaking", observed.connections_handshaking), ("established", observed.connections_established)],
        );
        labelled(
            out,
            (
                "runnel_connections_rejected_total",
                "counter",
                "Connections turned away or closed before serving, each counted once, by its first reason.",
            ),
            "reason",
            observed.rejections.iter().map(|(rejection, count)| (rejection.label(), *count)),
        );

        header(
            out,
            "runnel_rpcs_total",
            "counter",
            "Calls ended, by method and status code (CANCELLED: the client went away first).",
        );
        for (row, codes) in self.calls.iter().enumerate() {
            for (code, count) in Code::ALL.iter().zip(codes).filter(|(_, count)| **count > 0) {
                let _ = writeln!(
                    out,
                    "runnel_rpcs_total{{method=\"{}\",code=\"{}\"}} {count}",
                    method_label(row),
                    code.name()
                );
            }
        }
        header(out, "runnel_rpc_duration_seconds", "histogram", "Time from a call's arrival to its end, by method.");
        for (row, histogram) in self.call_durations.iter().enumerate().filter(|(_, h)| h.count() > 0) {
            histogram.render(out, "runnel_rpc_duration_seconds", &format!("method=\"{}\",", method_label(row)));
        }
        header(
            out,
            "runnel_loop_turn_duration_seconds",
            "histogram",
            "Time each turn of the event loop spent working (not waiting for events).",
        );
        self.turns.render(out, "runnel_loop_turn_duration_seconds", "");
        single(
            out,
            "runnel_loop_output_copies_cut_short_total",
            "counter",
            "Turns whose copy of job output stopped early because something else became ready during it.",
            self.output_copies_cut_short,
        );

        let process = observed.process;
        single(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            process.cpu_seconds,
        );
        single(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, in bytes.",
            process.resident_bytes,
        );
        single(out, "process_open_fds", "gauge", "Open file descriptors.", process.open_fds);
        single(out, "process_max_fds", "gauge", "The open file descriptor limit.", process.max_fds);
        let started = self.started_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        single(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the server since the Unix epoch, in seconds.",
            started,
        );
        std::mem::take(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the one sample named exactly `series` (name and labels as rendered).
    fn sample(text: &str, series: &str) -> f64 {
        let mut found = text.lines().filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '));
        let value = found.next().unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
        assert!(found.next().is_none(), "two samples {series}");
        value.parse().unwrap()
    }

    #[test]
    fn calls_are_counted_by_method_and_code_with_unknown_paths_in_one_row() {
        let mut metrics = Metrics::default();
        metrics.record_call(Some(Method::GetJob), Some(Code::Ok), Duration::from_micros(300));
        metrics.record_call(Some(Method::GetJob), Some(Code::Ok), Duration::from_millis(3));
        metrics.record_call(Some(Method::GetJob), Some(Code::NotFound), Duration::from_millis(20));
        metrics.record_call(Some(Method::StreamOutput), None, Duration::from_secs(30));
        metrics.record_call(None, Some(Code::Unimplemented), Duration::from_micros(100));
        let text = metrics.render(&Observed::default());
        assert_eq!(sample(&text, r#"runnel_rpcs_total{method="GetJob",code="OK"}"#), 2.0);
        assert_eq!(sample(&text, r#"runnel_rpcs_total{method="GetJob",code="NOT_FOUND"}"#), 1.0);
        assert_eq!(sample(&text, r#"runnel_rpcs_total{method="StreamOutput",code="CANCELLED"}"#), 1.0);
        assert_eq!(sample(&text, r#"runnel_rpcs_total{method="unknown",code="UNIMPLEMENTED"}"#), 1.0);
        assert!(!text.contains(r#"method="StartJob""#), "methods never called have no series");
        // Cumulative buckets: 0.3 ms in le=0.0005, 3 ms by le=0.005, 20 ms by le=0.025; all in +Inf.
        let bucket =
            |le: &str| sample(&text, &format!(r#"runnel_rpc_duration_seconds_bucket{{method="GetJob",le="{le}"}}"#));
        assert_eq!(
            (bucket("0.0005"), bucket("0.0025"), bucket("0.005"), bucket("0.025"), bucket("+Inf")),
            (1.0, 1.0, 2.0, 3.0, 3.0)
        );
        assert_eq!(sample(&text, r#"runnel_rpc_duration_seconds_count{method="GetJob"}"#), 3.0);
        let sum = sample(&text, r#"runnel_rpc_duration_seconds_sum{method="GetJob"}"#);
        assert!((sum - 0.0233).abs() < 1e-9, "{sum}");
        assert_eq!(sample(&text, r#"runnel_rpc_duration_seconds_bucket{method="StreamOutput",le="10"}"#), 0.0);
        assert_eq!(sample(&text, r#"runnel_rpc_duration_seconds_bucket{method="StreamOutput",le="+Inf"}"#), 1.0);
    }

    #[test]
    fn observed_figures_and_counters_are_rendered_under_their_names() {
        let mut metrics = Metrics::default();
        metrics.record_turn(Duration::from_micros(50));
        metrics.record_turn(Duration::from_secs(2));
        metrics.record_connection();
        metrics.record_output_copy_cut_short();
        metrics.record_output_sent(true, 5);
        let mut jobs = JobCounters { started: 7, ..JobCounters::default() };
        jobs.ended[1] = 2;
        jobs.output_bytes = [10, 20];
        let rejections = [(Rejection::TlsFailed, 4), (Rejection::HandshakeTimeout, 1)];
        let observed = Observed {
            census: JobCensus { running: 3, exited: 2, ..JobCensus::default() },
            jobs,
            spool_bytes: 1234,
            connections_established: 6,
            rejections: &rejections,
            ..Observed::default()
        };
        let text = metrics.render(&observed);
        assert_eq!(sample(&text, r#"runnel_jobs{state="running"}"#), 3.0);
        assert_eq!(sample(&text, r#"runnel_jobs{state="starting"}"#), 0.0);
        assert_eq!(sample(&text, "runnel_jobs_started_total"), 7.0);
        assert_eq!(sample(&text, r#"runnel_job_ends_total{reason="stopped"}"#), 2.0);
        assert_eq!(sample(&text, r#"runnel_output_received_bytes_total{stream="stderr"}"#), 20.0);
        assert_eq!(sample(&text, r#"runnel_output_sent_bytes_total{stream="stderr"}"#), 5.0);
        assert_eq!(sample(&text, "runnel_spool_bytes"), 1234.0);
        assert_eq!(sample(&text, r#"runnel_connections{phase="established"}"#), 6.0);
        assert_eq!(sample(&text, r#"runnel_connections_rejected_total{reason="tls"}"#), 4.0);
        assert_eq!(sample(&text, "runnel_connections_accepted_total"), 1.0);
        assert_eq!(sample(&text, r#"runnel_loop_turn_duration_seconds_bucket{le="0.0001"}"#), 1.0);
        assert_eq!(sample(&text, r#"runnel_loop_turn_duration_seconds_bucket{le="1"}"#), 1.0);
        assert_eq!(sample(&text, r#"runnel_loop_turn_duration_seconds_bucket{le="+Inf"}"#), 2.0);
        assert_eq!(sample(&text, "runnel_loop_turn_duration_seconds_count"), 2.0);
        assert_eq!(sample(&text, "runnel_loop_output_copies_cut_short_total"), 1.0);
        // Every sample line belongs to a metric announced by a TYPE line before it.
        let mut announced = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| announced.contains(*f));
                assert!(announced.contains(name) || family.is_some(), "sample before its TYPE: {line}");
            }
        }
    }
}
