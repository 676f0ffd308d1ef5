//! Job lifecycle and output streaming, against the real server binary.

mod util;

use runnel::grpc::path;
use std::time::{Duration, Instant};

use runnel::client::{CallError, Client};
use runnel::grpc::Code;
use runnel::proto::{
    EndReason, GetJobRequest, Job, JobState, ListJobsRequest, ListJobsResponse, OutputChunk, OutputStream,
    RemoveJobRequest, StartJobRequest, StopJobRequest, StreamOutputRequest, WaitJobRequest,
};
use util::{eventually, pids_matching, process_alive, Pki, Server};

fn start(client: &mut Client, command: &str, args: &[&str]) -> Job {
    let request = StartJobRequest {
        command: command.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    client.unary(path::START_JOB, &request, None).unwrap_or_else(|e| panic!("start {command}: {e:?}"))
}

fn status_of<T: std::fmt::Debug>(result: Result<T, CallError>) -> (Code, String) {
    match result {
        Err(CallError::Status(status)) => (status.code, status.message),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn wait(client: &mut Client, id: &str) -> Job {
    client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: id.into() }, Some(Duration::from_secs(30))).unwrap()
}

fn stop(client: &mut Client, id: &str, grace: Option<Duration>) -> Job {
    let request = StopJobRequest { job_id: id.into(), grace_period: grace.map(|g| g.try_into().unwrap()) };
    client.unary(path::STOP_JOB, &request, Some(Duration::from_secs(30))).unwrap()
}

/// Reads a whole output stream: (offset, stream, data) per chunk.
fn read_output(client: &mut Client, id: &str, offset: u64, follow: bool) -> Vec<OutputChunk> {
    let request = StreamOutputRequest { job_id: id.into(), offset, follow };
    let mut stream = client.start_call(path::STREAM_OUTPUT, &request, None).unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = client.next_message::<OutputChunk>(&mut stream).unwrap() {
        chunks.push(chunk);
    }
    chunks
}

/// Runs the command line as `identity`: its exit code, stdout and stderr.
fn cli_output(server: &Server, identity: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let output = server.cli(identity).args(args).output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

fn concat(chunks: &[OutputChunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
}

fn assert_contiguous(chunks: &[OutputChunk], first: u64) {
    let mut next = first;
    for chunk in chunks {
        assert_eq!(chunk.offset, next, "gap or overlap in offsets");
        next += chunk.data.len() as u64;
    }
}

#[test]
fn start_status_list_wait_stop() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");

    let quick = start(&mut alice, "sh", &["-c", "exit 5"]);
    assert_eq!(quick.owner, "alice");
    assert!(quick.pid > 0);
    let ended = wait(&mut alice, &quick.id);
    assert_eq!(ended.state, JobState::Exited as i32);
    assert_eq!(ended.exit_code, Some(5));
    assert_eq!(ended.end_reason, EndReason::Exited as i32);
    assert!(ended.ended_at.is_some());

    let sleeper = start(&mut alice, "sleep", &["30"]);
    let got: Job = alice.unary(path::GET_JOB, &GetJobRequest { job_id: sleeper.id.clone() }, None).unwrap();
    assert_eq!(got.state, JobState::Running as i32);
    let listed: ListJobsResponse = alice.unary(path::LIST_JOBS, &ListJobsRequest::default(), None).unwrap();
    assert_eq!(listed.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [quick.id.as_str(), &sleeper.id]);
    let running: ListJobsResponse = alice
        .unary(path::LIST_JOBS, &ListJobsRequest { states: vec![JobState::Running as i32], ..Default::default() }, None)
        .unwrap();
    assert_eq!(running.jobs.len(), 1);

    let stopped = stop(&mut alice, &sleeper.id, None);
    assert_eq!(stopped.state, JobState::Killed as i32);
    assert_eq!(stopped.signal, Some(libc_sigterm()));
    assert_eq!(stopped.end_reason, EndReason::Stopped as i32);
    assert!(!process_alive(sleeper.pid));
    // Idempotent: stopping again returns the same final state with OK.
    let again = stop(&mut alice, &sleeper.id, None);
    assert_eq!(again.state, stopped.state);
    assert_eq!(again.ended_at, stopped.ended_at);
}

fn libc_sigterm() -> i32 {
    15
}

#[test]
fn exec_failures_and_bad_input_are_clear_errors_that_change_nothing() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let mut request = |command: &str, working_dir: &str, env: &[&str]| {
        let request = StartJobRequest {
            command: command.into(),
            working_dir: working_dir.into(),
            env: env.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        };
        status_of(alice.unary::<_, Job>(path::START_JOB, &request, None))
    };
    let (code, message) = request("no-such-command-here", "", &[]);
    assert_eq!((code, message.as_str()), (Code::NotFound, "executable not found: no-such-command-here"));
    assert_eq!(request("/etc/passwd", "", &[]).0, Code::PermissionDenied);
    let (code, message) = request("true", "/no/such/dir", &[]);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("/no/such/dir"), "{message}");
    assert_eq!(request("", "", &[]).0, Code::InvalidArgument);
    assert_eq!(request("true", "relative", &[]).0, Code::InvalidArgument);
    assert_eq!(request("true", "", &["NOEQUALS"]).0, Code::InvalidArgument);
    let limited = StartJobRequest {
        command: "true".into(),
        limits: Some(runnel::proto::ResourceLimits { memory_bytes: 64 << 20, ..Default::default() }),
        ..Default::default()
    };
    let (code, message) = status_of(alice.unary::<_, Job>(path::START_JOB, &limited, None));
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.starts_with("resource limits are unavailable on this host"), "{message}");
    let (code, _) =
        status_of(alice.unary::<_, Job>(path::GET_JOB, &GetJobRequest { job_id: "not-a-uuid".into() }, None));
    assert_eq!(code, Code::InvalidArgument);

    let listed: ListJobsResponse = alice.unary(path::LIST_JOBS, &ListJobsRequest::default(), None).unwrap();
    assert!(listed.jobs.is_empty(), "a failed start left a job behind: {:?}", listed.jobs);
    // Exactly the 4 kept made ahead once the mover has replaced those the starts took: a failed start's own
    // would look like one more.
    let settled = || util::beside_dirs_made_ahead(&server.state_dir) == (4, Vec::new());
    assert!(
        eventually(Duration::from_secs(5), settled),
        "a failed start left files behind: {:?}",
        util::beside_dirs_made_ahead(&server.state_dir)
    );
}

