//! The server's lifecycle against the real binary: shutdown on SIGTERM/SIGINT (a second signal skipping the
//! grace, calls refused while jobs stop, a stalled follower bounding the drain), starting over a crashed
//! predecessor's state directory (its jobs' leftovers cleared, their history kept), closing connections that
//! never finish their handshakes, and the congestion control a loopback listener gives its connections.

mod util;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use runnel::client::{CallError, Client, ResponseStream};
use runnel::grpc::{path, Code, Status};
use runnel::proto::health::health_check_response::ServingStatus;
use runnel::proto::health::{HealthCheckRequest, HealthCheckResponse};
use runnel::proto::{
    GetJobRequest, Job, ListJobsRequest, ListJobsResponse, OutputChunk, StartJobRequest, StreamOutputRequest,
    WaitJobRequest,
};
use runnel::tls;
use util::{eventually, process_alive, Pki, Server};

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
/// The server's `limits::HANDSHAKE_TIMEOUT`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The server's `limits::SHUTDOWN_DRAIN`.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// A job that ignores SIGTERM (its `sleep`s inherit the ignored disposition), so only SIGKILL ends it.
const STUBBORN: &str = "trap '' TERM; echo ready; while :; do sleep 0.1; done";

fn start(client: &mut Client, script: &str) -> Job {
    let request =
        StartJobRequest { command: "sh".into(), args: vec!["-c".into(), script.into()], ..Default::default() };
    client.unary(path::START_JOB, &request, TIMEOUT).unwrap_or_else(|e| panic!("start {script:?}: {e:?}"))
}

fn status_of<T: std::fmt::Debug>(result: Result<T, CallError>) -> Status {
    match result {
        Err(CallError::Status(status)) => status,
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// Follows the job's output, on a connection of its own, until `expected` has arrived.
fn follow_until(server: &Server, identity: &str, id: &str, expected: &[u8]) -> (Client, ResponseStream, Vec<u8>) {
    let mut client = server.client(identity);
    let request = StreamOutputRequest { job_id: id.into(), offset: 0, follow: true };
    let mut stream = client.start_call(path::STREAM_OUTPUT, &request, TIMEOUT).unwrap();
    let mut bytes = Vec::new();
    while !bytes.starts_with(expected) {
        match client.next_message::<OutputChunk>(&mut stream).unwrap() {
            Some(chunk) => bytes.extend(chunk.data),
            None => panic!("output ended before {expected:?}: {:?}", String::from_utf8_lossy(&bytes)),
        }
    }
    (client, stream, bytes)
}

/// Waits for `expected` at the start of the job's output (so e.g. a trap is known to be in place).
fn await_output(server: &Server, identity: &str, id: &str, expected: &[u8]) {
    follow_until(server, identity, id, expected);
}

/// A follower that is in place once `expected` has arrived, then reads on a thread to the end of the stream;
/// yields the whole output or the stream's error. Unlike a WaitJob, its arrival at the server is observable.
fn follow_in_background(server: &Server, id: &str, expected: &[u8]) -> JoinHandle<Result<Vec<u8>, CallError>> {
    let (mut client, mut stream, mut bytes) = follow_until(server, "alice", id, expected);
    std::thread::spawn(move || {
        while let Some(chunk) = client.next_message::<OutputChunk>(&mut stream)? {
            bytes.extend(chunk.data);
        }
        Ok(bytes)
    })
}

/// Waits until the server's log has a line containing `needle`.
fn await_log(server: &Server, needle: &str) {
    assert!(
        eventually(Duration::from_secs(10), || server.log_text().contains(needle)),
        "no {needle:?} in the server log:\n{}",
        server.log_text()
    );
}

/// Live processes in process group `pgid` (a job's pid is its group's id: each job gets its own session).
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        // After the command: state, ppid, pgrp.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && process_alive(pid) {
            members.push(pid);
        }
    }
    members
}

/// Asserts that nothing is left in process group `pgid`. The server reaps only a job's main process: a
/// grandchild killed with it may still be exiting (PF_EXITING), so it gets a moment.
fn assert_group_ends(pgid: i32) {
    let ended = eventually(Duration::from_secs(2), || group_members(pgid).is_empty());
    let left: Vec<String> = group_members(pgid)
        .into_iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
        .collect();
    assert!(ended, "job processes outlived the server: {left:?}");
}

/// SIGKILLs these process groups when dropped, so a failed test leaves no job running.
struct KillGroupsOnDrop(Vec<i32>);

