//! `make soak` (issue 15): the release server under a long mixed workload from 50 connections, for
//! `SOAK_MINUTES` (default 10), with `SOAK_SEED` (default random, printed) deciding everything the workers do.
//!
//! What it checks, and why: the unit and integration tests run each path once, on a fresh server. What only
//! time and mixing show is drift and interference: a descriptor, process, zombie or segment file leaked once in
//! ten thousand jobs; memory that grows with every job or connection; retention (`--max-jobs 200`,
//! `--max-output-bytes 4M`, `--max-output-total 48M`, all reached within seconds here) discarding or evicting
//! the wrong bytes while followers read them; one stalled, cancelled or vanished client disturbing the others.
//! So every job's output is known in advance (scripts whose output is a function of a seed), every byte any
//! follower receives is compared with it ([`check::StreamCheck`]), and every 5 s the server is measured from
//! outside (`/proc`, the state directory). The run fails on any byte that differs, on a state directory over
//! what retention allows, on the server exiting, and at the end on descriptors, memory, processes or zombies
//! left over.
//!
//! Run with `make soak` (`cargo bench --bench soak`: built optimised, and never run by `cargo test`).

#[path = "../util/mod.rs"]
mod util;

// Beside this file (a file not named main.rs or mod.rs would look for them in `soak/`).
#[path = "check.rs"]
mod check;
#[path = "observe.rs"]
mod observe;
#[path = "recipes.rs"]
mod recipes;
#[path = "shared.rs"]
mod shared;
#[path = "worker.rs"]
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use runnel::client::Client;
use runnel::grpc::path;
use runnel::proto::{Job, ListJobsRequest, ListJobsResponse, StopJobRequest, WaitJobRequest};

use observe::{Sample, MIB};
use recipes::{Catalogue, Kind};
use shared::{Shared, Stats, IDENTITIES};
use util::{Pki, Server};

