//! `make bench`: the figures the README's performance section quotes, each next to a baseline measured in the
//! same run. Machines are shared and noisy, so every figure is a median over several runs.
//!
//! Run with `cargo bench --bench perf` (the Makefile builds the release binary first).

#[path = "../util/mod.rs"]
mod util;

use runnel::grpc::path;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel::client::{Client, ClientSettings};
use runnel::proto::{GetJobRequest, Job, OutputChunk, StartJobRequest, StreamOutputRequest, WaitJobRequest};
use runnel::tls::{client_config, server_config, server_name, KeySource};
use util::{Pki, ScratchDir, Server};

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

/// The server's spool writer (`runnel __writer`, its child): its CPU time is the spool's, and counts as the
/// server's.
fn spool_writer_of(server: i32) -> i32 {
    let children = fs::read_to_string(format!("/proc/{server}/task/{server}/children")).unwrap();
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse::<i32>().ok())
        .find(|pid| fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().contains("__writer"))
        .expect("the server runs a spool writer")
}

/// CPU time of the server's one thread and of its spool writer, in nanoseconds.
fn server_cpu_ns(server: i32, writer: i32) -> u64 {
    cpu_ns(server) + cpu_ns(writer)
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

/// Where a server's retained output stands when a job writes: see the throughput section of `main`.
#[derive(Clone, Copy)]
enum Retention {
    BelowCap,
    AtCap,
}

impl Retention {
    fn describe(self) -> &'static str {
        match self {
            Retention::BelowCap => "below the retention cap (a fresh server)",
            Retention::AtCap => "at the retention cap (--max-output-total 1G full: old output goes as new arrives)",
        }
    }

    /// Where the same-run data path alone puts its bytes to match this condition.
    fn data_path_pages(self) -> &'static str {
        match self {
            Retention::BelowCap => "into pages new to the page cache (each run's file kept, 4 s after any free):",
            Retention::AtCap => "overwriting a cached file:",
        }
    }
}

struct StreamRun {
    /// MB/s of one follower while the job writes.
    live: f64,
    /// MB/s of one follower reading the same output after the job ended.
    replay: f64,
    /// Server CPU seconds per GiB while a job writes 1 GiB that nobody follows: the spool's cost.
    spool_cpu: f64,
    /// Server CPU seconds per GiB while following live, and while replaying.
    live_cpu: f64,
    replay_cpu: f64,
    /// GetJob round trips (ms) from another connection while the unfollowed job wrote.
    probe_ms: Vec<f64>,
}

const GIB: &str = "1073741824";

/// Long enough for a VM with free page reporting to have given freed memory back to its host (the kernel
/// reports free pages 2 s after they were freed).
const MEMORY_HANDED_BACK: Duration = Duration::from_secs(4);

/// One run on a fresh server: a job nobody follows (the spool's cost), then a job followed live, then its replay.
fn stream_run(pki: &Pki, condition: Retention) -> (StreamRun, usize) {
    let caps: &[&str] = match condition {
        Retention::BelowCap => &["--max-output-bytes", "4G", "--max-output-total", "16G"],
        Retention::AtCap => &["--max-output-total", "1G"],
    };
    let server = Server::start(pki, caps);
    let pid = server.pid();
    let writer = spool_writer_of(pid);
    let cpu_ns = |pid: i32| server_cpu_ns(pid, writer);
    let mut client = server.client("alice");
    let wait = |client: &mut Client, job: Job| {
        let _: Job = client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id }, None).unwrap();
    };
    if let Retention::AtCap = condition {
        let filler = start(&mut client, "head", &["-c", GIB, "/dev/zero"]);
        wait(&mut client, filler);
    }
    let before = cpu_ns(pid);
    let unfollowed = start(&mut client, "head", &["-c", GIB, "/dev/zero"]);
    let probe = probe_latency(server.settings("alice"), unfollowed.id.clone());
    wait(&mut client, unfollowed);
    let spool_cpu = (cpu_ns(pid) - before) as f64 / 1e9;
    let probe_ms = probe.finish();

    let mut reader = server.client("alice");
    let before = cpu_ns(pid);
    let job = start(&mut client, "head", &["-c", GIB, "/dev/zero"]);
    let (bytes, secs) = follow_all(&mut reader, &job.id);
    assert_eq!(bytes, 1 << 30);
    let (live, live_cpu) = (bytes as f64 / secs / 1e6, (cpu_ns(pid) - before) as f64 / 1e9);
    let threads_seen = threads(pid);
    let before = cpu_ns(pid);
    let (bytes, secs) = follow_all(&mut reader, &job.id);
    assert_eq!(bytes, 1 << 30);
    let (replay, replay_cpu) = (bytes as f64 / secs / 1e6, (cpu_ns(pid) - before) as f64 / 1e9);
    (StreamRun { live, replay, spool_cpu, live_cpu, replay_cpu, probe_ms }, threads_seen)
}

/// A second client asking for a job every 5 ms, timing each answer: everything the server's one thread does
/// (a spool file freed, a disk block reserved) keeps every other client waiting that long.
struct LatencyProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

fn probe_latency(settings: ClientSettings, job_id: String) -> LatencyProbe {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut client = Client::connect(&settings).unwrap();
        let mut round_trips = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            let begun = Instant::now();
            let _: Job = client.unary(path::GET_JOB, &GetJobRequest { job_id: job_id.clone() }, None).unwrap();
            round_trips.push(begun.elapsed().as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(5));
        }
        round_trips
    });
    LatencyProbe { stop, thread }
}

