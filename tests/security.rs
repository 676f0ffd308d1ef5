//! Security properties of the real server and CLI: who may connect (mutual TLS 1.3 with a certificate from the
//! configured CA, unexpired), who may see and control which jobs (owners and the admin only, without revealing
//! that other people's jobs exist), and how the CLI reports errors and takes its key.

mod util;

use runnel::grpc::path;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use runnel::client::{CallError, Client, ClientSettings};
use runnel::grpc::{Code, Status};
use runnel::pki::{write_ca, write_client, Validity};
use runnel::proto::{
    EndReason, GetJobRequest, Job, JobState, ListJobsRequest, ListJobsResponse, OutputChunk, StartJobRequest,
    StopJobRequest, StreamOutputRequest, WaitJobRequest,
};
use runnel::tls::KeySource;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use util::{Pki, ScratchDir, Server, BIN};

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn status_of(result: Result<impl std::fmt::Debug, CallError>) -> Status {
    match result {
        Err(CallError::Status(status)) => status,
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// The server still answers a legitimate client.
fn assert_still_serving(server: &Server) {
    let mut alice = server.client("alice");
    let listed: ListJobsResponse = alice
        .unary(path::LIST_JOBS, &ListJobsRequest::default(), TIMEOUT)
        .unwrap_or_else(|e| panic!("server stopped serving alice: {e:?}\n{}", server.log_text()));
    let _ = listed;
}

/// Connecting with these settings must fail, at connect time or on the first call, with UNAVAILABLE.
fn assert_refused(server: &Server, settings: &ClientSettings, what: &str) {
    let started = Instant::now();
    let status = match Client::connect(settings) {
        Err(status) => status,
        Ok(mut client) => {
            status_of(client.unary::<_, ListJobsResponse>(path::LIST_JOBS, &ListJobsRequest::default(), TIMEOUT))
        }
    };
    assert_eq!(status.code, Code::Unavailable, "{what}: unexpected status {status:?}\n{}", server.log_text());
    assert!(started.elapsed() < Duration::from_secs(8), "{what}: refusal took {:?}", started.elapsed());
}

fn settings_with(server: &Server, prefix: &Path) -> ClientSettings {
    ClientSettings {
        cert: runnel::pki::cert_path(prefix),
        key: KeySource::File(runnel::pki::key_path(prefix)),
        ..server.settings("alice")
    }
}

#[test]
fn client_without_certificate_is_refused() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.file("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
    let socket = TcpStream::connect(&server.address).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);

    let started = Instant::now();
    // The HTTP/2 preface; in TLS 1.3 the client may think the handshake done before the server has checked it.
    let write = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").and_then(|_| tls.flush());
    let outcome = match write {
        Err(err) => Err(err),
        Ok(()) => {
            let mut buf = [0u8; 1024];
            tls.read(&mut buf)
        }
    };
    match outcome {
        Err(err) => {
            assert!(
                !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "server did not abort the handshake of a certificate-less client within 5 s: {err}\n{}",
                server.log_text()
            );
            eprintln!("certificate-less client refused: {err}");
        }
        Ok(n) => panic!(
            "a client without a certificate read {n} bytes from the server instead of an error\n{}",
            server.log_text()
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_still_serving(&server);
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let other = ScratchDir::new("other-ca");
    let ca = other.path().join("ca");
    write_ca(&ca, "some other CA", &Validity::days_from_now(30)).unwrap();
    // Same identity name as a legitimate user: only the issuer differs.
    let alice = other.path().join("alice");
    write_client(&ca, &alice, "alice", &Validity::days_from_now(30)).unwrap();

    assert_refused(&server, &settings_with(&server, &alice), "client cert from another CA");
    assert_still_serving(&server);
}

#[test]
fn expired_client_certificate_is_refused() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let scratch = ScratchDir::new("expired");
    let now = SystemTime::now();
    let expired = scratch.path().join("alice-expired");
    write_client(&pki.file("ca"), &expired, "alice", &Validity { not_before: now - 10 * DAY, not_after: now - DAY })
        .unwrap();

    assert_refused(&server, &settings_with(&server, &expired), "expired client cert");
    assert_still_serving(&server);
}

/// Issues a client certificate with the subject `subject` (openssl's `/CN=.../CN=...` form) and `extensions`
/// (openssl's extension-file lines) from the test CA, with openssl, which (unlike `runnel certs`) writes what
/// it is told.
fn openssl_client(pki: &Pki, dir: &Path, name: &str, subject: &str, extensions: &str) -> std::path::PathBuf {
    let prefix = dir.join(name);
    let [key, csr, crt, ext] = ["key", "csr", "crt", "ext"].map(|s| format!("{}.{s}", prefix.display()));
    std::fs::write(&ext, format!("extendedKeyUsage=clientAuth\n{extensions}")).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("openssl (Debian package openssl) is needed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-utf8",
        "-multivalue-rdn",
        "-keyout",
        &key,
        "-subj",
        subject,
        "-out",
        &csr,
    ]);
    let (ca_crt, ca_key) = (pki.file("ca.crt"), pki.file("ca.key"));
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        ca_crt.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ]);
    prefix
}

