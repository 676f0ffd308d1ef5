//! What a job can see and do inside its namespaces, against the real server binary running as root (the
//! development and CI machines are root and may create namespaces; cgroup limits are proven by `make vmtest`).

mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use runnel::client::Client;
use runnel::grpc::path;
use runnel::proto::{EndReason, Job, JobState, StartJobRequest, StreamOutputRequest, WaitJobRequest};
use util::{eventually, pids_matching, Pki, Server, BIN};

/// Runs `sh -c SCRIPT` as a job, waits for it, and returns the job and its stdout.
fn run_shell(client: &mut Client, script: &str) -> (Job, String) {
    let request =
        StartJobRequest { command: "sh".into(), args: vec!["-c".into(), script.into()], ..Default::default() };
    let job: Job = client.unary(path::START_JOB, &request, None).expect("start");
    wait_and_read(client, &job.id)
}

/// Waits for the job `job_id` to end; returns it and its stdout.
fn wait_and_read(client: &mut Client, job_id: &str) -> (Job, String) {
    let ended: Job = client
        .unary(path::WAIT_JOB, &WaitJobRequest { job_id: job_id.into() }, Some(Duration::from_secs(30)))
        .expect("wait");
    let request = StreamOutputRequest { job_id: job_id.into(), offset: 0, follow: false };
    let mut stream = client.start_call(path::STREAM_OUTPUT, &request, Some(Duration::from_secs(30))).expect("stream");
    let mut stdout = Vec::new();
    while let Some(chunk) = client.next_message::<runnel::proto::OutputChunk>(&mut stream).expect("chunk") {
        if chunk.stream == runnel::proto::OutputStream::Stdout as i32 {
            stdout.extend_from_slice(&chunk.data);
        }
    }
    (ended, String::from_utf8_lossy(&stdout).into_owned())
}

/// `pid args` for every process the job can see, from its own /proc.
const LIST_PROCESSES: &str = r#"for p in /proc/[0-9]*; do echo "${p#/proc/} $(tr '\0' ' ' < $p/cmdline)"; done"#;

#[test]
fn a_job_sees_only_its_own_processes_hostname_and_loopback() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    // The init execs `runnel __init` just after it reported the command started: on a loaded machine the
    // command can look before that, and would see the server's command line (a fork of it) as PID 1's.
    let await_init = "for i in $(seq 200); do grep -q __init /proc/1/cmdline && break; sleep 0.01; done";
    let script = format!("{await_init}; echo self $$; hostname; {LIST_PROCESSES}; cat /proc/net/dev");
    let (job, out) = run_shell(&mut client, &script);
    assert_eq!(job.exit_code, Some(0), "{out}");

    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("self 2"), "the command is the init's child, PID 2:\n{out}");
    assert_eq!(lines.next(), Some(&job.id[..8]), "hostname is the job id's first 8 hex digits");
    // After the `self` and hostname lines (a hostname may be all digits), one line per process.
    let processes: Vec<&str> =
        out.lines().skip(2).filter(|l| l.split(' ').next().is_some_and(|p| p.parse::<u32>().is_ok())).collect();
    assert!(processes[0].starts_with("1 runnel __init "), "PID 1 is runnel's init: {processes:?}");
    for line in &processes[1..] {
        let command = line.split(' ').nth(1).unwrap_or("");
        assert!(matches!(command, "sh" | "tr" | ""), "a process that is not the job's: {line:?}\n{out}");
    }
    assert!(processes.len() <= 4, "only the init, the shell and its current child: {processes:?}");
    // /proc/net/dev: two header lines, then one `name: counters` line per interface.
    let table = out.split_once("face |bytes").expect("/proc/net/dev header").1;
    let interfaces: Vec<&str> =
        table.lines().skip(1).filter_map(|l| l.split_once(':')).map(|(name, _)| name.trim()).collect();
    assert_eq!(interfaces, ["lo"], "only the loopback interface:\n{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("lo:")));
}