impl Drop for KillGroupsOnDrop {
    fn drop(&mut self) {
        for &pgid in &self.0 {
            if pgid > 1 && !group_members(pgid).is_empty() {
                // `--` is essential: procps-ng's kill reads `kill -9 -1234` as `kill -9 -1` (every process).
                let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{pgid}")]).status();
            }
        }
    }
}

/// A server with a 30 s shutdown grace, running a job of alice's that ignores SIGTERM, which alice follows from
/// a background thread.
struct StubbornJob {
    server: Server,
    alice: Client,
    job: Job,
    _cleanup: KillGroupsOnDrop,
    follower: JoinHandle<Result<Vec<u8>, CallError>>,
}

impl StubbornJob {
    fn start(pki: &Pki) -> StubbornJob {
        let server = Server::start(pki, &["--shutdown-grace", "30s"]);
        let mut alice = server.client("alice");
        let job = start(&mut alice, STUBBORN);
        let _cleanup = KillGroupsOnDrop(vec![job.pid]);
        let follower = follow_in_background(&server, &job.id, b"ready\n");
        StubbornJob { server, alice, job, _cleanup, follower }
    }
}

#[test]
fn a_second_sigterm_skips_the_shutdown_grace() {
    let pki = Pki::new();
    let StubbornJob { mut server, alice, job, _cleanup, follower } = StubbornJob::start(&pki);
    // An idle connection would hold the final close until the drain timer (h2 waits for its PING ack).
    drop(alice);

    util::unsafe_kill(server.pid(), SIGTERM);
    // Signals do not queue: the first must have been read before the second is sent.
    await_log(&server, "runnel server shutting down");
    let signalled = Instant::now();
    // Within the 30 s grace the job, which ignores SIGTERM, is still running and the server waits for it.
    std::thread::sleep(Duration::from_millis(500));
    assert!(process_alive(job.pid), "the job ended on SIGTERM although it ignores it");
    assert!(server.child.as_mut().unwrap().try_wait().unwrap().is_none(), "server exited within the grace period");

    let status = server.stop_with(SIGTERM, Duration::from_secs(10));
    let exited = signalled.elapsed();
    eprintln!("server exited {exited:?} after the first SIGTERM (grace 30 s)");
    assert_eq!(status.code(), Some(0), "server exit: {status:?}\n{}", server.log_text());
    assert!(server.log_text().contains("again: killing every job now"), "{}", server.log_text());
    assert_group_ends(job.pid);
    util::assert_only_history_left(&server.state_dir);
    // Every job call is refused during shutdown, so only the log tells how the job ended.
    let ended = format!("job {} ended: Signaled({SIGKILL}), ServerShutdown", job.id);
    assert!(server.log_text().contains(&ended), "no {ended:?} in the log:\n{}", server.log_text());
    // The follower saw the whole output and a clean end.
    assert_eq!(follower.join().unwrap().expect("follower during shutdown"), b"ready\n");
}

#[test]
fn while_jobs_stop_new_calls_are_unavailable_and_health_says_not_serving() {
    let pki = Pki::new();
    let StubbornJob { mut server, mut alice, job, _cleanup, follower } = StubbornJob::start(&pki);
    let mut watcher = server.client("bob");
    let mut watch = watcher.start_call(path::HEALTH_WATCH, &HealthCheckRequest::default(), TIMEOUT).unwrap();
    let first: HealthCheckResponse = watcher.next_message(&mut watch).unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    util::unsafe_kill(server.pid(), SIGINT);
    await_log(&server, "runnel server shutting down");

    // On a connection opened before the signal: every job call is UNAVAILABLE, health checks answer NOT_SERVING.
    let status = status_of(alice.unary::<_, Job>(
        path::START_JOB,
        &StartJobRequest { command: "true".into(), ..Default::default() },
        TIMEOUT,
    ));
    assert_eq!(status.code, Code::Unavailable, "StartJob during shutdown: {status:?}");
    assert!(status.message.contains("shutting down"), "{status:?}");
    let status = status_of(alice.unary::<_, Job>(path::GET_JOB, &GetJobRequest { job_id: job.id.clone() }, TIMEOUT));
    assert_eq!(status.code, Code::Unavailable, "GetJob during shutdown: {status:?}");
    let status = status_of(alice.unary::<_, ListJobsResponse>(path::LIST_JOBS, &ListJobsRequest::default(), TIMEOUT));
    assert_eq!(status.code, Code::Unavailable, "ListJobs during shutdown: {status:?}");
    let health: HealthCheckResponse =
        alice.unary(path::HEALTH_CHECK, &HealthCheckRequest::default(), TIMEOUT).expect("Health.Check during shutdown");
    assert_eq!(health.status, ServingStatus::NotServing as i32);
    // A watcher is told, and its stream ends with OK.
    let changed: HealthCheckResponse = watcher.next_message(&mut watch).unwrap().expect("a NOT_SERVING update");
    assert_eq!(changed.status, ServingStatus::NotServing as i32);
    assert!(watcher.next_message::<HealthCheckResponse>(&mut watch).unwrap().is_none(), "Watch did not end");
    // The listener is closed: new connections are refused outright.
    let refused = TcpStream::connect(&server.address).map(|_| ()).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    // The job is still in its grace period.
    assert!(process_alive(job.pid), "the job ended on SIGTERM although it ignores it");
    drop((alice, watcher));

    let status = server.stop_with(SIGINT, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "server exit: {status:?}\n{}", server.log_text());
    assert_group_ends(job.pid);
    // A call in progress before the signal was not cut off.
    assert_eq!(follower.join().unwrap().expect("follower during shutdown"), b"ready\n");
}

