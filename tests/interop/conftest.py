"""Fixtures shared by the interop tests: one real runnel server for the session (with its metrics endpoint),
a PKI for it, and a grpcio client per identity.

Run through tests/interop/run.sh, which installs grpcio, generates the stubs and sets RUNNEL_BIN.
"""

import os
import re
import signal
import subprocess
import tempfile
import time

import grpc
import pytest

# The stubs live in tests/interop/generated (on PYTHONPATH). The health stubs are the package
# grpc.health.v1, which the installed grpc package would shadow: add the generated folder to its path.
_GEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated")
grpc.__path__.append(os.path.join(_GEN, "grpc"))

from runnel.v1 import runnel_pb2_grpc as pb_grpc  # noqa: E402


# ---------------------------------------------------------------------------------------------------------
# fixtures


class Server:
    def __init__(self, address, metrics_url, pki, log_path):
        self.address = address
        self.metrics_url = metrics_url
        self.pki = pki
        self.log_path = log_path

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def channel(self, name, extra_options=()):
        def read(path):
            with open(path, "rb") as f:
                return f.read()

        creds = grpc.ssl_channel_credentials(
            root_certificates=read(os.path.join(self.pki, "ca.crt")),
            private_key=read(os.path.join(self.pki, f"{name}.key")),
            certificate_chain=read(os.path.join(self.pki, f"{name}.crt")),
        )
        options = [
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.use_local_subchannel_pool", 1),
        ] + list(extra_options)
        return grpc.secure_channel(self.address, creds, options=options)

    def job_service(self, name, extra_options=()):
        """A channel for identity `name` and a JobService stub on it."""
        channel = self.channel(name, extra_options)
        return channel, pb_grpc.JobServiceStub(channel)


@pytest.fixture(scope="session")
def server():
    binary = os.environ.get("RUNNEL_BIN")
    assert binary, "RUNNEL_BIN must name the runnel binary (run tests/interop/run.sh BINARY)"
    assert os.access(binary, os.X_OK), f"not executable: {binary}"
    with tempfile.TemporaryDirectory(prefix="runnel-interop-") as tmp:
        # Jobs run as an unprivileged user (as root, the server isolates them): they must pass through to
        # their working directories under the state dir.
        os.chmod(tmp, 0o711)
        pki = os.path.join(tmp, "pki")
        os.mkdir(pki)

        def certs(*args):
            subprocess.run([binary, "certs", *args], check=True, capture_output=True, timeout=60)

        certs("ca", "--out", os.path.join(pki, "ca"))
        certs("server", "--ca", os.path.join(pki, "ca"), "--out", os.path.join(pki, "server"),
              "--dns", "localhost", "--ip", "127.0.0.1")
        for name in ("alice", "bob", "admin"):
            certs("client", "--ca", os.path.join(pki, "ca"), "--name", name, "--out", os.path.join(pki, name))

        log_path = os.path.join(tmp, "server.log")
        state_dir = os.path.join(tmp, "state")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [binary, "server", "--listen", "127.0.0.1:0",
                 "--cert", os.path.join(pki, "server.crt"), "--key", os.path.join(pki, "server.key"),
                 "--client-ca", os.path.join(pki, "ca.crt"), "--state-dir", state_dir, "--admin", "admin",
                 "--metrics-listen", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        try:
            address = None
            deadline = time.monotonic() + 15
            while address is None:
                with open(log_path, "rb") as f:
                    m = re.search(rb"runnel server listening on (\S+)", f.read())
                if m:
                    address = m.group(1).decode()
                elif proc.poll() is not None:
                    pytest.fail(f"server exited with {proc.returncode}:\n{open(log_path).read()}")
                elif time.monotonic() > deadline:
                    pytest.fail(f"server did not report its address:\n{open(log_path).read()}")
                else:
                    time.sleep(0.05)
            m = re.search(rb"metrics served at (http://\S+)", open(log_path, "rb").read())
            assert m, f"no metrics address in the log:\n{open(log_path).read()}"
            yield Server(address, m.group(1).decode(), pki, log_path)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    code = None
            else:
                code = proc.returncode
            log_text = open(log_path, "rb").read().decode("utf-8", "replace")
        assert code == 0, f"server exit status {code} after SIGTERM; log:\n{log_text}"


@pytest.fixture(scope="session")
def alice(server):
    channel, stub = server.job_service("alice")
    yield stub
    channel.close()


@pytest.fixture(scope="session")
def bob(server):
    channel, stub = server.job_service("bob")
    yield stub
    channel.close()


@pytest.fixture(scope="session")
def admin(server):
    channel, stub = server.job_service("admin")
    yield stub
    channel.close()