#[test]
fn shells_waiting_for_a_job_see_what_is_mounted_meanwhile_and_keep_nothing_unmounted_alive() {
    // The server in a mount namespace of its own whose mounts are shared, as systemd makes the host's, so that
    // this test's mounts stay out of the host's.
    let pki = Pki::new();
    let server = Server::start_after(&pki, &["unshare", "-m", "--propagation", "shared"], "exec \"$@\"", &[]);
    let mut client = server.client("alice");
    let shells = || {
        let shells = util::pids_where(|c| c.starts_with("runnel __init --shell"));
        shells.into_iter().filter(|&pid| util::parent_of(pid) == Some(server.pid())).collect::<Vec<_>>()
    };
    assert!(eventually(Duration::from_secs(5), || shells().len() == 8), "{:?}", shells());
    let target = format!("/mnt/runnel-test-{}", std::process::id());
    // Made in the server's mount namespace, on the host's file system: removed however the test ends (the mount
    // goes with the namespace).
    struct RemoveDir(String);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _made = RemoveDir(target.clone());
    let in_server_namespace = |command: &str| {
        let pid = server.pid().to_string();
        let status = Command::new("nsenter").args(["-t", &pid, "-m", "sh", "-c", command]).status().unwrap();
        assert!(status.success(), "{command}");
    };
    in_server_namespace(&format!("mkdir -p {target} && mount -t tmpfs test {target} && echo seen > {target}/f"));
    let (job, out) = run_shell(&mut client, &format!("cat {target}/f"));
    assert_eq!((job.exit_code, out.as_str()), (Some(0), "seen\n"), "a shell made before the mount missed it");
    in_server_namespace(&format!("umount {target} && rmdir {target}"));
    for shell in shells() {
        let mounts = std::fs::read_to_string(format!("/proc/{shell}/mountinfo")).unwrap_or_default();
        assert!(!mounts.contains(&target), "shell {shell} keeps the unmounted file system:\n{mounts}");
    }
}

/// The network namespace a job sees: its `/proc/self/ns/net` link and the interfaces in `/proc/net/dev`.
const SHOW_NETWORK: &str = "readlink /proc/self/ns/net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";

#[test]
fn shells_made_ahead_of_time_serve_one_job_each_and_the_helper_is_not_needed() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    // The shells waiting for a job are the server's children (it reaps them), in namespaces of their own; the
    // helper made them from nothing of the server's.
    let shells_ready = || {
        let shells = util::pids_where(|c| c.starts_with("runnel __init --shell"));
        shells.into_iter().filter(|&pid| util::parent_of(pid) == Some(server.pid())).collect::<Vec<_>>()
    };
    assert!(eventually(Duration::from_secs(5), || shells_ready().len() == 8), "{:?}", shells_ready());
    let helpers = util::pids_where(|c| c.contains("__shells"));
    let helper = *helpers.iter().find(|&&pid| util::parent_of(pid) == Some(server.pid())).expect("the helper runs");
    // Once the pool is full: beyond 0-2 (its socket to the server, /dev/null, the server's stderr), only what it
    // opened itself. A shell is the server's child from its clone on, so the eighth may be there while the helper
    // still waits for it to be ready, holding its socket: what it holds is checked until it settles.
    let own_executable = std::fs::canonicalize(util::BIN).unwrap();
    let held_beyond = || {
        let mut held = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{helper}/fd")).unwrap() {
            let entry = entry.unwrap();
            let number: i32 = entry.file_name().to_string_lossy().parse().unwrap();
            // A descriptor closed since the directory was read has no link to read.
            let Ok(target) = std::fs::read_link(entry.path()) else { continue };
            if number > 2 && target != Path::new("/dev/null") && target != own_executable {
                held.push(format!("{number}: {}", target.display()));
            }
        }
        held
    };
    assert!(eventually(Duration::from_secs(5), || held_beyond().is_empty()), "the helper holds {:?}", held_beyond());
    for shell in shells_ready() {
        let pid_namespace = std::fs::read_link(format!("/proc/{shell}/ns/pid")).unwrap();
        assert_ne!(pid_namespace, std::fs::read_link("/proc/self/ns/pid").unwrap());
    }

    // More jobs at once than the pool holds (8), each taking a shell or, if none is ready yet, forking its own.
    let script = format!("{SHOW_NETWORK}; sleep 3");
    let started: Vec<Job> = (0..12)
        .map(|_| {
            let request =
                StartJobRequest { command: "sh".into(), args: vec!["-c".into(), script.clone()], ..Default::default() };
            client.unary(path::START_JOB, &request, None).expect("start")
        })
        .collect();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy().into_owned();
    let mut namespaces = BTreeSet::new();
    for job in &started {
        let (_, out) = wait_and_read(&mut client, &job.id);
        let mut lines = out.lines();
        let namespace = lines.next().expect("the namespace").to_string();
        assert_ne!(namespace, host, "a job in the host's network namespace");
        assert_eq!(lines.collect::<Vec<_>>(), ["lo"], "only the loopback interface:\n{out}");
        namespaces.insert(namespace);
    }
    assert_eq!(namespaces.len(), started.len(), "jobs running at once share a network namespace: {namespaces:?}");

    // Without the helper, each start forks its own namespaces, set up the same.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(helper), nix::sys::signal::Signal::SIGKILL).unwrap();
    for _ in 0..10 {
        let (job, out) = run_shell(&mut client, "readlink /proc/self/ns/net; cat /sys/class/net/lo/operstate");
        assert_eq!(job.exit_code, Some(0), "{out}");
        assert!(!out.starts_with(&host) && out.lines().nth(1).is_some_and(|l| l != "down"), "{out}");
    }
    assert!(server.log_text().contains("shell helper is gone"), "{}", server.log_text());
    assert!(eventually(Duration::from_secs(5), || util::parent_of(helper).is_none()), "the helper was not reaped");
}

