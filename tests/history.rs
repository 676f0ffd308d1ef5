//! Job history across restarts, against the real binary: ended jobs survive a graceful restart and a SIGKILL of
//! the server with every field and every spooled byte; a job running at a crash comes back lost with its output
//! up to the crash; authorization holds across the restart; each kind of damaged file costs only its own job;
//! `--ephemeral` keeps nothing.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use runnel::client::{CallError, Client};
use runnel::grpc::{path, Code};
use runnel::proto::{
    EndReason, GetJobRequest, Job, JobState, OutputChunk, OutputStream, StartJobRequest, StopJobRequest,
    StreamOutputRequest, WaitJobRequest,
};
use util::{assert_only_history_left, eventually, process_alive, Pki, Server};

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

fn start(client: &mut Client, script: &str) -> Job {
    let request =
        StartJobRequest { command: "sh".into(), args: vec!["-c".into(), script.into()], ..Default::default() };
    client.unary(path::START_JOB, &request, TIMEOUT).unwrap_or_else(|e| panic!("start {script:?}: {e:?}"))
}

fn wait(client: &mut Client, id: &str) -> Job {
    client.unary(path::WAIT_JOB, &WaitJobRequest { job_id: id.into() }, TIMEOUT).unwrap()
}

fn get(client: &mut Client, id: &str) -> Result<Job, CallError> {
    client.unary(path::GET_JOB, &GetJobRequest { job_id: id.into() }, TIMEOUT)
}

/// The job's whole retained output, as (stream, bytes) runs, and where it started.
fn output(client: &mut Client, id: &str) -> (u64, Vec<(i32, Vec<u8>)>) {
    let request = StreamOutputRequest { job_id: id.into(), offset: 0, follow: false };
    let mut stream = client.start_call(path::STREAM_OUTPUT, &request, TIMEOUT).unwrap();
    let (mut first, mut runs): (Option<u64>, Vec<(i32, Vec<u8>)>) = (None, Vec::new());
    while let Some(chunk) = client.next_message::<OutputChunk>(&mut stream).unwrap() {
        let expected = first.unwrap_or(chunk.offset) + runs.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        assert_eq!(chunk.offset, expected, "offsets are contiguous");
        first.get_or_insert(chunk.offset);
        match runs.last_mut() {
            Some((stream, bytes)) if *stream == chunk.stream => bytes.extend_from_slice(&chunk.data),
            _ => runs.push((chunk.stream, chunk.data.to_vec())),
        }
    }
    (first.unwrap_or(0), runs)
}

fn stdout_of(runs: &[(i32, Vec<u8>)]) -> Vec<u8> {
    runs.iter().filter(|(s, _)| *s == OutputStream::Stdout as i32).flat_map(|(_, b)| b.clone()).collect()
}