const WORKERS: usize = 50;
const SERVER_FLAGS: [&str; 6] = ["--max-jobs", "200", "--max-output-bytes", "4M", "--max-output-total", "48M"];
/// The run's hard limit past SOAK_MINUTES: the watchdog ends it there.
const OVERRUN: Duration = Duration::from_secs(5 * 60);
/// Descriptors the server may hold at the end beyond those it held before the first client.
const FD_SLACK: usize = 8;
/// After the last client closed, before the final sample: the server's deferred work (closing, removals).
const SETTLE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // `cargo test --all-targets` runs bench targets in test mode; the soak only makes sense in a real run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: run with `make soak` (cargo bench --bench soak)");
        return ExitCode::SUCCESS;
    }
    assert!(util::BIN.contains("release"), "build with `cargo bench` so the server is the release binary");
    let minutes: f64 = env_or("SOAK_MINUTES", 10.0);
    let seed: u64 = env_or("SOAK_SEED", rand::random());
    let marker = format!("soak-{:08x}", rand::random::<u32>());
    println!(
        "soak: {minutes} minutes, {WORKERS} connections, seed {seed} (replay: SOAK_SEED={seed}), job marker {marker}"
    );
    let begun = Instant::now();

    let mut rng = StdRng::seed_from_u64(seed);
    let catalogue = match Catalogue::build(&mut rng) {
        Ok(catalogue) => catalogue,
        Err(message) => {
            eprintln!("soak: cannot compute the jobs' expected output: {message}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "soak: {} recipes ({:.1} MiB of expected output cached), computed in {:.1} s",
        catalogue.recipes.len(),
        catalogue.cached_bytes() as f64 / MIB,
        begun.elapsed().as_secs_f64()
    );

    let pki = Pki::new();
    let mut server = Server::start_with_env(&pki, &SERVER_FLAGS, &[("RUST_LOG", "info")]);
    let pid = server.pid();
    let settings = IDENTITIES.iter().map(|identity| server.settings(identity)).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let shared = Arc::new(Shared::new(settings, catalogue, marker, begun, deadline, WORKERS));
    let Some(first) = observe::sample(&shared, pid, &server.state_dir, 0) else {
        eprintln!("soak: the server exited at once:\n{}", server.log_text());
        return ExitCode::FAILURE;
    };
    println!("soak: server pid {pid}, flags {}", SERVER_FLAGS.join(" "));
    eprintln!("{}", first.line(&shared));

    let done = Arc::new(AtomicBool::new(false));
    let scratch = vec![server.log.parent().unwrap().to_path_buf(), pki.dir.path().to_path_buf()];
    let watchdog = spawn_watchdog(&shared, begun, minutes, &done, pid, scratch);
    let stop_probe = Arc::new(AtomicBool::new(false));
    let probe = {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop_probe));
        // The probe's job outlives any run; the probe stops it at the end.
        let lifetime = Duration::from_secs_f64(minutes * 60.0) + OVERRUN * 2;
        std::thread::spawn(move || observe::probe(shared, stop, lifetime))
    };
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (shared, stop, state_dir) = (Arc::clone(&shared), Arc::clone(&stop_sampler), server.state_dir.clone());
        std::thread::spawn(move || observe::sampler(shared, pid, state_dir, stop))
    };
    let workers: Vec<JoinHandle<()>> = (0..WORKERS)
        .map(|index| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || worker::run(index, shared, seed))
        })
        .collect();

    let main_status = shared.main_status_index();
    shared.set_status(main_status, "waiting for the workers to finish their last action".into());
    for (index, handle) in workers.into_iter().enumerate() {
        if handle.join().is_err() {
            shared.fail(format!("worker {index} panicked"));
        }
    }
    shared.set_status(main_status, "stopping the probe".into());
    stop_probe.store(true, Ordering::Relaxed);
    let mut probe_ms = probe.join().unwrap_or_else(|_| {
        shared.fail("the probe panicked".into());
        Vec::new()
    });
    shared.set_status(main_status, "waiting for the jobs still running".into());
    let stopped_at_end = if shared.aborted() { 0 } else { end_remaining_jobs(&shared) };
    shared.set_status(main_status, "stopping the sampler".into());
    stop_sampler.store(true, Ordering::Relaxed);
    let mut samples = sampler.join().unwrap_or_else(|_| {
        shared.fail("the sampler panicked".into());
        Vec::new()
    });
    // Every client is closed now (each thread's went with it).
    shared.set_status(main_status, "settling before the final sample".into());
    std::thread::sleep(SETTLE);
    let last = observe::sample(&shared, pid, &server.state_dir, 0);
    let leftovers = match &last {
        Some(last) => {
            eprintln!("{}", last.line(&shared));
            observe::check_state_dir(&shared, last);
            check_end_state(&shared, pid, &first, last, &samples)
        }
        None => {
            shared.fail(format!("the server (pid {pid}) exited during the run"));
            Vec::new()
        }
    };
    samples.extend(last.clone());

    shared.set_status(main_status, "stopping the server".into());
    let log_copy = keep_server_log(&server);
    let shutdown = match last {
        Some(_) => stop_server(&shared, &mut server),
        None => "it had already exited".into(),
    };
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();

    print_summary(&shared, minutes, seed, &first, &samples, &mut probe_ms, stopped_at_end, &leftovers);
    println!("  server shutdown          {shutdown}");
    println!("  server log               {log_copy}");
    let failures = shared.failures();
    println!("  errors                   {}", failures.len());
    if failures.is_empty() {
        println!("soak: PASS");
        ExitCode::SUCCESS
    } else {
        println!("soak: FAIL; the first failures:");
        for failure in failures.iter().take(20) {
            println!("  - {failure}");
        }
        ExitCode::FAILURE
    }
}

/// An environment variable parsed, or `default` if it is unset; a value that does not parse is an error.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

