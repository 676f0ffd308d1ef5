"""Interop test: a real runnel server, driven by grpcio (the reference gRPC implementation) over mutual TLS.

Run through tests/interop/run.sh, which installs grpcio, generates the stubs and sets RUNNEL_BIN.
"""

import os
import signal
import tempfile
import time
import uuid

import grpc
import pytest

# conftest.py has made the generated health stubs importable beside the installed grpc package.
from grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from runnel.v1 import runnel_pb2 as pb  # noqa: E402
from runnel.v1 import runnel_pb2_grpc as pb_grpc  # noqa: E402

TIMEOUT = 10  # seconds, for every call that is expected to answer promptly
SERVICE = "runnel.v1.JobService"


# ---------------------------------------------------------------------------------------------------------
# helpers


def expect_error(code, detail_part, fn, *args, **kwargs):
    kwargs.setdefault("timeout", TIMEOUT)
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()!r}"
    assert detail_part in (err.details() or ""), f"{detail_part!r} not in details {err.details()!r}"
    return err


def start(stub, command, *args, **fields):
    return stub.StartJob(pb.StartJobRequest(command=command, args=list(args), **fields), timeout=TIMEOUT)


def stop(stub, job_id, grace_s=None):
    req = pb.StopJobRequest(job_id=job_id)
    if grace_s is not None:
        req.grace_period.FromMilliseconds(int(grace_s * 1000))
    return stub.StopJob(req, timeout=TIMEOUT)


def read_output(stub, job_id, offset=0, follow=False):
    return list(stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id, offset=offset, follow=follow),
                                  timeout=TIMEOUT))


def check_contiguous(chunks, first_offset):
    offset = first_offset
    for c in chunks:
        assert c.offset == offset, f"chunk at {c.offset}, expected {offset}: {chunks}"
        assert len(c.data) > 0
        assert c.stream in (pb.OUTPUT_STREAM_STDOUT, pb.OUTPUT_STREAM_STDERR)
        offset += len(c.data)
    return offset


def by_stream(chunks, stream):
    return b"".join(c.data for c in chunks if c.stream == stream)


# ---------------------------------------------------------------------------------------------------------
# health


def test_health_check(server):
    with server.channel("alice") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        expect_error(grpc.StatusCode.NOT_FOUND, "no.such.Service",
                     health.Check, health_pb2.HealthCheckRequest(service="no.such.Service"))


def test_health_watch(server):
    with server.channel("bob") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        call = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT)
        first = next(call)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED
        # The channel is still usable after the cancelled watch.
        resp = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------------------------------------
# the job RPCs


SCRIPT = r'printf "a\0b\377"; printf err >&2; exit 3'


def test_start_wait_get_stream_byte_exact(alice):
    job = start(alice, "sh", "-c", SCRIPT)
    uuid.UUID(job.id)
    assert job.id == job.id.lower()
    assert job.owner == "alice"
    assert job.command == "sh"
    assert list(job.args) == ["-c", SCRIPT]
    assert job.pid > 0
    assert job.started_at.seconds > 0

    done = alice.WaitJob(pb.WaitJobRequest(job_id=job.id), timeout=TIMEOUT)
    assert done.id == job.id
    assert done.state == pb.JOB_STATE_EXITED
    assert done.end_reason == pb.END_REASON_EXITED
    assert done.HasField("exit_code") and done.exit_code == 3
    assert not done.HasField("signal")
    assert done.output_bytes == 7
    assert done.ended_at.ToNanoseconds() >= done.started_at.ToNanoseconds()

    got = alice.GetJob(pb.GetJobRequest(job_id=job.id), timeout=TIMEOUT)
    assert got.state == pb.JOB_STATE_EXITED and got.exit_code == 3 and got.output_bytes == 7

    for follow in (False, True):
        chunks = read_output(alice, job.id, follow=follow)
        assert check_contiguous(chunks, 0) == 7
        assert by_stream(chunks, pb.OUTPUT_STREAM_STDOUT) == b"a\x00b\xff"
        assert by_stream(chunks, pb.OUTPUT_STREAM_STDERR) == b"err"

    # From an offset inside the output: the same bytes from there on.
    full = read_output(alice, job.id)
    combined = b"".join(c.data for c in full)
    tail = read_output(alice, job.id, offset=2)
    assert check_contiguous(tail, 2) == 7
    assert b"".join(c.data for c in tail) == combined[2:]

    # At the end: no chunks, OK. Past the end: OUT_OF_RANGE.
    assert read_output(alice, job.id, offset=7) == []
    expect_error(grpc.StatusCode.OUT_OF_RANGE, "",
                 lambda timeout: list(alice.StreamOutput(
                     pb.StreamOutputRequest(job_id=job.id, offset=100), timeout=timeout)))


def test_env_and_working_dir(alice):
    with tempfile.TemporaryDirectory() as wd:
        os.chmod(wd, 0o755)  # the job's user (nobody, when the server runs as root) must be able to enter it
        job = start(alice, "/bin/sh", "-c", 'printf "%s|%s|%s" "$FOO" "$(pwd)" "$HOME"',
                    env=["FOO=bar baz"], working_dir=wd)
        done = alice.WaitJob(pb.WaitJobRequest(job_id=job.id), timeout=TIMEOUT)
        assert done.exit_code == 0
        out = b"".join(c.data for c in read_output(alice, job.id)).decode()
        assert out == f"bar baz|{os.path.realpath(wd)}|"


