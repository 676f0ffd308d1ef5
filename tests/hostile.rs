//! Hostile clients against the real binary: each attack bounded in count and time, each asserting what must
//! still hold for everyone else. Functional assertions with generous bounds; `make bench` has the figures.

mod util;

use std::net::{Ipv4Addr, TcpStream};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use runnel::client::{CallError, Client};
use runnel::grpc::{path, Code, Status};
use runnel::proto::health::{HealthCheckRequest, HealthCheckResponse};
use runnel::proto::{EndReason, GetJobRequest, Job, OutputChunk, StartJobRequest, StopJobRequest, StreamOutputRequest};
use util::{eventually, silent_connection, Pki, Server};

/// Held by the test that counts on shells made ahead of time, which the shell helper makes only when a CPU is
/// idle (`SCHED_IDLE`), and by the one that keeps both CPUs busy (a flood, hundreds of starts), so that the two
/// never run side by side.
static IDLE_CPU_NEEDED: Mutex<()> = Mutex::new(());

fn hold_idle_cpu_lock() -> std::sync::MutexGuard<'static, ()> {
    IDLE_CPU_NEEDED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A StartJob request for `sh -c script`.
fn shell(script: &str) -> StartJobRequest {
    StartJobRequest { command: "sh".into(), args: vec!["-c".into(), script.into()], ..Default::default() }
}

/// Starts `sh -c script` on `client`.
fn start(client: &mut Client, script: &str) -> Job {
    client.unary(path::START_JOB, &shell(script), Some(Duration::from_secs(30))).unwrap()
}

/// A health check over a new connection, as a client arriving now would make it.
fn health_check_from_a_new_client(server: &Server) -> Result<(), Status> {
    let mut client = Client::connect(&server.settings("alice"))?;
    let _: HealthCheckResponse = client
        .unary(path::HEALTH_CHECK, &HealthCheckRequest::default(), Some(Duration::from_secs(5)))
        .map_err(status)?;
    Ok(())
}

fn status(err: CallError) -> Status {
    match err {
        CallError::Status(status) => status,
        CallError::Interrupted => panic!("no interrupt was asked for"),
    }
}

/// While connections from `addresses` keep arriving and saying nothing, `rounds` new clients each connect and
/// are served.
fn clients_are_served_through_a_silent_flood(addresses: &[Ipv4Addr], per_address: usize, rounds: usize) {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut silent = Vec::new();
    for from in addresses {
        for _ in 0..per_address {
            silent.push(silent_connection(*from, &server.address));
        }
    }
    for round in 0..rounds {
        // The flood goes on between clients.
        for from in addresses {
            silent.push(silent_connection(*from, &server.address));
        }
        let begun = Instant::now();
        health_check_from_a_new_client(&server).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(begun.elapsed() < Duration::from_secs(5), "round {round} took {:?}", begun.elapsed());
    }
}

#[test]
fn silent_connections_from_many_addresses_leave_room_for_a_client() {
    let addresses: Vec<Ipv4Addr> = (2..10).map(|last| Ipv4Addr::new(127, 0, 0, last)).collect();
    clients_are_served_through_a_silent_flood(&addresses, 32, 20);
}

#[test]
fn silent_connections_from_the_clients_own_address_leave_room_for_it() {
    clients_are_served_through_a_silent_flood(&[Ipv4Addr::LOCALHOST], 200, 20);
}

#[test]
fn forty_concurrent_command_line_calls_from_one_address_all_succeed() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    // The same address also holds unfinished handshakes (a neighbour behind the same NAT, say).
    let _silent: Vec<TcpStream> = (0..16).map(|_| silent_connection(Ipv4Addr::LOCALHOST, &server.address)).collect();
    let children: Vec<_> = (0..40)
        .map(|_| server.cli("alice").arg("list").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let mut failures = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        if !output.status.success() {
            failures.push(String::from_utf8_lossy(&output.stderr).into_owned());
        }
    }
    assert!(failures.is_empty(), "{} of 40 failed: {failures:?}", failures.len());
}

#[test]
fn an_identity_over_its_connection_cap_is_told_which_flag_and_others_are_not() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--max-connections-per-client", "2", "--max-connections", "3"]);
    let check = |client: &mut Client| -> Result<(), Status> {
        let _: HealthCheckResponse =
            client.unary(path::HEALTH_CHECK, &HealthCheckRequest::default(), None).map_err(status)?;
        Ok(())
    };
    let mut held = vec![server.client("alice"), server.client("alice")];
    for client in &mut held {
        check(client).unwrap();
    }
    let refused = check(&mut server.client("alice")).unwrap_err();
    assert_eq!(refused.code, Code::ResourceExhausted, "{refused}");
    assert!(refused.message.contains("alice already holds 2 connections"), "{refused}");
    assert!(refused.message.contains("--max-connections-per-client"), "{refused}");

    // Another identity is not held back by alice's cap, until the total is reached.
    let mut bob = server.client("bob");
    check(&mut bob).unwrap();
    let refused = check(&mut server.client("admin")).unwrap_err();
    assert_eq!(refused.code, Code::ResourceExhausted, "{refused}");
    assert!(refused.message.contains("(--max-connections)"), "{refused}");

    // A closed connection makes room again.
    drop(held.pop());
    assert!(
        eventually(Duration::from_secs(5), || check(&mut server.client("alice")).is_ok()),
        "alice could not connect again after closing a connection"
    );
}