#[test]
fn a_stalled_follower_delays_shutdown_by_the_drain_limit_only() {
    let pki = Pki::new();
    let mut server = Server::start(&pki, &["--shutdown-grace", "1s"]);
    let mut alice = server.client("alice");
    // Far more output than socket buffers and h2 windows hold, then a wait that SIGTERM ends.
    let job = start(&mut alice, "head -c 67108864 /dev/zero; echo done >&2; exec sleep 1000");
    let _cleanup = KillGroupsOnDrop(vec![job.pid]);
    drop(alice);
    // The follower opens a follow from the start and never reads again.
    let mut stalled = server.client("alice");
    let request = StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true };
    let _stream = stalled.start_call(path::STREAM_OUTPUT, &request, TIMEOUT).unwrap();
    let mut admin = server.client("admin");
    assert!(
        eventually(Duration::from_secs(30), || {
            let got: Job = admin.unary(path::GET_JOB, &GetJobRequest { job_id: job.id.clone() }, TIMEOUT).unwrap();
            got.output_bytes >= (64 << 20) + 5
        }),
        "the job did not write its output"
    );
    drop(admin);

    let signalled = Instant::now();
    let status = server.stop_with(SIGTERM, Duration::from_secs(30));
    let exited = signalled.elapsed();
    eprintln!("server exited {exited:?} after SIGTERM with a stalled follower");
    assert_eq!(status.code(), Some(0), "server exit: {status:?}\n{}", server.log_text());
    // The job ends at once (sleep takes SIGTERM); the follower gets SHUTDOWN_DRAIN to take the rest, then its
    // connection gets GOAWAY and at most another SHUTDOWN_DRAIN to close.
    assert!(exited >= SHUTDOWN_DRAIN, "server did not wait for the follower: exited after {exited:?}");
    assert!(exited < 2 * SHUTDOWN_DRAIN + Duration::from_secs(8), "shutdown took {exited:?}");
    assert!(!process_alive(job.pid));
    util::assert_only_history_left(&server.state_dir);
}