impl LatencyProbe {
    fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// CPU seconds this thread spends writing 1 GiB into the new file `path`, 1 MiB per `write` (then removed).
fn page_cache_fill_seconds(path: &std::path::Path) -> f64 {
    let seconds = fill_gib(path);
    fs::remove_file(path).unwrap();
    seconds
}

/// Writes 1 GiB into the new file `path`, 1 MiB per `write`; returns this thread's CPU seconds for it.
fn fill_gib(path: &std::path::Path) -> f64 {
    let block = vec![0x5au8; 1 << 20];
    let mut file = fs::File::create(path).unwrap();
    let before = thread_cpu_ns();
    for _ in 0..1024 {
        file.write_all(&block).unwrap();
    }
    (thread_cpu_ns() - before) as f64 / 1e9
}

/// CPU time of the calling thread, in nanoseconds (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    let stat = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// MB/s of `head -c 1G /dev/zero` into a pipe read 64 KiB at a time, no server.
fn pipe_baseline() -> f64 {
    let begun = Instant::now();
    let mut head = Command::new("head").args(["-c", GIB, "/dev/zero"]).stdout(Stdio::piped()).spawn().unwrap();
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
    total as f64 / begun.elapsed().as_secs_f64() / 1e6
}

/// Seconds per GiB of 16 KiB `memcpy`s whose destination is `distance` bytes past the source modulo 4 KiB.
fn copy_seconds_per_gib(distance: usize) -> f64 {
    const BLOCK: usize = 16 * 1024;
    let mut area = vec![1u8; 1 << 20];
    let page_start = area.as_ptr().align_offset(4096);
    let (src, dst) = area[page_start..].split_at_mut(8 * 4096);
    let src = &src[..BLOCK];
    let dst = &mut dst[distance..distance + BLOCK];
    let begun = Instant::now();
    for _ in 0..(1 << 30) / BLOCK {
        dst.copy_from_slice(std::hint::black_box(src));
        std::hint::black_box(&mut *dst);
    }
    begun.elapsed().as_secs_f64()
}

/// A live follow's data path alone, with no server: one thread doing only what the server must do with each byte
/// of a job's output (splice it from the job's pipe through a relay pipe into a spool file, `pread` it back,
/// encrypt it with the same rustls configuration and suite, write it to a loopback TCP socket that does not pace,
/// as the server's loopback listener's connections do), a second thread
/// as the TLS client reading it. No gRPC, no h2, no event loop, no job table. A reference, not a bound: the
/// server overlaps what this thread does in turn (it splices while the socket is full), and can beat it.
/// `spool` is written from offset 0; a file that already holds 1 GiB is overwritten in its cached pages, as the
/// server's spare segments are at the retention cap. Returns (MB/s, CPU seconds per GiB of the writing thread).
fn data_path_alone(pki: &Pki, spool: &std::path::Path) -> (f64, f64) {
    let key = |name: &str| KeySource::File(pki.file(name));
    let clients = runnel::tls::ClientTrust { ca: Some(pki.file("ca.crt")), ..Default::default() };
    let server_tls = server_config(&pki.file("server.crt"), &key("server.key"), &clients).unwrap();
    let ca = pki.file("ca.crt");
    let client_tls = client_config(&pki.file("alice.crt"), &key("alice.key"), Some(&ca), None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // As the server's loopback listener: connections that do not pace.
    runnel::sys::send_unpaced(listener.as_raw_fd()).unwrap();
    let address = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let mut socket = TcpStream::connect(address).unwrap();
        let mut tls = rustls::ClientConnection::new(client_tls, server_name("localhost").unwrap()).unwrap();
        let mut stream = rustls::Stream::new(&mut tls, &mut socket);
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf).unwrap() {
                0 => return total,
                n => total += n as u64,
            }
        }
    });
    let (mut socket, _) = listener.accept().unwrap();
    let mut tls = rustls::ServerConnection::new(server_tls).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).unwrap();
    }

    let pipe = runnel::sys::output_pipe().unwrap();
    let relay = runnel::sys::relay_pipe().unwrap();
    let mut head = Command::new("head").args(["-c", GIB, "/dev/zero"]).stdout(Stdio::from(pipe.write)).spawn().unwrap();
    let file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(spool).unwrap();
    let mut buf = bytes::BytesMut::new();
    let (mut spooled, mut sent) = (0u64, 0u64);
    let begun = Instant::now();
    let cpu_before = thread_cpu_ns();
    loop {
        // As the server does: move the pipe's pages to a relay pipe (no copy, so the job's pipe is locked only
        // briefly), then copy them from the relay into the file.
        let moved = match runnel::sys::splice_to_pipe(pipe.read.as_raw_fd(), relay.write.as_raw_fd(), 1 << 20) {
            Ok(Some(0)) => break,
            Ok(Some(n)) => n as u64,
            Ok(None) => {
                runnel::sys::wait_readable(pipe.read.as_raw_fd(), -1).unwrap();
                continue;
            }
            Err(e) => panic!("splice from the job's pipe: {e}"),
        };
        let relayed = spooled + moved;
        while spooled < relayed {
            let left = (relayed - spooled) as usize;
            spooled += runnel::sys::splice_to_file(relay.read.as_raw_fd(), file.as_raw_fd(), spooled, left)
                .unwrap()
                .expect("the relay holds what was moved into it") as u64;
        }
        while sent < spooled {
            // As large as the server's largest output message.
            let len = (spooled - sent).min(256 * 1024) as usize;
            buf.clear();
            runnel::sys::pread_append(file.as_raw_fd(), &mut buf, len, sent).unwrap();
            let mut unsent = &buf[..];
            while !unsent.is_empty() {
                // rustls takes what fits in its send buffer; what it took goes out before the rest.
                unsent = &unsent[tls.writer().write(unsent).unwrap()..];
                send_records(&mut tls, &mut socket);
            }
            sent += len as u64;
        }
    }
    tls.send_close_notify();
    send_records(&mut tls, &mut socket);
    let received = reader.join().unwrap();
    let (seconds, cpu) = (begun.elapsed().as_secs_f64(), (thread_cpu_ns() - cpu_before) as f64 / 1e9);
    head.wait().unwrap();
    assert_eq!((sent, received), (1 << 30, 1 << 30));
    (sent as f64 / seconds / 1e6, cpu)
}

/// Writes every TLS record `tls` holds to `socket` (blocking).
fn send_records(tls: &mut rustls::ServerConnection, socket: &mut TcpStream) {
    while tls.wants_write() {
        tls.write_tls(socket).unwrap();
    }
}

/// Each run's figure, in run order, with `decimals` places: the spread says how far a median can be trusted.
fn list(values: &[f64], decimals: usize) -> String {
    values.iter().map(|v| format!("{v:.decimals$}")).collect::<Vec<_>>().join(" ")
}

/// Percentiles of latencies in milliseconds: p50, p99, max.
fn percentiles(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), at(1.0))
}