#[test]
fn error_messages_quote_little_of_a_large_input() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    let huge = "x".repeat(1 << 20);
    let refused = client.unary::<_, Job>(path::GET_JOB, &GetJobRequest { job_id: huge.clone() }, None);
    let refused = status(refused.unwrap_err());
    assert_eq!(refused.code, Code::InvalidArgument);
    assert!(refused.message.len() < 1024, "{} bytes of message", refused.message.len());
    assert!(refused.message.contains("(1048576 bytes)"), "{}", &refused.message[..200]);

    // A request over what a job may keep is refused naming the limit, and not echoed.
    let start = StartJobRequest { command: huge, ..Default::default() };
    let refused = status(client.unary::<_, Job>(path::START_JOB, &start, None).unwrap_err());
    assert_eq!(refused.code, Code::InvalidArgument);
    assert!(refused.message.contains("(--max-job-request)"), "{refused}");
    assert!(refused.message.len() < 1024, "{} bytes of message", refused.message.len());
    // Under it, a long command that does not exist: named, clipped.
    let start = StartJobRequest { command: "y".repeat(100_000), ..Default::default() };
    let refused = status(client.unary::<_, Job>(path::START_JOB, &start, None).unwrap_err());
    assert!(refused.message.len() < 1024, "{}: {} bytes of message", refused.code.name(), refused.message.len());
    // The connection goes on serving.
    let _: HealthCheckResponse = client.unary(path::HEALTH_CHECK, &HealthCheckRequest::default(), None).unwrap();
}

#[test]
fn isolated_starts_that_hang_freeze_nobody_and_fail_at_the_start_deadline() {
    let _idle_cpu = hold_idle_cpu_lock();
    hung_starts_freeze_nobody(&[]);
}

#[test]
fn starts_without_isolation_that_hang_freeze_nobody_and_fail_at_the_start_deadline() {
    hung_starts_freeze_nobody(&["--no-isolation"]);
}

/// Three starts whose working directory is on a hung file system (the job's init, or the forked child without
/// isolation, blocks in `chdir` for good), on a server started with `flags`.
fn hung_starts_freeze_nobody(flags: &[&str]) {
    let pki = Pki::new();
    let scratch = util::ScratchDir::new("hung-fs");
    let hung = scratch.join("hung");
    std::fs::create_dir(&hung).unwrap();
    let hung = hung.to_str().unwrap().to_string();
    // A FUSE mount nobody serves, in a mount namespace of the server's own: every access to it waits (killably)
    // for an answer that never comes. The server holds the device open (descriptor 3), so the mount stays hung
    // rather than failing.
    let script = format!(
        r#"exec 3<>/dev/fuse && mount -i -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0,allow_other runnel-hung {hung} \
           && exec "$@""#
    );
    let server = Server::start_after(&pki, &["unshare", "-m", "--propagation", "private"], &script, flags);
    let mut probe = server.client("alice");
    let started = probe
        .unary::<_, Job>(
            path::START_JOB,
            &StartJobRequest { command: "sleep".into(), args: vec!["60".into()], ..Default::default() },
            None,
        )
        .unwrap();

    let begun = Instant::now();
    // Each from its own connection, as separate clients would.
    let hung_starts: Vec<_> = (0..3)
        .map(|_| {
            let (settings, dir) = (server.settings("bob"), hung.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&settings).unwrap();
                let start = StartJobRequest {
                    command: "true".into(),
                    working_dir: format!("{dir}/work"),
                    ..Default::default()
                };
                client.unary::<_, Job>(path::START_JOB, &start, Some(Duration::from_secs(30))).map_err(status)
            })
        })
        .collect();
    if flags.is_empty() {
        later_starts_take_shells_while_others_hang(&server);
    }
    // While the three starts hang, everyone else is served: the loop never waits for a start.
    let mut probes = 0;
    while Instant::now() < begun + Duration::from_secs(6) {
        let asked = Instant::now();
        let job: Job = probe.unary(path::GET_JOB, &GetJobRequest { job_id: started.id.clone() }, None).unwrap();
        assert_eq!(job.id, started.id);
        assert!(asked.elapsed() < Duration::from_secs(1), "a GetJob took {:?} while inits hung", asked.elapsed());
        probes += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(probes > 20, "only {probes} probes in 6 s");

    // Each hung start fails at the init's deadline, saying why, and leaves nothing behind.
    for start in hung_starts {
        let refused = start.join().unwrap().unwrap_err();
        assert_eq!(refused.code, Code::DeadlineExceeded, "{refused}");
        assert!(refused.message.contains("did not start within 10 s"), "{refused}");
    }
    assert!(begun.elapsed() < Duration::from_secs(20), "the hung starts took {:?}", begun.elapsed());
    let mut bob = server.client("bob");
    let listed: runnel::proto::ListJobsResponse =
        bob.unary(path::LIST_JOBS, &runnel::proto::ListJobsRequest::default(), None).unwrap();
    assert!(listed.jobs.is_empty(), "a failed start left a job behind: {:?}", listed.jobs);
    let ran: Job =
        bob.unary(path::START_JOB, &StartJobRequest { command: "true".into(), ..Default::default() }, None).unwrap();
    assert!(!ran.id.is_empty());
    // Killed: nothing of the hung starts is left (an init's command line names the directory; without
    // isolation the child is a copy of the server, whose own pid is excluded).
    let hung_children = || {
        util::pids_where(|cmdline| cmdline.contains(&hung) || cmdline.starts_with(util::BIN))
            .into_iter()
            .filter(|&pid| pid != server.pid() && util::parent_of(pid) == Some(server.pid()))
            .filter(|&pid| !util::cmdline_of(pid).contains(" __janitor "))
            .collect::<Vec<_>>()
    };
    assert!(eventually(Duration::from_secs(5), || hung_children().is_empty()), "left: {:?}", hung_children());
}