#[test]
fn host_network_keeps_the_hosts_interfaces() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--host-network"]);
    let mut client = server.client("alice");
    let (_, out) = run_shell(&mut client, "cat /proc/net/dev");
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(out.lines().count(), host.lines().count(), "job:\n{out}\nhost:\n{host}");
}

#[test]
fn each_job_runs_unprivileged_as_a_user_of_its_own_or_the_one_given() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let (mut alice, mut bob) = (server.client("alice"), server.client("bob"));
    let script = "id -u; id -g; stat -c %u:%a .; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Groups):' /proc/self/status; sleep 1";
    let request =
        StartJobRequest { command: "sh".into(), args: vec!["-c".into(), script.into()], ..Default::default() };
    // Running at the same time, so neither's user can have gone back to the range.
    let first: Job = alice.unary(path::START_JOB, &request, None).unwrap();
    let second: Job = bob.unary(path::START_JOB, &request, None).unwrap();
    let mut uids = BTreeSet::new();
    for (client, job) in [(&mut alice, &first), (&mut bob, &second)] {
        let (_, out) = wait_and_read(client, &job.id);
        let mut lines = out.lines();
        let uid: u32 = lines.next().and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("{out}"));
        assert!((0x7000_0000..0x7001_0000).contains(&uid), "a uid from the default range:\n{out}");
        assert_eq!(lines.next(), Some(uid.to_string().as_str()), "its group is the same number:\n{out}");
        assert_eq!(lines.next(), Some(format!("{uid}:700").as_str()), "its working directory is its own:\n{out}");
        let fields: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k, v.trim())).collect();
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert!(fields.contains(&(cap, "0000000000000000")), "{cap} not empty:\n{out}");
        }
        assert!(fields.contains(&("NoNewPrivs", "1")), "{out}");
        assert!(fields.contains(&("Groups", "")), "no supplementary groups:\n{out}");
        uids.insert(uid);
    }
    assert_eq!(uids.len(), 2, "two jobs running at once share a user: {uids:?}");

    let server = Server::start(&pki, &["--run-as", "nobody"]);
    let (_, out) = run_shell(&mut server.client("alice"), "id -u");
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    assert_eq!(out.trim(), String::from_utf8(nobody.stdout).unwrap().trim(), "--run-as nobody");

    // A range with an account's id in it is refused at startup, naming the account.
    let scratch = util::ScratchDir::new("range");
    let output = util::server_command(&pki, &scratch.path().join("state"))
        .args(["--run-as-range", "65000:1000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--run-as-range 65000:1000") && stderr.contains("nobody"), "{stderr}");
}

