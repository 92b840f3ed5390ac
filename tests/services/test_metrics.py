"""GET /metrics of real processes, scraped over HTTP: the gateway and results servers count
and time every RPC by method and final status code and report jobs by state and queue depths
(Redis job store and broker), a broker that is down only leaves its gauge out, and a real
`memscore-worker` adds up the task timings of its one-task child processes."""

from __future__ import annotations

import urllib.request
import uuid

import grpc
import pytest

from memscore.api.v1 import results_service_pb2 as rpb
from memscore.broker import TASK_TRAIN_SHARD, send
from memscore.client import Client
from memscore.dataplane import ScoringPlane
from memscore.gateway.server import register_metrics
from memscore.gateway.server import serve as serve_gateway
from memscore.metrics import REGISTRY, start_http_server
from memscore.results.server import serve as serve_results
from memscore.runtime import Runtime

from ..conftest import free_port
from ..test_metrics import parse, value
from .conftest import wait_for

pytestmark = pytest.mark.integration

GATEWAY_GAUGES = ("memscore_jobs", "memscore_queue_depth", "memscore_backend_up")
SCORING, RESULTS = "memscore.v1.ScoringService", "memscore.v1.ResultsService"


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        assert r.status == 200
        return parse(r.read().decode())[0]


def calls(samples: dict, service: str, method: str, code: str) -> float:
    return samples.get(
        ("memscore_rpc_total", frozenset({"service": service, "method": method, "code": code}.items())), 0
    )


@pytest.fixture
def servers(make_settings, redis_db):
    """Gateway (enqueueing nothing) and results servers on Redis, the process's registry served
    on a free port with the gateway's gauges; yields (runtime, client, metrics port)."""
    rt = Runtime.from_settings(
        make_settings(redis_url=redis_db, broker_url=redis_db, queue=f"m-{uuid.uuid4().hex[:8]}")
    )
    gw, gw_port = serve_gateway(rt, "127.0.0.1:0", ScoringPlane(rt, enqueue=lambda name, args: None))
    res, res_port = serve_results(rt, "127.0.0.1:0")
    register_metrics(rt)
    http = start_http_server(0, "127.0.0.1")
    client = Client(f"127.0.0.1:{gw_port}", f"127.0.0.1:{res_port}", timeout=20)
    try:
        yield rt, client, http.server_port
    finally:
        client.close()
        http.shutdown()
        for name in GATEWAY_GAUGES:  # they read this test's runtime
            REGISTRY.unregister(name)
        gw.stop(grace=0).wait()
        res.stop(grace=0).wait()