fn spawn_watchdog(
    shared: &Arc<Shared>,
    begun: Instant,
    minutes: f64,
    done: &Arc<AtomicBool>,
    pid: i32,
    scratch: Vec<PathBuf>,
) -> JoinHandle<()> {
    let limit = begun + Duration::from_secs_f64(minutes * 60.0) + OVERRUN;
    let (shared, done) = (Arc::clone(shared), Arc::clone(done));
    std::thread::spawn(move || observe::watchdog(shared, limit, done, pid, scratch))
}

/// Waits for every job still running (none runs longer than 40 s), stopping any that does not end; then reads
/// every retained job's end. Returns how many had to be stopped.
fn end_remaining_jobs(shared: &Shared) -> usize {
    let mut client = match Client::connect(shared.settings_for("admin")) {
        Ok(client) => client,
        Err(status) => {
            shared.fail(format!("end: cannot connect as admin: {status:?}"));
            return 0;
        }
    };
    let running = observe::running_jobs(&mut client).unwrap_or_else(|message| {
        shared.fail(format!("end: {message}"));
        Vec::new()
    });
    let mut stopped = 0;
    for job in running {
        let wait = WaitJobRequest { job_id: job.id.clone() };
        if let Ok(job) = client.unary::<_, Job>(path::WAIT_JOB, &wait, Some(Duration::from_secs(60))) {
            shared.note_end(&job);
            continue;
        }
        stopped += 1;
        let stop = StopJobRequest { job_id: job.id.clone(), grace_period: Some(Duration::ZERO.try_into().unwrap()) };
        match client.unary::<_, Job>(path::STOP_JOB, &stop, Some(Duration::from_secs(60))) {
            Ok(job) => shared.note_end(&job),
            Err(err) => {
                shared.fail(format!("end: job {} did not end within 60 s, and StopJob failed: {err:?}", job.id))
            }
        }
    }
    note_retained_ends(shared, &mut client);
    match observe::running_jobs(&mut client) {
        Ok(jobs) if jobs.is_empty() => {}
        Ok(jobs) => {
            shared.fail(format!("end: {} jobs still running after every one was waited for or stopped", jobs.len()))
        }
        Err(message) => shared.fail(format!("end: {message}")),
    }
    stopped
}

/// The end reason of every job still retained.
fn note_retained_ends(shared: &Shared, client: &mut Client) {
    let mut token = String::new();
    loop {
        let request = ListJobsRequest { page_size: 1000, page_token: token, ..Default::default() };
        let page: ListJobsResponse = match client.unary(path::LIST_JOBS, &request, Some(Duration::from_secs(60))) {
            Ok(page) => page,
            Err(err) => return shared.fail(format!("end: ListJobs: {err:?}")),
        };
        page.jobs.iter().for_each(|job| shared.note_end(job));
        if page.next_page_token.is_empty() {
            return;
        }
        token = page.next_page_token;
    }
}

/// The checks on the server's state at the end, with every client gone and every job ended. Returns the
/// processes left over (for the summary).
fn check_end_state(shared: &Shared, pid: i32, first: &Sample, last: &Sample, samples: &[Sample]) -> Vec<String> {
    if last.fds > first.fds + FD_SLACK {
        shared.fail(format!(
            "the server holds {} descriptors at the end, {} at the start (at most {FD_SLACK} more allowed): {}",
            last.fds,
            first.fds,
            describe_fds(pid)
        ));
    }
    let mut leftovers = Vec::new();
    for process in observe::descendants(pid) {
        let text = format!("pid {} state {} `{}`", process.pid, process.state, process.cmdline);
        if process.state == 'Z' {
            shared.fail(format!("a zombie remains under the server: {text}"));
        } else if !process.is_helper() {
            shared.fail(format!("a process other than the server's helpers remains under it: {text}"));
        }
        if process.state == 'Z' || !process.is_helper() {
            leftovers.push(text);
        }
    }
    for orphan in util::pids_where(|cmdline| cmdline.contains(shared.marker.as_str())) {
        let text = format!("pid {orphan} (parent {:?}) `{}`", util::parent_of(orphan), util::cmdline_of(orphan));
        shared.fail(format!("a job process ({}) remains: {text}", shared.marker));
        leftovers.push(text);
    }
    check_memory_trend(shared, samples, last);
    leftovers
}