#[test]
fn a_jobs_own_user_bounds_its_processes_where_there_is_no_cgroup() {
    // This host has no usable cgroup v2: --pids is enforced by the job's user's process count alone.
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    let bomb = r#"
import os, time
children = 0
try:
    while children < 500:
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        children += 1
except OSError as err:
    print("refused", err.errno == 11)
print(children)
"#;
    let mut request =
        StartJobRequest { command: "python3".into(), args: vec!["-c".into(), bomb.into()], ..Default::default() };
    request.limits = Some(runnel::proto::ResourceLimits { max_pids: 50, ..Default::default() });
    let job: Job = client.unary(path::START_JOB, &request, None).unwrap();
    assert_eq!(job.limits.as_ref().map(|l| l.max_pids), Some(50), "{job:?}");
    let (_, out) = wait_and_read(&mut client, &job.id);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("refused True"), "fork failed with EAGAIN:\n{out}");
    let children: u32 = lines.next().and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    // The init and the python process count too.
    assert!((40..=48).contains(&children), "{children} processes started under --pids 50");

    let request = StartJobRequest {
        command: "true".into(),
        limits: Some(runnel::proto::ResourceLimits { memory_bytes: 1 << 20, ..Default::default() }),
        ..Default::default()
    };
    let err = client.unary::<_, Job>(path::START_JOB, &request, None).unwrap_err();
    assert!(format!("{err:?}").contains("only pids is enforced here"), "{err:?}");
}

#[test]
fn a_job_cannot_read_the_servers_environment_or_descriptors() {
    let pki = Pki::new();
    let secret = "s3cret-value-the-job-must-not-see";
    let server = Server::start_with_env(&pki, &[], &[("RUNNEL_TEST_SECRET", secret)]);
    let mut client = server.client("alice");
    let script = format!(
        "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; cat /proc/{}/environ 2>&1; ls -l /proc/self/fd",
        server.pid()
    );
    let (_, out) = run_shell(&mut client, &script);
    assert!(!out.contains(secret), "the server's environment leaked:\n{out}");
    assert!(!out.contains("RUST_LOG"), "the server's environment leaked:\n{out}");
    // `ls` inherited the job's descriptors: 0-2, plus the directory it is listing.
    let fds: BTreeSet<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(left, target)| {
            (left.rsplit(' ').next().unwrap(), if target.starts_with("pipe:") { "pipe" } else { target })
        })
        .collect();
    let expected = BTreeSet::from([("0", "/dev/null"), ("1", "pipe"), ("2", "pipe")]);
    let other: Vec<_> = fds.iter().filter(|(fd, _)| *fd != "3").collect();
    assert_eq!(other.len(), 3, "only the standard descriptors reach the job: {fds:?}\n{out}");
    assert!(fds.iter().filter(|(fd, _)| *fd != "3").all(|fd| expected.contains(fd)), "{fds:?}");
}

#[test]
fn orphans_are_reaped_by_the_jobs_init() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    // The inner shell leaves a short sleep behind and exits; the sleep re-parents to PID 1 and ends.
    let script = r#"sh -c 'sleep 0.2 & exit 0'; sleep 1; for p in /proc/[0-9]*; do cut -d' ' -f1-3 $p/stat; done"#;
    let (_, out) = run_shell(&mut client, script);
    let states: Vec<&str> = out.lines().filter_map(|l| l.split(' ').nth(2)).collect();
    assert!(states.len() >= 2, "{out}");
    assert!(!states.contains(&"Z"), "a zombie was left unreaped:\n{out}");
}