def list_all(stub, **fields):
    """Every job ListJobs gives, following next_page_token."""
    jobs, token = [], ""
    while True:
        page = stub.ListJobs(pb.ListJobsRequest(page_token=token, **fields), timeout=TIMEOUT)
        jobs.extend(page.jobs)
        if not page.next_page_token:
            return jobs
        token = page.next_page_token


def test_list_jobs_pages(alice):
    started = [start(alice, "true").id for _ in range(5)]
    ids, token, sizes = [], "", []
    while True:
        page = alice.ListJobs(pb.ListJobsRequest(page_size=2, page_token=token), timeout=TIMEOUT)
        assert len(page.jobs) <= 2
        sizes.append(len(page.jobs))
        ids.extend(j.id for j in page.jobs)
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert ids[-5:] == started, "pages continue in start order"
    assert len(sizes) >= 3
    with pytest.raises(grpc.RpcError) as err:
        alice.ListJobs(pb.ListJobsRequest(page_token="garbage"), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in err.value.details()


def test_list_jobs(alice):
    ended = start(alice, "true")
    alice.WaitJob(pb.WaitJobRequest(job_id=ended.id), timeout=TIMEOUT)
    running = start(alice, "sleep", "60")
    try:
        jobs = list_all(alice)
        ids = [j.id for j in jobs]
        assert ended.id in ids and running.id in ids
        assert ids.index(ended.id) < ids.index(running.id), "ListJobs must be in start order"
        assert all(j.owner == "alice" for j in jobs)

        only_running = list_all(alice, states=[pb.JOB_STATE_RUNNING])
        assert running.id in [j.id for j in only_running]
        assert ended.id not in [j.id for j in only_running]
        assert all(j.state == pb.JOB_STATE_RUNNING for j in only_running)

        only_exited = list_all(alice, states=[pb.JOB_STATE_EXITED])
        assert ended.id in [j.id for j in only_exited]
        assert running.id not in [j.id for j in only_exited]
    finally:
        stop(alice, running.id, grace_s=5)


def test_stop_job_idempotent(alice):
    job = start(alice, "sleep", "60")
    assert job.state == pb.JOB_STATE_RUNNING
    stopped = stop(alice, job.id)
    assert stopped.id == job.id
    assert stopped.state == pb.JOB_STATE_KILLED
    assert stopped.end_reason == pb.END_REASON_STOPPED
    assert stopped.HasField("signal") and stopped.signal == signal.SIGTERM
    assert not stopped.HasField("exit_code")

    again = stop(alice, job.id)
    assert again.state == pb.JOB_STATE_KILLED
    assert again.end_reason == pb.END_REASON_STOPPED
    assert again.signal == signal.SIGTERM
    assert again.ended_at == stopped.ended_at

    waited = alice.WaitJob(pb.WaitJobRequest(job_id=job.id), timeout=TIMEOUT)
    assert waited.state == pb.JOB_STATE_KILLED


# ---------------------------------------------------------------------------------------------------------
# error codes


START_ERRORS = [
    pytest.param(dict(command=""), grpc.StatusCode.INVALID_ARGUMENT, "command is empty", id="empty-command"),
    pytest.param(dict(command="true", env=["NOEQUALS"]), grpc.StatusCode.INVALID_ARGUMENT, "NOEQUALS",
                 id="bad-env"),
    pytest.param(dict(command="true", working_dir="relative/dir"), grpc.StatusCode.INVALID_ARGUMENT,
                 "not absolute", id="relative-working-dir"),
    pytest.param(dict(command="no-such-command-xyz"), grpc.StatusCode.NOT_FOUND,
                 "executable not found: no-such-command-xyz", id="missing-executable"),
    pytest.param(dict(command="/etc/passwd"), grpc.StatusCode.PERMISSION_DENIED, "/etc/passwd",
                 id="not-executable"),
    pytest.param(dict(command="true", working_dir="/no/such/dir/xyz"), grpc.StatusCode.FAILED_PRECONDITION,
                 "/no/such/dir/xyz", id="missing-working-dir"),
    pytest.param(dict(command="true", limits=pb.ResourceLimits(memory_bytes=64 << 20)),
                 grpc.StatusCode.FAILED_PRECONDITION, "resource limits", id="limits-unavailable"),
]


@pytest.mark.parametrize("fields,code,detail", START_ERRORS)
def test_start_job_errors(alice, fields, code, detail):
    expect_error(code, detail, alice.StartJob, pb.StartJobRequest(**fields))


@pytest.mark.parametrize("method", ["GetJob", "WaitJob", "StopJob", "StreamOutput"])
def test_job_id_not_uuid(alice, method):
    request_type = {"GetJob": pb.GetJobRequest, "WaitJob": pb.WaitJobRequest, "StopJob": pb.StopJobRequest,
                    "StreamOutput": pb.StreamOutputRequest}[method]
    call = getattr(alice, method)
    if method == "StreamOutput":
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, "not a UUID",
                     lambda req, timeout: list(call(req, timeout=timeout)), request_type(job_id="not-a-uuid"))
    else:
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, "not a UUID", call, request_type(job_id="not-a-uuid"))


