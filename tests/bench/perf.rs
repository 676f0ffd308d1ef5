//! `make bench`: the figures the README's performance section quotes, each next to a baseline measured in the
//! same run. Machines are shared and noisy, so every figure is a median over several runs.
//!
//! Run with `cargo bench --bench perf` (the Makefile builds the release binary first).

#[path = "../util/mod.rs"]
mod util;

use runnel::grpc::path;
use std::fs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runnel::client::Client;
use runnel::proto::{Job, OutputChunk, StartJobRequest, StreamOutputRequest, WaitJobRequest};
use util::{Pki, Server};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn start(client: &mut Client, command: &str, args: &[&str]) -> Job {
    let request = StartJobRequest {
        command: command.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    client.unary(path::START_JOB, &request, None).unwrap()
}

fn proc_status_kib(pid: i32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with(field)).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn threads(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).unwrap().count()
}

/// CPU time the process's (only) thread has run, in nanoseconds: `/proc/PID/schedstat`, finer than the
/// 10 ms clock ticks of `/proc/PID/stat`.
fn cpu_ns(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// Reads a job's whole output with one follower; returns (bytes, seconds).
fn follow_all(client: &mut Client, id: &str) -> (u64, f64) {
    let begun = Instant::now();
    let request = StreamOutputRequest { job_id: id.into(), offset: 0, follow: true };
    let mut stream = client.start_call(path::STREAM_OUTPUT, &request, None).unwrap();
    let mut total = 0u64;
    while let Some(chunk) = client.next_message::<OutputChunk>(&mut stream).unwrap() {
        total += chunk.data.len() as u64;
    }
    (total, begun.elapsed().as_secs_f64())
}

fn main() {
    // `cargo test --all-targets` runs bench targets in test mode; the figures only make sense in a real run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("perf: run with `make bench` (cargo bench --bench perf)");
        return;
    }
    assert!(util::BIN.contains("release"), "build with `cargo bench` so the server is the release binary");
    // As `runnel client` does: the bench's in-process client should stream like the command line's.
    runnel::sys::retain_freed_memory();
    let pki = Pki::new();
    let server = Server::start(&pki, &["--max-output-bytes", "4G", "--max-output-total", "16G"]);
    let pid = server.pid();
    let mut client = server.client("alice");
    println!("runnel perf ({} cores), server pid {pid}", std::thread::available_parallelism().unwrap());
    println!();

    // StartJob p50 over a kept-open connection, next to std's posix_spawn + wait of the same program: without
    // isolation (the spawn itself), and with every namespace and the init (the default as root).
    let plain = Server::start(&pki, &["--no-isolation"]);
    let mut plain_client = plain.client("alice");
    let rounds = 300;
    let mut baseline = Vec::new();
    let mut startjob = Vec::new();
    let mut isolated = Vec::new();
    let timed_start = |client: &mut Client, into: &mut Vec<f64>| {
        let begun = Instant::now();
        let job = start(client, "/bin/true", &[]);
        into.push(begun.elapsed().as_secs_f64() * 1e6);
        let _: Job = client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id }, None).unwrap();
    };
    for _ in 0..3 {
        for _ in 0..rounds {
            let begun = Instant::now();
            Command::new("/bin/true").stdin(Stdio::null()).spawn().unwrap().wait().unwrap();
            baseline.push(begun.elapsed().as_secs_f64() * 1e6);
        }
        for _ in 0..rounds {
            timed_start(&mut plain_client, &mut startjob);
        }
        for _ in 0..rounds / 3 {
            timed_start(&mut client, &mut isolated);
        }
    }
    drop(plain_client);
    drop(plain);
    let (spawn_p50, start_p50, isolated_p50) = (median(&mut baseline), median(&mut startjob), median(&mut isolated));
    println!("StartJob p50 (kept-open connection)      {start_p50:8.0} µs   (--no-isolation)");
    println!(
        "  baseline posix_spawn+wait /bin/true     {spawn_p50:8.0} µs   ratio {:.2}x (goal ≤ 1.3x)",
        start_p50 / spawn_p50
    );
    println!("  (StartJob returns after exec; the baseline also waits for the exit)");
    println!(
        "StartJob p50, isolated (namespaces+init) {isolated_p50:8.0} µs   {:.1}x the no-isolation path",
        isolated_p50 / start_p50
    );

    // Idle: 10 followers attached to a silent job; server CPU over 5 s.
    let silent = start(&mut client, "sleep", &["60"]);
    let mut followers: Vec<_> = (0..10)
        .map(|_| {
            let mut c = server.client("alice");
            let request = StreamOutputRequest { job_id: silent.id.clone(), offset: 0, follow: true };
            let stream = c.start_call(path::STREAM_OUTPUT, &request, None).unwrap();
            (c, stream)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ns(pid);
    std::thread::sleep(Duration::from_secs(5));
    let idle_ms = (cpu_ns(pid) - before) as f64 / 1e6;
    println!("idle CPU, 10 followers on a silent job     {idle_ms:8.3} ms in 5 s (goal < 10 ms)");
    followers.clear();

    // Follower throughput for a job writing 1 GiB, next to `head` into a pipe read by `cat` (no server).
    let mut live = Vec::new();
    let mut replay = Vec::new();
    let mut pipe = Vec::new();
    let mut max_threads = 0;
    for _ in 0..3 {
        let job = start(&mut client, "head", &["-c", "1073741824", "/dev/zero"]);
        let mut reader = server.client("alice");
        let (bytes, secs) = follow_all(&mut reader, &job.id);
        assert_eq!(bytes, 1 << 30);
        live.push(bytes as f64 / secs / 1e6);
        max_threads = max_threads.max(threads(pid));
        let (bytes, secs) = follow_all(&mut reader, &job.id);
        assert_eq!(bytes, 1 << 30);
        replay.push(bytes as f64 / secs / 1e6);

        let begun = Instant::now();
        let mut head =
            Command::new("head").args(["-c", "1073741824", "/dev/zero"]).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = head.stdout.take().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = out.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        head.wait().unwrap();
        pipe.push(total as f64 / begun.elapsed().as_secs_f64() / 1e6);
    }
    // Each run's figure too, in run order: the spread says how far a median can be trusted.
    let runs = |values: &[f64]| values.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ");
    let (live_runs, replay_runs, pipe_runs) = (runs(&live), runs(&replay), runs(&pipe));
    let (live, replay, pipe) = (median(&mut live), median(&mut replay), median(&mut pipe));
    println!("one follower, job writing 1 GiB (live)     {live:8.0} MB/s (goal ≥ 800)   runs {live_runs}");
    println!("one follower, replay of the ended job      {replay:8.0} MB/s                runs {replay_runs}");
    println!(
        "  baseline: head | read(64 KiB), no server {pipe:8.0} MB/s   live/baseline {:.2}   runs {pipe_runs}",
        live / pipe
    );
    println!("server threads under load (max seen)       {max_threads:8}");

    // RSS while one job writes 2 GiB (nobody reading).
    let rss_before = proc_status_kib(pid, "VmRSS:");
    let job = start(&mut client, "head", &["-c", "2147483648", "/dev/zero"]);
    let mut peak = rss_before;
    loop {
        peak = peak.max(proc_status_kib(pid, "VmRSS:"));
        let got: Job =
            client.unary(path::GET_JOB, &runnel::proto::GetJobRequest { job_id: job.id.clone() }, None).unwrap();
        if got.ended_at.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "RSS while a job writes 2 GiB               {:8.1} MiB growth (before {:.1} MiB, peak {:.1} MiB; goal < 16)",
        (peak - rss_before) as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