#[test]
fn binary_output_is_replayed_byte_exact_to_a_late_subscriber() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    // Every byte value, NULs and invalid UTF-8 included, interleaved with stderr.
    let script = "i=0; while [ $i -lt 4 ]; do head -c 70000 /dev/urandom > /tmp/.x$$; cat /tmp/.x$$; \
                  printf 'e\\000\\377' >&2; i=$((i+1)); cat /tmp/.x$$ >> /tmp/.all$$; done; \
                  rm /tmp/.x$$; cat /tmp/.all$$ | sha256sum >&2; rm /tmp/.all$$";
    let job = start(&mut alice, "sh", &["-c", script]);
    let ended = wait(&mut alice, &job.id);
    assert_eq!(ended.exit_code, Some(0));

    let chunks = read_output(&mut alice, &job.id, 0, false);
    assert_contiguous(&chunks, 0);
    assert_eq!(concat(&chunks).len() as u64, ended.output_bytes);
    let stdout: Vec<u8> =
        chunks.iter().filter(|c| c.stream == OutputStream::Stdout as i32).flat_map(|c| c.data.clone()).collect();
    let stderr: Vec<u8> =
        chunks.iter().filter(|c| c.stream == OutputStream::Stderr as i32).flat_map(|c| c.data.clone()).collect();
    assert_eq!(stdout.len(), 4 * 70_000);
    assert!(stderr.starts_with(b"e\0\xffe\0\xffe\0\xffe\0\xff"), "{:?}", &stderr[..12.min(stderr.len())]);
    let digest = String::from_utf8_lossy(&stderr[12..]).split_whitespace().next().unwrap().to_string();
    let ours = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&stdout)?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ours.stdout).split_whitespace().next().unwrap(), digest);

    // From an offset in the middle: the same bytes from there on.
    let tail = read_output(&mut alice, &job.id, 100_001, false);
    assert_contiguous(&tail, 100_001);
    assert_eq!(concat(&tail), concat(&chunks)[100_001..]);
    // Past the end of an ended job: OUT_OF_RANGE.
    let request = StreamOutputRequest { job_id: job.id.clone(), offset: ended.output_bytes + 1, follow: false };
    let mut stream = alice.start_call(path::STREAM_OUTPUT, &request, None);
    let (code, _) = match stream.as_mut() {
        Ok(stream) => status_of(alice.next_message::<OutputChunk>(stream)),
        Err(_) => status_of(stream.map(|_| ())),
    };
    assert_eq!(code, Code::OutOfRange);
}

