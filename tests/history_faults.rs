//! The server killed with SIGKILL at random moments of a mixed workload (starts, output floods at the retention
//! caps, stops, waits, removals, evictions), 50 times in a row on one state directory. After each restart every
//! job must be consistent: it starts; every job it lists has its record and its output, and its output replays
//! byte-exact for what it retains; nothing is on disk that it does not list; every job seen ended before the
//! kill is served as it was seen (unless evicted, which takes the oldest ended jobs first); a job removed stays
//! removed. `RUNNEL_FAULT_SEED` repeats a run (each run prints its seed).

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runnel::client::{CallError, Client};
use runnel::grpc::path;
use runnel::proto::{
    GetJobRequest, Job, JobState, OutputChunk, RemoveJobRequest, StartJobRequest, StopJobRequest, StreamOutputRequest,
    WaitJobRequest,
};
use util::{Pki, Server};

const ROUNDS: usize = 50;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
/// Small caps, so that retention discards segments, spares are written over, and old jobs are evicted.
/// Segments are an eighth of the per-job cap: 1 MiB here, large enough to be kept as spares and written over.
const SERVER_FLAGS: [&str; 6] = ["--max-jobs", "24", "--max-output-bytes", "8M", "--max-output-total", "24M"];

/// The most any job's `seq 1 N` prints.
const MAX_SEQ: u64 = 1_500_000;

/// What the job `sh -c 'echo TAG; seq 1 N[; ...]'` prints: each job's output is known from its command line, and
/// its own (the tags differ in value and length, so no two jobs have the same bytes at the same offsets).
fn expected_output(job: &Job) -> Vec<u8> {
    static ALL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| (1..=MAX_SEQ).flat_map(|i| format!("{i}\n").into_bytes()).collect());
    let script = job.args.get(1).expect("sh -c SCRIPT");
    let mut commands = script.split(';').map(str::trim);
    let tag = commands.next().and_then(|c| c.strip_prefix("echo ")).unwrap();
    let n: u64 = commands.next().and_then(|c| c.strip_prefix("seq 1 ")).unwrap().parse().unwrap();
    // Each number with d digits takes d + 1 bytes.
    let (mut len, mut from) = (0u64, 1u64);
    for digits in 1.. {
        let to = (from * 10 - 1).min(n);
        len += (to - from + 1) * (digits + 1);
        if to == n {
            break;
        }
        from *= 10;
    }
    [format!("{tag}\n").as_bytes(), &all[..len as usize]].concat()
}

/// The facts of an ended job that a restart must keep.
fn end_facts(job: &Job) -> (String, i32, i32, Option<i32>, Option<i32>, Option<prost_types::Timestamp>) {
    (job.id.clone(), job.state, job.end_reason, job.exit_code, job.signal, job.ended_at)
}

fn is_ended(job: &Job) -> bool {
    job.state == JobState::Exited as i32 || job.state == JobState::Killed as i32
}

#[derive(Default)]
struct Seen {
    /// Jobs seen ended, with their start order (as listed) unknown until the next listing: id → the end.
    ended: BTreeMap<String, Job>,
    removed: BTreeSet<String>,
    /// RemoveJob sent when the server died: removed or not, as it got to it.
    maybe_removed: BTreeSet<String>,
    /// Evicted, as the servers' logs say: only a job past `--max-jobs`, the oldest ended first.
    evicted: BTreeSet<String>,
    /// Jobs found lost after a kill, and restored jobs whose older output retention had discarded.
    lost: BTreeSet<String>,
    discarded: BTreeSet<String>,
    /// Segment files read back that had been written over a spare (the flag in their header).
    over_spare: usize,
    started: Vec<String>,
}

impl Seen {
    /// Takes note of the jobs a server's log says it evicted.
    fn read_evictions(&mut self, log: &str) {
        let ids = log.lines().filter_map(|line| line.split("evicting ended job ").nth(1));
        self.evicted.extend(ids.map(|id| id.trim().to_string()));
    }
}