#[test]
fn a_restart_after_a_crash_takes_over_the_state_dir_clears_what_jobs_left_and_keeps_their_history() {
    let pki = Pki::new();
    let mut crashed = Server::start(&pki, &[]);
    let state_dir = crashed.state_dir.clone();
    let mut alice = crashed.client("alice");
    // One job goes silent after its output, one keeps writing.
    let silent = start(&mut alice, "echo hello; echo kept > left-behind.txt; exec sleep 1000");
    let chatty = start(&mut alice, "while :; do echo tick; sleep 0.1; done");
    let _cleanup = KillGroupsOnDrop(vec![silent.pid, chatty.pid]);
    await_output(&crashed, "alice", &silent.id, b"hello\n");
    await_output(&crashed, "alice", &chatty.id, b"tick\n");
    let history = state_dir.join("jobs");
    let work = state_dir.join("work");
    assert!(eventually(Duration::from_secs(5), || work.join(&silent.id).join("left-behind.txt").exists()));
    assert!(std::fs::read_dir(history.join(&silent.id)).unwrap().count() > 1, "no record and output on disk");
    drop(alice);

    let status = crashed.stop_with(SIGKILL, Duration::from_secs(10));
    assert_eq!(status.signal(), Some(SIGKILL));
    // Every job dies with its server (the parent-death signal on its init ends its whole PID namespace).
    for job in [&chatty, &silent] {
        assert!(
            eventually(Duration::from_secs(5), || !process_alive(job.pid) && group_members(job.pid).is_empty()),
            "job {} outlived its server",
            job.id
        );
    }

    // The lock died with the old process (no job inherited it), so a new server starts and clears what the jobs
    // left; their history stays, each job lost with its server.
    let mut restarted = Server::start_on(&pki, Some(&state_dir), &[]);
    let lock = std::fs::read_to_string(state_dir.join("runnel.lock")).unwrap();
    assert_eq!(lock.lines().next(), Some(restarted.pid().to_string().as_str()));
    let log = restarted.log_text();
    assert!(log.contains(&format!("removing {} left by a previous server", work.display())), "{log}");
    // What is there is only what the new server made ahead of its own starts.
    let (_, beside) = util::beside_dirs_made_ahead(&state_dir);
    let left: Vec<_> = beside.iter().filter(|name| name.starts_with("work/")).collect();
    assert!(left.is_empty(), "{} still holds {left:?}", work.display());
    let mut admin = restarted.client("admin");
    let listed: ListJobsResponse = admin.unary(path::LIST_JOBS, &ListJobsRequest::default(), TIMEOUT).unwrap();
    let ends: Vec<(String, i32)> = listed.jobs.iter().map(|j| (j.id.clone(), j.end_reason)).collect();
    let lost = runnel::proto::EndReason::ServerLost as i32;
    assert_eq!(ends, [(silent.id.clone(), lost), (chatty.id.clone(), lost)]);
    let (_, _, replayed) = follow_until(&restarted, "admin", &silent.id, b"hello\n");
    assert_eq!(replayed, b"hello\n", "its output up to the crash");
    let job = start(&mut admin, "echo fresh");
    await_output(&restarted, "admin", &job.id, b"fresh\n");
    drop(admin);

    let status = restarted.stop_with(SIGTERM, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "server exit: {status:?}\n{}", restarted.log_text());
    util::assert_only_history_left(&state_dir);
}

/// Reads the raw socket on a thread until the server closes it; yields how long after `opened` that was.
fn time_until_closed(mut socket: TcpStream, opened: Instant, what: &'static str) -> JoinHandle<Duration> {
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf) {
                Ok(0) => return opened.elapsed(),
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return opened.elapsed(),
                Err(err) => panic!("{what}: not closed after {:?}: {err}", opened.elapsed()),
            }
        }
    })
}

#[test]
fn connections_that_stall_in_a_handshake_are_closed_after_the_handshake_timeout() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);

    // One connection sends nothing at all.
    let silent = TcpStream::connect(&server.address).unwrap();
    let silent_closed = time_until_closed(silent, Instant::now(), "connection that sent nothing");
    // One completes the TLS handshake with a valid certificate, then never sends the HTTP/2 preface.
    let settings = server.settings("alice");
    let config = tls::client_config(&settings.cert, &settings.key, settings.ca.as_deref(), None).unwrap();
    let mut connection = rustls::ClientConnection::new(config, tls::server_name("localhost").unwrap()).unwrap();
    let mut tls_only = TcpStream::connect(&server.address).unwrap();
    let tls_opened = Instant::now();
    tls_only.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut tls_only).expect("TLS handshake");
    }
    // The client's certificate and Finished go out with the last flight.
    while connection.wants_write() {
        connection.write_tls(&mut tls_only).unwrap();
    }
    let tls_closed = time_until_closed(tls_only, tls_opened, "connection without an HTTP/2 preface");

    // Meanwhile the server serves a normal client.
    let mut alice = server.client("alice");
    let job = start(&mut alice, "echo served");
    let ended: Job =
        alice.unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id.clone() }, Some(Duration::from_secs(30))).unwrap();
    assert_eq!(ended.exit_code, Some(0));

    let (silent_closed, tls_closed) = (silent_closed.join().unwrap(), tls_closed.join().unwrap());
    eprintln!("closed after {silent_closed:?} (no bytes) and {tls_closed:?} (no HTTP/2 preface)");
    for closed in [silent_closed, tls_closed] {
        // The deadline counts from the accept, which follows the connect.
        assert!(closed >= HANDSHAKE_TIMEOUT - Duration::from_millis(50), "closed early, after {closed:?}");
        assert!(closed < HANDSHAKE_TIMEOUT + Duration::from_secs(10), "closed late, after {closed:?}");
    }
    assert_eq!(server.log_text().matches("closed: no handshake within").count(), 2, "{}", server.log_text());
    // And the normal connection is still usable.
    let listed: ListJobsResponse = alice.unary(path::LIST_JOBS, &ListJobsRequest::default(), TIMEOUT).unwrap();
    assert_eq!(listed.jobs.len(), 1);
}