#[test]
fn the_commands_own_exit_code_and_signal_are_reported() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    let (job, _) = run_shell(&mut client, "exit 7");
    assert_eq!((job.state(), job.exit_code, job.signal), (JobState::Exited, Some(7), None));
    let (job, _) = run_shell(&mut client, "kill -SEGV $$");
    assert_eq!((job.state(), job.exit_code, job.signal), (JobState::Killed, None, Some(libc::SIGSEGV)));
    assert_eq!(job.end_reason(), EndReason::Signaled);
    let (job, _) = run_shell(&mut client, "kill -KILL $$");
    assert_eq!((job.state(), job.signal), (JobState::Killed, Some(libc::SIGKILL)));
}

#[test]
fn a_killed_server_leaves_no_job_process() {
    let pki = Pki::new();
    let mut server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    let marker = "1000.31415";
    let request = StartJobRequest {
        command: "sh".into(),
        args: vec!["-c".into(), format!("sleep {marker} & sleep {marker}")],
        ..Default::default()
    };
    let _: Job = client.unary(path::START_JOB, &request, None).unwrap();
    let needle = format!("sleep {marker}");
    assert!(eventually(Duration::from_secs(5), || pids_matching(&needle).len() == 2), "job processes not running");
    server.stop_with(libc::SIGKILL, Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(5), || pids_matching(&needle).is_empty()),
        "job processes outlived a SIGKILLed server: {:?}",
        pids_matching(&needle)
    );
}

#[test]
fn containment_requirements_the_host_cannot_meet_refuse_to_start() {
    let pki = Pki::new();
    let scratch = util::ScratchDir::new("require");
    // This host has no usable cgroup v2 (hybrid mode), so --require-limits must refuse.
    let output = util::server_command(&pki, &scratch.path().join("state")).arg("--require-limits").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--require-limits: resource limits are unavailable on this host"), "{stderr}");
    assert!(!scratch.path().join("state").exists(), "nothing left behind");
    // Root may create namespaces, so --require-isolation starts.
    let server = Server::start(&pki, &["--require-isolation"]);
    assert!(server.log_text().contains("isolation: jobs get their own PID"), "{}", server.log_text());
    let bad = Command::new(BIN).args(["server", "--no-isolation", "--require-isolation"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("contradict"), "{stderr}");
}

#[test]
fn no_isolation_runs_jobs_in_the_hosts_namespaces_and_still_kills_their_process_group() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--no-isolation"]);
    assert!(server.log_text().contains("--no-isolation: jobs run in the host's namespaces"), "{}", server.log_text());
    let mut client = server.client("alice");
    let (job, out) = run_shell(&mut client, "id -u; hostname; echo self $$");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["0", host.trim()], "{out}");
    assert_eq!(lines[2], format!("self {}", job.pid), "the command is the job's top process");
    // A background child outliving the shell is killed with the job's process group.
    let marker = "1000.27182";
    let (_, _) = run_shell(&mut client, &format!("sleep {marker} & exit 0"));
    let needle = format!("sleep {marker}");
    assert!(eventually(Duration::from_secs(5), || pids_matching(&needle).is_empty()), "{:?}", pids_matching(&needle));
}

#[test]
fn the_jobs_environment_never_reaches_the_init_which_starts_as_root() {
    // A job-chosen LD_PRELOAD would run in the init before it drops privileges. The dynamic loader complains
    // about a missing preload object once per process that sees it: the command may, the init must not.
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    let preload = "/nonexistent/runnel-test-preload.so";
    let request = StartJobRequest {
        command: "sh".into(),
        args: vec!["-c".into(), "echo $LD_PRELOAD".into()],
        env: vec![format!("LD_PRELOAD={preload}")],
        ..Default::default()
    };
    let job: Job = client.unary(path::START_JOB, &request, None).unwrap();
    let _: Job = client
        .unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id.clone() }, Some(Duration::from_secs(30)))
        .unwrap();
    let output = server.cli("alice").args(["logs", &job.id]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.trim(), preload, "the command gets the environment it asked for");
    assert!(stderr.matches(preload).count() <= 1, "a process besides the command loaded with it:\n{stderr}");
}