/// What a second identity sees while `flooders` jobs of the first write output as fast as they can, nobody
/// reading it: GetJob on its own job every 5 ms and a StartJob every 50 ms (each over its own kept-open
/// connection) for `seconds`.
struct FloodProbe {
    /// Round trips in milliseconds.
    get_job: Vec<f64>,
    start_job: Vec<f64>,
    /// The server's CPU time and its time runnable but waiting for a CPU (`/proc/PID/schedstat`), in seconds; the
    /// CPU time of its spool writer.
    server_cpu: f64,
    server_waiting: f64,
    writer_cpu: f64,
    /// The share of the machine's CPU time the hypervisor took meanwhile (`steal` in `/proc/stat`).
    stolen: f64,
    /// The GetJob calls over [`SLOW_CALL_MS`], each with the part of it the probe and the server spent runnable
    /// but waiting for a CPU: where the tail comes from.
    slow_calls: Vec<SlowCall>,
    /// The server's loop turns in the phase that took longer than 25 ms and than 50 ms (its own histogram).
    long_turns: (u64, u64),
    /// The server's own account of its slow turns: its log lines about them (one a second at most).
    slow_turn_lines: Vec<String>,
    /// The `ksoftirqd` threads could be read (not so in a PID namespace of its own).
    softirq_visible: bool,
    /// How late, at worst, a thread of the bench that only sleeps 1 ms at a time woke up (ms), and how long it
    /// had waited for a CPU then: late with no wait means the machine itself stood still, server or not.
    canary: Vec<Lateness>,
}

/// A late wake-up of a thread sleeping 1 ms at a time: when its sleep began and ended, how late it woke (ms),
/// and how much of that it spent runnable, waiting for a CPU (`/proc/thread-self/schedstat`).
#[derive(Clone, Copy)]
struct Lateness {
    slept: Instant,
    woke: Instant,
    late: f64,
    waiting: f64,
}

/// A wake-up later than this is kept, to be matched with the slow calls it overlapped.
const LATE_WAKEUP_MS: f64 = 2.0;

/// A thread that sleeps 1 ms at a time until `stop`, keeping every wake-up later than [`LATE_WAKEUP_MS`].
fn sleeping_canary(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Lateness>> {
    std::thread::spawn(move || {
        let mut late_wakeups = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let (_, waiting_before) = schedstat_at("/proc/thread-self/schedstat");
            let slept = Instant::now();
            std::thread::sleep(Duration::from_millis(1));
            let woke = Instant::now();
            let late = (woke - slept).as_secs_f64() * 1e3 - 1.0;
            if late > LATE_WAKEUP_MS {
                let (_, waiting_after) = schedstat_at("/proc/thread-self/schedstat");
                late_wakeups.push(Lateness {
                    slept,
                    woke,
                    late,
                    waiting: (waiting_after - waiting_before) as f64 / 1e6,
                });
            }
        }
        late_wakeups
    })
}

/// The latest wake-up (the most late) of `wakeups` whose sleep overlapped `from..to`, if any was late.
fn worst_between(wakeups: &[Lateness], from: Instant, to: Instant) -> Option<Lateness> {
    wakeups.iter().filter(|w| w.slept < to && w.woke > from).copied().max_by(|a, b| a.late.total_cmp(&b.late))
}

/// A GetJob call is slow past this (the goal for its p99).
const SLOW_CALL_MS: f64 = 10.0;

/// One slow GetJob call, in milliseconds: how long it took, how much of that the probe's thread and the server
/// waited for a CPU (`/proc/.../schedstat`; a wait still going on when it ends is not counted yet), and how much
/// CPU time the hypervisor took from the machine's cores meanwhile (`steal` in `/proc/stat`, in clock ticks of
/// 10 ms: a stall of the whole VM shows here, and in no process's waiting).
struct SlowCall {
    round_trip: f64,
    probe_waiting: f64,
    server_waiting: f64,
    /// How long the server was on a CPU meanwhile: with its wait, what is left of the call is the time it slept
    /// (blocked in the kernel, or idle in `epoll_wait`).
    server_running: f64,
    stolen: f64,
    /// How long the kernel threads that finish deferred interrupt work (`ksoftirqd/N`, which carries loopback
    /// packets when the sender's own context has run out of budget) waited for a CPU meanwhile, all together.
    softirq_waiting: f64,
    /// When it was sent and answered, to match it with the canary's late wake-ups.
    sent: Instant,
    answered: Instant,
}

/// The `/proc/PID/schedstat` paths of the `ksoftirqd/N` kernel threads, one per CPU.
fn softirq_thread_stats() -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| fs::read_to_string(entry.path().join("comm")).is_ok_and(|comm| comm.starts_with("ksoftirqd/")))
        .map(|entry| entry.path().join("schedstat").to_string_lossy().into_owned())
        .collect()
}

/// Nanoseconds the threads at `stats` have waited for a CPU, all together.
fn waited_ns(stats: &[String]) -> u64 {
    stats.iter().map(|path| schedstat_at(path).1).sum()
}

/// The server's loop turns so far (`runnel_loop_turn_duration_seconds`, from its `--metrics-listen`): how
/// many, and how many took no longer than each of `bounds` (bucket labels such as `"0.025"`).
fn loop_turns(server: &Server, bounds: &[&str]) -> (u64, Vec<u64>) {
    let log = server.log_text();
    let address = log.split("metrics served at http://").nth(1).and_then(|rest| rest.split("/metrics").next());
    let mut socket = TcpStream::connect(address.expect("the server logs its metrics address")).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    socket.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    socket.read_to_string(&mut text).unwrap();
    let sample = |name: &str| -> u64 {
        let line = text.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name} in /metrics"));
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
    };
    let within = bounds
        .iter()
        .map(|bound| sample(&format!("runnel_loop_turn_duration_seconds_bucket{{le=\"{bound}\"}}")))
        .collect();
    (sample("runnel_loop_turn_duration_seconds_count"), within)
}

/// The server's log lines about its slow turns so far.
fn slow_turn_lines(server: &Server) -> Vec<String> {
    server.log_text().lines().filter(|line| line.contains("a loop turn took")).map(str::to_string).collect()
}

/// The whole machine's CPU time so far and the part of it stolen by the hypervisor, in clock ticks (the `cpu`
/// line of `/proc/stat`: user, nice, system, idle, iowait, irq, softirq, steal).
fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<u64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).take(8).map(|f| f.parse().unwrap()).collect();
    (ticks.iter().sum(), ticks[7])
}

/// The unit of `/proc/stat`, `USER_HZ`: 100 clock ticks a second on the architectures runnel builds for.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The first two fields of `/proc/PID/schedstat`: time on a CPU, time waiting for one (nanoseconds).
fn schedstat(pid: i32) -> (u64, u64) {
    schedstat_at(&format!("/proc/{pid}/schedstat"))
}