#[test]
fn connections_to_a_loopback_listener_use_reno_which_does_not_pace() {
    let server = Server::start(&Pki::new(), &[]);
    let _client = TcpStream::connect(&server.address).unwrap();
    let port = server.address.rsplit(':').next().unwrap();
    // `ss` (iproute2) prints each socket's details, its congestion control among them, on an indented line.
    let congestion_controls = || {
        let ss = Command::new("ss")
            .args(["-tinH", "state", "established", &format!("( sport = :{port} )")])
            .output()
            .expect("ss (iproute2) runs");
        assert!(ss.status.success(), "ss: {}", String::from_utf8_lossy(&ss.stderr));
        String::from_utf8(ss.stdout)
            .unwrap()
            .lines()
            .filter(|line| line.starts_with(char::is_whitespace))
            .map(|info| {
                let words: Vec<&str> = info.split_whitespace().collect();
                ["reno", "bbr", "cubic"].into_iter().find(|name| words.contains(name)).unwrap_or("other").to_string()
            })
            .collect::<Vec<_>>()
    };
    let mut seen = Vec::new();
    assert!(eventually(Duration::from_secs(5), || {
        seen = congestion_controls();
        !seen.is_empty()
    }));
    assert_eq!(seen, ["reno"], "the server's side of the one connection");
}