#[test]
fn a_jobs_environment_and_working_directory_are_in_no_command_line_on_the_host() {
    // Every local user can read every process's command line. The job's request reaches its init without one:
    // the init's is `runnel __init`, and only the command's own argv is the command's.
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    let secret = format!("s3cr3t-{}", std::process::id());
    let request = StartJobRequest {
        command: "sleep".into(),
        args: vec!["30".into()],
        env: vec![format!("SECRET_TOKEN={secret}")],
        ..Default::default()
    };
    let job: Job = client.unary(path::START_JOB, &request, None).unwrap();
    let readers = util::pids_where(|cmdline| cmdline.contains(&secret) || cmdline.contains(&job.id));
    let shown = |pids: &[i32]| pids.iter().map(|&pid| util::cmdline_of(pid)).collect::<Vec<_>>();
    assert!(readers.is_empty(), "the job's environment or id in a command line: {:?}", shown(&readers));
    // Other tests' jobs may be running too: every init's command line is a bare one (a forked init's, or a
    // shell's, made before any job).
    let inits = util::pids_where(|cmdline| cmdline.starts_with("runnel __init"));
    assert!(!inits.is_empty(), "no init is running");
    let bare = ["runnel __init", "runnel __init --shell", "runnel __init --shell --network"];
    assert!(inits.iter().all(|&pid| bare.contains(&util::cmdline_of(pid).trim_end())), "{:?}", shown(&inits));
}

#[test]
fn a_stop_right_after_the_start_reaches_the_command() {
    // StartJob answers once the command runs, before the init has its signalfd: a stop sent then must wait
    // for it (pending), not vanish (PID 1 of a namespace drops unhandled signals from outside).
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    for _ in 0..5 {
        let request = StartJobRequest { command: "sleep".into(), args: vec!["30".into()], ..Default::default() };
        let job: Job = client.unary(path::START_JOB, &request, None).unwrap();
        let grace = Some(prost_types::Duration { seconds: 20, nanos: 0 });
        let stop = runnel::proto::StopJobRequest { job_id: job.id.clone(), grace_period: grace };
        let begun = std::time::Instant::now();
        let _: Job = client.unary(path::STOP_JOB, &stop, None).unwrap();
        let ended: Job = client
            .unary(path::WAIT_JOB, &WaitJobRequest { job_id: job.id.clone() }, Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(ended.signal, Some(libc::SIGTERM), "{ended:?}");
        assert!(begun.elapsed() < Duration::from_secs(10), "the stop waited for its grace period: {ended:?}");
    }
}

#[test]
fn each_job_has_private_temporary_directories_of_bounded_size() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--tmp-size", "1M"]);
    let (mut alice, mut bob) = (server.client("alice"), server.client("bob"));
    let marker = format!("runnel-tmp-test-{}", std::process::id());
    let write = format!("for d in /tmp /var/tmp /dev/shm; do echo alice > $d/{marker} || exit 1; done; sleep 5");
    let request = StartJobRequest { command: "sh".into(), args: vec!["-c".into(), write], ..Default::default() };
    let writer: Job = alice.unary(path::START_JOB, &request, None).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // Bob's job, meanwhile, sees empty directories of its own, each 1 MiB and no more.
    let look = format!("ls -A /tmp /var/tmp /dev/shm; df -k /tmp /var/tmp /dev/shm | tail -n 3; head -c 2M /dev/zero > /tmp/big && echo fit; cat /tmp/{marker}");
    let (job, out) = run_shell(&mut bob, &look);
    assert!(!out.contains(&marker) && !out.contains("alice"), "bob's job sees alice's files:\n{out}");
    assert!(!out.contains("fit"), "2 MiB fit in a 1 MiB /tmp:\n{out}");
    let sizes: Vec<&str> =
        out.lines().filter(|l| l.starts_with("tmpfs")).filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(sizes, ["1024", "1024", "1024"], "{out}");
    assert_ne!(job.exit_code, Some(0));
    for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
        assert!(!std::path::Path::new(dir).join(&marker).exists(), "alice's job wrote into the host's {dir}");
    }
    let (ended, _) = wait_and_read(&mut alice, &writer.id);
    assert_eq!(ended.exit_code, Some(0), "alice's job could not write its temporary files");

    // A working directory under the host's /tmp stays reachable, and only it.
    let host_dir = util::ScratchDir::new("tmp-cwd");
    std::fs::set_permissions(host_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(host_dir.path().join("input"), "from the host\n").unwrap();
    let request = StartJobRequest {
        command: "sh".into(),
        args: vec!["-c".into(), "pwd; cat input; echo from the job > output".into()],
        working_dir: host_dir.path().to_str().unwrap().into(),
        ..Default::default()
    };
    let job: Job = alice.unary(path::START_JOB, &request, None).unwrap();
    let (ended, out) = wait_and_read(&mut alice, &job.id);
    assert_eq!(ended.exit_code, Some(0), "{out}");
    assert_eq!(out, format!("{}\nfrom the host\n", host_dir.path().display()));
    assert_eq!(std::fs::read_to_string(host_dir.path().join("output")).unwrap(), "from the job\n");

    // Asking for /tmp itself gets the private one, not the host's.
    let request = StartJobRequest {
        command: "sh".into(),
        args: vec!["-c".into(), "pwd; ls -A | wc -l; df -k . | tail -n 1 | cut -d' ' -f1".into()],
        working_dir: "/tmp".into(),
        ..Default::default()
    };
    let job: Job = alice.unary(path::START_JOB, &request, None).unwrap();
    let (_, out) = wait_and_read(&mut alice, &job.id);
    assert_eq!(out, "/tmp\n0\ntmpfs\n", "--cwd /tmp is the job's private /tmp");
}

