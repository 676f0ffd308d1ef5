//! Helpers shared by the integration tests: a fresh PKI made with `runnel certs`, the real server binary on
//! an ephemeral loopback port, and clients (library or CLI) for any identity in the PKI.
#![allow(dead_code)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use runnel::client::{Client, ClientSettings};
use runnel::tls::KeySource;

pub const BIN: &str = env!("CARGO_BIN_EXE_runnel");

/// The unit tests' scratch directories, for these tests too: one helper everywhere.
#[path = "../../src/scratch.rs"]
mod scratch;
pub use scratch::ScratchDir;

/// Runs `runnel` with `args`, failing the test if it does not succeed.
pub fn runnel(args: &[&str]) -> Output {
    let output = Command::new(BIN).args(args).output().unwrap();
    assert!(output.status.success(), "runnel {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// A CA, a server certificate for localhost/127.0.0.1, and client certificates for alice, bob and admin.
pub struct Pki {
    pub dir: ScratchDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = ScratchDir::new("pki");
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        runnel(&["certs", "ca", "--out", &p("ca")]);
        runnel(&[
            "certs",
            "server",
            "--ca",
            &p("ca"),
            "--out",
            &p("server"),
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
        ]);
        for name in ["alice", "bob", "admin"] {
            runnel(&["certs", "client", "--ca", &p("ca"), "--name", name, "--out", &p(name)]);
        }
        Pki { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `runnel server` on an ephemeral loopback port with the PKI's server certificate and `state_dir`.
pub fn server_command(pki: &Pki, state_dir: &Path) -> Command {
    let mut command = server_command_without_client_ca(pki, state_dir);
    command.arg("--client-ca").arg(pki.file("ca.crt"));
    command
}

/// As [`server_command`], trusting no client CA (for pinned self-signed clients).
pub fn server_command_without_client_ca(pki: &Pki, state_dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["server", "--listen", "127.0.0.1:0"])
        .arg("--cert")
        .arg(pki.file("server.crt"))
        .arg("--key")
        .arg(pki.file("server.key"))
        .arg("--state-dir")
        .arg(state_dir);
    command
}

/// A running `runnel server`, killed (and its state removed) when dropped.
pub struct Server {
    pub child: Option<Child>,
    pub address: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub ca: PathBuf,
    pub pki_dir: PathBuf,
    _scratch: ScratchDir,
}

impl Server {
    /// Starts a server with `admin` as the admin identity, plus `extra` flags.
    pub fn start(pki: &Pki, extra: &[&str]) -> Server {
        Server::start_with(pki, None, extra, &[])
    }

    /// Like [`Server::start`], on `state_dir` if given (e.g. one a previous server used) instead of a fresh one.
    pub fn start_on(pki: &Pki, state_dir: Option<&Path>, extra: &[&str]) -> Server {
        Server::start_with(pki, state_dir, extra, &[])
    }

    /// As [`Server::start`], with extra environment variables for the server process.
    pub fn start_with_env(pki: &Pki, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with(pki, None, extra, env)
    }

    /// As [`Server::start`], with the server started under a soft open-file limit of `soft` (the hard limit
    /// unchanged), as a shell's `ulimit -Sn` would start it.
    pub fn start_with_soft_open_file_limit(pki: &Pki, soft: u64) -> Server {
        let script = format!(r#"ulimit -Sn {soft} && exec "$@""#);
        Server::launch(pki, None, &[], &[], Some((&[], &script)))
    }

    /// As [`Server::start`], with the server exec'd at the end of the shell `script` (which ends in
    /// `exec "$@"`), the shell itself run by the command line `runner` (e.g. `unshare -m`).
    pub fn start_after(pki: &Pki, runner: &[&str], script: &str, extra: &[&str]) -> Server {
        Server::launch(pki, None, extra, &[], Some((runner, script)))
    }

    /// As [`Server::start_after`], on `state_dir`.
    pub fn start_after_on(pki: &Pki, state_dir: &Path, runner: &[&str], script: &str, extra: &[&str]) -> Server {
        Server::launch(pki, Some(state_dir), extra, &[], Some((runner, script)))
    }

    fn start_with(pki: &Pki, state_dir: Option<&Path>, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(pki, state_dir, extra, env, None)
    }

    /// As [`Server::start`], with no `--client-ca`: `extra` must pin the clients it accepts.
    pub fn start_without_client_ca(pki: &Pki, extra: &[&str]) -> Server {
        Server::launch(pki, None, extra, &[("RUNNEL_TEST_NO_CLIENT_CA", "1")], None)
    }

    fn launch(
        pki: &Pki,
        state_dir: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
        wrapper: Option<(&[&str], &str)>,
    ) -> Server {
        let scratch = ScratchDir::new("server");
        let state_dir = state_dir.map_or_else(|| scratch.path().join("state"), Path::to_path_buf);
        let log = scratch.path().join("server.log");
        let mut command = match env.iter().any(|(name, _)| *name == "RUNNEL_TEST_NO_CLIENT_CA") {
            true => server_command_without_client_ca(pki, &state_dir),
            false => server_command(pki, &state_dir),
        };
        if let Some((runner, script)) = wrapper {
            let mut wrapped = Command::new(runner.first().copied().unwrap_or("sh"));
            wrapped.args(runner.iter().skip(1)).args(if runner.is_empty() { &[][..] } else { &["sh"][..] });
            wrapped.args(["-c", script, "sh", BIN]).args(command.get_args());
            command = wrapped;
        }
        command.args(["--admin", "admin"]).args(extra);
        Server::spawn(command, pki, scratch, state_dir, log, env)
    }

    /// As [`Server::start`], every setting given in `RUNNEL_SERVER_*` environment variables instead of flags.
    pub fn start_configured_by_environment(pki: &Pki) -> Server {
        let scratch = ScratchDir::new("server");
        let state_dir = scratch.path().join("state");
        let log = scratch.path().join("server.log");
        let mut command = Command::new(BIN);
        command
            .arg("server")
            .env("RUNNEL_SERVER_LISTEN", "127.0.0.1:0")
            .env("RUNNEL_SERVER_CERT", pki.file("server.crt"))
            .env("RUNNEL_SERVER_KEY", pki.file("server.key"))
            .env("RUNNEL_SERVER_CLIENT_CA", pki.file("ca.crt"))
            .env("RUNNEL_SERVER_STATE_DIR", &state_dir)
            .env("RUNNEL_SERVER_ADMIN", "admin");
        Server::spawn(command, pki, scratch, state_dir, log, &[])
    }

    /// Runs `command` (a server) with `env`, its log in `log`, and waits until it listens.
    fn spawn(
        mut command: Command,
        pki: &Pki,
        scratch: ScratchDir,
        state_dir: PathBuf,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> Server {
        command
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let address = loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            // A whole line only: the server writes it in pieces (an unbuffered `eprintln!`, octet by octet).
            let whole_lines = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
            let mut addresses = whole_lines.filter_map(|l| l.split_once("runnel server listening on ").map(|(_, a)| a));
            if let Some(address) = addresses.next() {
                // Up to the end of the word: the line may be a JSON object (`--log-format json`).
                break address.split(|c: char| c.is_whitespace() || c == '"').next().unwrap_or_default().to_string();
            }
            if Instant::now() >= deadline {
                // Not left running behind a failed test: it would hold its port and state directory.
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Server {
            child: Some(child),
            address,
            state_dir,
            log,
            ca: pki.file("ca.crt"),
            pki_dir: pki.dir.path().to_path_buf(),
            _scratch: scratch,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn settings(&self, identity: &str) -> ClientSettings {
        ClientSettings {
            server: self.address.clone(),
            cert: self.pki_dir.join(format!("{identity}.crt")),
            key: KeySource::File(self.pki_dir.join(format!("{identity}.key"))),
            ca: Some(self.ca.clone()),
            server_pin: None,
            server_name: Some("localhost".into()),
        }
    }

    /// A library client connected as `identity` (alice, bob or admin).
    pub fn client(&self, identity: &str) -> Client {
        Client::connect(&self.settings(identity)).unwrap_or_else(|e| panic!("connect as {identity}: {e}"))
    }

    /// The `runnel client` command line for `identity`, ready for more arguments.
    pub fn cli(&self, identity: &str) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("client")
            .arg("--server")
            .arg(&self.address)
            .arg("--server-name")
            .arg("localhost")
            .arg("--cert")
            .arg(self.pki_dir.join(format!("{identity}.crt")))
            .arg("--key")
            .arg(self.pki_dir.join(format!("{identity}.key")))
            .arg("--ca")
            .arg(&self.ca)
            .env_remove("RUNNEL_TLS_KEY");
        command
    }

    /// Sends `signal` and waits for the server to exit.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe_kill(child.id() as i32, signal);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the server to exit on its own.
    pub fn exit_within(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit by itself:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every job `client` may see, every page of them (ListJobs).
pub fn list_all_jobs(client: &mut Client) -> Vec<runnel::proto::Job> {
    let (mut jobs, mut page_token) = (Vec::new(), String::new());
    loop {
        let request = runnel::proto::ListJobsRequest { page_token, ..Default::default() };
        let page: runnel::proto::ListJobsResponse =
            client.unary(runnel::grpc::path::LIST_JOBS, &request, Some(Duration::from_secs(30))).unwrap();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return jobs;
        }
        page_token = page.next_page_token;
    }
}

/// What a stopped server leaves in its state directory unless it is `--ephemeral`: the jobs' history and an
/// emptied lock file.
pub fn assert_only_history_left(state_dir: &Path) {
    let mut left: Vec<String> =
        fs::read_dir(state_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["jobs", "runnel.lock"], "what the server left in {}", state_dir.display());
    assert_eq!(fs::read_to_string(state_dir.join("runnel.lock")).unwrap(), "", "a clean stop empties the lock file");
}

/// `kill(2)` through the `kill` command, so the tests need no unsafe code.
pub fn unsafe_kill(pid: i32, signal: i32) {
    // `-s SIG --`: procps-ng's kill reads `kill -9 -1234` as `kill -9 -1` (every process), should a negative
    // pid (a process group) ever come through here.
    assert!(pid > 1, "refusing to signal pid {pid}");
    let status = Command::new("kill").args(["-s", &signal.to_string(), "--", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// True if a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of live processes whose command line starts with `needle`.
pub fn pids_matching(needle: &str) -> Vec<i32> {
    pids_where(|cmdline| cmdline.starts_with(needle))
}

/// The parent pid of `pid`, if it is alive.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// What is in `STATE/jobs` and `STATE/work` besides the directories the server makes ahead of starts to come:
/// how many of those there are (a job directory holding nothing or its output's first segment file, empty, and
/// an empty working directory of the same name, or none yet: the mover makes them one by one), and the names of
/// everything else, `jobs/NAME` or `work/NAME`.
pub fn beside_dirs_made_ahead(state_dir: &Path) -> (usize, Vec<String>) {
    let names = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(state_dir.join(dir))
            .map(|entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    // Looked at on disk, name by name, so that a pair being made while the directories are listed counts.
    let made_ahead = |name: &String| {
        let job_holds_only_empty_files = fs::read_dir(state_dir.join("jobs").join(name)).is_ok_and(|entries| {
            entries.map(|e| e.unwrap()).all(|e| e.file_name() == "00000000" && e.metadata().unwrap().len() == 0)
        });
        let work = fs::read_dir(state_dir.join("work").join(name));
        let work_empty_or_none = match work {
            Ok(mut entries) => entries.next().is_none(),
            Err(err) => err.kind() == std::io::ErrorKind::NotFound,
        };
        job_holds_only_empty_files && work_empty_or_none
    };
    let jobs = names("jobs");
    let ahead = jobs.iter().filter(|name| made_ahead(name)).count();
    let mut others: Vec<String> = jobs.iter().filter(|n| !made_ahead(n)).map(|n| format!("jobs/{n}")).collect();
    others.extend(names("work").iter().filter(|n| !made_ahead(n)).map(|n| format!("work/{n}")));
    (ahead, others)
}

/// A field of `/proc/PID/status` in its own unit (kB for memory, a count for `Threads:`).
pub fn proc_status_field(pid: i32, name: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The session `pid` is in (the pid of the session's leader), if it is alive.
pub fn session_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command: state, ppid, pgrp, session.
    stat.rsplit_once(')')?.1.split_whitespace().nth(3)?.parse().ok()
}

/// The command line of `pid`, arguments joined by spaces (empty if it is gone).
pub fn cmdline_of(pid: i32) -> String {
    String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

/// Pids of live processes whose command line (arguments joined by spaces) passes `check`.
pub fn pids_where(check: impl Fn(&str) -> bool) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if check(&cmdline) && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8 is this host), which then
/// says nothing.
pub fn silent_connection(from: Ipv4Addr, to: &str) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let SocketAddr::V4(to) = to.parse::<SocketAddr>().unwrap() else { panic!("the server listens on IPv4") };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(from, 0))).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}

/// Polls `check` until it is true or `timeout` passes; returns its last value.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