#[test]
fn twenty_followers_receive_identical_bytes_and_live_lines() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let job = start(&mut alice, "sh", &["-c", "for i in $(seq 1 30); do echo line $i; sleep 0.05; done"]);

    // Live follow: the first line arrives while the job is still running.
    let mut live = alice
        .start_call(path::STREAM_OUTPUT, &StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true }, None)
        .unwrap();
    let first = alice.next_message::<OutputChunk>(&mut live).unwrap().unwrap();
    assert!(first.data.starts_with(b"line 1\n"));
    let state: Job = alice.unary(path::GET_JOB, &GetJobRequest { job_id: job.id.clone() }, None).unwrap();
    assert_eq!(state.state, JobState::Running as i32, "the first line should arrive before the job ends");

    // Twenty followers on their own connections, all following to the end.
    let mut followers: Vec<(Client, runnel::client::ResponseStream)> = (0..20)
        .map(|_| {
            let mut client = server.client("alice");
            let request = StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true };
            let stream = client.start_call(path::STREAM_OUTPUT, &request, None).unwrap();
            (client, stream)
        })
        .collect();
    let mut outputs = Vec::new();
    for (client, stream) in followers.iter_mut() {
        let mut bytes = Vec::new();
        while let Some(chunk) = client.next_message::<OutputChunk>(stream).unwrap() {
            bytes.extend(chunk.data);
        }
        outputs.push(bytes);
    }
    let expected: String = (1..=30).map(|i| format!("line {i}\n")).collect();
    for output in &outputs {
        assert_eq!(String::from_utf8_lossy(output), expected);
    }
}

#[test]
fn a_stalled_subscriber_does_not_slow_another() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let job = start(&mut alice, "sh", &["-c", "head -c 67108864 /dev/zero; sleep 0.2"]);
    // The stalled one opens a follow and never reads again.
    let mut stalled_client = server.client("alice");
    let request = StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true };
    let _stalled = stalled_client.start_call(path::STREAM_OUTPUT, &request, None).unwrap();

    let started = Instant::now();
    let mut reader = server.client("alice");
    let mut stream = reader.start_call(path::STREAM_OUTPUT, &request, None).unwrap();
    let mut total = 0u64;
    while let Some(chunk) = reader.next_message::<OutputChunk>(&mut stream).unwrap() {
        assert_eq!(chunk.offset, total);
        total += chunk.data.len() as u64;
    }
    assert_eq!(total, 64 << 20);
    eprintln!("64 MiB past a stalled subscriber in {:?}", started.elapsed());
    // The server stayed responsive and bounded: one thread, RSS far below the output volume.
    let field = |name: &str| util::proc_status_field(server.pid(), name);
    assert_eq!(field("Threads:"), 1);
    assert!(field("VmRSS:") < 48 * 1024, "server RSS {} KiB while a subscriber is stalled", field("VmRSS:"));
}

#[test]
fn stop_kills_grandchildren_and_ends_every_follower() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let marker = format!("sleep 1000{}", rand::random::<u16>());
    let job = start(&mut alice, "sh", &["-c", &format!("{marker} & {marker} & echo started; wait")]);
    assert!(eventually(Duration::from_secs(5), || pids_matching(&marker).len() == 2), "grandchildren did not start");
    let mut follower = server.client("alice");
    let mut stream = follower
        .start_call(path::STREAM_OUTPUT, &StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true }, None)
        .unwrap();
    let stopped = stop(&mut alice, &job.id, Some(Duration::from_secs(5)));
    assert_eq!(stopped.end_reason, EndReason::Stopped as i32);
    assert!(eventually(Duration::from_secs(5), || pids_matching(&marker).is_empty()), "a grandchild survived stop");
    // The follower gets the output and then the end of the stream.
    let mut bytes = Vec::new();
    while let Some(chunk) = follower.next_message::<OutputChunk>(&mut stream).unwrap() {
        bytes.extend(chunk.data);
    }
    assert_eq!(bytes, b"started\n");

    // And when the main process exits on its own, what it left behind is killed too.
    let job = start(&mut alice, "sh", &["-c", &format!("{marker} & exit 0")]);
    wait(&mut alice, &job.id);
    assert!(
        eventually(Duration::from_secs(5), || pids_matching(&marker).is_empty()),
        "a background child outlived its job"
    );
}