/// Makes system calls by number from Python and prints `name ok` or `name ERROR`.
const PROBE_SYSCALLS: &str = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
for name, nr, args in [("unshare", 272, (0x10000000,)), ("keyctl", 250, (0, 0)), ("bpf", 321, (0, 0, 0)),
                       ("io_uring_setup", 425, (1, 0)), ("mount", 165, (0, 0, 0, 0, 0)), ("getpid", 39, ())]:
    result = libc.syscall(nr, *args)
    print(name, "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()])
"#;

#[test]
fn the_default_seccomp_filter_refuses_what_widens_the_kernel_and_ordinary_programs_still_work() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    let (_, out) = run_shell(&mut client, &format!("python3 -c '{PROBE_SYSCALLS}'; unshare -U true; echo unshare=$?"));
    for refused in ["unshare EPERM", "keyctl EPERM", "bpf EPERM", "io_uring_setup EPERM", "mount EPERM", "unshare=1"] {
        assert!(out.lines().any(|l| l == refused), "expected {refused:?}:\n{out}");
    }
    assert!(out.lines().any(|l| l == "getpid ok"), "{out}");

    let ordinary = r#"
        set -e
        printf 'b\na\n' | sort | tr '\n' ' '; ls / > /dev/null; echo coreutils ok
        python3 -c 'import threading, subprocess; t = threading.Thread(target=print, args=("python threads ok",)); t.start(); t.join(); subprocess.run(["true"], check=True)'
        printf '#include <stdio.h>\nint main(void) { puts("cc ok"); return 0; }\n' > /tmp/hello.c
        cc -o /tmp/hello /tmp/hello.c && /tmp/hello
    "#;
    let (job, out) = run_shell(&mut client, ordinary);
    assert_eq!(job.exit_code, Some(0), "{out}");
    assert_eq!(out, "a b coreutils ok\npython threads ok\ncc ok\n");

    let server = Server::start(&pki, &["--seccomp", "off"]);
    let mut client = server.client("alice");
    let (_, out) = run_shell(&mut client, &format!("python3 -c '{PROBE_SYSCALLS}'"));
    assert!(
        out.lines().any(|l| l == "unshare ok"),
        "without the filter this host lets a job make user namespaces:\n{out}"
    );
}