/// Once three starts hang (their inits took shells and will not report for 10 s), twelve more isolated starts
/// each still take a shell made ahead of time: the pool is refilled while starts are pending, not only between
/// them (a start that forks its own init instead is one whose init is not a shell).
fn later_starts_take_shells_while_others_hang(server: &Server) {
    let launched = || server.log_text().matches("launched for bob").count();
    assert!(eventually(Duration::from_secs(5), || launched() == 3), "{}", server.log_text());
    let mut alice = server.client("alice");
    let mut forked = Vec::new();
    for _ in 0..12 {
        let request = StartJobRequest { command: "sleep".into(), args: vec!["60".into()], ..Default::default() };
        let job: Job = alice.unary(path::START_JOB, &request, None).unwrap();
        let log = server.log_text();
        let pid: i32 = log
            .lines()
            .find_map(|line| line.split_once(&format!("job {} launched for alice: pid ", job.id)))
            .and_then(|(_, rest)| rest.split(',').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no launch of {} in the log:\n{log}", job.id));
        if !util::cmdline_of(pid).contains("__init --shell") {
            forked.push(util::cmdline_of(pid));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!server.log_text().contains("did not start"), "the hung starts settled before the check was over");
    assert!(forked.is_empty(), "starts that found no shell ready: {forked:?}");
}

#[test]
fn an_identity_over_its_call_or_follower_cap_is_told_which_flag_and_others_are_not() {
    use runnel::proto::{OutputChunk, StreamOutputRequest, WaitJobRequest};
    let pki = Pki::new();
    let server = Server::start(&pki, &["--max-calls-per-client", "4", "--max-followers-per-client", "2"]);
    let mut alice = server.client("alice");
    let sleeper = StartJobRequest { command: "sleep".into(), args: vec!["60".into()], ..Default::default() };
    let job: Job = alice.unary(path::START_JOB, &sleeper, None).unwrap();
    let follow = StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true };
    // Two followers, each on its own connection: the cap counts across connections.
    let mut followers: Vec<_> = (0..2)
        .map(|_| {
            let mut client = server.client("alice");
            let stream = client.start_call(path::STREAM_OUTPUT, &follow, None).unwrap();
            (client, stream)
        })
        .collect();
    // A refusal comes as the response's headers (trailers only) or, later, as its end.
    let first_error = |client: &mut Client, request: &StreamOutputRequest, timeout| -> Status {
        let result = client
            .start_call(path::STREAM_OUTPUT, request, timeout)
            .and_then(|mut stream| client.next_message::<OutputChunk>(&mut stream));
        status(result.unwrap_err())
    };
    let refused = first_error(&mut server.client("alice"), &follow, None);
    assert_eq!(refused.code, Code::ResourceExhausted, "{refused}");
    assert!(refused.message.contains("alice already streams output or reflection on 2 calls"), "{refused}");
    assert!(refused.message.contains("(--max-followers-per-client)"), "{refused}");

    // Two WaitJobs make four calls in flight; a fifth call of any kind is refused, naming its flag.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (settings, wait) = (server.settings("alice"), WaitJobRequest { job_id: job.id.clone() });
            std::thread::spawn(move || Client::connect(&settings).unwrap().unary::<_, Job>(path::WAIT_JOB, &wait, None))
        })
        .collect();
    // The calls arrive in order on separate connections: wait until the server counts all four.
    std::thread::sleep(Duration::from_millis(300));
    let refused =
        status(alice.unary::<_, Job>(path::GET_JOB, &GetJobRequest { job_id: job.id.clone() }, None).unwrap_err());
    assert_eq!(refused.code, Code::ResourceExhausted, "{refused}");
    assert!(refused.message.contains("(--max-calls-per-client)"), "{refused}");
    // Another identity is not held back.
    let mut bob = server.client("bob");
    let _: HealthCheckResponse = bob.unary(path::HEALTH_CHECK, &HealthCheckRequest::default(), None).unwrap();

    // Ending a call gives its places back (a follower is a call too).
    followers.pop();
    assert!(
        eventually(Duration::from_secs(5), || alice
            .unary::<_, Job>(path::GET_JOB, &GetJobRequest { job_id: job.id.clone() }, None)
            .is_ok()),
        "alice's call count was not given back"
    );
    let ended = first_error(&mut server.client("alice"), &follow, Some(Duration::from_millis(500)));
    assert_eq!(ended.code, Code::DeadlineExceeded, "a follower is allowed again, until its deadline: {ended}");
    let stop = runnel::proto::StopJobRequest { job_id: job.id.clone(), grace_period: None };
    let _: Job = alice.unary(path::STOP_JOB, &stop, None).unwrap();
    for wait in waiting {
        assert_eq!(wait.join().unwrap().unwrap().id, job.id);
    }
}