fn schedstat_at(path: &str) -> (u64, u64) {
    let stat = fs::read_to_string(path).unwrap();
    let mut fields = stat.split_whitespace().map(|f| f.parse().unwrap());
    (fields.next().unwrap(), fields.next().unwrap())
}

fn probe_under_flood(pki: &Pki, flooders: usize, seconds: u64, state_dir: Option<&Path>) -> FloodProbe {
    // At the retention cap from the first seconds on, as on a long-running server.
    let server = Server::start_on(pki, state_dir, &["--max-output-total", "2G", "--metrics-listen", "127.0.0.1:0"]);
    let mut flood = server.client("alice");
    let jobs: Vec<Job> = (0..flooders).map(|_| start(&mut flood, "cat", &["/dev/zero"])).collect();
    let mut probe = server.client("bob");
    let own = start(&mut probe, "sleep", &["600"]);
    let starter_settings = server.settings("bob");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let starter = std::thread::spawn(move || {
        let mut client = Client::connect(&starter_settings).unwrap();
        let mut round_trips = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            let begun = Instant::now();
            let job = start(&mut client, "/bin/true", &[]);
            round_trips.push(begun.elapsed().as_secs_f64() * 1e3);
            let _: Job = client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id }, None).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        round_trips
    });
    let canary = sleeping_canary(Arc::clone(&stop));
    let (mut get_job, mut slow_calls) = (Vec::new(), Vec::new());
    let (cpu_before, waiting_before) = schedstat(server.pid());
    let writer = spool_writer_of(server.pid());
    let writer_before = cpu_ns(writer);
    let (machine_before, stolen_before) = machine_ticks();
    let (turns_before, within_before) = loop_turns(&server, &["0.025", "0.05"]);
    let slow_turn_lines_before = slow_turn_lines(&server).len();
    let softirq_threads = softirq_thread_stats();
    let until = Instant::now() + Duration::from_secs(seconds);
    let server_stat = format!("/proc/{}/schedstat", server.pid());
    while Instant::now() < until {
        let (_, probe_before) = schedstat_at("/proc/thread-self/schedstat");
        let (server_ran_before, server_before) = schedstat_at(&server_stat);
        let (_, machine_stolen_before) = machine_ticks();
        let softirq_before = waited_ns(&softirq_threads);
        let begun = Instant::now();
        let _: Job = probe.unary(path::GET_JOB, &GetJobRequest { job_id: own.id.clone() }, None).unwrap();
        let answered = Instant::now();
        let round_trip = (answered - begun).as_secs_f64() * 1e3;
        get_job.push(round_trip);
        if round_trip > SLOW_CALL_MS {
            let (_, probe_after) = schedstat_at("/proc/thread-self/schedstat");
            let (server_ran_after, server_after) = schedstat_at(&server_stat);
            let (_, machine_stolen_after) = machine_ticks();
            slow_calls.push(SlowCall {
                round_trip,
                probe_waiting: (probe_after - probe_before) as f64 / 1e6,
                server_waiting: (server_after - server_before) as f64 / 1e6,
                server_running: (server_ran_after - server_ran_before) as f64 / 1e6,
                stolen: (machine_stolen_after - machine_stolen_before) as f64 * 1e3 / CLOCK_TICKS_PER_SECOND,
                softirq_waiting: (waited_ns(&softirq_threads) - softirq_before) as f64 / 1e6,
                sent: begun,
                answered,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (cpu_after, waiting_after) = schedstat(server.pid());
    let (machine_after, stolen_after) = machine_ticks();
    let (turns_after, within_after) = loop_turns(&server, &["0.025", "0.05"]);
    let turns = turns_after - turns_before;
    let long_turns = (turns - (within_after[0] - within_before[0]), turns - (within_after[1] - within_before[1]));
    stop.store(true, Ordering::Relaxed);
    let start_job = starter.join().unwrap();
    let canary = canary.join().unwrap();
    let slow_turn_lines = slow_turn_lines(&server).split_off(slow_turn_lines_before);
    drop(jobs);
    FloodProbe {
        get_job,
        start_job,
        server_cpu: (cpu_after - cpu_before) as f64 / 1e9,
        server_waiting: (waiting_after - waiting_before) as f64 / 1e9,
        writer_cpu: (cpu_ns(writer) - writer_before) as f64 / 1e9,
        stolen: (stolen_after - stolen_before) as f64 / (machine_after - machine_before).max(1) as f64,
        slow_calls,
        long_turns,
        slow_turn_lines,
        softirq_visible: !softirq_threads.is_empty(),
        canary,
    }
}

/// Where the slow calls' time went: their count, the share of their time the probe and the server waited for
/// a CPU, how many the sleeping canary was late through, and the slowest one's parts.
fn describe_slow_calls(calls: &[SlowCall], canary: &[Lateness], softirq_visible: bool) -> String {
    let Some(slowest) = calls.iter().max_by(|a, b| a.round_trip.total_cmp(&b.round_trip)) else {
        return format!("no GetJob over {SLOW_CALL_MS} ms");
    };
    let total: f64 = calls.iter().map(|c| c.round_trip).sum();
    let share = |part: fn(&SlowCall) -> f64| calls.iter().map(part).sum::<f64>() / total * 100.0;
    let softirq = if softirq_visible { format!("{:.1} ms", slowest.softirq_waiting) } else { "n/a".to_string() };
    let canary_late = calls.iter().filter(|c| worst_between(canary, c.sent, c.answered).is_some()).count();
    let canary_meanwhile = match worst_between(canary, slowest.sent, slowest.answered) {
        Some(w) => {
            format!("the sleeping thread woke {:.1} ms late ({:.1} ms of it waiting for a CPU)", w.late, w.waiting)
        }
        None => format!("the sleeping thread was never over {LATE_WAKEUP_MS} ms late"),
    };
    format!(
        "{} GetJob over {SLOW_CALL_MS} ms ({canary_late} while the sleeping thread was late); of their time the \
         probe waited for a CPU {:.0} %, the server {:.0} %. The slowest, {:.1} ms: waiting for a CPU, probe {:.1} \
         ms, server {:.1} ms, ksoftirqd {softirq}; the server ran {:.1} ms; the hypervisor took {:.0} ms; \
         {canary_meanwhile}",
        calls.len(),
        share(|c| c.probe_waiting),
        share(|c| c.server_waiting),
        slowest.round_trip,
        slowest.probe_waiting,
        slowest.server_waiting,
        slowest.server_running,
        slowest.stolen
    )
}

/// One flood phase's lines: the probe's figures, where its slow calls' time went, and the server's long turns.
fn print_flood_probe(label: &str, mut run: FloodProbe, idle_start_p99: f64) {
    let (g50, g99, gmax) = percentiles(&mut run.get_job);
    let (s50, s99, smax) = percentiles(&mut run.start_job);
    println!(
        "  {label:16} GetJob p50 {g50:6.2} p99 {g99:7.2} max {gmax:7.1} ms ({} calls); \
         StartJob p50 {s50:6.2} p99 {s99:7.2} max {smax:7.1} ms ({:.1}x idle p99); \
         server CPU {:.1} s, waiting for a CPU {:.1} s, its spool writer's CPU {:.1} s; the hypervisor took {:.0} % \
         of the machine",
        run.get_job.len(),
        s99 / idle_start_p99,
        run.server_cpu,
        run.server_waiting,
        run.writer_cpu,
        run.stolen * 100.0
    );
    println!("  {:16} {}", "", describe_slow_calls(&run.slow_calls, &run.canary, run.softirq_visible));
    let worst = run.canary.iter().max_by(|a, b| a.late.total_cmp(&b.late));
    let (late, waiting) = worst.map_or((0.0, 0.0), |w| (w.late, w.waiting));
    println!(
        "  {:16} the server's loop turns over 25 ms: {}, over 50 ms: {}; a thread sleeping 1 ms at a time woke up \
         at worst {late:.1} ms late, {waiting:.1} ms of it waiting for a CPU",
        "", run.long_turns.0, run.long_turns.1
    );
    for line in &run.slow_turn_lines {
        println!(
            "  {:16} the server: a turn took {}",
            "",
            line.split("a loop turn took").nth(1).map_or(line.as_str(), str::trim)
        );
    }
}

/// Room the flood phases' spool needs on the tmpfs: their `--max-output-total`, and some.
const TMPFS_ROOM_NEEDED: u64 = 5 << 29;

/// `/dev/shm` if it is a tmpfs with room for the flood phases' spool (`TMPFS_ROOM_NEEDED`), once the state
/// directories an interrupted bench left there are gone; or why not.
fn tmpfs_for_state() -> Result<PathBuf, String> {
    let shm = PathBuf::from("/dev/shm");
    let mounts = fs::read_to_string("/proc/mounts").map_err(|err| format!("cannot read /proc/mounts: {err}"))?;
    let is_tmpfs = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"/dev/shm") && fields.get(2) == Some(&"tmpfs")
    });
    if !is_tmpfs {
        return Err("/dev/shm is no tmpfs".to_string());
    }
    for entry in fs::read_dir(&shm).map_err(|err| format!("cannot list /dev/shm: {err}"))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("runnel-bench-state-") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let stat = nix::sys::statvfs::statvfs(&shm).map_err(|err| format!("cannot statvfs /dev/shm: {err}"))?;
    let room = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if room < TMPFS_ROOM_NEEDED {
        return Err(format!("/dev/shm has {} MiB free, {} needed", room >> 20, TMPFS_ROOM_NEEDED >> 20));
    }
    Ok(shm)
}