#[test]
fn ambiguous_or_deceptive_identities_are_refused_with_the_reason() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let scratch = ScratchDir::new("identities");
    // openssl keeps a CN within 64 bytes (RFC 5280); a DNS SAN is the identity of a certificate without one.
    let long = format!("subjectAltName=DNS:{}.example\n", "a".repeat(121));
    for (name, subject, extensions, reason) in [
        ("two-cns", "/CN=admin/CN=alice", "", "more than one CN"),
        ("escape", "/CN=alice\u{1b}[31m", "", "control characters"),
        ("override", "/CN=alice\u{202e}nimda", "", "direction"),
        ("invisible", "/CN=alice\u{200b}", "", "invisible"),
        ("long", "/O=runnel tests", long.as_str(), "longer than 128 bytes"),
    ] {
        let prefix = openssl_client(&pki, scratch.path(), name, subject, extensions);
        let mut client = Client::connect(&settings_with(&server, &prefix)).expect("the TLS handshake itself succeeds");
        let status =
            status_of(client.unary::<_, ListJobsResponse>(path::LIST_JOBS, &ListJobsRequest::default(), TIMEOUT));
        assert_eq!(status.code, Code::Unauthenticated, "{name}: {status:?}");
        assert!(status.message.contains(reason), "{name}: {:?} does not say {reason:?}", status.message);
        let log = server.log_text();
        assert!(log.lines().any(|l| l.contains("refused") && l.contains(reason)), "{name}: not logged:\n{log}");
    }
    assert_still_serving(&server);
}

/// Runs openssl, failing loudly if it is missing or refuses.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl (Debian package openssl) is needed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CRL from the test CA that revokes the certificate of `prefix`, with openssl's `ca` tool.
fn crl_revoking(pki: &Pki, dir: &Path, prefix: &Path) -> std::path::PathBuf {
    let d = |name: &str| dir.join(name).to_str().unwrap().to_string();
    std::fs::write(d("index.txt"), "").unwrap();
    std::fs::write(d("crlnumber"), "01\n").unwrap();
    let config = format!(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\ndefault_crl_days = 1\n",
        d("index.txt"),
        d("crlnumber")
    );
    std::fs::write(d("ca.cnf"), config).unwrap();
    let (ca_crt, ca_key) = (pki.file("ca.crt"), pki.file("ca.key"));
    let ca = ["-config", &d("ca.cnf"), "-cert", ca_crt.to_str().unwrap(), "-keyfile", ca_key.to_str().unwrap()];
    let revoked = runnel::pki::cert_path(prefix);
    openssl(&[&["ca"][..], &ca, &["-revoke", revoked.to_str().unwrap()]].concat());
    openssl(&[&["ca"][..], &ca, &["-gencrl", "-out", &d("crl.pem")]].concat());
    dir.join("crl.pem")
}