#[test]
fn run_reports_the_jobs_end_when_the_server_shuts_down_under_it() {
    use std::io::BufRead;
    let pki = Pki::new();
    let mut server = Server::start(&pki, &[]);
    let mut run = server
        .cli("alice")
        .args(["run", "--", "sh", "-c", "echo started; exec sleep 1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufReader::new(run.stdout.take().unwrap()).read_line(&mut first_line).unwrap();
    assert_eq!(first_line, "started\n");
    let status = server.stop_with(SIGTERM, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    let output = run.wait_with_output().unwrap();
    // The WaitJob `run` sent before streaming is answered although the server refuses new calls by then.
    assert_eq!(output.status.code(), Some(128 + SIGTERM), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn the_janitor_removes_an_evicted_jobs_files_and_dies_with_the_server() {
    let pki = Pki::new();
    let mut server = Server::start(&pki, &["--max-jobs", "1"]);
    let trash = server.state_dir.join("trash");
    let trash_text = trash.to_str().unwrap().to_string();
    let janitors = || util::pids_where(|cmdline| cmdline.contains(" __janitor ") && cmdline.contains(&trash_text));
    assert_eq!(janitors().len(), 1, "one janitor per server: {:?}", janitors());
    let janitor = janitors()[0];

    // A job leaves output and a working directory full of files; the next start evicts it.
    let mut client = server.client("alice");
    let first = start(&mut client, "mkdir -p a/b && for i in $(seq 200); do echo $i > a/b/$i; done; echo done");
    let _: Job = client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: first.id.clone() }, TIMEOUT).unwrap();
    let (work, output) = (server.state_dir.join("work").join(&first.id), server.state_dir.join("jobs").join(&first.id));
    assert!(work.join("a/b/200").exists() && output.exists());
    let _second = start(&mut client, "true");
    assert!(!work.exists() && !output.exists(), "the evicted job's files are moved out at once");
    let trash_empty = || std::fs::read_dir(&trash).map(|d| d.count() == 0).unwrap_or(false);
    assert!(eventually(Duration::from_secs(10), trash_empty), "the janitor left the trash full");
    assert!(server.log_text().contains(&format!("janitor started: pid {janitor}")), "{}", server.log_text());

    server.stop_with(SIGKILL, Duration::from_secs(10));
    assert!(eventually(Duration::from_secs(5), || !process_alive(janitor)), "the janitor outlived the server");
}

#[test]
fn each_helper_leads_a_session_of_its_own() {
    // A signal to the server's group is not a helper's, and where the kernel shares CPU out by session
    // (autogroup), a helper is not one entity with the loop (`sys::spawn_helper`).
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let helpers = |name: &str| {
        util::pids_where(|cmdline| cmdline.contains(name))
            .into_iter()
            .filter(|&pid| util::parent_of(pid) == Some(server.pid()))
            .collect::<Vec<_>>()
    };
    for name in [" __janitor ", " __segments ", " __writer", " __shells"] {
        // A shell the shell helper is cloning is the server's child too (`CLONE_PARENT`), with the helper's
        // command line until it execs: listed once the pool is full, the helper is the one left.
        let mut found = helpers(name);
        eventually(Duration::from_secs(5), || {
            found = helpers(name);
            found.len() == 1
        });
        assert_eq!(found.len(), 1, "one{name}helper of server {}: {found:?}", server.pid());
        let helper = found[0];
        assert_eq!(util::session_of(helper), Some(helper), "{name} leads no session of its own");
        // Work ahead of time yields to the loop: its session gets the least CPU (a kernel with autogroup).
        if let (" __shells", Ok(autogroup)) = (name, std::fs::read_to_string(format!("/proc/{helper}/autogroup"))) {
            assert!(autogroup.trim_end().ends_with("nice 19"), "the shell helper's session: {autogroup}");
        }
    }
}

#[test]
fn a_server_configured_by_its_environment_serves_and_a_misspelt_variable_stops_it() {
    let pki = Pki::new();
    let server = Server::start_configured_by_environment(&pki);
    let mut client = server.client("alice");
    let job = start(&mut client, "echo from-env");
    let ended: Job = client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id }, None).unwrap();
    assert_eq!(ended.exit_code, Some(0));
    // RUNNEL_SERVER_ADMIN=admin made admin an admin: it sees alice's job.
    let listed: ListJobsResponse =
        server.client("admin").unary(path::LIST_JOBS, &ListJobsRequest::default(), None).unwrap();
    assert_eq!(listed.jobs.len(), 1);

    let output = Command::new(util::BIN)
        .args(["server", "--help"])
        .env("RUNNEL_SERVER_CLIENT_CERT_PINZ", "sha256:00")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("RUNNEL_SERVER_CLIENT_CERT_PINZ names no server flag"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn every_log_line_begins_with_its_utc_time_and_level_and_json_lines_are_objects() {
    let pki = Pki::new();
    let looks_timed = |line: &str| {
        let (time, rest) = line.split_at(line.len().min(24));
        let digits = time.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
        digits && ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].iter().any(|l| rest[1..].starts_with(l))
    };
    let mut text = Server::start(&pki, &[]);
    let log = text.log_text();
    assert_eq!(log.matches("runnel server listening on").count(), 1, "{log}");
    assert!(log.lines().all(looks_timed), "{log}");

    // Text lines are one line each whatever a client sent: a command name cannot forge a line of its own.
    let forged = "x\n2026-01-01T00:00:00.000Z INFO  rpc peer=1.2.3.4:5 identity=\"admin\" method=RemoveJob";
    let failed = text.client("alice").unary::<_, Job>(
        path::START_JOB,
        &StartJobRequest { command: forged.into(), ..Default::default() },
        None,
    );
    assert_eq!(status_of(failed).code, Code::NotFound);
    let log = text.log_text();
    assert!(
        log.contains("x\\n2026-01-01T00:00:00.000Z INFO  rpc peer=1.2.3.4:5"),
        "the name is in the log, escaped:\n{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01")), "a forged line:\n{log}");
    assert!(log.lines().all(looks_timed), "{log}");
    // Shutdown too, the helpers' ends included (the network-namespace helper once wrote a bare error line).
    assert!(text.stop_with(SIGTERM, Duration::from_secs(20)).success());
    let log = text.log_text();
    assert!(log.contains("server stopped") && log.lines().all(looks_timed), "{log}");

    // RUST_LOG=warn quiets the audit, not the line scripts wait for (the helper would not find the address).
    let quiet = Server::start_with_env(&pki, &[], &[("RUST_LOG", "warn")]);
    assert!(
        !quiet.log_text().contains(" INFO ")
            || quiet.log_text().lines().filter(|l| l.contains(" INFO ")).all(|l| l.contains("listening on"))
    );

    let json = Server::start(&pki, &["--log-format", "json"]);
    let _ = json.client("alice");
    let log = json.log_text();
    assert_eq!(log.matches("runnel server listening on").count(), 1, "{log}");
    for line in log.lines() {
        let time = line.strip_prefix("{\"time\":\"").and_then(|rest| rest.get(..24));
        assert!(time.is_some_and(|time| looks_timed(&format!("{time} INFO"))), "{line}");
        assert!(
            line.contains("\",\"level\":\"") && line.contains(",\"message\":\"") && line.ends_with("\"}"),
            "{line}"
        );
    }
}