/// The probe idle, and with 4 and 16 jobs flooding output: GetJob and StartJob p50/p99/max. Then the same floods
/// with the state directory on a tmpfs, where no write waits for the disk: the difference is what the disk's
/// writeback costs the loop (`docs/performance.md`, session 17).
fn flood_figures(pki: &Pki) {
    println!("a second identity's calls while the first's jobs flood output nobody reads (--max-output-total 2G)");
    let mut idle_start_p99 = 0.0;
    for flooders in [0, 4, 16] {
        let run = probe_under_flood(pki, flooders, 10, None);
        if flooders == 0 {
            idle_start_p99 = percentiles(&mut run.start_job.clone()).1;
        }
        let label = if flooders == 0 { "idle (baseline)".to_string() } else { format!("{flooders} flooding jobs") };
        print_flood_probe(&label, run, idle_start_p99);
    }
    match tmpfs_for_state() {
        Ok(tmpfs) => {
            for flooders in [4, 16] {
                let scratch = ScratchDir::new_in(&tmpfs, "bench-state");
                let run = probe_under_flood(pki, flooders, 10, Some(&scratch.join("state")));
                print_flood_probe(&format!("{flooders}, on tmpfs"), run, idle_start_p99);
            }
        }
        Err(why) => println!("  the same floods with the state directory on a tmpfs: not measured, {why}"),
    }
    println!("  (goals under flood: GetJob p99 <= 10 ms, max <= 50 ms; StartJob p99 <= 3x idle)");
}