fn fingerprint_of(pki: &Pki, name: &str) -> String {
    let output =
        Command::new(BIN).args(["certs", "fingerprint"]).arg(pki.file(&format!("{name}.crt"))).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn pinned_and_revoked_client_certificates() {
    let pki = Pki::new();
    let alice_pin = fingerprint_of(&pki, "alice");
    assert!(alice_pin.starts_with("sha256:") && alice_pin.len() == 71, "{alice_pin}");

    // Pinned on top of the CA: alice connects, bob (same CA) does not.
    let server = Server::start(&pki, &["--client-cert-pin", &alice_pin]);
    assert_still_serving(&server);
    assert_refused(&server, &server.settings("bob"), "a client certificate from the CA, not pinned");
    // The server writes its line as it sends the alert: the client may see the refusal first.
    let logged = || server.log_text().contains("is not pinned");
    assert!(util::eventually(Duration::from_secs(5), logged), "{}", server.log_text());

    // Revoked by the CA: bob is refused, alice still connects.
    let scratch = ScratchDir::new("crl");
    let crl = crl_revoking(&pki, scratch.path(), &pki.file("bob"));
    let server = Server::start(&pki, &["--crl", crl.to_str().unwrap()]);
    assert_still_serving(&server);
    assert_refused(&server, &server.settings("bob"), "a revoked client certificate");

    // No CA: a self-signed client, pinned, is accepted with its CN as identity; another self-signed one is not.
    let self_signed = |name: &str| {
        let prefix = scratch.path().join(name);
        let (key, crt) = (format!("{}.key", prefix.display()), format!("{}.crt", prefix.display()));
        let subject = format!("/CN={name}");
        openssl(
            &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"]
                .into_iter()
                .chain(["-keyout", &key, "-out", &crt, "-subj", &subject, "-addext", "extendedKeyUsage=clientAuth"])
                .collect::<Vec<_>>(),
        );
        prefix
    };
    let (carol, mallory) = (self_signed("carol"), self_signed("mallory"));
    let carol_pin = String::from_utf8(
        Command::new(BIN).args(["certs", "fingerprint"]).arg(runnel::pki::cert_path(&carol)).output().unwrap().stdout,
    )
    .unwrap();
    let carol_pin = carol_pin.split_whitespace().next().unwrap();
    let server = Server::start_without_client_ca(&pki, &["--client-cert-pin", carol_pin]);
    let mut client = Client::connect(&settings_with(&server, &carol)).unwrap();
    let job: Job = client
        .unary(path::START_JOB, &StartJobRequest { command: "true".into(), ..Default::default() }, TIMEOUT)
        .unwrap();
    assert_eq!(job.owner, "carol");
    assert_refused(&server, &settings_with(&server, &mallory), "an unpinned self-signed client");
    assert_refused(&server, &server.settings("alice"), "a CA's client, with no CA trusted");
}

#[test]
fn the_client_connects_only_to_the_pinned_server() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let pin_of = |name: &str| runnel::tls::Fingerprint::parse(&fingerprint_of(&pki, name)).unwrap();
    let (server_pin, wrong_pin) = (pin_of("server"), pin_of("alice"));
    let pinned = |ca: bool, pin| ClientSettings {
        ca: if ca { Some(pki.file("ca.crt")) } else { None },
        server_pin: Some(pin),
        ..server.settings("alice")
    };
    for ca in [true, false] {
        let mut client = Client::connect(&pinned(ca, server_pin)).unwrap_or_else(|s| panic!("ca {ca}: {s:?}"));
        let _: ListJobsResponse = client.unary(path::LIST_JOBS, &ListJobsRequest::default(), TIMEOUT).unwrap();
        let status = Client::connect(&pinned(ca, wrong_pin)).map(drop).unwrap_err();
        assert!(status.message.contains("is not pinned"), "ca {ca}: {status:?}");
    }
    // The command line, pinned through RUNNEL_SERVER_PIN, without a CA.
    let cli = |pin: runnel::tls::Fingerprint| {
        Command::new(BIN)
            .args(["client", "--server", &server.address, "--server-name", "localhost", "--cert"])
            .arg(pki.file("alice.crt"))
            .arg("--key")
            .arg(pki.file("alice.key"))
            .env_remove("RUNNEL_CA")
            .env("RUNNEL_SERVER_PIN", pin.to_string())
            .arg("list")
            .output()
            .unwrap()
    };
    assert!(cli(server_pin).status.success());
    let refused = cli(wrong_pin);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not pinned"), "{stderr}");
}

#[test]
fn tls12_client_is_refused() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let (host, port) = server.address.rsplit_once(':').unwrap();
    let script = r#"