#[test]
fn turned_away_connections_are_logged_with_peer_and_reason_but_a_flood_of_them_is_not() {
    use std::io::{Read, Write};
    let pki = Pki::new();
    // Info only: the debug lines of the TLS library would say the same things again.
    let server = Server::start_with_env(&pki, &[], &[("RUST_LOG", "info")]);
    let not_tls = || {
        let mut socket = TcpStream::connect(&server.address).unwrap();
        socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let local = socket.local_addr().unwrap();
        // The server closes it (after a TLS alert): wait for that, so every rejection is counted.
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = socket.read_to_end(&mut Vec::new());
        local
    };
    // A port check (connect, close) is nobody's rejection: not logged at info.
    drop(TcpStream::connect(&server.address).unwrap());
    let first = not_tls();
    let rejected = |log: &str| log.lines().filter(|l| l.contains("TLS handshake failed")).count();
    assert!(eventually(Duration::from_secs(5), || rejected(&server.log_text()) == 1));
    let log = server.log_text();
    let line = log.lines().find(|l| l.contains("TLS handshake failed")).unwrap();
    assert!(line.contains(" INFO ") && line.contains(&format!("connection from {first}: ")), "{line}");

    let flood = 60;
    let begun = Instant::now();
    for _ in 0..flood {
        not_tls();
    }
    let flood_seconds = begun.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1100));
    not_tls();
    let log = server.log_text();
    assert!(eventually(Duration::from_secs(5), || server.log_text().contains("more rejections not logged")), "{log}");
    let log = server.log_text();
    let logged = rejected(&log);
    // At most ten a second were written, however long the flood took here.
    let allowed = 10 * (flood_seconds.ceil() as usize + 2);
    assert!(logged <= allowed.min(flood), "{logged} lines for {flood} rejections in {flood_seconds:.2} s:\n{log}");
}

/// Thaws the file system at `0` when dropped, whatever the test did meanwhile: a frozen one holds every writer
/// to it, killed or not.
struct Thaw(std::path::PathBuf);

impl Thaw {
    fn freeze(path: std::path::PathBuf) -> Thaw {
        let frozen = std::process::Command::new("fsfreeze").arg("--freeze").arg(&path).status().unwrap();
        assert!(frozen.success(), "fsfreeze --freeze {} failed", path.display());
        Thaw(path)
    }
}

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze").arg("--unfreeze").arg(&self.0).status();
    }
}

/// A state directory on a file system of its own, to freeze: ext4 in a file under `scratch`, mounted in the
/// server's own mount namespace by the returned script (run by `unshare`, [`PRIVATE_MOUNTS`]). Its path.
fn state_on_its_own_file_system(scratch: &util::ScratchDir) -> (std::path::PathBuf, String) {
    let (image, state) = (scratch.join("state.img"), scratch.join("state"));
    std::fs::File::create(&image).unwrap().set_len(1 << 30).unwrap();
    let made = std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).status().unwrap();
    assert!(made.success(), "mkfs.ext4 failed");
    std::fs::create_dir(&state).unwrap();
    let script = format!(r#"mount -o loop {} {} && exec "$@""#, image.display(), state.display());
    (state, script)
}

const PRIVATE_MOUNTS: [&str; 4] = ["unshare", "-m", "--propagation", "private"];

