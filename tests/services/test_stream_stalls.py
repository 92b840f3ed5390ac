"""Streams whose client stopped taking messages are cut off: a GetArtifact reader that reads
nothing is ended CANCELLED after MEMSCORE_STREAM_STALL_TIMEOUT_S (its slot stays its tenant's
until the client reads or goes away), an upload whose client stops sending likewise (its slot
free at once), while a slow reader that keeps reading is served to the end. Real gRPC servers
on loopback."""

from __future__ import annotations

import os
import time

import grpc
import pytest

from memscore.api.v1 import results_service_pb2 as rpb
from memscore.api.v1 import scoring_service_pb2 as spb
from memscore.client import Client
from memscore.dataplane import ScoringPlane
from memscore.gateway.server import serve as serve_gateway
from memscore.limits import StallReaper
from memscore.results.server import serve as serve_results
from memscore.runtime import Runtime
from memscore.store.jobs import JobRecord

from .conftest import wait_for

pytestmark = pytest.mark.integration

STALL_S = 1.5
BIG = 48 << 20  # far beyond any HTTP/2 flow-control window: an unread stream must block


@pytest.fixture
def servers(make_settings):
    rt = Runtime.from_settings(make_settings(stream_stall_timeout_s=STALL_S, tenant_max_streams=1))
    results, rport = serve_results(rt, "127.0.0.1:0")
    gateway, gport = serve_gateway(rt, "127.0.0.1:0", ScoringPlane(rt, enqueue=lambda name, args: None))
    rec, _ = rt.jobs.create(JobRecord(job_id="job-big", kind="scoring"))
    rt.objects.put_bytes("jobs/job-big/results/big.bin", os.urandom(BIG))
    rt.jobs.update(rec.job_id, state="SUCCEEDED", results={"big.bin": "jobs/job-big/results/big.bin"})
    yield rt, f"127.0.0.1:{gport}", f"127.0.0.1:{rport}"
    results.stop(grace=0).wait()
    gateway.stop(grace=0).wait()


def _second_stream_code(c: Client) -> grpc.StatusCode | None:
    """The tenant's one stream slot: None if a second stream (GetArtifact) could start."""
    try:
        next(iter(c.results.GetArtifact(rpb.GetArtifactRequest(job_id="job-big", name="big.bin"), timeout=10)))
        return None
    except grpc.RpcError as e:
        return e.code()


def test_a_reader_that_reads_nothing_is_ended_and_its_slot_freed_once_it_reads(servers, caplog):
    rt, gateway, results = servers
    with Client(gateway, results, timeout=30) as c, caplog.at_level("WARNING", logger="memscore.rpc"):
        stalled = c.results.GetArtifact(rpb.GetArtifactRequest(job_id="job-big", name="big.bin"), timeout=120)
        time.sleep(0.5)  # the server has started writing into the unread stream
        assert _second_stream_code(c) == grpc.StatusCode.RESOURCE_EXHAUSTED
        started = time.monotonic()
        wait_for(lambda: "took nothing" in caplog.text, STALL_S + 5, 0.1, what="the stall to be noticed")
        assert time.monotonic() - started < STALL_S + 3 and "GetArtifact" in caplog.text
        # the client still holds its HTTP/2 stream: the slot stays its tenant's, nobody else's
        assert _second_stream_code(c) == grpc.StatusCode.RESOURCE_EXHAUSTED
        got = 0
        with pytest.raises(grpc.RpcError) as e:
            for msg in stalled:  # what was buffered, then the end the server chose
                got += len(msg.chunk)
        assert e.value.code() == grpc.StatusCode.CANCELLED and "MEMSCORE_STREAM_STALL_TIMEOUT_S" in e.value.details()
        assert 0 < got < BIG  # the server stopped producing when it ended the stream
        wait_for(lambda: _second_stream_code(c) is None, 10, 0.1, what="the ended stream's slot")


def test_a_slow_reader_that_keeps_reading_gets_everything(servers):
    rt, gateway, results = servers
    with Client(gateway, results, timeout=60) as c:
        got = 0
        for i, msg in enumerate(
            c.results.GetArtifact(rpb.GetArtifactRequest(job_id="job-big", name="big.bin"), timeout=120)
        ):
            got += len(msg.chunk)
            if i % 8 == 0:
                time.sleep(STALL_S / 3)  # pauses shorter than the timeout
        assert got == BIG


def test_an_upload_whose_client_stops_sending_is_cancelled_and_frees_its_slot(servers):
    import threading

    rt, gateway, results = servers
    release = threading.Event()

    def chunks():
        yield spb.UploadDatasetRequest(filename="stall.npz", chunk=b"PK" + b"\0" * 1000)
        release.wait(30)  # the client goes quiet mid-upload

    with Client(gateway, results, timeout=30) as c:
        outcome = {}

        def upload():
            try:
                c.scoring.UploadDataset(chunks(), timeout=60)
            except grpc.RpcError as e:
                outcome["code"] = e.code()

        t = threading.Thread(target=upload)
        t.start()
        try:
            wait_for(lambda: "code" in outcome, STALL_S + 10, 0.1, what="the stalled upload's end")
            assert outcome["code"] == grpc.StatusCode.CANCELLED
        finally:
            release.set()
            t.join(10)
        # its slot is free again: a stream of the same tenant starts
        next(iter(c.scoring.WatchJob(spb.WatchJobRequest(job_id="job-big"), timeout=10)))


def test_the_reaper_cancels_only_what_waits_on_its_client_past_the_timeout():
    cancelled = []
    reaper = StallReaper(10, None)
    reaper.start = lambda: None  # no thread: this test drives the clock
    a = reaper.track(lambda: cancelled.append("a"), "a")
    b = reaper.track(lambda: cancelled.append("b"), "b")
    c = reaper.track(lambda: cancelled.append("c"), "c")
    a.waiting()
    b.waiting()
    b.done_waiting()  # b's client took its message: producing the next one never counts
    now = time.monotonic()
    assert reaper.reap(now + 5) == 0
    assert reaper.reap(now + 11) == 1 and cancelled == ["a"]
    c.close()
    assert reaper.reap(now + 100) == 0 and cancelled == ["a"]