import socket, ssl, sys
host, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ctx.check_hostname = False
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(['h2'])
sock = socket.create_connection((host, port), timeout=5)
try:
    tls = ctx.wrap_socket(sock, server_hostname='localhost')
except (ssl.SSLError, OSError) as e:
    print('handshake failed:', e)
    sys.exit(0)
print('handshake SUCCEEDED with', tls.version(), tls.selected_alpn_protocol())
sys.exit(3)
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(host)
        .arg(port)
        .arg(pki.file("ca.crt"))
        .arg(pki.file("alice.crt"))
        .arg(pki.file("alice.key"))
        .output()
        .expect("python3 is required for the TLS 1.2 test and could not be run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "TLS 1.2 client was not refused:\nstdout: {stdout}\nstderr: {stderr}\nserver log:\n{}",
        server.log_text()
    );
    assert!(stdout.contains("handshake failed"), "{stdout}");
    assert_still_serving(&server);
}

fn start_sleep(client: &mut Client) -> Job {
    let request = StartJobRequest { command: "sleep".into(), args: vec!["30".into()], ..Default::default() };
    client.unary(path::START_JOB, &request, TIMEOUT).unwrap()
}

fn get(client: &mut Client, id: &str) -> Result<Job, CallError> {
    client.unary(path::GET_JOB, &GetJobRequest { job_id: id.into() }, TIMEOUT)
}

fn list_ids(client: &mut Client) -> Vec<String> {
    let listed: ListJobsResponse = client.unary(path::LIST_JOBS, &ListJobsRequest::default(), TIMEOUT).unwrap();
    listed.jobs.into_iter().map(|j| j.id).collect()
}

/// StreamOutput's error, whether it arrives with the response headers or as the end of the stream.
fn stream_status(client: &mut Client, id: &str) -> Status {
    let request = StreamOutputRequest { job_id: id.into(), offset: 0, follow: false };
    match client.start_call(path::STREAM_OUTPUT, &request, TIMEOUT) {
        Err(err) => status_of(Err::<(), _>(err)),
        Ok(mut stream) => match client.next_message::<OutputChunk>(&mut stream) {
            Ok(Some(chunk)) => panic!("bob read output of a job that is not his: {chunk:?}"),
            Ok(None) => panic!("bob's StreamOutput of a job that is not his ended OK"),
            Err(err) => status_of(Err::<(), _>(err)),
        },
    }
}

#[test]
fn jobs_are_visible_to_their_owner_and_the_admin_only() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let mut bob = server.client("bob");
    let mut admin = server.client("admin");

    let job = start_sleep(&mut alice);
    let id = job.id.clone();
    assert_eq!(job.owner, "alice");
    assert_eq!(job.state, JobState::Running as i32);

    let log = || server.log_text();
    let not_found = |status: Status, what: &str| {
        assert_eq!(status.code, Code::NotFound, "bob {what} of alice's job: {status:?}\n{}", log());
        status
    };
    let get_status = not_found(status_of(get(&mut bob, &id)), "GetJob");
    not_found(
        status_of(bob.unary::<_, Job>(path::WAIT_JOB, &WaitJobRequest { job_id: id.clone() }, TIMEOUT)),
        "WaitJob",
    );
    not_found(
        status_of(bob.unary::<_, Job>(
            path::STOP_JOB,
            &StopJobRequest { job_id: id.clone(), grace_period: None },
            TIMEOUT,
        )),
        "StopJob",
    );
    not_found(stream_status(&mut bob, &id), "StreamOutput");

    // Bob's attempts changed nothing.
    let still = get(&mut alice, &id).unwrap();
    assert_eq!(still.state, JobState::Running as i32, "bob's StopJob affected alice's job: {still:?}");

    // Listing.
    assert!(!list_ids(&mut bob).contains(&id), "bob's ListJobs shows alice's job");
    assert!(list_ids(&mut alice).contains(&id), "alice's ListJobs lacks her job");
    assert!(list_ids(&mut admin).contains(&id), "admin's ListJobs lacks alice's job");

    // Existence is not revealed: a made-up id gives bob the same answer, up to the id itself.
    let missing = "00000000-0000-4000-8000-000000000000";
    let missing_status = not_found(status_of(get(&mut bob, missing)), "GetJob (nonexistent id)");
    assert_eq!(
        get_status.message.replace(&id, "<ID>"),
        missing_status.message.replace(missing, "<ID>"),
        "NOT_FOUND for another user's job differs from NOT_FOUND for no job"
    );
    let alice_missing = status_of(get(&mut alice, missing));
    assert_eq!(alice_missing.code, Code::NotFound);
    assert_eq!(alice_missing.message, missing_status.message);

    // The admin sees and controls everyone's jobs.
    let seen = get(&mut admin, &id).unwrap();
    assert_eq!(seen.owner, "alice");
    let stop =
        StopJobRequest { job_id: id.clone(), grace_period: Some(prost_types::Duration { seconds: 2, nanos: 0 }) };
    let stopped: Job = admin.unary(path::STOP_JOB, &stop, Some(Duration::from_secs(20))).unwrap();
    assert_eq!(stopped.state, JobState::Killed as i32, "{stopped:?}");
    assert_eq!(stopped.end_reason, EndReason::Stopped as i32, "{stopped:?}");
    let after = get(&mut alice, &id).unwrap();
    assert_eq!(after.state, JobState::Killed as i32);
    assert_eq!(after.end_reason, EndReason::Stopped as i32);
}

