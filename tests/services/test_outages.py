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

from memscore.api.v1 import job_pb2
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


# -- jobs in flight through an outage --------------------------------------------------------------

# Beats every 0.5 s, lost after 5 s of silence, swept every second; Redis would redeliver an
# unacknowledged shard only after an hour, so only the watchdog can save a lost one in time.
FAST_WATCHDOG = {
    "MEMSCORE_HEARTBEAT_INTERVAL_S": "0.5",
    "MEMSCORE_HEARTBEAT_TIMEOUT_S": "5",
    "MEMSCORE_WATCHDOG_INTERVAL_S": "1",
    "MEMSCORE_VISIBILITY_TIMEOUT_S": "3600",
    "MEMSCORE_HEALTH_INTERVAL_S": "0.5",
}
OUTAGE_SPEC = dict(model="mlp", models=8, epochs=150, seed=5, shard_size=2)
OUTAGE_S = 12  # longer than a shard trains (~2-4 s here) and than the heartbeat timeout


def _scores_match_a_local_run(c: Client, job_id: str, blobs) -> None:
    import io

    import numpy as np
    import pyarrow.parquet as pq

    from memscore.engine.datasets import load_dataset
    from memscore.engine.scoring import run_scoring
    from memscore.engine.spec import ScoringSpec

    local = run_scoring(load_dataset(str(blobs)), ScoringSpec(dataset=str(blobs), **OUTAGE_SPEC), device="cpu")
    served = pq.read_table(io.BytesIO(c.artifact(job_id, "scores.parquet")))
    for col in ("memorization", "heldout_accuracy", "n_in", "n_out"):
        np.testing.assert_array_equal(served.column(col).to_numpy(), local.scores_table().column(col).to_numpy())


def _through_an_outage(st, proxy: TcpProxy, blobs, caplog) -> tuple[str, float]:
    """Submit a job, cut `proxy` while a shard is in flight for OUTAGE_S, restore it; returns
    (job id, seconds from the restore to SUCCEEDED)."""
    from .conftest import wait_for

    with Client(st.gateway, st.results, timeout=30) as c:
        ref = c.upload(blobs).dataset_ref
        st.start_worker()
        job = c.submit_scoring(dataset=ref, **OUTAGE_SPEC)
        wait_for(lambda: st.runtime.jobs.get(job.job_id).shards_running, 120, 0.05, what="a shard in flight")
        with caplog.at_level("INFO"):
            proxy.down()
            time.sleep(OUTAGE_S)
            proxy.up()
            restored = time.monotonic()
            final = c.wait(job.job_id, timeout=150)
            took = time.monotonic() - restored
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED, (final.error, st.worker_logs())
        _scores_match_a_local_run(c, job.job_id, blobs)
        print(f"job {job.job_id} SUCCEEDED {took:.1f} s after the store returned")  # shown with -s
        return job.job_id, took


@pytest.mark.slow  # ~40 s on 2 cores
def test_a_job_in_flight_through_a_redis_outage_completes_soon_after(
    tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch, caplog
):
    """Redis is cut, the job store and the broker with it, as in a deployment that uses one
    Redis for both. With a fresh worker child per task this took about 40 s more per shard
    after the restore (MEMSCORE_WORKER_TASKS_PER_CHILD, docs/security.md)."""
    from .conftest import build_stack, write_blobs_npz

    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = TcpProxy((host, int(port)))
    blobs = write_blobs_npz(tmp_path / "blobs.npz")
    try:
        with build_stack(
            tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch,
            redis_address=proxy.address, broker_too=True, env_overrides=FAST_WATCHDOG,
        ) as st:  # fmt: skip
            job_id, took = _through_an_outage(st, proxy, blobs, caplog)
            assert took < 120, f"took {took:.0f} s after Redis returned"
            assert not st.runtime.jobs.get(job_id).shards_running  # nothing left in flight
    finally:
        proxy.close()


@pytest.mark.slow  # ~40 s on 2 cores
def test_a_job_in_flight_through_an_s3_outage_completes_soon_after(
    tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch, caplog
):
    from .conftest import build_stack, write_blobs_npz

    host, port = s3_endpoint.split(":")
    proxy = TcpProxy((host, int(port)))
    blobs = write_blobs_npz(tmp_path / "blobs.npz")
    try:
        with build_stack(
            tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch,
            s3_address=proxy.address, env_overrides=FAST_WATCHDOG,
        ) as st:  # fmt: skip
            job_id, took = _through_an_outage(st, proxy, blobs, caplog)
            assert took < 120, f"took {took:.0f} s after S3 returned"
            attempts = [st.runtime.jobs.incr_attempts(job_id, s, by=0) for s in range(4)]
            assert max(attempts) <= 2, attempts  # retries after the outage were not counted as crashes
    finally:
        proxy.close()