/// The state directory on a file system of its own (ext4 in a file, mounted in the server's own mount
/// namespace), frozen (`fsfreeze`) for 5 s while one job floods output, another ends, a third is stopped and
/// another identity removes 400 ended jobs (more requests than the segment mover's socket holds): every write
/// to it waits, as behind a disk that stalls. Nobody's calls wait with them, and once it thaws the output and
/// the records of all three are whole, as a server started on it afterwards reads them back, and the removed
/// jobs' directories are gone.
#[test]
fn a_frozen_state_directory_freezes_no_call_and_loses_nothing() {
    let _idle_cpu = hold_idle_cpu_lock();
    let pki = Pki::new();
    let scratch = util::ScratchDir::new("frozen-state");
    let (state, script) = state_on_its_own_file_system(&scratch);
    let mut server = Server::start_after_on(&pki, &state, &PRIVATE_MOUNTS, &script, &[]);
    let mut alice = server.client("alice");
    let mut bob = server.client("bob");
    let short_lived: Vec<Job> = (0..400).map(|_| start(&mut bob, "true")).collect();
    for job in &short_lived {
        let _: Job =
            bob.unary(path::WAIT_JOB, &runnel::proto::WaitJobRequest { job_id: job.id.clone() }, None).unwrap();
    }
    let flood = start(&mut alice, "exec cat /dev/zero");
    let ends = start(&mut alice, "echo before; sleep 1; echo after; exit 3");
    let stopped = start(&mut alice, "echo waiting; exec sleep 600");
    // Its first output comes while the disk is frozen: the file it goes to was made with the job's directory.
    let writes_late = start(&mut alice, "sleep 1.5; echo late");
    std::thread::sleep(Duration::from_millis(300));

    // In the server's mount namespace, through its root.
    let frozen = Thaw::freeze(format!("/proc/{}/root{}", server.pid(), state.display()).into());
    let begun = Instant::now();
    let mut probes = 0;
    let mut slowest = Duration::ZERO;
    let stop = StopJobRequest { job_id: stopped.id.clone(), ..Default::default() };
    // Every call with a deadline: a loop stuck behind the frozen disk fails the test (and the guard thaws it)
    // instead of hanging it.
    let within = Some(Duration::from_secs(3));
    let frozen_out = |what: &str, err: CallError| -> ! { panic!("{what} while the disk was frozen: {err:?}") };
    let mut to_remove = short_lived.iter();
    let mut started_frozen = Vec::new();
    while begun.elapsed() < Duration::from_secs(5) {
        let asked = Instant::now();
        for job in to_remove.by_ref().take(100) {
            let request = runnel::proto::RemoveJobRequest { job_id: job.id.clone() };
            let _: Job = bob.unary(path::REMOVE_JOB, &request, within).unwrap_or_else(|e| frozen_out("RemoveJob", e));
        }
        for job in [&flood, &ends, &stopped] {
            let request = GetJobRequest { job_id: job.id.clone() };
            let got: Job = alice.unary(path::GET_JOB, &request, within).unwrap_or_else(|e| frozen_out("GetJob", e));
            assert_eq!(got.id, job.id);
        }
        let listed: runnel::proto::ListJobsResponse = alice
            .unary(path::LIST_JOBS, &runnel::proto::ListJobsRequest::default(), within)
            .unwrap_or_else(|e| frozen_out("ListJobs", e));
        assert!(listed.jobs.len() >= 4, "{} jobs listed", listed.jobs.len());
        if probes == 10 {
            // More starts than directories made ahead. Those that take one wait in their init, which gives the
            // working directory to the job's user and waits for the disk to do so; the others wait for the
            // mover to make theirs. The loop waits for neither.
            let request = shell(r#"echo "$(id -u) $(stat -c %u .)""#);
            for _ in 0..2 * runnel::jobs::JOB_DIRS_AHEAD {
                let call = alice.send_call(path::START_JOB, &request, Some(Duration::from_secs(30)));
                started_frozen.push(call.unwrap_or_else(|e| frozen_out("StartJob", e)));
            }
        }
        if probes == 20 {
            let _: Job = alice.unary(path::STOP_JOB, &stop, within).unwrap_or_else(|e| frozen_out("StopJob", e));
        }
        slowest = slowest.max(asked.elapsed());
        probes += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    // The job that ended and the one stopped are seen ended while the disk is still frozen.
    let end_of = |client: &mut Client, job: &Job| -> i32 {
        let request = GetJobRequest { job_id: job.id.clone() };
        client.unary::<_, Job>(path::GET_JOB, &request, within).unwrap_or_else(|e| frozen_out("GetJob", e)).end_reason
    };
    let (ended, was_stopped) = (end_of(&mut alice, &ends), end_of(&mut alice, &stopped));
    drop(frozen);
    assert!(slowest < Duration::from_secs(1), "a round of calls took {slowest:?} while the disk was frozen");
    assert!(probes > 50, "only {probes} rounds of calls in 5 s");
    assert_eq!(ended, EndReason::Exited as i32, "the job that ended, seen ended meanwhile");
    assert_eq!(was_stopped, EndReason::Stopped as i32, "the stopped one too");

    let stop = StopJobRequest { job_id: flood.id.clone(), ..Default::default() };
    let _: Job = alice.unary(path::STOP_JOB, &stop, None).unwrap();
    let whole_output = |client: &mut Client, job: &Job| -> Vec<u8> {
        let wait = runnel::proto::WaitJobRequest { job_id: job.id.clone() };
        let _: Job = client.unary(path::WAIT_JOB, &wait, Some(Duration::from_secs(30))).unwrap();
        let request = runnel::proto::StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: false };
        let mut stream = client.start_call(path::STREAM_OUTPUT, &request, Some(Duration::from_secs(30))).unwrap();
        let mut bytes = Vec::new();
        while let Some(chunk) = client.next_message::<runnel::proto::OutputChunk>(&mut stream).unwrap() {
            if job.id != flood.id {
                bytes.extend_from_slice(&chunk.data);
            } else {
                assert!(chunk.data.iter().all(|&b| b == 0), "the flood's output is zeros");
            }
        }
        bytes
    };
    assert_eq!(whole_output(&mut alice, &ends), b"before\nafter\n");
    assert_eq!(whole_output(&mut alice, &stopped), b"waiting\n");
    assert_eq!(whole_output(&mut alice, &writes_late), b"late\n");
    assert!(!started_frozen.is_empty(), "no start was sent while the disk was frozen");
    for call in started_frozen {
        let started: Job = alice.finish_unary(call).unwrap();
        let ids = String::from_utf8(whole_output(&mut alice, &started)).unwrap();
        let (uid, owner) = ids.trim().split_once(' ').unwrap_or_else(|| panic!("{ids:?}"));
        assert!(uid != "0" && uid == owner, "the job (uid {uid}) runs in a working directory of its user's ({owner})");
    }
    whole_output(&mut alice, &flood);
    let jobs_dir = std::path::PathBuf::from(format!("/proc/{}/root{}/jobs", server.pid(), state.display()));
    let removed_left = || short_lived.iter().filter(|job| jobs_dir.join(&job.id).exists()).count();
    assert!(
        eventually(Duration::from_secs(10), || removed_left() == 0),
        "{} removed jobs' directories left",
        removed_left()
    );
    drop((alice, bob));
    assert!(server.stop_with(15, Duration::from_secs(30)).success(), "{}", server.log_text());

    // Their records, written after the thaw in the order asked: read back by the next server.
    let server = Server::start_after_on(&pki, &state, &PRIVATE_MOUNTS, &script, &[]);
    let mut alice = server.client("alice");
    let ended: Job = alice.unary(path::GET_JOB, &GetJobRequest { job_id: ends.id.clone() }, None).unwrap();
    assert_eq!((ended.end_reason, ended.exit_code), (EndReason::Exited as i32, Some(3)));
    let was_stopped: Job = alice.unary(path::GET_JOB, &GetJobRequest { job_id: stopped.id.clone() }, None).unwrap();
    assert_eq!(was_stopped.end_reason, EndReason::Stopped as i32);
    assert_eq!(whole_output(&mut alice, &ends), b"before\nafter\n");
}

/// Starts while the state directory stays frozen past the start deadline, more of them than there are
/// directories made ahead: each fails at the deadline with a status that says why (its init could not give it
/// its working directory in time, or its directories were never made), while the disk is still frozen and
/// everyone else is served. Once the disk thaws a start succeeds, and the failed ones left no job behind.
#[test]
fn starts_on_a_disk_that_stays_frozen_fail_clearly_at_the_start_deadline() {
    let pki = Pki::new();
    let scratch = util::ScratchDir::new("frozen-starts");
    let (state, script) = state_on_its_own_file_system(&scratch);
    let server = Server::start_after_on(&pki, &state, &PRIVATE_MOUNTS, &script, &[]);
    let seen = std::path::PathBuf::from(format!("/proc/{}/root{}", server.pid(), state.display()));
    let ahead = runnel::jobs::JOB_DIRS_AHEAD;
    let all_made = || util::beside_dirs_made_ahead(&seen).0 == ahead;
    assert!(eventually(Duration::from_secs(5), all_made), "{:?}", util::beside_dirs_made_ahead(&seen));
    let (mut alice, mut bob) = (server.client("alice"), server.client("bob"));

    let frozen = Thaw::freeze(seen.clone());
    let request = StartJobRequest { command: "true".into(), ..Default::default() };
    let starts: Vec<_> = (0..ahead + 2)
        .map(|_| alice.send_call(path::START_JOB, &request, Some(Duration::from_secs(30))).unwrap())
        .collect();
    let begun = Instant::now();
    let within = Some(Duration::from_secs(3));
    while begun.elapsed() < Duration::from_secs(11) {
        let listed: runnel::proto::ListJobsResponse = bob
            .unary(path::LIST_JOBS, &runnel::proto::ListJobsRequest::default(), within)
            .unwrap_or_else(|e| panic!("ListJobs while the disk was frozen: {e:?}"));
        assert!(listed.jobs.is_empty());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut never_made = 0;
    for start in starts {
        let refused = status(alice.finish_unary::<Job>(start).unwrap_err());
        match refused.code {
            Code::DeadlineExceeded => assert!(refused.message.contains("did not start within 10 s"), "{refused}"),
            Code::Unavailable => {
                assert!(refused.message.contains("directories were not made within 10 s"), "{refused}");
                never_made += 1;
            }
            _ => panic!("a start on a frozen disk: {refused}"),
        }
    }
    assert!(never_made >= 2, "{never_made} starts were told their directories were never made");
    drop(frozen);

    let ran: Job = alice.unary(path::START_JOB, &request, Some(Duration::from_secs(30))).unwrap();
    let listed: runnel::proto::ListJobsResponse =
        alice.unary(path::LIST_JOBS, &runnel::proto::ListJobsRequest::default(), None).unwrap();
    let ids: Vec<&str> = listed.jobs.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(ids, [ran.id.as_str()], "the failed starts left jobs behind");
}

/// Four jobs flood output (`cat /dev/zero`) for 5 s, each with two followers that read all they can and two that
/// never read: another identity's GetJob answers throughout, within a generous bound; every reader gets output;
/// the server stays one thread, and its memory bounded, whatever the floods and the stalled followers do.
#[test]
fn output_floods_with_readers_and_stalled_followers_freeze_nobody() {
    let _idle_cpu = hold_idle_cpu_lock();
    let pki = Pki::new();
    let server = Server::start(&pki, &["--max-output-bytes", "64M", "--max-output-total", "256M"]);
    let mut alice = server.client("alice");
    let floods: Vec<Job> = (0..4).map(|_| start(&mut alice, "exec cat /dev/zero")).collect();
    let mut bob = server.client("bob");
    let probed = start(&mut bob, "exec sleep 60");

    let until = Instant::now() + Duration::from_secs(5);
    let follow = |job: &Job| StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true };
    let readers: Vec<_> = floods
        .iter()
        .flat_map(|job| [follow(job), follow(job)])
        .map(|request| {
            let settings = server.settings("alice");
            std::thread::spawn(move || {
                let mut client = Client::connect(&settings).unwrap();
                let mut stream =
                    client.start_call(path::STREAM_OUTPUT, &request, Some(Duration::from_secs(30))).unwrap();
                let mut read = 0;
                while Instant::now() < until {
                    let chunk = client.next_message::<OutputChunk>(&mut stream).unwrap().expect("a flood ends not");
                    read += chunk.data.len();
                }
                read
            })
        })
        .collect();
    // Opened, and never read again: the server's sends to them back up.
    let stalled: Vec<_> = floods
        .iter()
        .flat_map(|job| [follow(job), follow(job)])
        .map(|request| {
            let mut client = server.client("alice");
            let stream = client.start_call(path::STREAM_OUTPUT, &request, None).unwrap();
            (client, stream)
        })
        .collect();

    let (mut probes, mut slowest, mut most_rss) = (0, Duration::ZERO, 0);
    let get = GetJobRequest { job_id: probed.id.clone() };
    while Instant::now() < until {
        let asked = Instant::now();
        let job: Job = bob.unary(path::GET_JOB, &get, Some(Duration::from_secs(3))).unwrap();
        assert_eq!(job.id, probed.id);
        slowest = slowest.max(asked.elapsed());
        most_rss = most_rss.max(util::proc_status_field(server.pid(), "VmRSS:"));
        assert_eq!(util::proc_status_field(server.pid(), "Threads:"), 1);
        probes += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for reader in readers {
        assert!(reader.join().unwrap() > 0, "a reader got no output");
    }
    assert!(probes > 50, "only {probes} GetJob calls in 5 s");
    assert!(slowest < Duration::from_secs(1), "a GetJob took {slowest:?} under the floods");
    assert!(most_rss < 128 * 1024, "the server's RSS reached {most_rss} KiB");
    eprintln!("{probes} GetJob calls, the slowest {slowest:?}; the server's RSS at most {most_rss} KiB");
    drop(stalled);
    for job in &floods {
        let stop = StopJobRequest { job_id: job.id.clone(), ..Default::default() };
        let _: Job = alice.unary(path::STOP_JOB, &stop, Some(Duration::from_secs(30))).unwrap();
    }
}

/// The executable search is bounded: a PATH of 40 000 directories is refused at once, saying what the limit is;
/// starts at the limit, each directory a chain of 31 symbolic links, keep one connection busy while another
/// identity's calls answer throughout, and each ends with a clear status.
#[test]
fn a_slow_executable_search_is_capped_and_freezes_nobody() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let scratch = util::ScratchDir::new("slow-search");
    // Links d0 -> d1 -> ... -> d30 -> real, so each PATH directory costs a 31-link walk.
    let dir = scratch.join("search");
    std::fs::create_dir_all(dir.join("real")).unwrap();
    for i in 0..31 {
        let next = if i == 30 { "real".to_string() } else { format!("d{}", i + 1) };
        std::os::unix::fs::symlink(next, dir.join(format!("d{i}"))).unwrap();
    }
    let walk = format!("{}/d0", dir.display());
    let mut alice = server.client("alice");
    let request = |dir: &str, dirs: usize| StartJobRequest {
        command: "no-such-command".into(),
        env: vec![format!("PATH={}", vec![dir; dirs].join(":"))],
        ..Default::default()
    };

    let asked = Instant::now();
    let refused = status(alice.unary::<_, Job>(path::START_JOB, &request("/d", 40_000), None).unwrap_err());
    assert_eq!(refused.code, Code::InvalidArgument, "{refused}");
    assert!(refused.message.contains("more than the limit of 64 directories"), "{refused}");
    assert!(asked.elapsed() < Duration::from_secs(2), "refused after {:?}", asked.elapsed());

    let at_limit = request(&walk, 64);
    let starts = std::thread::spawn({
        let settings = server.settings("alice");
        move || {
            let mut client = Client::connect(&settings).unwrap();
            (0..5)
                .map(|_| {
                    status(
                        client.unary::<_, Job>(path::START_JOB, &at_limit, Some(Duration::from_secs(30))).unwrap_err(),
                    )
                })
                .collect::<Vec<_>>()
        }
    });
    let mut bob = server.client("bob");
    let begun = Instant::now();
    while !starts.is_finished() {
        let asked = Instant::now();
        let _: runnel::proto::ListJobsResponse = bob
            .unary(path::LIST_JOBS, &runnel::proto::ListJobsRequest::default(), Some(Duration::from_secs(3)))
            .unwrap();
        assert!(asked.elapsed() < Duration::from_secs(1), "a ListJobs took {:?} during the searches", asked.elapsed());
        assert!(begun.elapsed() < Duration::from_secs(60), "the searches took over a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
    for refused in starts.join().unwrap() {
        assert_eq!(refused.code, Code::NotFound, "{refused}");
        assert!(refused.message.contains("executable not found"), "{refused}");
    }
}

/// Read system calls the process `pid` has made so far (`syscr` of `/proc/PID/io`: `read`, `pread` and the like).
fn read_calls(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|line| line.strip_prefix("syscr: ")).unwrap().trim().parse().unwrap()
}

/// A job writes 1.6 MB in 100 000 writes of 16 bytes, pausing 1 ms after every 40, so that they reach the spool
/// as thousands of records (the server takes in what a pipe holds at once); then 50 reads
/// of what is left from near the end, one after the other. Opening a reader at an offset costs a bounded number
/// of reads (an index per segment), not one per record before it: the server's read system calls per call stay
/// few, and another identity's calls answer meanwhile.
#[test]
fn reads_near_the_end_of_output_in_many_records_cost_few_reads() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let script = "import os, time\nfor i in range(100000):\n    os.write(1, b'%015d\\n' % i)\n    if i % 40 == 39: time.sleep(0.001)";
    let request =
        StartJobRequest { command: "python3".into(), args: vec!["-c".into(), script.into()], ..Default::default() };
    let job: Job = alice.unary(path::START_JOB, &request, None).unwrap();
    let wait = runnel::proto::WaitJobRequest { job_id: job.id.clone() };
    let ended: Job = alice.unary(path::WAIT_JOB, &wait, Some(Duration::from_secs(120))).unwrap();
    assert_eq!((ended.exit_code, ended.output_bytes), (Some(0), 1_600_000), "{ended:?}");
    // How many records: each adds a 5-byte header to the segment files.
    let spooled: u64 = std::fs::read_dir(server.state_dir.join("jobs").join(&job.id))
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name() != "record")
        .map(|entry| entry.metadata().unwrap().len())
        .sum();
    let records = (spooled - 1_600_000) / 5;
    assert!(records > 500, "only about {records} records: the test needs many");

    let before = read_calls(server.pid());
    let mut bob = server.client("bob");
    for i in 0..50u64 {
        let offset = 1_600_000 - 16 * (i + 1);
        let request = StreamOutputRequest { job_id: job.id.clone(), offset, follow: false };
        let mut stream = alice.start_call(path::STREAM_OUTPUT, &request, Some(Duration::from_secs(10))).unwrap();
        let mut bytes = Vec::new();
        while let Some(chunk) = alice.next_message::<OutputChunk>(&mut stream).unwrap() {
            bytes.extend_from_slice(&chunk.data);
        }
        assert_eq!(bytes.len() as u64, 16 * (i + 1), "read {i} from offset {offset}");
        assert_eq!(&bytes[..16], format!("{:015}\n", 100_000 - (i + 1)).as_bytes(), "read {i}");
        let asked = Instant::now();
        let listed: runnel::proto::ListJobsResponse = bob
            .unary(path::LIST_JOBS, &runnel::proto::ListJobsRequest::default(), Some(Duration::from_secs(3)))
            .unwrap();
        assert!(listed.jobs.is_empty());
        assert!(asked.elapsed() < Duration::from_secs(1), "a ListJobs took {:?} among the reads", asked.elapsed());
    }
    let per_call = (read_calls(server.pid()) - before) / 50;
    eprintln!("about {records} records; the server made {per_call} read system calls per StreamOutput (and ListJobs)");
    assert!(per_call < records / 10, "{per_call} reads per call, for {records} records");
    assert!(per_call < 100, "{per_call} read system calls per call");
}

