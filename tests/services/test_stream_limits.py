"""Idle streams cannot starve a server: 64 WatchJob streams held open (four tenants, sixteen
each) on a server of four threads get what the stream budget allows (48, twelve times the
threads: a waiting stream holds none) and RESOURCE_EXHAUSTED beyond it, at once; Health and
GetJob still answer within a second, and closing the streams frees their slots."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memscore.api.v1 import scoring_service_pb2 as spb
from memscore.client import Client, open_channel
from memscore.dataplane import ScoringPlane
from memscore.gateway.server import serve
from memscore.runtime import Runtime

from .conftest import write_tokens

pytestmark = pytest.mark.integration

TOKENS = {f"token-{i}": f"team-{i}" for i in range(4)}


@pytest.fixture
def gateway(make_settings, tmp_path):
    tokens = str(write_tokens(tmp_path / "tokens", TOKENS))
    rt = Runtime.from_settings(
        make_settings(auth_tokens=tokens, rpc_threads=4, max_streams=48, tenant_max_streams=16, max_concurrent_rpcs=256)
    )
    server, port = serve(rt, "127.0.0.1:0", ScoringPlane(rt, enqueue=lambda name, args: None))
    yield rt, f"127.0.0.1:{port}"
    server.stop(grace=0).wait()


def _open_watch(client: Client, job_id: str):
    """A WatchJob stream whose first event was read (then idle: the job never runs), or the
    status code it was refused with."""
    call = client.scoring.WatchJob(spb.WatchJobRequest(job_id=job_id), timeout=60)
    try:
        next(call)
    except grpc.RpcError as e:
        return None, e.code()
    return call, None


def test_sixty_four_idle_streams_leave_health_and_unary_calls_answering(gateway):
    rt, target = gateway
    clients = {t: Client(target, target, timeout=10, token=t) for t in TOKENS}
    try:
        jobs = {
            t: c.submit_scoring(dataset="mnist1d", models=2, epochs=1, shard_size=2).job_id for t, c in clients.items()
        }
        opened, refused = [], []
        threads_before = threading.active_count()
        for t, c in clients.items():
            for _ in range(16):
                call, code = _open_watch(c, jobs[t])
                (opened.append(call) if call else refused.append(code))
        assert len(opened) == rt.settings.max_streams == 48
        assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 16
        # 48 open streams, 4 server threads: no stream holds a thread while it waits on its job
        assert threading.active_count() - threads_before < 8
        # a tenant at its own limit is refused even with room on the server
        with pytest.raises(grpc.RpcError) as e:
            next(clients["token-0"].scoring.WatchJob(spb.WatchJobRequest(job_id=jobs["token-0"]), timeout=10))
        assert (
            e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "MEMSCORE_TENANT_MAX_STREAMS" in e.value.details()
        )

        with open_channel(target, token="") as ch:
            t0 = time.monotonic()
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        for t, c in clients.items():
            assert c.get(jobs[t]).job_id == jobs[t]  # unary calls of every tenant
        assert time.monotonic() - t0 < 1.0 + 4 * 0.5
        c3 = clients["token-3"]
        assert c3.submit_scoring(dataset="mnist1d", models=2, epochs=1, shard_size=2).job_id

        for call in opened:
            call.cancel()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # cancellation reaches the server and frees the slots
            call, _ = _open_watch(c3, jobs["token-3"])
            if call:
                call.cancel()
                break
            time.sleep(0.2)
        else:
            pytest.fail("closing the streams freed no slot")
    finally:
        for c in clients.values():
            c.close()


def test_a_budget_that_leaves_no_room_to_unary_calls_is_refused_at_start(make_settings):
    rt = Runtime.from_settings(make_settings(max_streams=250, max_concurrent_rpcs=256))
    with pytest.raises(RuntimeError, match="MEMSCORE_MAX_STREAMS"):
        serve(rt, "127.0.0.1:0")