def test_unknown_job_not_found(alice):
    missing = str(uuid.uuid4())
    expect_error(grpc.StatusCode.NOT_FOUND, missing, alice.GetJob, pb.GetJobRequest(job_id=missing))


def test_unimplemented(server):
    with server.channel("alice") as channel:
        nope = channel.unary_unary("/runnel.v1.JobService/Nope",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        expect_error(grpc.StatusCode.UNIMPLEMENTED, "", nope, b"")
        # The connection still serves real calls afterwards.
        pb_grpc.JobServiceStub(channel).ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT)


def test_request_too_large(server):
    big = 16 << 20
    channel, stub = server.job_service("alice", [("grpc.max_send_message_length", big)])
    with channel:
        args = ["x" * (1 << 20)] * 5  # ~5 MiB: over the server's 4 MiB limit
        expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than the limit",
                     stub.StartJob, pb.StartJobRequest(command="true", args=args))
        # The connection still serves real calls afterwards.
        stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT)


def test_deadline_exceeded(alice):
    job = start(alice, "sleep", "5")
    try:
        t0 = time.monotonic()
        expect_error(grpc.StatusCode.DEADLINE_EXCEEDED, "", alice.WaitJob, pb.WaitJobRequest(job_id=job.id),
                     timeout=0.3)
        assert time.monotonic() - t0 < 3
        assert alice.GetJob(pb.GetJobRequest(job_id=job.id), timeout=TIMEOUT).state == pb.JOB_STATE_RUNNING
    finally:
        stop(alice, job.id, grace_s=5)


def test_cancel_mid_stream(alice):
    job = start(alice, "sh", "-c", "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done")
    try:
        call = alice.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True), timeout=30)
        chunks = [next(call), next(call)]
        assert chunks[0].offset == 0
        assert chunks[1].offset == len(chunks[0].data)
        assert all(c.stream == pb.OUTPUT_STREAM_STDOUT for c in chunks)
        assert b"".join(c.data for c in chunks).startswith(b"line0\n")
        assert call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED
        with pytest.raises(grpc.RpcError) as info:
            for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.CANCELLED

        # Same channel, server still answers, job unaffected.
        got = alice.GetJob(pb.GetJobRequest(job_id=job.id), timeout=TIMEOUT)
        assert got.state == pb.JOB_STATE_RUNNING
        time.sleep(0.2)
        again = alice.GetJob(pb.GetJobRequest(job_id=job.id), timeout=TIMEOUT)
        assert again.state == pb.JOB_STATE_RUNNING
        assert again.output_bytes > got.output_bytes or again.output_bytes > 12
    finally:
        stopped = stop(alice, job.id, grace_s=5)
    assert stopped.state == pb.JOB_STATE_KILLED
    assert stopped.end_reason == pb.END_REASON_STOPPED


# ---------------------------------------------------------------------------------------------------------
# authorization


def test_authorization(alice, bob, admin):
    job = start(alice, "sleep", "60")
    try:
        missing = f"no job {job.id}"
        expect_error(grpc.StatusCode.NOT_FOUND, missing, bob.GetJob, pb.GetJobRequest(job_id=job.id))
        expect_error(grpc.StatusCode.NOT_FOUND, missing, bob.WaitJob, pb.WaitJobRequest(job_id=job.id))
        expect_error(grpc.StatusCode.NOT_FOUND, missing, bob.StopJob, pb.StopJobRequest(job_id=job.id))
        expect_error(grpc.StatusCode.NOT_FOUND, missing,
                     lambda req, timeout: list(bob.StreamOutput(req, timeout=timeout)),
                     pb.StreamOutputRequest(job_id=job.id))

        bobs = start(bob, "true")
        bob_ids = [j.id for j in list_all(bob)]
        assert bobs.id in bob_ids
        assert job.id not in bob_ids
        assert all(j.owner == "bob" for j in list_all(bob))
        assert bobs.id not in [j.id for j in list_all(alice)]

        seen = admin.GetJob(pb.GetJobRequest(job_id=job.id), timeout=TIMEOUT)
        assert seen.owner == "alice" and seen.state == pb.JOB_STATE_RUNNING
        admin_ids = [j.id for j in list_all(admin)]
        assert job.id in admin_ids and bobs.id in admin_ids

        # The job is untouched by bob's attempt to stop it; admin may stop it.
        assert alice.GetJob(pb.GetJobRequest(job_id=job.id), timeout=TIMEOUT).state == pb.JOB_STATE_RUNNING
        stopped = admin.StopJob(pb.StopJobRequest(job_id=job.id), timeout=TIMEOUT)
        assert stopped.state == pb.JOB_STATE_KILLED and stopped.end_reason == pb.END_REASON_STOPPED
    finally:
        stop(alice, job.id, grace_s=5)
