"""Backing stores going away and coming back, through a TCP proxy the test cuts and restores:
every RPC that needs the store answers UNAVAILABLE (never UNKNOWN or INTERNAL), Health turns
NOT_SERVING while the store is unreachable and SERVING again once it returns, and what was
stored before the outage is served unchanged after it."""

from __future__ import annotations

import dataclasses
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memscore.api.v1 import results_service_pb2 as rpb
from memscore.client import Client, open_channel
from memscore.dataplane import ScoringPlane
from memscore.gateway.server import serve as serve_gateway
from memscore.results.server import serve as serve_results
from memscore.runtime import Runtime
from memscore.store import layout
from memscore.store.jobs import JobRecord, RedisJobStore
from memscore.store.objects import open_object_store

from .conftest import TcpProxy

pytestmark = pytest.mark.integration

MNIST = dict(dataset="mnist1d", models=2, epochs=1, shard_size=2)


def _health(target: str) -> int:
    with open_channel(target, token="") as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _await_health(target: str, status: int, within_s: float = 10.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s:
        if _health(target) == status:
            return time.monotonic() - t0
        time.sleep(0.1)
    pytest.fail(f"Health did not turn {health_pb2.HealthCheckResponse.ServingStatus.Name(status)} in {within_s} s")


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_redis_outage_is_unavailable_and_not_serving_and_heals(make_settings, redis_db):
    host, port = redis_db.split("//")[1].split("/")[0].split(":")
    proxy = TcpProxy((host, int(port)))
    settings = make_settings(health_interval_s=0.2)
    jobs = RedisJobStore(f"redis://{proxy.address}/{redis_db.rsplit('/', 1)[1]}", prefix=f"o{uuid.uuid4().hex[:6]}")
    rt = Runtime(settings=settings, objects=open_object_store(settings), jobs=jobs)
    server, gw_port = serve_gateway(rt, "127.0.0.1:0", ScoringPlane(rt, enqueue=lambda name, args: None))
    target = f"127.0.0.1:{gw_port}"
    try:
        with Client(target, target, timeout=10) as c:
            job = c.submit_scoring(request_id="before", **MNIST)
            assert _health(target) == SERVING
            proxy.down()
            for call in (
                lambda: c.get(job.job_id),
                lambda: c.list(),
                lambda: c.submit_scoring(**MNIST),
                lambda: list(c.watch(job.job_id, timeout=10)),
                lambda: c.cancel(job.job_id),
            ):
                assert _code(call) == grpc.StatusCode.UNAVAILABLE
            _await_health(target, NOT_SERVING)
            proxy.up()
            _await_health(target, SERVING)
            assert c.get(job.job_id).job_id == job.job_id  # nothing stored was lost
            assert c.submit_scoring(request_id="before", **MNIST).job_id == job.job_id
    finally:
        server.stop(grace=0).wait()
        proxy.close()


def test_an_s3_outage_is_unavailable_and_not_serving_and_heals(make_settings, s3_settings, s3_endpoint):
    host, port = s3_endpoint.split(":")
    proxy = TcpProxy((host, int(port)))
    settings = dataclasses.replace(s3_settings, s3_endpoint=proxy.address, health_interval_s=0.2)
    rt = Runtime.from_settings(settings)
    key = layout.result_key("job-outage", "summary.json")
    rt.objects.put_bytes(key, b'{"ok": true}')
    rec, _ = rt.jobs.create(JobRecord(job_id="job-outage", state="SUCCEEDED", results={"summary.json": key}))
    server, res_port = serve_results(rt, "127.0.0.1:0")
    target = f"127.0.0.1:{res_port}"
    try:
        with Client(target, target, timeout=10) as c:
            assert c.artifact(rec.job_id, "summary.json") == b'{"ok": true}'
            first = next(iter(c.results.GetArtifact(rpb.GetArtifactRequest(job_id=rec.job_id, name="summary.json"))))
            assert first.presigned_url.startswith(f"http://{proxy.address}/")  # S3 presigns; a local store does not
            proxy.down()
            assert _code(lambda: c.artifact(rec.job_id, "summary.json")) == grpc.StatusCode.UNAVAILABLE
            assert _code(lambda: c.ranked(rec.job_id)) == grpc.StatusCode.UNAVAILABLE
            _await_health(target, NOT_SERVING, within_s=30)
            proxy.up()
            _await_health(target, SERVING, within_s=30)
            assert c.artifact(rec.job_id, "summary.json") == b'{"ok": true}'
    finally:
        server.stop(grace=0).wait()
        proxy.close()
