"""The metrics endpoint (--metrics-listen), read with Prometheus' own Python parser (prometheus_client), as a
monitoring system would: the exposition parses, and its counters move with what clients and jobs do.
"""

import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runnel.v1 import runnel_pb2 as pb  # noqa: E402

TIMEOUT = 10


def scrape(server):
    """Every sample of one scrape, as {(name, sorted label pairs): value}, plus the families' types."""
    with urllib.request.urlopen(server.metrics_url, timeout=TIMEOUT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"sample twice: {key}"
            samples[key] = sample.value
    return samples, types


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_exposition_parses_with_every_family_typed(server):
    samples, types = scrape(server)
    # prometheus_client names counter families without their _total suffix.
    assert types["runnel_rpcs"] == "counter"
    assert types["runnel_rpc_duration_seconds"] == "histogram"
    assert types["runnel_loop_turn_duration_seconds"] == "histogram"
    assert types["runnel_jobs"] == "gauge"
    assert types["runnel_job_ends"] == "counter"
    assert types["process_resident_memory_bytes"] == "gauge"
    version = subprocess.run([os.environ["RUNNEL_BIN"], "version"], capture_output=True, check=True,
                             timeout=TIMEOUT).stdout.decode().split()[1]
    assert value(samples, "runnel_build_info", version=version) == 1
    assert value(samples, "process_resident_memory_bytes") > 1 << 20
    assert value(samples, "process_open_fds") > 3
    # Every turn so far is in the histogram, and its buckets are cumulative.
    buckets = sorted(
        (float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
        if name == "runnel_loop_turn_duration_seconds_bucket"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1][1] == value(samples, "runnel_loop_turn_duration_seconds_count") > 0


def test_counters_move_with_calls_jobs_and_output(server, alice):
    time.sleep(1.1)  # not the page an earlier test saw
    before, _ = scrape(server)
    job = alice.StartJob(pb.StartJobRequest(command="sh", args=["-c", "printf 12345; printf abc >&2"]),
                         timeout=TIMEOUT)
    alice.WaitJob(pb.WaitJobRequest(job_id=job.id), timeout=TIMEOUT)
    chunks = list(alice.StreamOutput(pb.StreamOutputRequest(job_id=job.id), timeout=TIMEOUT))
    assert b"".join(c.data for c in chunks) in (b"12345abc", b"abc12345")
    with pytest.raises(grpc.RpcError) as missing:
        alice.GetJob(pb.GetJobRequest(job_id="00000000-0000-4000-8000-000000000000"), timeout=TIMEOUT)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    time.sleep(1.1)  # a page is rendered at most once a second
    after, _ = scrape(server)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("runnel_rpcs_total", method="StartJob", code="OK") == 1
    assert moved("runnel_rpcs_total", method="WaitJob", code="OK") == 1
    assert moved("runnel_rpcs_total", method="StreamOutput", code="OK") == 1
    assert moved("runnel_rpcs_total", method="GetJob", code="NOT_FOUND") == 1
    assert moved("runnel_rpc_duration_seconds_count", method="StartJob") == 1
    assert moved("runnel_rpc_duration_seconds_bucket", method="StartJob", le="+Inf") == 1
    assert moved("runnel_jobs_started_total") == 1
    assert moved("runnel_job_ends_total", reason="exited") == 1
    assert moved("runnel_output_received_bytes_total", stream="stdout") == 5
    assert moved("runnel_output_received_bytes_total", stream="stderr") == 3
    assert moved("runnel_output_sent_bytes_total", stream="stdout") == 5
    assert moved("runnel_output_sent_bytes_total", stream="stderr") == 3
    assert moved("runnel_spool_bytes") >= 8
    assert value(after, "runnel_jobs", state="exited") >= 1
    assert moved("runnel_loop_turn_duration_seconds_count") > 0


def test_calls_during_an_output_flood_cut_the_loops_copy_short(server, alice):
    """A turn copies job output in pieces and stops early when a call arrives meanwhile (docs/architecture.md, "Each
    turn"): calls made while jobs flood output move the counter of turns cut short."""
    time.sleep(1.1)  # not the page an earlier test saw
    before, _ = scrape(server)
    flooders = [alice.StartJob(pb.StartJobRequest(command="head", args=["-c", "300M", "/dev/zero"]), timeout=TIMEOUT)
                for _ in range(2)]
    calls, deadline = 0, time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [alice.GetJob(pb.GetJobRequest(job_id=job.id), timeout=TIMEOUT).state for job in flooders]
        calls += len(states)
        if pb.JOB_STATE_RUNNING not in states:
            break
        time.sleep(0.002)
    for job in flooders:
        alice.WaitJob(pb.WaitJobRequest(job_id=job.id), timeout=TIMEOUT)
        alice.RemoveJob(pb.RemoveJobRequest(job_id=job.id), timeout=TIMEOUT)
    time.sleep(1.1)  # a page is rendered at most once a second
    after, _ = scrape(server)
    cut_short = value(after, "runnel_loop_output_copies_cut_short_total") - value(
        before, "runnel_loop_output_copies_cut_short_total")
    assert cut_short > 0, f"no turn cut short by {calls} calls during the flood"


def test_rejected_handshakes_and_connections_are_counted(server):
    before, _ = scrape(server)
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not TLS
        sock.settimeout(TIMEOUT)
        while sock.recv(4096):
            pass
    deadline = time.monotonic() + TIMEOUT
    while True:
        after, _ = scrape(server)
        if value(after, "runnel_connections_rejected_total", reason="tls") > value(
                before, "runnel_connections_rejected_total", reason="tls"):
            break
        assert time.monotonic() < deadline, "the failed TLS handshake was not counted"
        time.sleep(0.05)
    assert value(after, "runnel_connections_accepted_total") >= value(before, "runnel_connections_accepted_total") + 1


def test_only_get_metrics_is_served_and_silent_sockets_do_not_lock_scrapers_out(server):
    base = urllib.parse.urlsplit(server.metrics_url)
    with pytest.raises(urllib.error.HTTPError) as not_found:
        urllib.request.urlopen(f"http://{base.netloc}/", timeout=TIMEOUT)
    assert not_found.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as not_allowed:
        urllib.request.urlopen(urllib.request.Request(server.metrics_url, data=b"x", method="POST"), timeout=TIMEOUT)
    assert not_allowed.value.code == 405
    # Twice as many silent connections as the endpoint keeps open (16): each new one closes the oldest still
    # reading its request, so the first ones are closed at once, well before their 5 s, and a scrape gets through.
    silent = [socket.create_connection((base.hostname, base.port), timeout=TIMEOUT) for _ in range(32)]
    try:
        silent[0].settimeout(2)
        assert silent[0].recv(1) == b"", "the oldest silent connection was not closed to make room"
        silent[-1].settimeout(0.2)
        with pytest.raises(socket.timeout):
            silent[-1].recv(1)  # the newest is still open
        scrape(server)
    finally:
        for sock in silent:
            sock.close()