/// What another identity's calls took, in milliseconds, each kind sorted.
#[derive(Default)]
struct ProbeTimes {
    get_job: Vec<f64>,
    list_page: Vec<f64>,
    start_job: Vec<f64>,
}

impl ProbeTimes {
    /// p50, p99 and max of `times` (sorted), in milliseconds.
    fn spread(times: &[f64]) -> (f64, f64, f64) {
        let at = |fraction: f64| times[((times.len() - 1) as f64 * fraction).round() as usize];
        (at(0.5), at(0.99), times[times.len() - 1])
    }
}

/// Calls of every kind a client makes most (GetJob on its own job, a ListJobs page, a StartJob), one after the
/// other on one kept-open connection, until `done`.
fn probe_until(mut client: Client, own: Job, done: &std::sync::atomic::AtomicBool) -> ProbeTimes {
    use std::sync::atomic::Ordering;
    let mut times = ProbeTimes::default();
    let timed = |into: &mut Vec<f64>, call: &mut dyn FnMut()| {
        let begun = Instant::now();
        call();
        into.push(begun.elapsed().as_secs_f64() * 1e3);
    };
    let deadline = Some(Duration::from_secs(10));
    while !done.load(Ordering::Relaxed) {
        timed(&mut times.get_job, &mut || {
            let job: Job = client.unary(path::GET_JOB, &GetJobRequest { job_id: own.id.clone() }, deadline).unwrap();
            assert_eq!(job.id, own.id);
        });
        timed(&mut times.list_page, &mut || {
            let request = runnel::proto::ListJobsRequest::default();
            let page: runnel::proto::ListJobsResponse = client.unary(path::LIST_JOBS, &request, deadline).unwrap();
            assert!(!page.jobs.is_empty());
        });
        timed(&mut times.start_job, &mut || {
            let _: Job = client.unary(path::START_JOB, &shell("exit 0"), deadline).unwrap();
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    for kind in [&mut times.get_job, &mut times.list_page, &mut times.start_job] {
        kind.sort_by(f64::total_cmp);
    }
    times
}

/// One identity starts 1 000 isolated jobs, each in its own namespaces under its own init, and keeps them running:
/// another identity's GetJob, ListJobs and StartJob answer throughout, each within a generous bound, and the
/// server stays one thread with its memory bounded.
#[test]
fn a_thousand_running_isolated_jobs_freeze_nobody() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const JOBS: usize = 1000;
    let _idle_cpu = hold_idle_cpu_lock();
    let pki = Pki::new();
    let server = Server::start(&pki, &["--max-running-per-client", &(JOBS + 10).to_string()]);
    let mut bob = server.client("bob");
    let own = start(&mut bob, "exec sleep 600");
    let probing = AtomicBool::new(false);

    let (started_in, probed) = std::thread::scope(|scope| {
        let probe = scope.spawn(|| probe_until(bob, own, &probing));
        let mut alice = server.client("alice");
        let begun = Instant::now();
        let sleepers: Vec<Job> = (0..JOBS).map(|_| start(&mut alice, "exec sleep 600")).collect();
        let started_in = begun.elapsed();
        // And a while with all of them running.
        std::thread::sleep(Duration::from_secs(2));
        probing.store(true, Ordering::Relaxed);
        let probed = probe.join().unwrap();

        let running = util::list_all_jobs(&mut alice)
            .into_iter()
            .filter(|job| job.state == runnel::proto::JobState::Running as i32)
            .count();
        assert_eq!(running, JOBS, "of alice's {JOBS} jobs");
        // Each job's top process is its init, in a PID namespace of its own.
        let own_namespace = std::fs::read_link("/proc/self/ns/pid").unwrap();
        for job in sleepers.iter().step_by(50) {
            let namespace = std::fs::read_link(format!("/proc/{}/ns/pid", job.pid)).unwrap();
            assert_ne!(namespace, own_namespace, "job {} (pid {}) is not isolated", job.id, job.pid);
        }
        (started_in, probed)
    });
    assert_eq!(util::proc_status_field(server.pid(), "Threads:"), 1);
    let rss = util::proc_status_field(server.pid(), "VmRSS:");
    let spread = [&probed.get_job, &probed.list_page, &probed.start_job].map(|times| ProbeTimes::spread(times));
    eprintln!(
        "{JOBS} isolated jobs started in {started_in:?}; meanwhile {} rounds of another identity's calls, \
         p50 / p99 / max in ms: GetJob {:.1?}, ListJobs page {:.1?}, StartJob {:.1?}; the server's RSS {rss} KiB",
        probed.get_job.len(),
        spread[0],
        spread[1],
        spread[2]
    );
    assert!(probed.get_job.len() > 50, "only {} rounds of probes", probed.get_job.len());
    for (name, (_, p99, max)) in ["GetJob", "ListJobs page", "StartJob"].iter().zip(spread) {
        assert!(p99 < 250.0 && max < 1000.0, "{name}: p99 {p99:.1} ms, max {max:.1} ms");
    }
    assert!(rss < 256 * 1024, "the server's RSS is {rss} KiB");
}