/// Server RSS with `count` idle mutual-TLS connections (each made a call), and after they closed, next to
/// the same server idle before them.
fn idle_connection_figures(pki: &Pki, count: usize) {
    let server = Server::start(pki, &["--max-connections-per-client", &count.to_string()]);
    let pid = server.pid();
    let mut first = server.client("alice");
    let _: runnel::proto::ListJobsResponse =
        first.unary(path::LIST_JOBS, &runnel::proto::ListJobsRequest::default(), None).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let idle = proc_status_kib(pid, "VmRSS:") as f64 / 1024.0;
    let mut clients: Vec<Client> = (1..count).map(|_| server.client("alice")).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let listed: Result<runnel::proto::ListJobsResponse, _> =
            client.unary(path::LIST_JOBS, &runnel::proto::ListJobsRequest::default(), None);
        if let Err(err) = listed {
            let log = server.log_text();
            panic!("connection {i}: {err:?}\n{}", &log[log.len().saturating_sub(3000)..]);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let held = proc_status_kib(pid, "VmRSS:") as f64 / 1024.0;
    clients.clear();
    drop(first);
    // What the server gives back once they are gone (its allocator may keep some for reuse).
    std::thread::sleep(Duration::from_secs(10));
    let after = proc_status_kib(pid, "VmRSS:") as f64 / 1024.0;
    println!(
        "RSS with {count} idle mTLS connections    {held:8.1} MiB (goal <= 48); 10 s after they closed {after:.1} MiB, \
         {:.1} above idle (goal <= 16); baseline: idle {idle:.1} MiB",
        after - idle
    );
}

/// StartJob, GetJob and a ListJobs page with `count` isolated jobs running, next to the same calls on the same
/// server before them.
fn many_jobs_figures(pki: &Pki, count: usize) {
    let server = Server::start(pki, &["--max-running-per-client", &(count + 100).to_string()]);
    let mut client = server.client("alice");
    let own = start(&mut client, "sleep", &["3600"]);
    let measure = |client: &mut Client, rounds: usize| {
        let (mut start_job, mut get_job, mut list_page) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let begun = Instant::now();
            let job = start(client, "/bin/true", &[]);
            start_job.push(begun.elapsed().as_secs_f64() * 1e3);
            let _: Job = client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id }, None).unwrap();
            let begun = Instant::now();
            let _: Job = client.unary(path::GET_JOB, &GetJobRequest { job_id: own.id.clone() }, None).unwrap();
            get_job.push(begun.elapsed().as_secs_f64() * 1e3);
            let begun = Instant::now();
            let page: runnel::proto::ListJobsResponse =
                client.unary(path::LIST_JOBS, &runnel::proto::ListJobsRequest::default(), None).unwrap();
            list_page.push(begun.elapsed().as_secs_f64() * 1e3);
            assert!(!page.jobs.is_empty());
        }
        [start_job, get_job, list_page].map(|mut v| percentiles(&mut v))
    };
    // A start that finds no shell ready forks its own namespaces, on the loop (`isolation/shell_pool.rs`).
    let forked = || server.log_text().matches("the shell pool is empty").count();
    let forked_at_first = forked();
    let before = measure(&mut client, 200);
    let forked_before = forked() - forked_at_first;
    let begun = Instant::now();
    let sleepers: Vec<Job> = (0..count).map(|_| start(&mut client, "sleep", &["3600"])).collect();
    let started_in = begun.elapsed().as_secs_f64();
    let forked_at_first = forked();
    let during = measure(&mut client, 200);
    let forked_during = forked() - forked_at_first;
    println!(
        "with {} running isolated jobs (started in {started_in:.1} s), p50 / p99 / max in ms, next to the same server \
         before them:",
        sleepers.len()
    );
    for (i, (name, goal)) in [("StartJob", 10.0), ("GetJob", 5.0), ("ListJobs page (100)", 10.0)].iter().enumerate() {
        let ((b50, b99, bmax), (d50, d99, dmax)) = (before[i], during[i]);
        println!(
            "  {name:20} {d50:6.2} / {d99:6.2} / {dmax:6.1}  (goal p99 <= {goal}); before {b50:.2} / {b99:.2} / {bmax:.1}"
        );
    }
    println!("  starts that found no shell ready and forked: {forked_during} of 200; before {forked_before} of 200");
}

/// The floor under an isolated StartJob, in microseconds: `clone3` into the namespaces a job gets (PID, mount,
/// UTS, IPC, cgroup, network) and an exec of `/bin/true`, then its reap, from this process with the server's own
/// spawn (`sys::spawn`); median of `rounds`.
fn clone3_floor_us(rounds: usize) -> f64 {
    use runnel::sys::{self, CStringArray, ChildStack, Namespaces, SpawnFds, SpawnOptions, SpawnProgram};
    use std::os::fd::AsFd;
    let dev_null = sys::open_dev_null().unwrap();
    let program = SpawnProgram {
        exec_fd: None,
        candidates: CStringArray::new(vec![c"/bin/true".into()]),
        argv: CStringArray::new(vec![c"true".into()]),
        envp: CStringArray::new(Vec::new()),
        working_dir: c"/".into(),
    };
    let fds = SpawnFds {
        stdin: dev_null.as_fd(),
        stdout: dev_null.as_fd(),
        stderr: dev_null.as_fd(),
        control: None,
        report: None,
    };
    let options =
        SpawnOptions { namespaces: Namespaces::JOB.with_network(), die_with_parent: true, ..Default::default() };
    let mut stack = ChildStack::default();
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let begun = Instant::now();
            let (_, pidfd) = sys::spawn(&program, &fds, options, &mut stack).unwrap().unwrap();
            sys::wait_pidfd(pidfd.as_raw_fd(), sys::Wait::Reap).unwrap();
            begun.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    median(&mut times)
}

/// StartJob p50 over a kept-open connection, next to std's posix_spawn + wait of the same program: without
/// isolation (the spawn itself), and with every namespace and the init (the default as root) next to its
/// `clone3` floor. `client` talks to a default (isolated) server.
fn start_figures(pki: &Pki, client: &mut Client) {
    let plain = Server::start(pki, &["--no-isolation"]);
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
            timed_start(client, &mut isolated);
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
    let floor = clone3_floor_us(300);
    println!(
        "  floor: clone3 into the same namespaces + exec /bin/true + reap {floor:8.0} µs   ratio {:.2}x (goal ≤ 1.3x)",
        isolated_p50 / floor
    );
}