#[test]
fn a_sigterm_trapping_job_gets_its_grace_period() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let script =
        "trap 'echo got TERM; sleep 0.5; echo cleaned up; exit 0' TERM; echo ready; while :; do sleep 0.05; done";
    let job = start(&mut alice, "sh", &["-c", script]);
    let mut cursor = server.client("alice");
    let mut stream = cursor
        .start_call(path::STREAM_OUTPUT, &StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true }, None)
        .unwrap();
    assert_eq!(cursor.next_message::<OutputChunk>(&mut stream).unwrap().unwrap().data, &b"ready\n"[..]);
    let stopped = stop(&mut alice, &job.id, Some(Duration::from_secs(10)));
    assert_eq!(stopped.state, JobState::Exited as i32, "the trap ran to completion: {stopped:?}");
    assert_eq!(stopped.exit_code, Some(0));
    assert_eq!(stopped.end_reason, EndReason::Stopped as i32);
    let mut rest = Vec::new();
    while let Some(chunk) = cursor.next_message::<OutputChunk>(&mut stream).unwrap() {
        rest.extend(chunk.data);
    }
    // sh also reports its SIGTERM'd `sleep` ("Terminated"): the whole process group got the signal.
    assert!(String::from_utf8_lossy(&rest).ends_with("got TERM\ncleaned up\n"), "{}", String::from_utf8_lossy(&rest));

    // A job that ignores SIGTERM is killed when the grace period ends. Stop only once the trap is in place.
    let stubborn = start(&mut alice, "sh", &["-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]);
    let mut stream = cursor
        .start_call(
            path::STREAM_OUTPUT,
            &StreamOutputRequest { job_id: stubborn.id.clone(), offset: 0, follow: true },
            None,
        )
        .unwrap();
    assert_eq!(cursor.next_message::<OutputChunk>(&mut stream).unwrap().unwrap().data, &b"ready\n"[..]);
    let begun = Instant::now();
    let stopped = stop(&mut alice, &stubborn.id, Some(Duration::from_millis(300)));
    assert!(begun.elapsed() >= Duration::from_millis(300), "ended after {:?}: {stopped:?}", begun.elapsed());
    assert_eq!(stopped.signal, Some(9));
}

#[test]
fn server_shutdown_stops_jobs_ends_streams_and_removes_all_but_the_history() {
    let pki = Pki::new();
    let mut server = Server::start(&pki, &["--shutdown-grace", "2s"]);
    let mut alice = server.client("alice");
    let marker = format!("sleep 999{}", rand::random::<u16>());
    let job = start(&mut alice, "sh", &["-c", &format!("{marker} & echo up; wait")]);
    let mut follower = server.client("alice");
    let mut stream = follower
        .start_call(path::STREAM_OUTPUT, &StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: true }, None)
        .unwrap();
    assert_eq!(follower.next_message::<OutputChunk>(&mut stream).unwrap().unwrap().data, &b"up\n"[..]);

    let status = server.stop_with(15, Duration::from_secs(15));
    assert!(status.success(), "server exit: {status:?}\n{}", server.log_text());
    assert!(follower.next_message::<OutputChunk>(&mut stream).is_ok_and(|m| m.is_none()), "stream did not end cleanly");
    assert!(!process_alive(job.pid));
    assert!(pids_matching(&marker).is_empty(), "a job process outlived the server");
    util::assert_only_history_left(&server.state_dir);
}