/// Open descriptors of `pid` by what they point at (`socket`, `pipe`, a path), for a failure message.
fn describe_fds(pid: i32) -> String {
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        let target = std::fs::read_link(entry.path()).map_or("?".into(), |t| t.to_string_lossy().into_owned());
        let kind = target.split(':').next().unwrap_or("?").to_string();
        *kinds.entry(kind).or_default() += 1;
    }
    kinds.iter().map(|(kind, n)| format!("{n} {kind}")).collect::<Vec<_>>().join(", ")
}

/// RSS at the end may not exceed twice that at the end of the first minute (or that plus 64 MiB, if more).
fn check_memory_trend(shared: &Shared, samples: &[Sample], last: &Sample) {
    let Some(reference) = first_minute_rss(samples) else { return };
    let limit = (2 * reference).max(reference + 64 * 1024);
    if last.rss_kib > limit {
        shared.fail(format!(
            "the server's RSS grew: {:.1} MiB at the end, {:.1} MiB after the first minute (limit {:.1} MiB = \
             max(2 x that, that + 64 MiB))",
            last.rss_kib as f64 / 1024.0,
            reference as f64 / 1024.0,
            limit as f64 / 1024.0
        ));
    }
}

/// RSS (KiB) at the first sample a minute or more into the run; the last sample if the run was shorter.
fn first_minute_rss(samples: &[Sample]) -> Option<u64> {
    samples.iter().find(|s| s.seconds >= 60.0).or(samples.last()).map(|s| s.rss_kib)
}

/// The server's log outlives the run in `target/soak/server.log`.
fn keep_server_log(server: &Server) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    let copy = dir.join("server.log");
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::copy(&server.log, &copy)) {
        Ok(bytes) => format!("{} ({:.1} MiB)", copy.display(), bytes as f64 / MIB),
        Err(err) => format!("not kept: {err}"),
    }
}