/// Random calls until the server dies under them.
fn workload(server: &Server, rng: &mut StdRng, seen: &mut Seen) {
    let Ok(mut client) = Client::connect(&server.settings("alice")) else { return };
    loop {
        let running: Vec<&String> = seen.started.iter().filter(|id| !seen.ended.contains_key(*id)).collect();
        let ended: Vec<&String> = seen.ended.keys().filter(|id| !seen.removed.contains(*id)).collect();
        let outcome: Result<(), CallError> = match rng.random_range(0..10) {
            0..=3 => {
                let tag = rng.random::<u64>() >> rng.random_range(0..60);
                let script = match rng.random_range(0..4) {
                    0 => format!("echo {tag}; seq 1 {}", rng.random_range(1..2000)),
                    1 => format!("echo {tag}; seq 1 {}", rng.random_range(100_000..MAX_SEQ)),
                    2 => format!("echo {tag}; seq 1 {}; exec sleep 1000", rng.random_range(1..50_000)),
                    _ => format!("echo {tag}; seq 1 {}; exit {}", rng.random_range(1..300_000), rng.random_range(0..5)),
                };
                let request =
                    StartJobRequest { command: "sh".into(), args: vec!["-c".into(), script], ..Default::default() };
                client.unary::<_, Job>(path::START_JOB, &request, TIMEOUT).map(|job| seen.started.push(job.id))
            }
            4 | 5 if !running.is_empty() => {
                let id = running[rng.random_range(0..running.len())].clone();
                let request =
                    StopJobRequest { job_id: id, grace_period: Some(Duration::from_millis(200).try_into().unwrap()) };
                client.unary::<_, Job>(path::STOP_JOB, &request, TIMEOUT).map(|job| {
                    seen.ended.insert(job.id.clone(), job);
                })
            }
            6 | 7 if !running.is_empty() => {
                let id = running[rng.random_range(0..running.len())].clone();
                match client.unary::<_, Job>(path::GET_JOB, &GetJobRequest { job_id: id.clone() }, TIMEOUT) {
                    Ok(job) if is_ended(&job) => {
                        seen.ended.insert(id, job);
                        Ok(())
                    }
                    Ok(_) => client
                        .unary::<_, Job>(
                            path::WAIT_JOB,
                            &WaitJobRequest { job_id: id },
                            Some(Duration::from_millis(300)),
                        )
                        .map(|job| {
                            seen.ended.insert(job.id.clone(), job);
                        })
                        .or_else(|err| match err {
                            CallError::Status(status) if status.code == runnel::grpc::Code::DeadlineExceeded => Ok(()),
                            // Evicted already: it was not seen ended.
                            CallError::Status(status) if status.code == runnel::grpc::Code::NotFound => Ok(()),
                            err => Err(err),
                        }),
                    Err(CallError::Status(status)) if status.code == runnel::grpc::Code::NotFound => Ok(()),
                    Err(err) => Err(err),
                }
            }
            8 if !ended.is_empty() => {
                let id = ended[rng.random_range(0..ended.len())].clone();
                match client.unary::<_, Job>(path::REMOVE_JOB, &RemoveJobRequest { job_id: id.clone() }, TIMEOUT) {
                    Ok(_) => {
                        seen.removed.insert(id);
                        Ok(())
                    }
                    Err(CallError::Status(status)) if status.code == runnel::grpc::Code::NotFound => Ok(()),
                    Err(err) => {
                        seen.maybe_removed.insert(id);
                        Err(err)
                    }
                }
            }
            _ => {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..30)));
                Ok(())
            }
        };
        match outcome {
            Ok(()) => {}
            // Refused for being over a cap (too many jobs running): part of the workload.
            Err(CallError::Status(status)) if status.code == runnel::grpc::Code::ResourceExhausted => {}
            // The server died under the call.
            Err(_) => return,
        }
    }
}