#[test]
fn starts_take_directories_made_ahead_and_a_stop_leaves_none() {
    // The segment mover makes jobs' directories ahead of their starts (`JobTable::make_job_dirs_ahead`): a start
    // creates no inode on the loop.
    let pki = Pki::new();
    let mut server = Server::start(&pki, &[]);
    let jobs_dir = server.state_dir.join("jobs");
    let names = || -> Vec<String> {
        std::fs::read_dir(&jobs_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    };
    let four_ready = || util::beside_dirs_made_ahead(&server.state_dir) == (4, Vec::new());
    assert!(eventually(Duration::from_secs(5), four_ready), "{:?}", util::beside_dirs_made_ahead(&server.state_dir));
    let made = names();

    let mut alice = server.client("alice");
    let job = start(&mut alice, "sh", &["-c", "stat -c %u .; id -u; pwd"]);
    assert!(made.contains(&job.id), "job {} took none of the directories made ahead: {made:?}", job.id);
    let _: Job = wait(&mut alice, &job.id);
    let output = String::from_utf8(concat(&read_output(&mut alice, &job.id, 0, false))).unwrap();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 3, "{output}");
    assert_eq!(lines[0], lines[1], "its working directory is its user's");
    assert_eq!(lines[2], server.state_dir.join("work").join(&job.id).to_str().unwrap());
    // Another is made in its place; beside them, the job's own.
    let own = vec![format!("jobs/{}", job.id), format!("work/{}", job.id)];
    let four_more = || util::beside_dirs_made_ahead(&server.state_dir) == (4, own.clone());
    assert!(eventually(Duration::from_secs(5), four_more), "{:?}", util::beside_dirs_made_ahead(&server.state_dir));

    let status = server.stop_with(15, Duration::from_secs(15));
    assert!(status.success(), "server exit: {status:?}\n{}", server.log_text());
    assert_eq!(names(), std::slice::from_ref(&job.id), "a stop leaves only the jobs' history");
    util::assert_only_history_left(&server.state_dir);
}

#[test]
fn a_second_server_on_the_same_state_dir_is_refused() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let output = util::server_command(&pki, &server.state_dir).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("PID {}", server.pid())), "{stderr}");
}

fn list_page(client: &mut Client, page_size: u32, page_token: &str) -> Result<ListJobsResponse, CallError> {
    let request = ListJobsRequest { page_size, page_token: page_token.into(), ..Default::default() };
    client.unary(path::LIST_JOBS, &request, None)
}