def test_rpcs_are_counted_by_method_and_code_and_jobs_by_state(servers):
    rt, client, port = servers
    before = scrape(port)  # the registry is the process's: other tests' calls are in it too
    jobs = [client.submit_scoring(dataset="mnist1d", models=2, epochs=1, shard_size=2).job_id for _ in range(3)]
    client.cancel(jobs[0])  # no shard in flight: CANCELLED at once
    assert client.get(jobs[1]).job_id == jobs[1]
    with pytest.raises(grpc.RpcError) as e:
        client.get("no-such-job")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:  # a streaming call that fails before its first message
        next(iter(client.results.StreamRanked(rpb.StreamRankedRequest(job_id="no-such-job"), timeout=20)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(2):
        send(rt.celery, rt.settings, TASK_TRAIN_SHARD, ["nobody", 0])  # waiting: no worker consumes the queue

    after = scrape(port)

    def delta(service, method, code):
        return calls(after, service, method, code) - calls(before, service, method, code)

    assert delta(SCORING, "SubmitJob", "OK") == 3
    assert delta(SCORING, "CancelJob", "OK") == 1
    assert delta(SCORING, "GetJob", "OK") == 1
    assert delta(SCORING, "GetJob", "NOT_FOUND") == 1
    assert delta(RESULTS, "StreamRanked", "NOT_FOUND") == 1
    assert delta(RESULTS, "StreamRanked", "OK") == 0
    labels = {"service": SCORING, "method": "GetJob", "code": "NOT_FOUND"}
    durations = frozenset({**labels, "le": "+Inf"}.items())
    assert after[("memscore_rpc_duration_seconds_bucket", durations)] == calls(after, **labels)
    assert value(after, "memscore_rpc_duration_seconds_sum", **labels) > 0

    assert value(after, "memscore_jobs", state="QUEUED") == 2
    assert value(after, "memscore_jobs", state="CANCELLED") == 1
    assert value(after, "memscore_jobs", state="SUCCEEDED") == 0
    assert value(after, "memscore_queue_depth", queue=rt.settings.queue) == 2
    assert value(after, "memscore_queue_depth", queue=rt.settings.reduce_queue) == 0
    assert value(after, "memscore_backend_up", backend="job_store") == 1
    assert value(after, "memscore_backend_up", backend="broker") == 1


def test_jobs_by_state_of_the_embedded_sqlite_store(make_settings):
    rt = Runtime.from_settings(make_settings())
    plane = ScoringPlane(rt, enqueue=lambda name, args: None)
    for _ in range(2):
        plane.submit("scoring", {"dataset": "mnist1d", "models": 2, "epochs": 1}, "", tenant="default")
    assert rt.jobs.count_by_state() == {"QUEUED": 2, "RUNNING": 0, "SUCCEEDED": 0, "FAILED": 0, "CANCELLED": 0}


def test_a_broker_that_is_down_leaves_queue_depth_out_of_a_scrape_that_still_answers(make_settings, closed_port):
    rt = Runtime.from_settings(make_settings(broker_url=f"redis://127.0.0.1:{closed_port}/0"))
    register_metrics(rt)
    http = start_http_server(0, "127.0.0.1")
    try:
        samples = scrape(http.server_port)
        assert not [k for k in samples if k[0] == "memscore_queue_depth"]
        assert value(samples, "memscore_backend_up", backend="broker") == 0
        assert value(samples, "memscore_backend_up", backend="job_store") == 1
        assert value(samples, "memscore_jobs", state="QUEUED") == 0
    finally:
        http.shutdown()
        for name in GATEWAY_GAUGES:
            REGISTRY.unregister(name)


def test_worker_parent_adds_up_the_tasks_its_children_ran(stack):
    """Two shards of a cancelled job (each returns at once) and one that trains 2 models: each
    runs in its own child process of a real `memscore-worker`, which serves the sums."""
    client = Client(stack.gateway, stack.results, timeout=20)
    try:
        job = client.submit_scoring(dataset="mnist1d", models=4, epochs=1, shard_size=2).job_id
        assert client.cancel(job).state  # before any worker runs: CANCELLED, both shards still queued
        client.submit_scoring(dataset="mnist1d", models=2, epochs=1, shard_size=2, model="mlp")
    finally:
        client.close()
    port = free_port()
    stack.env["MEMSCORE_METRICS_PORT"] = str(port)
    stack.env["MEMSCORE_METRICS_BIND"] = "127.0.0.1"
    stack.start_worker("metrics")
    labels = {"task": TASK_TRAIN_SHARD, "outcome": "success"}

    def shards_counted():
        try:
            samples = scrape(port)
        except OSError:  # not listening yet
            return None
        return samples if samples.get(("memscore_task_duration_seconds_count", frozenset(labels.items()))) else None

    samples = wait_for(shards_counted, timeout=120, every=0.5, what=f"the worker's /metrics\n{stack.worker_logs()}")
    samples = wait_for(
        lambda: (s := scrape(port)) and value(s, "memscore_task_duration_seconds_count", **labels) >= 3 and s,
        timeout=120,
        what="the three shards counted",
    )
    assert value(samples, "memscore_task_duration_seconds_count", **labels) == 3
    assert value(samples, "memscore_task_duration_seconds_bucket", **labels, le="+Inf") == 3
    assert value(samples, "memscore_task_duration_seconds_sum", **labels) > 0
    assert value(samples, "memscore_models_trained_total", model="mlp") == 2  # the cancelled shards trained none