/// Every check a restart must pass; panics naming the round and the job.
fn check(server: &Server, round: usize, seen: &mut Seen) {
    let log = server.log_text();
    seen.read_evictions(&log);
    for damage in ["skipped", "is missing", "may hold older output", "moved to", "has the start order of another"] {
        assert!(!log.contains(damage), "round {round}: a kill left damage ({damage}):\n{log}");
    }
    let mut client = server.client("alice");
    let jobs = util::list_all_jobs(&mut client);
    let listed: BTreeSet<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let mut on_disk: BTreeSet<String> = BTreeSet::new();
    // Directories made ahead of starts to come are no job's (yet).
    let (_, jobs_dirs) = util::beside_dirs_made_ahead(&server.state_dir);
    for entry in fs::read_dir(server.state_dir.join("jobs")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !jobs_dirs.contains(&format!("jobs/{name}")) {
            continue;
        }
        on_disk.insert(name);
        assert!(entry.path().join("record").exists(), "round {round}: {} has no record", entry.path().display());
        for file in fs::read_dir(entry.path()).unwrap() {
            let header = fs::read(file.unwrap().path()).unwrap();
            if header.starts_with(b"RUNNELSG") && header.get(12).is_some_and(|flags| flags & 1 != 0) {
                seen.over_spare += 1;
            }
        }
    }
    assert_eq!(on_disk, listed, "round {round}: what is on disk is what is listed");
    for job in &jobs {
        assert!(is_ended(job), "round {round}: job {} is {:?} after a restart", job.id, job.state);
        if job.end_reason == runnel::proto::EndReason::ServerLost as i32 {
            seen.lost.insert(job.id.clone());
        }
        if job.output_start > 0 {
            seen.discarded.insert(job.id.clone());
        }
        let request = StreamOutputRequest { job_id: job.id.clone(), offset: 0, follow: false };
        let mut stream = client.start_call(path::STREAM_OUTPUT, &request, TIMEOUT).unwrap();
        let mut bytes = Vec::new();
        while let Some(chunk) = client.next_message::<OutputChunk>(&mut stream).unwrap() {
            assert_eq!(chunk.offset, job.output_start + bytes.len() as u64, "round {round}: job {}", job.id);
            bytes.extend_from_slice(&chunk.data);
        }
        assert_eq!(bytes.len() as u64, job.output_bytes - job.output_start, "round {round}: job {}", job.id);
        let expected = expected_output(job);
        let range = job.output_start as usize..job.output_bytes as usize;
        assert!(
            expected.get(range.clone()) == Some(&bytes[..]),
            "round {round}: job {}'s output {range:?} is not what its command wrote",
            job.id
        );
    }
    for (id, before) in &seen.ended {
        match jobs.iter().find(|j| &j.id == id) {
            Some(after) => {
                assert!(!seen.removed.contains(id), "round {round}: removed job {id} is back");
                assert_eq!(end_facts(after), end_facts(before), "round {round}: job {id} changed");
            }
            None if seen.removed.contains(id) || seen.maybe_removed.contains(id) || seen.evicted.contains(id) => {}
            None => panic!("round {round}: job {id}, seen ended ({before:?}), is missing\n{log}"),
        }
    }
    // Forget what is gone for good; what is listed is ended now, and is checked as it is from here on.
    seen.ended.retain(|id, _| listed.contains(id));
    for job in jobs {
        seen.ended.insert(job.id.clone(), job);
    }
    seen.started.retain(|id| listed.contains(id));
}

#[test]
fn fifty_sigkills_at_random_moments_leave_every_job_consistent() {
    let seed = std::env::var("RUNNEL_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("RUNNEL_FAULT_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let pki = Pki::new();
    // Its own, not the first server's: each server's scratch directory goes with it.
    let scratch = util::ScratchDir::new("faults");
    let state_dir = scratch.path().join("state");
    let mut server = Server::start_on(&pki, Some(&state_dir), &SERVER_FLAGS);
    let mut seen = Seen::default();
    let begun = Instant::now();
    for round in 1..=ROUNDS {
        // The kill comes from another thread at a random moment, whatever the workload is doing.
        let delay = Duration::from_millis(rng.random_range(20..900));
        let pid = server.pid();
        let killed = Arc::new(AtomicBool::new(false));
        let killer = {
            let killed = Arc::clone(&killed);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                util::unsafe_kill(pid, SIGKILL);
                killed.store(true, Ordering::SeqCst);
            })
        };
        while !killed.load(Ordering::SeqCst) {
            workload(&server, &mut rng, &mut seen);
        }
        killer.join().unwrap();
        let status = server.stop_with(SIGKILL, Duration::from_secs(10));
        assert_eq!(status.code(), None, "round {round}: the server was killed");
        seen.read_evictions(&server.log_text());
        // Its jobs die with it (their inits' parent-death signal) before the next server takes the directory.
        server = Server::start_on(&pki, Some(&state_dir), &SERVER_FLAGS);
        check(&server, round, &mut seen);
    }
    eprintln!(
        "{ROUNDS} kills in {:.1} s: {} jobs lost with their server, {} restored with older output discarded, {} \
         evicted, {} removed; {} segments written over spares read back; {} retained at the end",
        begun.elapsed().as_secs_f64(),
        seen.lost.len(),
        seen.discarded.len(),
        seen.evicted.len(),
        seen.removed.len(),
        seen.over_spare,
        seen.ended.len()
    );
    // The workload must have made what is checked happen.
    assert!(seen.lost.len() >= 10 && seen.discarded.len() >= 5 && seen.evicted.len() >= 5 && !seen.removed.is_empty());
    assert!(seen.over_spare > 0, "no segment written over a spare was ever read back");
    assert_eq!(server.stop_with(SIGTERM, Duration::from_secs(30)).code(), Some(0));
    util::assert_only_history_left(&state_dir);
}
