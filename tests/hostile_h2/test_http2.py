"""Hostile HTTP/2 clients against the real server, written frame by frame with Python's `h2` package.

Each attack is bounded in count and time, aims only at loopback, and asserts what must hold for everyone
else: the server answers a probe afterwards, its memory stays under a stated bound, and the attack ends in
GOAWAY, a refused stream, or back-pressure. Run through `make test` (tests/interop/run.sh BINARY
tests/hostile_h2), which installs the packages and sets RUNNEL_BIN.
"""
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame, WindowUpdateFrame

MiB = 1 << 20
# gRPC's 5-byte message prefix: not compressed, then the length.
def grpc_prefix(length):
    return b"\0" + length.to_bytes(4, "big")


class Server:
    def __init__(self, binary, pki, proc, address, log_path):
        self.binary, self.pki, self.proc, self.address, self.log_path = binary, pki, proc, address, log_path
        # Set by a test that stops the server itself.
        self.stopped_by_test = False

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            kib = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        return kib / 1024

    def cli(self, name, *args, timeout=20):
        env = dict(os.environ, RUNNEL_SERVER=self.address, RUNNEL_CERT=f"{self.pki}/{name}.crt",
                   RUNNEL_KEY=f"{self.pki}/{name}.key", RUNNEL_CA=f"{self.pki}/ca.crt")
        return subprocess.run([self.binary, "client", *args], env=env, capture_output=True, timeout=timeout)

    def probe(self):
        """A call from another identity, over a new connection, succeeds."""
        done = self.cli("bob", "list")
        assert done.returncode == 0, done.stderr.decode()

    def connect(self, name="alice"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_verify_locations(f"{self.pki}/ca.crt")
        context.load_cert_chain(f"{self.pki}/{name}.crt", f"{self.pki}/{name}.key")
        context.set_alpn_protocols(["h2"])
        host, port = self.address.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=10)
        return context.wrap_socket(raw, server_hostname="localhost")