/// The job history's costs (`RUNNEL_BENCH=history`): StartJob p50 with records written, next to `--ephemeral`
/// in the same run (goal ≤ 1.1x), and a server's startup with 10 000 retained jobs, next to an empty one.
fn history_figures(pki: &Pki) {
    // Recording: the same StartJob + WaitJob on two servers, in alternating rounds (no isolation: the smallest
    // StartJob, so the record's share shows the most).
    let ephemeral = Server::start(pki, &["--no-isolation", "--ephemeral"]);
    let kept = Server::start(pki, &["--no-isolation"]);
    let (mut ephemeral_client, mut kept_client) = (ephemeral.client("alice"), kept.client("alice"));
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut ratios = Vec::new();
    for _ in 0..5 {
        let round = |client: &mut Client, into: &mut Vec<f64>| {
            let mut times = Vec::new();
            for _ in 0..200 {
                let begun = Instant::now();
                let job = start(client, "/bin/true", &[]);
                times.push(begun.elapsed().as_secs_f64() * 1e6);
                let _: Job = client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id }, None).unwrap();
            }
            into.extend_from_slice(&times);
            median(&mut times)
        };
        let (a, b) = (round(&mut ephemeral_client, &mut without), round(&mut kept_client, &mut with));
        ratios.push(b / a);
    }
    let ratio_runs = list(&ratios, 2);
    println!("job history (records beside the output)");
    println!(
        "  StartJob p50, records written     {:8.0} µs   ratio {:.2}x to --ephemeral (goal ≤ 1.1x), rounds {ratio_runs}",
        median(&mut with),
        median(&mut ratios)
    );
    println!("  baseline: StartJob p50, --ephemeral {:6.0} µs", median(&mut without));
    drop((ephemeral_client, kept_client, ephemeral, kept));

    // Startup: 10 000 ended jobs (a line of output each) in a state directory, then servers started on it and on
    // an empty one, alternately; "ready" is the listening line, which comes after the history was read back.
    let scratch = ScratchDir::new("history-bench");
    let (full, empty) = (scratch.path().join("full"), scratch.path().join("empty"));
    let flags = ["--no-isolation", "--max-jobs", "10000"];
    {
        let mut server = Server::start_on(pki, Some(&full), &flags);
        let mut client = server.client("alice");
        let mut started = 0;
        while started < 10_000 {
            let request =
                StartJobRequest { command: "echo".into(), args: vec![format!("job {started}")], ..Default::default() };
            match client.unary::<_, Job>(path::START_JOB, &request, None) {
                Ok(_) => started += 1,
                // --max-running-per-client: let some end.
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        drop(client);
        server.stop_with(15, Duration::from_secs(120));
    }
    let ready = |dir: &std::path::Path| {
        let begun = Instant::now();
        let mut server = Server::start_on(pki, Some(dir), &flags);
        let seconds = begun.elapsed().as_secs_f64();
        let read_back = server.log_text().lines().find(|l| l.contains("jobs kept from before")).map(str::to_string);
        server.stop_with(15, Duration::from_secs(120));
        (seconds, read_back)
    };
    let (mut with_history, mut without_history, mut lines) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let (seconds, line) = ready(&full);
        with_history.push(seconds * 1e3);
        lines.extend(line);
        without_history.push(ready(&empty).0 * 1e3);
    }
    let runs = list(&with_history, 0);
    println!(
        "  startup to listening, 10 000 jobs kept {:6.0} ms (goal ≤ 1000), runs {runs}",
        median(&mut with_history)
    );
    println!("  baseline: startup, empty state dir    {:6.0} ms", median(&mut without_history));
    if let Some(line) = lines.last() {
        println!("    the server's own account: {}", line.split("INFO").last().unwrap_or(line).trim());
    }
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
    // `RUNNEL_BENCH=flood make bench` (or `connections`, `jobs`, `start`, `history`, `follow`): only those figures, for quick A/B
    // work; `start-vs` with `RUNNEL_BENCH_BASELINE=path`: isolated starts of this build against another's.
    match std::env::var("RUNNEL_BENCH").as_deref() {
        Ok("flood") => return flood_figures(&pki),
        Ok("connections") => return idle_connection_figures(&pki, 1000),
        Ok("jobs") => return many_jobs_figures(&pki, 1000),
        Ok("history") => return history_figures(&pki),
        Ok("follow") => return follow_figures(&pki, None),
        Ok("start-vs") => return start_versus_figures(&pki),
        Ok("start") => {
            let server = Server::start(&pki, &[]);
            return start_figures(&pki, &mut server.client("alice"));
        }
        _ => {}
    }
    // Start from a quiet disk: what an earlier run (or anything else) left dirty would otherwise be written back
    // during this one's measurements (creating a job's directories took 2.4 times as long under writeback).
    Command::new("sync").status().unwrap();
    let server = Server::start(&pki, &["--max-output-bytes", "4G", "--max-output-total", "16G"]);
    let pid = server.pid();
    let mut client = server.client("alice");
    println!("runnel perf ({} cores), server pid {pid}", std::thread::available_parallelism().unwrap());
    println!();

    start_figures(&pki, &mut client);

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
    let writer = spool_writer_of(pid);
    let before = server_cpu_ns(pid, writer);
    std::thread::sleep(Duration::from_secs(5));
    let idle_ms = (server_cpu_ns(pid, writer) - before) as f64 / 1e6;
    println!("idle CPU, 10 followers on a silent job     {idle_ms:8.3} ms in 5 s (goal < 10 ms; the spool writer's included)");
    followers.clear();
    // The baseline for the latency probes below: the same GetJob every 5 ms while the server has nothing to do.
    let probe = probe_latency(server.settings("alice"), silent.id.clone());
    std::thread::sleep(Duration::from_secs(2));
    let mut idle_probe = probe.finish();
    let idle_probe_p50 = median(&mut idle_probe);
    let idle_probe_max = idle_probe.iter().copied().fold(0.0, f64::max);

    follow_figures(&pki, Some((idle_probe_p50, idle_probe_max)));

    // The copy the allocator steers clear of (sys::CacheLineAllocator): 16 KiB memcpy with the destination a
    // few bytes past the source modulo 4 KiB, next to the same copy a cache line apart.
    println!(
        "memcpy 16 KiB, dst 5 bytes past src mod 4 KiB {:6.3} s/GiB; 64 bytes past {:6.3} s/GiB",
        copy_seconds_per_gib(5),
        copy_seconds_per_gib(64)
    );

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

    flood_figures(&pki);
    idle_connection_figures(&pki, 1000);
    many_jobs_figures(&pki, 1000);
    history_figures(&pki);
}