fn code_of<T: std::fmt::Debug>(result: Result<T, CallError>) -> Code {
    match result {
        Err(CallError::Status(status)) => status.code,
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// What `seq 1 N` prints, up to `len` bytes: output a test can check byte for byte whatever its length.
fn seq_output(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n = 1u64;
    while out.len() < len {
        out.extend_from_slice(format!("{n}\n").as_bytes());
        n += 1;
    }
    out.truncate(len);
    out
}

type Snapshot = BTreeMap<String, (Job, (u64, Vec<(i32, Vec<u8>)>))>;

/// Fails with the jobs that differ, not with megabytes of output.
fn assert_same(seen: &Snapshot, expected: &Snapshot) {
    let jobs = |s: &Snapshot| s.values().map(|(job, _)| job.clone()).collect::<Vec<_>>();
    assert_eq!(jobs(seen), jobs(expected));
    for (id, (_, output)) in expected {
        assert!(&seen[id].1 == output, "job {id}'s output differs");
    }
}

/// Every job the admin sees, by id, with its output.
fn snapshot(server: &Server) -> Snapshot {
    let mut admin = server.client("admin");
    util::list_all_jobs(&mut admin)
        .into_iter()
        .map(|job| {
            let output = output(&mut admin, &job.id);
            (job.id.clone(), (job, output))
        })
        .collect()
}

#[test]
fn ended_jobs_survive_a_graceful_restart_with_every_field_and_byte_and_their_owners() {
    let pki = Pki::new();
    let mut first = Server::start(&pki, &[]);
    let state_dir = first.state_dir.clone();
    let mut alice = first.client("alice");
    let mut bob = first.client("bob");
    let binary = start(&mut alice, "printf 'out\\000\\377\\n'; printf 'err\\001\\n' >&2; printf tail; exit 3");
    let big = start(&mut alice, "seq 1 2000000");
    let stopped = start(&mut bob, "echo started; exec sleep 1000");
    for job in [&binary, &big] {
        wait(&mut alice, &job.id);
    }
    assert!(eventually(Duration::from_secs(10), || get(&mut bob, &stopped.id).unwrap().output_bytes > 0));
    let request = StopJobRequest { job_id: stopped.id.clone(), grace_period: None };
    let _: Job = bob.unary(path::STOP_JOB, &request, TIMEOUT).unwrap();
    wait(&mut bob, &stopped.id);
    let before = snapshot(&first);
    // Running when the server stops: it ends SERVER_SHUTDOWN, and is kept like the rest.
    let running = start(&mut alice, "echo still running; exec sleep 1000");
    assert!(eventually(Duration::from_secs(10), || get(&mut alice, &running.id).unwrap().output_bytes > 0));
    drop((alice, bob));
    let status = first.stop_with(SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", first.log_text());
    assert_only_history_left(&state_dir);

    let mut second = Server::start_on(&pki, Some(&state_dir), &[]);
    let mut after = snapshot(&second);
    assert_eq!(after.len(), 4);
    let (shut_down, (_, shut_down_output)) = after.remove(&running.id).unwrap();
    // Every field and byte as the first server served them.
    assert_same(&after, &before);
    assert_eq!(shut_down.end_reason, EndReason::ServerShutdown as i32);
    assert_eq!(shut_down_output, vec![(OutputStream::Stdout as i32, b"still running\n".to_vec())]);
    let (job, (_, runs)) = &after[&binary.id];
    assert_eq!(
        (job.state, job.exit_code, job.end_reason),
        (JobState::Exited as i32, Some(3), EndReason::Exited as i32)
    );
    let stderr: Vec<u8> =
        runs.iter().filter(|(s, _)| *s == OutputStream::Stderr as i32).flat_map(|(_, b)| b.clone()).collect();
    assert_eq!((stdout_of(runs), stderr), (b"out\0\xff\ntail".to_vec(), b"err\x01\n".to_vec()));
    let expected = seq_output(after[&big.id].0.output_bytes as usize);
    assert!(expected.len() > 14_000_000 && stdout_of(&after[&big.id].1 .1) == expected, "seq's output, byte-exact");
    assert_eq!(after[&stopped.id].0.end_reason, EndReason::Stopped as i32);

    // Who may see what is as it was: bob sees only his job, alice only hers.
    let mut alice = second.client("alice");
    let mut bob = second.client("bob");
    assert_eq!(code_of(get(&mut bob, &binary.id)), Code::NotFound);
    assert_eq!(util::list_all_jobs(&mut bob).into_iter().map(|j| j.id).collect::<Vec<_>>(), vec![stopped.id.clone()]);
    assert_eq!(util::list_all_jobs(&mut alice).len(), 3);
    // New jobs come after the old ones, in the same order as before.
    let newer = start(&mut alice, "echo newer");
    wait(&mut alice, &newer.id);
    let order: Vec<String> = util::list_all_jobs(&mut alice).into_iter().map(|j| j.id).collect();
    assert_eq!(order, [binary.id.clone(), big.id.clone(), running.id.clone(), newer.id.clone()]);
    drop((alice, bob));
    assert_eq!(second.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
    assert_only_history_left(&state_dir);
}

#[test]
fn a_crash_keeps_every_ended_job_and_records_the_running_ones_lost_with_their_output() {
    let pki = Pki::new();
    let mut crashed = Server::start(&pki, &[]);
    let state_dir = crashed.state_dir.clone();
    let mut alice = crashed.client("alice");
    // 100 MiB of output, all of it taken in before the crash.
    let ended = start(&mut alice, "seq 1 20000000 | head -c 104857600; echo err >&2");
    let quick = start(&mut alice, "echo quick; exit 7");
    wait(&mut alice, &ended.id);
    wait(&mut alice, &quick.id);
    let before: BTreeMap<_, _> = [&ended, &quick]
        .into_iter()
        .map(|job| (job.id.clone(), (get(&mut alice, &job.id).unwrap(), output(&mut alice, &job.id))))
        .collect();
    assert_eq!(before[&ended.id].0.output_bytes, 104_857_600 + 4);
    // Writing its 100 MiB when the server dies, and one that had ended but still had its output open (a
    // background writer holds its pipe).
    let writing = start(&mut alice, "seq 1 20000000 | head -c 104857600");
    assert!(eventually(Duration::from_secs(20), || get(&mut alice, &writing.id).unwrap().output_bytes > 20 << 20));
    drop(alice);
    let status = crashed.stop_with(SIGKILL, Duration::from_secs(10));
    assert_eq!(status.code(), None);
    assert!(eventually(Duration::from_secs(10), || !process_alive(writing.pid)), "the job died with its server");
    assert!(fs::read_to_string(state_dir.join("runnel.lock")).unwrap().len() > 2, "the lock file says it crashed");

    let mut restarted = Server::start_on(&pki, Some(&state_dir), &[]);
    let mut alice = restarted.client("alice");
    for (id, (job, output)) in &before {
        assert_eq!(&get(&mut alice, id).unwrap(), job, "an ended job is served as before the crash");
        assert!(&self::output(&mut alice, id) == output, "byte-exact");
    }
    let expected = seq_output(104_857_600);
    assert!(stdout_of(&before[&ended.id].1 .1) == expected);
    let lost = get(&mut alice, &writing.id).unwrap();
    assert_eq!((lost.state, lost.end_reason), (JobState::Killed as i32, EndReason::ServerLost as i32));
    assert_eq!((lost.exit_code, lost.signal), (None, None), "no exit status is known");
    assert!(lost.ended_at.is_some() && lost.output_bytes > 20 << 20, "{lost:?}");
    let (start, runs) = output(&mut alice, &writing.id);
    let spooled = stdout_of(&runs);
    assert_eq!((start, spooled.len() as u64), (0, lost.output_bytes));
    assert!(spooled == expected[..spooled.len()], "what was spooled before the crash, byte-exact");
    let log = restarted.log_text();
    assert!(log.contains(&format!("job {} was running when the previous server stopped", writing.id)), "{log}");
    assert!(!state_dir.join("work").join(&writing.id).exists(), "its working directory is gone");
    // Recorded lost for good: a second restart serves the same end.
    drop(alice);
    assert_eq!(restarted.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
    let mut again = Server::start_on(&pki, Some(&state_dir), &[]);
    assert_eq!(get(&mut again.client("alice"), &writing.id).unwrap(), lost);
    assert_eq!(again.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
}

/// Sends `signal` to each of `pids` when dropped, failed test or not, ignoring those gone: the helpers a test
/// stopped go on (and end) whatever happens to it.
struct SignalOnDrop(Vec<i32>, i32);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            assert!(pid > 1);
            let _ =
                std::process::Command::new("kill").args(["-s", &self.1.to_string(), "--", &pid.to_string()]).status();
        }
    }
}

/// What a killed server had told a client stays true after the restart, even where its helpers had not yet
/// written it down: the segment mover (a job's record: its start, its end) and the spool writer (its output),
/// both stopped (SIGSTOP) while the job starts, writes, and is stopped, and until after the server is killed, carry
/// out what the server sent them once they go on, and the next server starts only after that.
#[test]
fn what_a_killed_server_had_sent_its_helpers_is_written_before_the_next_server_starts() {
    const SIGCONT: i32 = 18;
    const SIGSTOP: i32 = 19;
    let pki = Pki::new();
    let mut crashed = Server::start(&pki, &[]);
    let state_dir = crashed.state_dir.clone();
    let server_pid = crashed.pid();
    let helper = |name: &str| {
        let pids: Vec<i32> = util::pids_where(|cmdline| cmdline.contains(name))
            .into_iter()
            .filter(|&pid| util::parent_of(pid) == Some(server_pid))
            .collect();
        assert_eq!(pids.len(), 1, "one{name}: {pids:?}");
        pids[0]
    };
    let (mover, writer) = (helper(" __segments "), helper(" __writer"));
    // A start takes directories the mover made ahead of it.
    let made_ahead = || util::beside_dirs_made_ahead(&state_dir).0 > 0;
    assert!(eventually(Duration::from_secs(10), made_ahead), "no directories were made ahead");

    let mut alice = crashed.client("alice");
    let go_on = SignalOnDrop(vec![mover, writer], SIGCONT);
    for pid in [mover, writer] {
        util::unsafe_kill(pid, SIGSTOP);
    }
    let job = start(&mut alice, "echo before the stop; exec sleep 600");
    let written = b"before the stop\n";
    assert!(
        eventually(Duration::from_secs(10), || get(&mut alice, &job.id).unwrap().output_bytes == written.len() as u64),
        "its output was not taken in"
    );
    let stop = StopJobRequest { job_id: job.id.clone(), ..Default::default() };
    let stopped: Job = alice.unary(path::STOP_JOB, &stop, TIMEOUT).unwrap();
    assert_eq!((stopped.end_reason, stopped.signal), (EndReason::Stopped as i32, Some(SIGTERM)));
    drop(alice);
    assert_eq!(crashed.stop_with(SIGKILL, Duration::from_secs(10)).code(), None);
    drop(go_on);

    let mut restarted = Server::start_on(&pki, Some(&state_dir), &[]);
    let log = restarted.log_text();
    assert!(!process_alive(mover) && !process_alive(writer), "the old helpers have ended");
    let mut alice = restarted.client("alice");
    let after = get(&mut alice, &job.id).unwrap_or_else(|e| panic!("the job is gone: {e:?}\n{log}"));
    assert_eq!(
        (after.state, after.end_reason, after.signal, after.ended_at),
        (stopped.state, stopped.end_reason, stopped.signal, stopped.ended_at),
        "its end, as the client was told it\n{log}"
    );
    let (start_at, runs) = output(&mut alice, &job.id);
    assert!(start_at == 0 && stdout_of(&runs) == written, "its output: {runs:?}\n{log}");
    drop(alice);
    assert_eq!(restarted.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn each_kind_of_damaged_file_costs_only_its_own_job_with_a_warning() {
    let pki = Pki::new();
    // 8 MiB per job: segments of 1 MiB, so a 3 MiB job has three.
    let caps = ["--max-output-bytes", "8M"];
    let mut first = Server::start(&pki, &caps);
    let state_dir = first.state_dir.clone();
    let mut alice = first.client("alice");
    let jobs: Vec<Job> = ["truncated", "garbage", "newer", "missing-segment", "intact"]
        .iter()
        .map(|name| start(&mut alice, &format!("echo {name}; seq 1 900000")))
        .collect();
    for job in &jobs {
        wait(&mut alice, &job.id);
    }
    let intact = (get(&mut alice, &jobs[4].id).unwrap(), output(&mut alice, &jobs[4].id));
    drop(alice);
    assert_eq!(first.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));

    let dir = |job: &Job| state_dir.join("jobs").join(&job.id);
    let record = |job: &Job| dir(job).join("record");
    let bytes = fs::read(record(&jobs[0])).unwrap();
    fs::write(record(&jobs[0]), &bytes[..bytes.len() / 2]).unwrap();
    fs::write(record(&jobs[1]), b"\x00garbage, not a record at all\xff").unwrap();
    let mut newer = fs::read(record(&jobs[2])).unwrap();
    newer[8] = 2;
    fs::write(record(&jobs[2]), newer).unwrap();
    let mut segments: Vec<_> = fs::read_dir(dir(&jobs[3])).unwrap().map(|e| e.unwrap().path()).collect();
    segments.retain(|p| p.file_name().unwrap().to_string_lossy().bytes().all(|b| b.is_ascii_digit()));
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let missing_from: u64 = segments[..segments.len() - 1].iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    fs::remove_file(segments.last().unwrap()).unwrap();

    let mut second = Server::start_on(&pki, Some(&state_dir), &caps);
    let log = second.log_text();
    for (job, why) in [(&jobs[0], "truncated"), (&jobs[1], "not a runnel job record"), (&jobs[2], "format version 2")] {
        let line = log.lines().find(|l| l.contains(&record(job).display().to_string()));
        assert!(line.is_some_and(|l| l.contains(why) && l.contains("skipped")), "{why}: {line:?}\n{log}");
        assert!(state_dir.join("damaged").join(&job.id).join("record").exists(), "set aside for inspection");
    }
    assert!(log.contains(&format!("job {}: output from offset", jobs[3].id)), "{log}");
    let mut alice = second.client("alice");
    let listed: Vec<String> = util::list_all_jobs(&mut alice).into_iter().map(|j| j.id).collect();
    assert_eq!(listed, [jobs[3].id.clone(), jobs[4].id.clone()]);
    assert_eq!(get(&mut alice, &jobs[4].id).unwrap(), intact.0);
    assert!(output(&mut alice, &jobs[4].id) == intact.1, "the intact job's output is whole");
    // The damaged job keeps what its remaining segments hold: its first bytes, exactly.
    let (start, runs) = output(&mut alice, &jobs[3].id);
    let kept = stdout_of(&runs);
    let mut expected = b"missing-segment\n".to_vec();
    expected.extend(seq_output(kept.len()));
    assert_eq!(start, 0);
    assert!(kept.len() as u64 > missing_from / 2 && kept == expected[..kept.len()], "{} bytes kept", kept.len());
    drop(alice);
    assert_eq!(second.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn ephemeral_forgets_everything_at_shutdown_and_a_history_found_at_startup() {
    let pki = Pki::new();
    let mut kept = Server::start(&pki, &[]);
    let state_dir = kept.state_dir.clone();
    let mut alice = kept.client("alice");
    let old = start(&mut alice, "echo old");
    wait(&mut alice, &old.id);
    drop(alice);
    assert_eq!(kept.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
    assert!(state_dir.join("jobs").join(&old.id).join("record").exists());

    let mut ephemeral = Server::start_on(&pki, Some(&state_dir), &["--ephemeral"]);
    let mut alice = ephemeral.client("alice");
    assert!(util::list_all_jobs(&mut alice).is_empty(), "the history found at startup is deleted");
    let job = start(&mut alice, "echo new");
    wait(&mut alice, &job.id);
    drop(alice);
    assert_eq!(ephemeral.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
    assert!(!state_dir.exists(), "the state directory is removed at shutdown");
}

#[test]
fn list_filters_by_start_time_in_local_time_or_rfc_3339_across_a_restart() {
    let pki = Pki::new();
    let scratch = util::ScratchDir::new("since");
    let state_dir = scratch.path().join("state");
    let mut first = Server::start_on(&pki, Some(&state_dir), &[]);
    let mut alice = first.client("alice");
    let mut jobs = Vec::new();
    for name in ["one", "two", "three"] {
        let job = start(&mut alice, &format!("echo {name}"));
        wait(&mut alice, &job.id);
        jobs.push(job);
        std::thread::sleep(Duration::from_millis(1200));
    }
    drop(alice);
    assert_eq!(first.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
    let server = Server::start_on(&pki, Some(&state_dir), &[]);

    let started = |job: &Job| job.started_at.unwrap();
    // Kolkata is UTC+05:30 all year: a local time there is not the UTC one.
    let kolkata = |seconds: i64| {
        let out = std::process::Command::new("date")
            .env("TZ", "Asia/Kolkata")
            .args(["-d", &format!("@{seconds}"), "+%Y-%m-%d %H:%M:%S"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let utc = |seconds: i64, nanos: i32| {
        let out = std::process::Command::new("date")
            .env("TZ", "UTC")
            .args(["-d", &format!("@{seconds}"), "+%Y-%m-%dT%H:%M:%S"])
            .output()
            .unwrap();
        format!("{}.{nanos:09}Z", String::from_utf8(out.stdout).unwrap().trim())
    };
    let listed = |args: &[&str]| {
        let output = server.cli("alice").env("TZ", "Asia/Kolkata").args(["list", "-q"]).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().lines().map(str::to_string).collect::<Vec<_>>()
    };
    let ids = |picked: &[usize]| picked.iter().map(|&i| jobs[i].id.clone()).collect::<Vec<_>>();
    // The second job's start, its second in Kolkata's time: the first started over a second before it.
    let two = started(&jobs[1]);
    assert_eq!(listed(&["--since", &kolkata(two.seconds)]), ids(&[1, 2]));
    // Half a second before a start, in UTC: RFC 3339 with a fraction.
    let half_before = |at: prost_types::Timestamp| {
        let nanos = i64::from(at.nanos) - 500_000_000;
        utc(at.seconds + nanos.div_euclid(1_000_000_000), nanos.rem_euclid(1_000_000_000) as i32)
    };
    assert_eq!(listed(&["--until", &half_before(two)]), ids(&[0]));
    let three = started(&jobs[2]);
    assert_eq!(listed(&["--since", &kolkata(two.seconds), "--until", &half_before(three)]), ids(&[1]));
    assert_eq!(listed(&["--since", "1h"]), ids(&[0, 1, 2]));
    assert!(listed(&["--until", "1h"]).is_empty());

    let bad = server.cli("alice").args(["list", "--since", "last friday"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!((bad.status.code(), stderr.lines().count()), (Some(2), 1), "{stderr}");
    assert!(stderr.contains("--since") && stderr.contains("is not a time"), "{stderr}");
}

#[test]
fn the_retention_caps_apply_to_the_history_a_server_starts_with() {
    let pki = Pki::new();
    let scratch = util::ScratchDir::new("caps");
    let state_dir = scratch.path().join("state");
    // Segments of 1 MiB (an eighth of the cap per job): retention discards whole segments.
    let mut first = Server::start_on(&pki, Some(&state_dir), &["--max-output-bytes", "8M"]);
    let mut alice = first.client("alice");
    // Four jobs of 3 MB each, oldest first.
    let jobs: Vec<Job> = (0..4).map(|_| start(&mut alice, "seq 1 450000")).collect();
    for job in &jobs {
        wait(&mut alice, &job.id);
    }
    drop(alice);
    assert_eq!(first.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));

    // Fewer jobs kept: the oldest are forgotten, and their files go.
    let mut second = Server::start_on(&pki, Some(&state_dir), &["--max-jobs", "3"]);
    let listed: Vec<String> = util::list_all_jobs(&mut second.client("alice")).into_iter().map(|j| j.id).collect();
    assert_eq!(listed, jobs[1..].iter().map(|j| j.id.clone()).collect::<Vec<_>>());
    assert!(eventually(Duration::from_secs(10), || !state_dir.join("jobs").join(&jobs[0].id).exists()));
    assert_eq!(second.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));

    // Less output kept, per job and in all: whole segments go from the front, oldest jobs' first. A segment is
    // about 1 MiB, or up to twice that when the segment mover was late with the next one: what goes is at most
    // the largest.
    let largest_segment = fs::read_dir(state_dir.join("jobs"))
        .unwrap()
        .flat_map(|job| fs::read_dir(job.unwrap().path()).unwrap())
        .map(|file| file.unwrap())
        .filter(|file| file.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .map(|file| file.metadata().unwrap().len())
        .max()
        .unwrap();
    let caps = ["--max-output-bytes", "2M", "--max-output-total", "4M"];
    let mut third = Server::start_on(&pki, Some(&state_dir), &caps);
    let mut alice = third.client("alice");
    let kept: Vec<Job> = util::list_all_jobs(&mut alice);
    let retained: u64 = kept.iter().map(|j| j.output_bytes - j.output_start).sum();
    assert!(retained <= 4 << 20, "{retained} bytes retained");
    for job in &kept {
        assert!(job.output_bytes - job.output_start <= 2 << 20, "{job:?}");
        assert_eq!(job.output_bytes, get(&mut alice, &job.id).unwrap().output_bytes, "offsets keep their meaning");
        let (start, runs) = output(&mut alice, &job.id);
        let bytes = stdout_of(&runs);
        let expected = seq_output(job.output_bytes as usize);
        assert_eq!(bytes.len() as u64, job.output_bytes - job.output_start, "{job:?}");
        let start = if bytes.is_empty() { job.output_start } else { start };
        assert!(start == job.output_start && bytes[..] == expected[start as usize..], "job {}", job.id);
    }
    let starts: Vec<u64> = kept.iter().map(|j| j.output_start).collect();
    assert!(starts[0] > starts[2] && starts[2] > 0, "the oldest job's output went first: {starts:?}");
    assert!(
        retained > (4 << 20) - largest_segment,
        "no more than the caps asked went: {retained} bytes kept, segments up to {largest_segment}"
    );
    drop(alice);
    assert_eq!(third.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn after_the_machine_went_down_segments_written_over_spares_are_not_read_back() {
    let pki = Pki::new();
    let scratch = util::ScratchDir::new("power-loss");
    let state_dir = scratch.path().join("state");
    // 1 MiB segments, 8 MiB kept per job: a job writing 22 MB fills segments, retention discards the oldest and
    // the next ones are written over them (spares).
    let caps = ["--max-output-bytes", "8M"];
    let mut crashed = Server::start_on(&pki, Some(&state_dir), &caps);
    let mut alice = crashed.client("alice");
    let busy = start(&mut alice, "seq 1 3000000");
    let quiet = start(&mut alice, "echo quiet");
    wait(&mut alice, &busy.id);
    wait(&mut alice, &quiet.id);
    let busy_before = get(&mut alice, &busy.id).unwrap();
    drop(alice);
    assert_eq!(crashed.stop_with(SIGKILL, Duration::from_secs(10)).code(), None);
    // As if the machine had gone down: the lock file names another boot.
    let lock = state_dir.join("runnel.lock");
    let pid = fs::read_to_string(&lock).unwrap().lines().next().unwrap().to_string();
    fs::write(&lock, format!("{pid}\n00000000-0000-4000-8000-000000000000\n")).unwrap();

    let restarted = Server::start_on(&pki, Some(&state_dir), &caps);
    let log = restarted.log_text();
    assert!(
        log.contains(&format!("job {}: output segment", busy.id)) && log.contains("may hold older output"),
        "{log}"
    );
    let mut alice = restarted.client("alice");
    let busy_after = get(&mut alice, &busy.id).unwrap();
    assert_eq!(end_facts(&busy_after), end_facts(&busy_before), "its record is kept");
    // Where its record says its output ended; or, when segments before the first one written over a spare were
    // new files (which ones are spares depends on when the segment mover's replies came), where those end, with
    // the rest said to be missing (a log does not end in a gap).
    let missing = format!(
        "job {}: output from offset {} to {} is missing",
        busy.id, busy_after.output_bytes, busy_before.output_bytes
    );
    assert!(
        busy_after.output_bytes == busy_before.output_bytes
            || (busy_after.output_bytes < busy_before.output_bytes && log.contains(&missing)),
        "{} of {} bytes: {log}",
        busy_after.output_bytes,
        busy_before.output_bytes
    );
    assert!(busy_after.output_bytes - busy_after.output_start < busy_before.output_bytes - busy_before.output_start);
    let (_, runs) = output(&mut alice, &busy.id);
    let kept = stdout_of(&runs);
    let expected = seq_output(busy_before.output_bytes as usize);
    let start = busy_after.output_start as usize;
    assert!(kept[..] == expected[start..start + kept.len()], "what is kept is the job's own output");
    assert_eq!(stdout_of(&output(&mut alice, &quiet.id).1), b"quiet\n", "a job that never wrote over a spare is whole");
}

fn end_facts(job: &Job) -> (i32, i32, Option<i32>, Option<prost_types::Timestamp>) {
    (job.state, job.end_reason, job.exit_code, job.ended_at)
}

#[test]
fn two_servers_histories_restored_into_one_directory_are_both_served() {
    let pki = Pki::new();
    let scratch = util::ScratchDir::new("merge");
    let (first_dir, second_dir) = (scratch.path().join("first"), scratch.path().join("second"));
    let mut ids = Vec::new();
    for dir in [&first_dir, &second_dir] {
        let mut server = Server::start_on(&pki, Some(dir), &[]);
        let mut alice = server.client("alice");
        let job = start(&mut alice, &format!("echo from {}", dir.display()));
        wait(&mut alice, &job.id);
        ids.push(job.id);
        drop(alice);
        assert_eq!(server.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
    }
    // The second server's job has the same start order (the first) as the first's.
    let from_second = second_dir.join("jobs").join(&ids[1]);
    fs::rename(&from_second, first_dir.join("jobs").join(&ids[1])).unwrap();
    for _restart in 0..2 {
        let mut merged = Server::start_on(&pki, Some(&first_dir), &[]);
        let mut alice = merged.client("alice");
        let listed: Vec<String> = util::list_all_jobs(&mut alice).into_iter().map(|j| j.id).collect();
        assert_eq!(listed, ids, "both, the moved one after the other");
        let (_, runs) = output(&mut alice, &ids[1]);
        assert_eq!(stdout_of(&runs), format!("from {}\n", second_dir.display()).into_bytes());
        drop(alice);
        assert_eq!(merged.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
    }
}

#[test]
fn job_output_is_written_by_the_spool_writer_and_its_death_stops_the_server_with_an_error() {
    let pki = Pki::new();
    let mut server = Server::start(&pki, &[]);
    let state_dir = server.state_dir.clone();
    let server_pid = server.pid();
    let writers = util::pids_where(|cmdline| cmdline.contains(" __writer"))
        .into_iter()
        .filter(|&pid| util::parent_of(pid) == Some(server_pid))
        .collect::<Vec<_>>();
    assert_eq!(writers.len(), 1, "one spool writer per server: {writers:?}");
    let writer = writers[0];
    assert!(server.log_text().contains(&format!("spool writer started: pid {writer}")), "{}", server.log_text());
    let mut alice = server.client("alice");
    // 22 MB through the writer's data pipe: whole, byte for byte, and complete when WaitJob answers.
    let ended = start(&mut alice, "seq 1 3000000");
    let waited = wait(&mut alice, &ended.id);
    let expected = seq_output(22_888_896);
    assert_eq!(waited.output_bytes, expected.len() as u64, "WaitJob reports the whole output");
    let (start_at, runs) = output(&mut alice, &ended.id);
    assert!(start_at == 0 && stdout_of(&runs) == expected, "its output, byte for byte");
    let flooding = start(&mut alice, "while :; do seq 1 100000; done");
    assert!(eventually(Duration::from_secs(10), || get(&mut alice, &flooding.id).unwrap().output_bytes > 10 << 20));

    util::unsafe_kill(writer, SIGKILL);
    let status = server.exit_within(Duration::from_secs(30));
    assert!(!status.success(), "{status:?}");
    let log = server.log_text();
    assert!(log.contains(&format!("the spool writer (pid {writer}) is gone")), "{log}");
    assert!(log.contains("job output can no longer be written, so the server stops"), "{log}");

    // As after a crash: the ended job's output is whole, the running one is recorded lost.
    let mut again = Server::start_on(&pki, Some(&state_dir), &[]);
    let mut alice = again.client("alice");
    let (start_at, runs) = output(&mut alice, &ended.id);
    assert!(start_at == 0 && stdout_of(&runs) == expected, "kept, byte for byte");
    let lost = get(&mut alice, &flooding.id).unwrap();
    assert_eq!(lost.end_reason, EndReason::ServerLost as i32, "{lost:?}");
    drop(alice);
    assert_eq!(again.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn a_busy_jobs_segment_files_are_the_segment_movers_and_the_server_carries_on_without_it() {
    let pki = Pki::new();
    // 1 MiB segments, 8 MiB kept per job: 22 MB of output rolls 21 segments and discards 13.
    let mut server = Server::start(&pki, &["--max-output-bytes", "8M"]);
    let state = server.state_dir.to_str().unwrap().to_string();
    let movers = || util::pids_where(|cmdline| cmdline.contains(" __segments ") && cmdline.contains(&state));
    assert_eq!(movers().len(), 1, "one segment mover per server: {:?}", movers());
    let mover = movers()[0];
    assert!(server.log_text().contains(&format!("segment mover started: pid {mover}")), "{}", server.log_text());
    let mut alice = server.client("alice");
    let segment_files = |id: &str| {
        let dir = fs::read_dir(server.state_dir.join("jobs").join(id)).unwrap();
        dir.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())).count()
    };
    let check = |alice: &mut Client, script: &str| {
        let job = start(alice, script);
        let ended = wait(alice, &job.id);
        let (start, runs) = output(alice, &job.id);
        let kept = stdout_of(&runs);
        let expected = seq_output(ended.output_bytes as usize);
        assert_eq!((start, kept.len() as u64), (ended.output_start, ended.output_bytes - ended.output_start));
        assert!(kept[..] == expected[start as usize..], "job {}: its output, byte for byte", job.id);
        assert!(ended.output_start > 0 && ended.output_bytes > 20_000_000, "{ended:?}");
        job.id
    };

    let first = check(&mut alice, "seq 1 3000000");
    // The retained segments only: a next segment made ahead and never written went when the output ended.
    assert!(eventually(Duration::from_secs(10), || segment_files(&first) <= 9), "{} files", segment_files(&first));

    // Without the mover, the loop makes and moves the files itself.
    util::unsafe_kill(mover, SIGKILL);
    let second = check(&mut alice, "seq 1 3000000");
    assert!(segment_files(&second) <= 9, "{} files", segment_files(&second));
    assert!(server.log_text().contains("the segment mover is gone"), "{}", server.log_text());
    drop(alice);
    assert_eq!(server.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
    assert_only_history_left(&server.state_dir);
}