@pytest.fixture
def server():
    binary = os.environ.get("RUNNEL_BIN")
    assert binary and os.access(binary, os.X_OK), "RUNNEL_BIN must name the runnel binary"
    with tempfile.TemporaryDirectory(prefix="runnel-h2-") as tmp:
        os.chmod(tmp, 0o711)
        pki = os.path.join(tmp, "pki")

        def certs(*args):
            subprocess.run([binary, "certs", *args], check=True, capture_output=True, timeout=60)
        certs("ca", "--out", f"{pki}/ca")
        certs("server", "--ca", f"{pki}/ca", "--out", f"{pki}/server", "--dns", "localhost", "--ip", "127.0.0.1")
        for name in ("alice", "bob"):
            certs("client", "--ca", f"{pki}/ca", "--name", name, "--out", f"{pki}/{name}")
        log_path = os.path.join(tmp, "server.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [binary, "server", "--listen", "127.0.0.1:0", "--cert", f"{pki}/server.crt",
                 "--key", f"{pki}/server.key", "--client-ca", f"{pki}/ca.crt", "--state-dir", f"{tmp}/state"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 15
            while True:
                m = re.search(rb"runnel server listening on (\S+)", open(log_path, "rb").read())
                if m:
                    break
                assert proc.poll() is None and time.monotonic() < deadline, open(log_path).read()
                time.sleep(0.05)
            running = Server(binary, pki, proc, m.group(1).decode(), log_path)
            yield running
            assert running.stopped_by_test or proc.poll() is None, "the server died:\n" + open(log_path).read()[-4000:]
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def assert_memory_given_back(server, before, attack):
    """Within 10 s of an attack's connections closing, RSS is back within 16 MiB of where it was."""
    deadline = time.monotonic() + 10
    while server.rss_mib() - before > 16 and time.monotonic() < deadline:
        time.sleep(0.2)
    held = server.rss_mib() - before
    print(f"{attack}: {held:.1f} MiB above the start 10 s after")
    assert held <= 16, f"{held:.1f} MiB still held 10 s after {attack} ended"


class H2Client:
    """One HTTP/2 connection driven by hand: `h2` for the protocol, raw frames where an attack needs them."""

    def __init__(self, server, name="alice", window=None):
        self.sock = server.connect(name)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if window:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
            self.conn.increment_flow_control_window(window - 65535)
        self.flush()
        self.events = []
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.send_raw(data)

    def send_raw(self, data):
        self.sock.settimeout(10)
        self.sock.sendall(data)

    def read(self, timeout=0.05):
        """Reads what has arrived; False once the server closed the connection."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except (ConnectionError, ssl.SSLError, OSError):
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        try:
            self.events.extend(self.conn.receive_data(data))
        except h2.exceptions.ProtocolError:
            self.closed = True
            return False
        self.flush()
        return True

    def goaway(self):
        return next((e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)), None)

    def headers(self, path):
        return [(":method", "POST"), (":scheme", "https"), (":path", path), (":authority", "localhost"),
                ("content-type", "application/grpc"), ("te", "trailers")]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def serve_until(client, seconds, until=lambda: False):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not client.closed and not until():
        client.read()


def test_unfinished_large_requests_on_every_stream_hold_a_bounded_amount_per_connection(server):
    before = server.rss_mib()
    clients = [H2Client(server) for _ in range(3)]
    for client in clients:
        client.read(0.5)
    streams = {}
    for client in clients:
        for _ in range(256):
            stream = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream, client.headers("/runnel.v1.JobService/StartJob"))
            # Announce a message of almost 4 MiB, then send as much of it as flow control allows, never the end.
            client.conn.send_data(stream, grpc_prefix(4 * MiB - 16))
            streams[(client, stream)] = 4 * MiB - 16
        client.flush()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        for (client, stream), left in list(streams.items()):
            if client.closed:
                continue
            window = min(client.conn.local_flow_control_window(stream), left, client.conn.max_outbound_frame_size)
            if window > 0:
                client.conn.send_data(stream, b"\0" * window)
                streams[(client, stream)] = left - window
        for client in clients:
            client.flush()
            client.read(0.01)
    sent = sum(4 * MiB - 16 - left for left in streams.values())
    grown = server.rss_mib() - before
    server.probe()
    for client in clients:
        client.close()
    print(f"unfinished requests: {sent / MiB:.0f} MiB sent on 768 streams, server grew {grown:.1f} MiB")
    # Without the request budget every byte sent is held: here at least 16 MiB per connection went out.
    assert sent >= 3 * 8 * MiB, f"only {sent / MiB:.1f} MiB sent: the test did not push hard enough"
    assert grown < 64, f"the server grew {grown:.1f} MiB holding {sent / MiB:.0f} MiB of unfinished requests"
    assert_memory_given_back(server, before, "unfinished requests")


def test_large_requests_that_together_pass_the_budget_all_complete(server):
    """Three 4 MiB requests interleaved on one connection pass the 8 MiB budget together: they must still finish
    (one is let through at a time), not wait for each other for good."""
    client = H2Client(server)
    client.read(0.5)
    size = 4 * MiB - 64
    streams = {}
    for _ in range(3):
        stream = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream, client.headers("/runnel.v1.JobService/StartJob"))
        client.conn.send_data(stream, grpc_prefix(size))
        streams[stream] = size
    client.flush()
    deadline = time.monotonic() + 20
    while streams and time.monotonic() < deadline and not client.closed:
        for stream, left in list(streams.items()):
            window = min(client.conn.local_flow_control_window(stream), left, client.conn.max_outbound_frame_size)
            if window > 0:
                client.conn.send_data(stream, b"\0" * window, end_stream=window == left)
                left -= window
                if left:
                    streams[stream] = left
                else:
                    del streams[stream]
        client.flush()
        client.read(0.01)
    assert not streams, f"{len(streams)} requests could not be sent in full: the connection's windows stayed shut"
    answered = lambda: {e.stream_id for e in client.events if isinstance(e, h2.events.TrailersReceived)
                        or (isinstance(e, h2.events.ResponseReceived)
                            and any(k in (b"grpc-status", "grpc-status") for k, _ in e.headers))}
    serve_until(client, 10, until=lambda: len(answered()) == 3)
    assert len(answered()) == 3, f"answered: {answered()}"
    client.close()
    server.probe()


def never_read(server, path, payload, end_stream):
    """Opens 256 streams of `path` on each of 4 connections that grant the server 2^31-1 windows, sends `payload`
    on each, and never reads. Returns how many MiB the server grew after 5 s, once another identity's call has
    been answered meanwhile; the connections are closed."""
    before = server.rss_mib()
    clients = [H2Client(server, window=2**31 - 1) for _ in range(4)]
    for client in clients:
        # The server's connection window (4 MiB) must have arrived for 256 requests of up to 1 KiB.
        serve_until(client, 5, until=lambda: client.conn.outbound_flow_control_window >= MiB)
        for _ in range(256):
            stream = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream, client.headers(path))
            client.conn.send_data(stream, payload, end_stream=end_stream)
        client.flush()
    # Never read: the server writes until the sockets and its buffers fill.
    time.sleep(5)
    grown = server.rss_mib() - before
    server.probe()
    for client in clients:
        client.close()
    return grown


def test_followers_that_never_read_hold_a_bounded_amount(server):
    job = server.cli("alice", "start", "--", "cat", "/dev/zero")
    assert job.returncode == 0, job.stderr.decode()
    job_id = job.stdout.decode().strip()
    # Let some output exist, and the spool settle.
    time.sleep(1)
    # StreamOutput {job_id, offset 0, follow true}, in protobuf.
    body = b"\x0a" + bytes([len(job_id)]) + job_id.encode() + b"\x18\x01"
    grown = never_read(server, "/runnel.v1.JobService/StreamOutput", grpc_prefix(len(body)) + body, end_stream=True)
    server.cli("alice", "stop", "--grace", "0s", job_id)
    print(f"1024 followers that never read: server grew {grown:.1f} MiB")
    # 64 followers (--max-followers-per-client) x 400 KiB of h2 send buffer, plus each connection's TLS buffer.
    assert grown < 96, f"the server grew {grown:.1f} MiB for 1024 followers that never read"


def test_rapid_reset_ends_in_goaway_with_flat_memory(server):
    before = server.rss_mib()
    client = H2Client(server)
    client.read(0.5)
    begun = time.monotonic()
    for _ in range(20000):
        if client.closed or time.monotonic() - begun > 10:
            break
        try:
            stream = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream, client.headers("/runnel.v1.JobService/ListJobs"))
            client.conn.reset_stream(stream)
            client.flush()
        except h2.exceptions.ProtocolError:
            break  # The server's GOAWAY arrived: h2 refuses to open more streams.
        except (ConnectionError, ssl.SSLError, OSError):
            client.closed = True
        client.read(0)
    serve_until(client, 5, until=client.goaway)
    assert client.goaway() is not None or client.closed, "20 000 opened-and-reset streams did not end the connection"
    assert server.rss_mib() - before < 32
    server.probe()
    client.close()


def test_a_continuation_flood_is_cut_off(server):
    before = server.rss_mib()
    client = H2Client(server)
    client.read(0.5)
    encoder = hpack.Encoder()
    block = encoder.encode(client.headers("/runnel.v1.JobService/ListJobs"))
    client.send_raw(HeadersFrame(1, block).serialize())  # no END_HEADERS
    junk = hpack.Encoder().encode([("x-junk", "j" * 8000)])
    sent = 0
    try:
        while sent < 64 * MiB and not client.closed:
            client.send_raw(ContinuationFrame(1, junk).serialize())
            sent += len(junk)
            client.read(0)
    except (ConnectionError, ssl.SSLError, OSError):
        client.closed = True
    serve_until(client, 5)
    assert client.closed or client.goaway() is not None, f"{sent / MiB:.0f} MiB of CONTINUATION went on unchecked"
    assert sent < 64 * MiB, "the server read 64 MiB of one header block"
    assert server.rss_mib() - before < 32
    server.probe()


def test_an_hpack_bomb_is_refused(server):
    before = server.rss_mib()
    client = H2Client(server)
    client.read(0.5)
    # One 4 KiB header in the dynamic table, then referenced a thousand times: 4 MB decoded from a few KiB.
    encoder = hpack.Encoder()
    first = encoder.encode(client.headers("/runnel.v1.JobService/ListJobs") + [("x-bomb", "b" * 4000)])
    client.send_raw(HeadersFrame(1, first, flags=["END_HEADERS", "END_STREAM"]).serialize())
    bomb = encoder.encode(client.headers("/runnel.v1.JobService/ListJobs") + [("x-bomb", "b" * 4000)] * 1000)
    assert len(bomb) < 8000, "the encoder did not index the header"
    client.send_raw(HeadersFrame(3, bomb, flags=["END_HEADERS", "END_STREAM"]).serialize())
    serve_until(client, 5, until=lambda: any(
        isinstance(e, (h2.events.StreamReset, h2.events.ConnectionTerminated)) or
        (isinstance(e, h2.events.ResponseReceived) and e.stream_id == 3) for e in client.events))
    refused = [e for e in client.events if isinstance(e, h2.events.StreamReset) and e.stream_id == 3]
    answered = [e for e in client.events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == 3]
    assert refused or client.goaway() is not None or client.closed, f"the bomb was served: {answered}"
    assert server.rss_mib() - before < 32
    server.probe()
    client.close()


def test_settings_and_ping_floods_leave_memory_flat(server):
    before = server.rss_mib()
    for frame in (SettingsFrame(0, settings={0x4: 65535}), PingFrame(0, opaque_data=b"12345678")):
        client = H2Client(server)
        client.read(0.5)
        payload = frame.serialize() * 1000
        begun = time.monotonic()
        try:
            # 200 000 frames, never reading the acknowledgements.
            for _ in range(200):
                if time.monotonic() - begun > 10:
                    break
                client.sock.settimeout(5)
                client.send_raw(payload)
        except (ConnectionError, ssl.SSLError, OSError, socket.timeout):
            pass  # Back-pressure or GOAWAY: either ends the flood.
        assert server.rss_mib() - before < 32, f"{type(frame).__name__} flood grew the server"
        client.close()
    server.probe()


def test_a_window_update_overflow_is_a_flow_control_error(server):
    client = H2Client(server)
    client.read(0.5)
    for _ in range(2):
        client.send_raw(WindowUpdateFrame(0, window_increment=2**31 - 1).serialize())
    serve_until(client, 5, until=client.goaway)
    goaway = client.goaway()
    assert goaway is not None, "no GOAWAY after the connection window passed 2^31-1"
    assert goaway.error_code == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR, goaway
    server.probe()


REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
# ServerReflectionRequest {file_containing_symbol: "runnel.v1.JobService"}: answered with runnel.proto and its
# imports, about 20 KiB.
SYMBOL_REQUEST = b"\x22\x14runnel.v1.JobService"


def test_reflection_streams_that_never_read_hold_a_bounded_amount(server):
    before = server.rss_mib()
    # 40 questions whose answers (800 KiB) pass h2's 400 KiB send buffer; the stream stays open.
    grown = never_read(server, REFLECTION, (grpc_prefix(len(SYMBOL_REQUEST)) + SYMBOL_REQUEST) * 40, end_stream=False)
    print(f"1024 reflection streams that never read: server grew {grown:.1f} MiB")
    # As for followers: 64 streams per identity (--max-followers-per-client) x 400 KiB, plus TLS buffers.
    assert grown < 96, f"the server grew {grown:.1f} MiB for 1024 reflection streams that never read"
    assert_memory_given_back(server, before, "reflection streams that never read")


def test_an_open_reflection_stream_ends_unavailable_at_shutdown(server):
    client = H2Client(server)
    client.read(0.5)
    stream = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream, client.headers(REFLECTION))
    client.conn.send_data(stream, grpc_prefix(len(SYMBOL_REQUEST)) + SYMBOL_REQUEST)
    client.flush()
    answered = lambda: any(isinstance(e, h2.events.DataReceived) for e in client.events)  # noqa: E731
    serve_until(client, 5, until=answered)
    assert answered(), "no answer to a reflection request"
    began = time.monotonic()
    server.stopped_by_test = True
    server.proc.send_signal(signal.SIGTERM)
    ended = lambda: any(isinstance(e, h2.events.TrailersReceived) for e in client.events)  # noqa: E731
    serve_until(client, 10, until=ended)
    trailers = next((dict(e.headers) for e in client.events if isinstance(e, h2.events.TrailersReceived)), None)
    assert trailers is not None, "the stream did not end at shutdown"
    assert trailers.get("grpc-status") == "14", trailers
    # With no stream left the client goes, as gRPC clients do after GOAWAY (Python's h2 would not answer the
    # server's shutdown ping after it), and the server does not wait out its 5 s allowance for connections.
    client.close()
    server.proc.wait(timeout=10)
    took = time.monotonic() - began
    assert server.proc.returncode == 0
    assert took < 4, f"the server took {took:.1f} s to stop with a reflection stream open:\n" + open(
        server.log_path).read()[-3000:]