/// One follower of a job writing 1 GiB, live and replayed, below the retention cap and at it, next to the
/// data path alone (`RUNNEL_BENCH=follow` runs only these); `idle_probe` is the GetJob baseline (p50, max ms)
/// measured on an idle server, printed beside the GetJob calls made meanwhile.
fn follow_figures(pki: &Pki, idle_probe: Option<(f64, f64)>) {
    // Follower throughput for a job writing 1 GiB, on a fresh server each run, in two conditions: below the
    // retention cap, and at it (`--max-output-total 1G` already full, so old output is discarded as new arrives,
    // as on a long-running server). The server's one core does two things per byte: write it into the spool
    // (page cache) and send it. Each run measures the server's CPU per GiB for a job nobody follows (the spool
    // alone), for the followed job and for its replay. Measured after the runs, as each changes what memory and
    // disk they would get: the page cache's own cost (writing 1 GiB into a new file in the same file system, no
    // server), then the data path alone (no server: splice into the page cache, pread, TLS, socket on one
    // thread) in each condition's own way. Below the cap every byte needs a page the page cache did not have (each
    // run's file is kept, as the server keeps the output); at the cap a cached file is overwritten, as the
    // server's spare segments are. On a VM that gives freed memory back to its host (free page reporting, about
    // 2 s after the free), a new page is cheap only if it was freed just before: each new-pages run waits
    // `MEMORY_HANDED_BACK` first, so that it does not start on what the run before it freed.
    let mut max_threads = 0;
    let mut figures = Vec::new();
    for condition in [Retention::BelowCap, Retention::AtCap] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            let (run, threads_seen) = stream_run(pki, condition);
            max_threads = max_threads.max(threads_seen);
            runs.push(run);
        }
        figures.push((condition, runs));
    }
    let mut pipe = (0..3).map(|_| pipe_baseline()).collect::<Vec<_>>();
    let pipe_runs = list(&pipe, 0);
    let pipe = median(&mut pipe);
    let scratch = ScratchDir::new("no-server");
    let mut page_cache: Vec<f64> = (0..3).map(|_| page_cache_fill_seconds(&scratch.path().join("probe"))).collect();
    let new_pages: Vec<(f64, f64)> = (0..3)
        .map(|run| {
            std::thread::sleep(MEMORY_HANDED_BACK);
            data_path_alone(pki, &scratch.path().join(format!("new-{run}")))
        })
        .collect();
    let spool = scratch.path().join("spool");
    fill_gib(&spool);
    let cached_pages: Vec<(f64, f64)> = (0..3).map(|_| data_path_alone(pki, &spool)).collect();
    drop(scratch);
    println!(
        "one follower, job writing 1 GiB: MB/s, and the server's CPU seconds per GiB (its spool writer's included)"
    );
    for (condition, runs) in &figures {
        let data_path_runs = match condition {
            Retention::BelowCap => &new_pages,
            Retention::AtCap => &cached_pages,
        };
        let (mut data_path, mut data_path_cpu): (Vec<f64>, Vec<f64>) = data_path_runs.iter().copied().unzip();
        let (data_path_list, data_path_cpu_list) = (list(&data_path, 0), list(&data_path_cpu, 2));
        let (data_path, data_path_cpu) = (median(&mut data_path), median(&mut data_path_cpu));
        let mut live: Vec<f64> = runs.iter().map(|r| r.live).collect();
        let mut replay: Vec<f64> = runs.iter().map(|r| r.replay).collect();
        let mut spool: Vec<f64> = runs.iter().map(|r| r.spool_cpu).collect();
        let mut live_cpu: Vec<f64> = runs.iter().map(|r| r.live_cpu).collect();
        let mut replay_cpu: Vec<f64> = runs.iter().map(|r| r.replay_cpu).collect();
        let (live_runs, replay_runs) = (list(&live, 0), list(&replay, 0));
        let (spool_runs, live_cpu_runs, replay_cpu_runs) = (list(&spool, 2), list(&live_cpu, 2), list(&replay_cpu, 2));
        let live = median(&mut live);
        println!("  {}", condition.describe());
        println!(
            "    live    {live:6.0} MB/s (goal >= 800)  runs {live_runs}   live/baseline {:.2}, live/data path {:.2}",
            live / pipe,
            live / data_path
        );
        println!("    replay  {:6.0} MB/s                runs {replay_runs}", median(&mut replay));
        println!(
            "    server CPU s/GiB: spool alone {:.2} ({spool_runs}), live {:.2} ({live_cpu_runs}), replay {:.2} ({replay_cpu_runs})",
            median(&mut spool),
            median(&mut live_cpu),
            median(&mut replay_cpu)
        );
        let mut probe: Vec<f64> = runs.iter().flat_map(|r| r.probe_ms.iter().copied()).collect();
        probe.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let at = |q: f64| probe[((probe.len() - 1) as f64 * q) as usize];
        println!(
            "    GetJob from another client meanwhile: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} calls)",
            at(0.5),
            at(0.99),
            at(1.0),
            probe.len()
        );
        println!("    baseline: the data path alone, no server, {}", condition.data_path_pages());
        println!(
            "              {data_path:6.0} MB/s   runs {data_path_list}; one thread's CPU {data_path_cpu:.2} s/GiB, runs {data_path_cpu_list}"
        );
    }
    println!("  baseline: head | read(64 KiB), no server {pipe:8.0} MB/s   runs {pipe_runs}");
    if let Some((idle_probe_p50, idle_probe_max)) = idle_probe {
        println!("  baseline: GetJob, idle server            p50 {idle_probe_p50:.2} ms, max {idle_probe_max:.1} ms");
    }
    println!("server threads under load (max seen)       {max_threads:8}");
    let page_cache_runs = list(&page_cache, 2);
    println!(
        "  page cache alone: 1 GiB into a new file   {:8.2} s CPU          runs {page_cache_runs}",
        median(&mut page_cache)
    );
}

/// Isolated StartJob p50 of this build against another (`RUNNEL_BENCH=start-vs RUNNEL_BENCH_BASELINE=path make
/// bench`): two servers, 100 starts of each in turn for seven rounds, each round beside the `clone3` floor.
fn start_versus_figures(pki: &Pki) {
    let baseline = std::env::var("RUNNEL_BENCH_BASELINE")
        .expect("RUNNEL_BENCH_BASELINE=path: the runnel executable to compare this build with");
    let old = Server::start_after(pki, &[], &format!("shift; exec '{baseline}' \"$@\""), &[]);
    let new = Server::start(pki, &[]);
    let (mut old_client, mut new_client) = (old.client("alice"), new.client("alice"));
    let p50 = |client: &mut Client| {
        let mut times: Vec<f64> = (0..100)
            .map(|_| {
                let begun = Instant::now();
                let job = start(client, "/bin/true", &[]);
                let elapsed = begun.elapsed().as_secs_f64() * 1e6;
                let _: Job = client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id }, None).unwrap();
                elapsed
            })
            .collect();
        median(&mut times)
    };
    println!("isolated StartJob p50, this build against {baseline}, 100 starts each in turn, µs:");
    let (mut ratios, mut floor_ratios) = (Vec::new(), Vec::new());
    for round in 1..=7 {
        let (before, after) = (p50(&mut old_client), p50(&mut new_client));
        let floor = clone3_floor_us(100);
        println!(
            "  round {round}: baseline {before:6.0}  this {after:6.0}  ratio {:.2}   floor {floor:6.0}: baseline {:.2} x, this {:.2} x",
            after / before,
            before / floor,
            after / floor
        );
        ratios.push(after / before);
        floor_ratios.push(after / floor);
    }
    println!(
        "median ratio {:.2} (this / baseline); this build's median {:.2} x the floor (goal ≤ 1.3x)",
        median(&mut ratios),
        median(&mut floor_ratios)
    );
}