/// SIGTERM, as an operator stops it: it must exit 0, leave only the jobs' history in its state directory (and an
/// emptied lock file), and leave no job process.
fn stop_server(shared: &Shared, server: &mut Server) -> String {
    let begun = Instant::now();
    let status = server.stop_with(libc::SIGTERM, Duration::from_secs(60));
    let seconds = begun.elapsed().as_secs_f64();
    if status.code() != Some(0) {
        shared.fail(format!("the server exited {status:?} on SIGTERM"));
    }
    let mut left: Vec<String> = std::fs::read_dir(&server.state_dir)
        .map(|dir| dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    left.sort();
    let lock = std::fs::read_to_string(server.state_dir.join("runnel.lock")).unwrap_or_else(|e| e.to_string());
    let clean = left == ["jobs", "runnel.lock"] && lock.is_empty();
    if !clean {
        shared.fail(format!("the server left {left:?} in its state directory at shutdown, lock file {lock:?}"));
    }
    format!(
        "SIGTERM: exited {status} in {seconds:.1} s; only the history left in the state directory: {}",
        if clean { "yes" } else { "NO" }
    )
}

#[allow(clippy::too_many_arguments)]
fn print_summary(
    shared: &Shared,
    minutes: f64,
    seed: u64,
    first: &Sample,
    samples: &[Sample],
    probe_ms: &mut [f64],
    stopped_at_end: usize,
    leftovers: &[String],
) {
    let stats = &shared.stats;
    let get = Stats::get;
    let (reasons, unseen) = shared.end_reason_counts();
    let reasons: Vec<String> = reasons.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
    let last = samples.last().unwrap_or(first);
    println!();
    println!("soak summary");
    println!("  minutes                  {minutes} (whole run {:.1})", shared.seconds() / 60.0);
    println!("  seed                     {seed}");
    println!("  connections              {WORKERS} workers (alice, bob, admin in turn), a probe, a sampler");
    println!("  jobs started             {}", get(&stats.jobs_started));
    println!("  jobs ended, by reason    {}; never seen ended (evicted unasked) {unseen}", reasons.join(", "));
    println!("  jobs stopped at the end  {stopped_at_end} (waited for otherwise)");
    println!(
        "  followers                complete {}, detached {}, stalled {}, vanished {}, evicted {}; \
         stopped jobs' output read {}",
        get(&stats.followers_complete),
        get(&stats.followers_detached),
        get(&stats.followers_stalled),
        get(&stats.followers_vanished),
        get(&stats.followers_evicted),
        get(&stats.stopped_reads)
    );
    println!(
        "  bytes                    streamed {:.1} MiB, checked {:.1} MiB; skips over discarded output {}",
        get(&stats.bytes_streamed) as f64 / MIB,
        get(&stats.bytes_checked) as f64 / MIB,
        get(&stats.gaps)
    );
    println!(
        "  other calls              StopJob {}, WaitJob {}, ListJobs {} ({} pages); lookups finding the job evicted {}",
        get(&stats.stops),
        get(&stats.waits),
        get(&stats.lists),
        get(&stats.list_pages),
        get(&stats.lookups_evicted)
    );
    println!("  recipes used             {}", recipe_kinds(shared));
    println!("  server                   {:>10} {:>10} {:>10}", "start", "max", "end");
    let row = |name: &str, value: &dyn Fn(&Sample) -> f64, decimals: usize| {
        let max = samples.iter().map(value).fold(value(first), f64::max);
        println!("    {name:22} {:>10.decimals$} {:>10.decimals$} {:>10.decimals$}", value(first), max, value(last));
    };
    row("descriptors", &|s| s.fds as f64, 0);
    row("RSS MiB", &|s| s.rss_kib as f64 / 1024.0, 1);
    row("processes under it", &|s| s.procs as f64, 0);
    row("zombies", &|s| s.zombies as f64, 0);
    row("running jobs", &|s| s.running_jobs as f64, 0);
    row("state dir MiB", &|s| s.state_bytes as f64 / MIB, 1);
    row("state dir alloc. MiB", &|s| s.state_allocated as f64 / MIB, 1);
    if let Some(reference) = first_minute_rss(&samples[..samples.len().saturating_sub(1)]) {
        println!(
            "    RSS after the first minute {:.1} MiB (the end may reach twice that, or +64 MiB)",
            reference as f64 / 1024.0
        );
    }
    let max_running = samples.iter().map(|s| s.running_jobs).max().unwrap_or(0);
    println!(
        "    state dir bound          {:.0} MiB with no job running, +2 MiB per running job ({:.0} at {max_running})",
        observe::state_dir_limit(0) as f64 / MIB,
        observe::state_dir_limit(max_running) as f64 / MIB,
    );
    println!("      = {}", observe::STATE_LIMIT_FORMULA);
    println!("  leftover processes       {}", if leftovers.is_empty() { "none".into() } else { leftovers.join("; ") });
    let calls = probe_ms.len();
    let (p50, p99, max) = observe::percentiles(probe_ms);
    println!("  probe GetJob ms          p50 {p50:.2}, p99 {p99:.2}, max {max:.1} ({calls} calls, one every 50 ms)");
}

/// The recipes by kind, to show what the run's seed chose.
fn recipe_kinds(shared: &Shared) -> String {
    [Kind::Text, Kind::Binary, Kind::Bursts, Kind::Flood]
        .iter()
        .map(|kind| {
            let of_kind: Vec<_> = shared.catalogue.recipes.iter().filter(|r| r.kind == *kind).collect();
            let largest = of_kind.iter().map(|r| r.expected.total()).max().unwrap_or(0);
            format!("{} {kind:?} (largest {:.1} MiB)", of_kind.len(), largest as f64 / MIB)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