#[test]
fn every_call_leaves_one_audit_line_with_who_what_how_it_ended_and_how_long() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let job = start(&mut alice, "echo audited");
    let _: Job = alice.unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id.clone() }, None).unwrap();
    let mut bob = server.client("bob");
    let refused = bob.unary::<_, Job>(path::GET_JOB, &GetJobRequest { job_id: job.id.clone() }, None);
    assert_eq!(status_of(refused).code, Code::NotFound);
    let bogus = bob.unary::<_, Job>(path::GET_JOB, &GetJobRequest { job_id: "x\"y".into() }, None);
    assert_eq!(status_of(bogus).code, Code::InvalidArgument);
    // A follower that goes away before its call ends: the line says so.
    let sleeper = start(&mut alice, "sleep 30");
    let mut follower = server.client("alice");
    let request = StreamOutputRequest { job_id: sleeper.id.clone(), offset: 0, follow: true };
    let stream = follower.start_call(path::STREAM_OUTPUT, &request, None).unwrap();
    drop(stream);
    drop(follower);

    let audit_lines =
        |log: &str| log.lines().filter(|l| l.contains(" rpc peer=127.0.0.1:")).map(String::from).collect::<Vec<_>>();
    assert!(eventually(Duration::from_secs(5), || audit_lines(&server.log_text()).len() >= 6), "{}", server.log_text());
    let lines = audit_lines(&server.log_text());
    let find = |needles: &[&str]| {
        lines
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no {needles:?} in {lines:#?}"))
    };
    let started = find(&["identity=\"alice\" method=StartJob", &format!("job={} status=OK", job.id)]);
    assert!(started.contains(" INFO ") && started.contains("duration_ms="), "{started}");
    find(&["identity=\"alice\" method=WaitJob", &format!("job={} status=OK", job.id)]);
    find(&["identity=\"bob\" method=GetJob", &format!("job={} status=NOT_FOUND", job.id)]);
    find(&["identity=\"bob\" method=GetJob job=\"x\\\"y\" status=INVALID_ARGUMENT"]);
    find(&["identity=\"alice\" method=StreamOutput", &format!("job={} status=CANCELLED", sleeper.id)]);
}

#[test]
fn the_systemd_unit_and_its_environment_file_are_valid() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let scratch = util::ScratchDir::new("unit");
    // The unit as installed, with this build's binary and the example environment file where it points.
    let unit = std::fs::read_to_string(deploy.join("runnel.service")).unwrap();
    let env_file = deploy.join("runnel.env");
    let unit =
        unit.replace("/usr/local/bin/runnel", util::BIN).replace("/etc/runnel/runnel.env", env_file.to_str().unwrap());
    let path = scratch.join("runnel.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    // It exits 0 even for unknown keys; any word from it is a fault in the unit.
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify:\n{complaints}");

    // Every RUNNEL_SERVER_* variable the deployment files set (the environment file, the Containerfile, the
    // Kubernetes and Nomad examples) names a server flag: the server refuses any other.
    let mut files = vec![env_file, deploy.join("runnel.service"), deploy.join("Containerfile")];
    files.extend(["kubernetes/daemonset.yaml", "nomad/runnel.nomad.hcl"].map(|f| deploy.join(f)));
    let mut names = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (at, _) in text.match_indices("RUNNEL_SERVER_") {
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit()).collect();
            // `RUNNEL_SERVER_*` and `RUNNEL_SERVER_FLAG_NAME` in comments speak of them all.
            if name.len() > "RUNNEL_SERVER_".len() && name != "RUNNEL_SERVER_FLAG_NAME" {
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 8, "{names:?}");
    let help = Command::new(util::BIN)
        .args(["server", "--help"])
        .envs(names.iter().map(|name| (name.as_str(), "x")))
        .output()
        .unwrap();
    assert!(help.status.success(), "{names:?}: {}", String::from_utf8_lossy(&help.stderr));
}
