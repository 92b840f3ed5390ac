"""The error interceptor over a real gRPC socket: domain errors keep their codes, anything
unexpected is logged with its traceback and answered INTERNAL, never an unlogged UNKNOWN."""

from __future__ import annotations

import logging

import grpc
import pytest

from memscore.api.v1 import scoring_service_pb2 as spb
from memscore.api.v1 import scoring_service_pb2_grpc as spb_grpc
from memscore.client import field_violations
from memscore.dataplane import ScoringPlane
from memscore.errors import InvalidArgument, NotFound
from memscore.gateway.server import serve
from memscore.runtime import Runtime
from memscore.store.jobs import JobRecord

pytestmark = pytest.mark.integration  # gRPC over a loopback socket


@pytest.fixture
def gateway(make_settings):
    rt = Runtime.from_settings(make_settings())
    plane = ScoringPlane(rt, enqueue=lambda name, args: None)
    server, port = serve(rt, "127.0.0.1:0", plane)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield plane, spb_grpc.ScoringServiceStub(ch)
    server.stop(grace=0).wait()


def test_an_unexpected_exception_is_logged_and_answered_internal(gateway, monkeypatch, caplog):
    plane, stub = gateway

    def broken(job_id, tenant=None):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(plane, "get", broken)
    with caplog.at_level(logging.ERROR, logger="memscore.rpc"), pytest.raises(grpc.RpcError) as e:
        stub.GetJob(spb.GetJobRequest(job_id="job-x"), timeout=10)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "disk on fire" not in e.value.details()  # internals stay in the server's log
    incident = e.value.details().split("incident ")[1].split()[0]
    record = next(r for r in caplog.records if incident in r.getMessage())
    assert "/memscore.v1.ScoringService/GetJob" in record.getMessage()
    assert record.exc_info and record.exc_info[0] is RuntimeError  # with its traceback


def test_an_unexpected_exception_in_a_stream_is_internal_too(gateway, monkeypatch):
    """Mid-stream: WatchJob's first event is sent, then the step after the job changes fails."""
    plane, stub = gateway
    rec, _ = plane.rt.jobs.create(JobRecord(job_id="job-x", kind="scoring"))

    def broken(seen, changed):
        raise KeyError("summary")

    monkeypatch.setattr(plane, "watch_step", broken)
    events = stub.WatchJob(spb.WatchJobRequest(job_id="job-x"), timeout=10)
    assert next(events).event.version == rec.version
    plane.rt.jobs.update("job-x", state="RUNNING")
    with pytest.raises(grpc.RpcError) as e:
        next(events)
    assert e.value.code() == grpc.StatusCode.INTERNAL and "incident" in e.value.details()


def test_an_exception_in_a_plain_generator_stream_is_internal(make_settings, monkeypatch):
    """The results server's streams are plain generators run a message at a time on the pool."""
    from memscore.api.v1 import results_service_pb2 as rpb
    from memscore.api.v1 import results_service_pb2_grpc as rpb_grpc
    from memscore.dataplane import ResultsPlane
    from memscore.results.server import serve as serve_results

    rt = Runtime.from_settings(make_settings())
    plane = ResultsPlane(rt)

    def broken(*args, **kwargs):
        yield from ()
        raise KeyError("page")

    monkeypatch.setattr(plane, "ranked", broken)
    server, port = serve_results(rt, "127.0.0.1:0", plane)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.RpcError) as e:
                list(rpb_grpc.ResultsServiceStub(ch).StreamRanked(rpb.StreamRankedRequest(job_id="job-x"), timeout=10))
        assert e.value.code() == grpc.StatusCode.INTERNAL
    finally:
        server.stop(grace=0).wait()


def test_a_domain_error_keeps_its_code(gateway, monkeypatch):
    plane, stub = gateway

    def missing(job_id, tenant=None):
        raise NotFound(f"no job {job_id!r}")

    monkeypatch.setattr(plane, "get", missing)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetJob(spb.GetJobRequest(job_id="job-x"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "job-x" in e.value.details()


def test_an_invalid_argument_quoting_non_ascii_text_still_reaches_the_client(gateway, monkeypatch):
    """Found by test_fuzz.py: messages were bounded in characters, and 2000 four-byte characters
    (percent-encoded in grpc-message, again in the status details) or 100 long violations
    overflowed gRPC's trailer limit: the client saw RESOURCE_EXHAUSTED, not INVALID_ARGUMENT."""
    plane, stub = gateway
    for violations in ([("metric", "\U0001f984" * 3000)], [(f"field_{i}", "é" * 500) for i in range(100)]):

        def invalid(job_id, tenant=None, violations=violations):
            raise InvalidArgument(violations)

        monkeypatch.setattr(plane, "get", invalid)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetJob(spb.GetJobRequest(job_id="job-x"), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        named = field_violations(e.value)
        assert named and named[0][0] == violations[0][0] and all(f and d for f, d in named)
        assert len(e.value.details()) <= 2000