fn one_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got {text:?}");
    lines[0].to_string()
}

#[test]
fn cli_reports_errors_as_one_line_with_exit_codes() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let job = start_sleep(&mut alice);

    let output = server.cli("bob").args(["status", &job.id]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let line = one_error_line(&output.stderr);
    assert!(line.starts_with("error: NOT_FOUND: "), "{line}");
    assert!(output.stdout.is_empty(), "{output:?}");

    let output = server.cli("bob").arg("status").output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let line = one_error_line(&output.stderr);
    assert!(line.starts_with("error: INVALID_ARGUMENT: "), "{line}");

    let output = server.cli("bob").arg("frobnicate").output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let line = one_error_line(&output.stderr);
    assert!(line.starts_with("error: "), "{line}");

    // Bob's failed look-up left the job alone.
    assert_eq!(get(&mut alice, &job.id).unwrap().state, JobState::Running as i32);
}

#[test]
fn cli_takes_its_key_from_runnel_tls_key() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut alice = server.client("alice");
    let job = start_sleep(&mut alice);
    let pem = std::fs::read_to_string(pki.file("alice.key")).unwrap();

    let output = Command::new(BIN)
        .arg("client")
        .arg("--server")
        .arg(&server.address)
        .arg("--server-name")
        .arg("localhost")
        .arg("--cert")
        .arg(pki.file("alice.crt"))
        .arg("--ca")
        .arg(pki.file("ca.crt"))
        .arg("list")
        .env_remove("RUNNEL_KEY")
        .env("RUNNEL_TLS_KEY", &pem)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log_text()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&job.id[..8]), "alice's list lacks her job: {stdout}");
}

#[test]
fn tls_refusals_are_explained_in_words_a_user_can_act_on() {
    let (pki, other) = (Pki::new(), Pki::new());
    let server = Server::start(&pki, &[]);
    let cli = |cert: &Path, key: &Path, ca: &Path| {
        let output = Command::new(util::BIN)
            .args(["client", "--server", &server.address, "--server-name", "localhost", "list"])
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--ca")
            .arg(ca)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    // A client certificate from another PKI: the server refuses it after the client's handshake is done.
    let refused = cli(&other.file("alice.crt"), &other.file("alice.key"), &pki.file("ca.crt"));
    assert!(refused.contains("the server did not accept this client certificate"), "{refused}");
    assert!(refused.contains("--client-ca") && refused.lines().count() == 1, "{refused}");
    // The other PKI's CA given as --ca: the server's certificate is not signed by it. The two CAs made with the
    // defaults have different names, so this is an unknown issuer, not a bad signature.
    let unknown = cli(&pki.file("alice.crt"), &pki.file("alice.key"), &other.file("ca.crt"));
    assert!(unknown.contains("the server's certificate is not signed by the CA in --ca: pass the CA"), "{unknown}");
    assert!(!unknown.contains("same name"), "{unknown}");
}