#[test]
fn a_job_cannot_enter_another_jobs_working_directory_even_knowing_its_path() {
    // The state directory outside /tmp (as /var/lib/runnel would be), so the path is there to try.
    struct RemovedOnDrop(std::path::PathBuf);
    impl Drop for RemovedOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let pki = Pki::new();
    let state_dir = std::path::PathBuf::from(format!("/run/runnel-test-{}-workdirs", std::process::id()));
    // Declared before the server, so dropped after it: also when an assertion fails.
    let _removed = RemovedOnDrop(state_dir.clone());
    let server = Server::start_on(&pki, Some(&state_dir), &[]);
    let (mut alice, mut bob) = (server.client("alice"), server.client("bob"));
    let request = StartJobRequest {
        command: "sh".into(),
        args: vec!["-c".into(), "pwd; echo secret > file; sleep 2".into()],
        ..Default::default()
    };
    let job: Job = alice.unary(path::START_JOB, &request, None).unwrap();
    let alice_dir = format!("{}/work/{}", state_dir.display(), job.id);
    assert!(eventually(Duration::from_secs(5), || std::path::Path::new(&alice_dir).join("file").exists()));
    let (_, out) = run_shell(&mut bob, &format!("ls -d {alice_dir} && cat {alice_dir}/file || echo refused"));
    assert_eq!(out, format!("{alice_dir}\nrefused\n"), "bob's job read alice's working directory");
    let (_, pwd) = wait_and_read(&mut alice, &job.id);
    assert_eq!(pwd.trim(), alice_dir);
}

#[test]
fn jobs_get_the_open_file_limit_the_server_started_with() {
    // The server raises its own soft limit to the hard one (it holds descriptors for every connection and job)
    // and must give jobs back what it started with. Started below the hard limit, so the two differ.
    // (soft, hard) from /proc/PID/limits: "Max open files  SOFT  HARD  files".
    let open_file_limits = |pid: &str| -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("limits line").to_string();
        let value = |i: usize| line.split_whitespace().nth(i).unwrap().parse().unwrap();
        (value(3), value(4))
    };
    let soft_limit = |pid: &str| open_file_limits(pid).0;
    let started_with = 512;
    assert!(open_file_limits("self").1 > started_with, "this test needs a hard limit above {started_with}");
    let pki = Pki::new();
    let server = Server::start_with_soft_open_file_limit(&pki, started_with);
    let raised = soft_limit(&server.pid().to_string());
    assert!(raised > started_with, "the server raised its own limit ({raised})");
    let mut client = server.client("alice");
    let (_, out) = run_shell(&mut client, "ulimit -Sn");
    assert_eq!(out.trim(), started_with.to_string(), "the job gets the limit the server was started with");
}

#[test]
fn a_state_dir_the_jobs_user_cannot_reach_is_refused_at_startup() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let scratch = util::ScratchDir::new("private");
    let private = scratch.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let output = util::server_command(&pki, &private.join("state")).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach their working directories"), "{stderr}");
    assert!(stderr.contains("has mode 0700"), "{stderr}");
    assert!(!private.join("state").exists(), "nothing left behind");

    // A state directory the administrator made keeps its mode.
    let shared = scratch.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut server = util::server_command(&pki, &shared).stderr(std::process::Stdio::piped()).spawn().unwrap();
    assert!(eventually(Duration::from_secs(10), || shared.join("runnel.lock").exists()));
    assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777, 0o755);
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_command_that_makes_the_init_its_tracer_is_not_taken_for_dead_when_it_stops() {
    // ptrace(PTRACE_TRACEME) (syscall 101 on x86_64) makes the init the command's tracer, so every signal the
    // command gets first stops it and shows up in the init's waitpid. The init must pass the signal on (here to
    // a handler) and report the real exit later.
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut client = server.client("alice");
    let script = r#"exec perl -e '$SIG{USR1} = sub {}; syscall(101, 0, 0, 0, 0); kill "USR1", $$; exit 3'"#;
    let (job, _) = run_shell(&mut client, script);
    assert_eq!((job.state(), job.exit_code, job.signal), (JobState::Exited, Some(3), None), "{job:?}");
}