#[test]
fn list_jobs_comes_in_pages_by_count_and_by_size_and_the_cli_follows_them() {
    use prost::Message;
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    // Seven jobs that each keep 200 KB of arguments: about five fit in a 1 MiB answer.
    let big = "a".repeat(100_000);
    let started: Vec<String> = (0..7).map(|_| start(&mut alice, "true", &[&big, &big]).id).collect();
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_page(&mut alice, 0, &token).unwrap();
        assert!(page.encoded_len() <= (1 << 20) + 4096, "an answer of {} bytes", page.encoded_len());
        assert!(!page.jobs.is_empty());
        pages.push(page.jobs.len());
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages.len() >= 2 && pages.iter().sum::<usize>() == 7, "pages of {pages:?}");

    // By count: three pages of at most 3, in start order, together all seven.
    let (mut ids, mut token) = (Vec::new(), String::new());
    for expected in [3, 3, 1] {
        let page = list_page(&mut alice, 3, &token).unwrap();
        assert_eq!(page.jobs.len(), expected);
        ids.extend(page.jobs.into_iter().map(|j| j.id));
        token = page.next_page_token;
    }
    assert!(token.is_empty());
    assert_eq!(ids, started);

    let (code, message) = status_of(list_page(&mut alice, 1001, ""));
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("page_size 1001 is more than the maximum of 1000"), "{message}");
    let (code, message) = status_of(list_page(&mut alice, 0, "not-a-token"));
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("page_token \"not-a-token\""), "{message}");

    // The command line follows the pages: more jobs than one default page (100), every one listed.
    for _ in 0..100 {
        start(&mut alice, "true", &[]);
    }
    let output = server.cli("alice").args(["list", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed = String::from_utf8_lossy(&output.stdout).matches("\"owner\"").count();
    assert_eq!(listed, 107, "the CLI listed {listed} of 107 jobs");
}

#[test]
fn list_and_status_print_hostile_arguments_escaped_one_row_per_job() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let hostile = ["\u{1b}[31mred\u{1b}[0m", "two\nlines\rback", "\u{9b}2J\u{202e}gnp.exe"];
    let job = start(&mut alice, "true", &hostile);
    start(&mut alice, "true", &["plain"]);
    wait(&mut alice, &job.id);
    for args in [vec!["list"], vec!["status", &job.id]] {
        let output = server.cli("alice").args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).unwrap();
        let raw: Vec<char> = text.chars().filter(|&c| c.is_control() && c != '\n' || c == '\u{202e}').collect();
        assert!(raw.is_empty(), "{args:?} printed {raw:?}:\n{text}");
        let rows = if args[0] == "list" { 3 } else { 2 };
        assert_eq!(text.lines().count(), rows, "{args:?}: one row per job, after the header:\n{text}");
        assert!(text.contains(r"$'\x1b[31mred\x1b[0m' $'two\nlines\rback' $'\u009b2J\u202egnp.exe'"), "{text}");
    }
    let output = server.cli("alice").args(["status", &job.id, "--json"]).output().unwrap();
    let line = String::from_utf8(output.stdout).unwrap();
    assert!(line.contains(r#""two\nlines\rback""#) && !line.trim_end().chars().any(char::is_control), "{line}");
}

#[test]
fn the_cli_ends_quietly_when_its_reader_goes_away() {
    // `runnel client list | head -1`: the reader leaves before the CLI writes. Not an error, and no panic.
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let job = start(&mut alice, "seq", &["1", "100000"]);
    wait(&mut alice, &job.id);
    for args in [vec!["list"], vec!["status", &job.id], vec!["logs", &job.id], vec!["start", "--", "true"]] {
        let mut cli = server
            .cli("alice")
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(cli.stdout.take());
        let output = cli.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {:?}: {stderr}", output.status);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn tables_show_short_ids_and_every_command_takes_a_unique_prefix() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let job = start(&mut alice, "sh", &["-c", "echo short; exit 4"]);
    wait(&mut alice, &job.id);
    let cli = |identity: &str, args: &[&str]| cli_output(&server, identity, args);
    let short = &job.id[..8];
    let (code, table, _) = cli("alice", &["list"]);
    assert_eq!(code, Some(0));
    assert!(table.lines().nth(1).unwrap().starts_with(&format!("{short}  ")) && !table.contains(&job.id), "{table}");
    let (_, table, _) = cli("alice", &["list", "--no-trunc"]);
    assert!(table.contains(&job.id), "{table}");
    assert_eq!(cli("alice", &["list", "-q"]).1, format!("{}\n", job.id));

    let (code, status, stderr) = cli("alice", &["status", short]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(status.contains("EXITED"), "{status}");
    assert_eq!(cli("alice", &["logs", &job.id[..4]]).1, "short\n");
    assert_eq!(cli("alice", &["wait", &short.to_uppercase()]).0, Some(4));
    // Another identity cannot see it, so its prefix names nothing for it.
    let (code, _, stderr) = cli("bob", &["status", short]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains(&format!("NOT_FOUND: no job you can see has an id beginning with {short}")), "{stderr}");
    let (code, _, stderr) = cli("alice", &["status", "abc"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("INVALID_ARGUMENT") && stderr.contains("not a UUID"), "{stderr}");

    // --timeout bounds every call.
    let sleeper = start(&mut alice, "sleep", &["30"]);
    let (code, _, stderr) = cli("alice", &["--timeout", "300ms", "wait", &sleeper.id[..8]]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("DEADLINE_EXCEEDED"), "{stderr}");
    stop(&mut alice, &sleeper.id, Some(Duration::ZERO));

    // The server says its version on every answer.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(cli("alice", &["version"]).1, format!("client {version}\nserver {version}\n"));
}

#[test]
fn run_streams_on_after_the_first_ctrl_c_until_the_job_ends_and_takes_a_grace() {
    use std::io::{BufRead, BufReader};
    let pki = Pki::new();
    // The job and the test share a directory: no private /tmp.
    let server = Server::start(&pki, &["--no-isolation"]);
    let scratch = util::ScratchDir::new("run-ctrl-c");
    let go_on = scratch.join("go-on");
    // A job that traps SIGTERM, says so, and says more only once the test has seen that: so the test sees it
    // only if `run` goes on streaming while the job stops (before, it waited for the stop in silence, and the
    // job was killed at the end of its grace period with its last line unsaid).
    let script = format!(
        "trap 'echo got-term; while [ ! -e {go_on} ]; do sleep 0.05; done; echo after-term; exit 3' TERM; \
         echo ready; while :; do sleep 0.05; done",
        go_on = go_on.display()
    );
    let mut run = server
        .cli("alice")
        .args(["run", "--grace", "5s", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    util::unsafe_kill(run.id() as i32, 2);
    assert_eq!(lines.next().unwrap().unwrap(), "got-term");
    std::fs::write(&go_on, b"").unwrap();
    assert_eq!(lines.next().map(Result::unwrap).as_deref(), Some("after-term"), "output after the Ctrl-C still comes");
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(3), "the job's own exit code, not a kill at the end of the grace");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("stopping job") && stderr.contains("Ctrl-C again to leave it"), "{stderr}");
}

#[test]
fn remove_job_forgets_an_ended_job_and_frees_its_output_and_rm_and_prune_use_it() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let remove = |client: &mut Client, id: &str| {
        client.unary::<_, Job>(path::REMOVE_JOB, &RemoveJobRequest { job_id: id.into() }, None)
    };
    // A running job cannot go; an ended one can, once, and then nothing of it is left.
    let running = start(&mut alice, "sleep", &["30"]);
    let (code, message) = status_of(remove(&mut alice, &running.id));
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("still running: stop it first"), "{message}");
    let ended = start(&mut alice, "head", &["-c", "3000000", "/dev/zero"]);
    wait(&mut alice, &ended.id);
    let output_dir = server.state_dir.join("jobs").join(&ended.id);
    assert!(output_dir.exists());
    // Bob cannot see it, so he cannot remove it either.
    assert_eq!(status_of(remove(&mut server.client("bob"), &ended.id)).0, Code::NotFound);
    let last = remove(&mut alice, &ended.id).unwrap();
    assert_eq!((last.id.as_str(), last.output_bytes), (ended.id.as_str(), 3_000_000), "its last record");
    assert_eq!(
        status_of(alice.unary::<_, Job>(path::GET_JOB, &GetJobRequest { job_id: ended.id.clone() }, None)).0,
        Code::NotFound
    );
    assert_eq!(status_of(remove(&mut alice, &ended.id)).0, Code::NotFound);
    assert!(eventually(Duration::from_secs(5), || !output_dir.exists()), "its output is freed");

    // The command line: rm takes several ids and prefixes and goes on past one that cannot go.
    let cli = |identity: &str, args: &[&str]| cli_output(&server, identity, args);
    let (one, two) = (start(&mut alice, "true", &[]), start(&mut alice, "true", &[]));
    wait(&mut alice, &one.id);
    wait(&mut alice, &two.id);
    let (code, out, err) = cli("alice", &["rm", &one.id[..8], &running.id, &two.id]);
    assert_eq!(code, Some(1), "one could not go: {err}");
    assert_eq!(out, format!("{}\n{}\n", one.id, two.id));
    assert!(err.contains("FAILED_PRECONDITION") && err.lines().count() == 1, "{err}");

    // prune: the caller's ended jobs (an admin's --all: everyone's), --older-than keeps recent ones.
    let bobs = start(&mut server.client("bob"), "true", &[]);
    wait(&mut server.client("bob"), &bobs.id);
    let recent = start(&mut alice, "true", &[]);
    wait(&mut alice, &recent.id);
    assert_eq!(cli("alice", &["prune", "--older-than", "1h"]).1, "removed 0 ended jobs\n");
    assert_eq!(cli("alice", &["prune"]).1, "removed 1 ended job\n");
    assert_eq!(cli("admin", &["prune"]).1, "removed 0 ended jobs\n", "the admin has none of its own");
    assert_eq!(cli("admin", &["prune", "--all"]).1, "removed 1 ended job\n", "bob's");
    let (_, left, _) = cli("admin", &["list", "-q"]);
    assert_eq!(left, format!("{}\n", running.id), "only the running job is left");
    stop(&mut alice, &running.id, Some(Duration::ZERO));
}
