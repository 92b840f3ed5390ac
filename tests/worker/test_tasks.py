"""The Celery tasks called in this process, in the order a broker would deliver them (a list
stands in for the queue), against a local object store and a SQLite job store: a self-stopping
job grows by whole shards until its reliability target, a redelivered reduce grows it once, and
ExtendJob's request id extends once."""

from __future__ import annotations

import functools
import json

import pytest

from memscore.broker import TASK_REDUCE, TASK_TRAIN_SHARD
from memscore.convert import job_to_pb
from memscore.dataplane import ScoringPlane
from memscore.engine.spec import ScoringSpec
from memscore.errors import InvalidArgument
from memscore.runtime import Runtime, set_runtime
from memscore.worker import tasks

# As tests/engine/test_scoring.py: memorization's reliability is 0.11 at 4 models, 0.08 at 8,
# 0.19 at 16, so the target 0.14 grows the job twice.
SPEC = dict(dataset="mnist1d", model="mlp", epochs=3, seed=1, models=4, shard_size=4, until_reliability=0.14)
NO_INFLUENCE = dict(influence_top_k=0, max_influence_pairs=0)  # not needed here; saves each reduce a second


@pytest.fixture
def service(make_settings, monkeypatch, torch_one_thread):
    rt = Runtime.from_settings(make_settings(device="cpu"))
    set_runtime(rt)
    queue: list[tuple[str, list]] = []
    monkeypatch.setattr(tasks, "_enqueue", lambda name, *args: queue.append((name, list(args))))
    monkeypatch.setattr(tasks, "load_job_dataset", functools.cache(tasks.load_job_dataset))  # mnist1d: 3 s a load
    plane = ScoringPlane(rt, enqueue=lambda name, args: queue.append((name, list(args))))
    yield rt, plane, queue
    set_runtime(None)
    rt.jobs.close()


def deliver(queue: list, until: str | None = None) -> list[tuple[str, list]]:
    """Run queued tasks in order (stopping after the first `until` task); returns those run."""
    run = []
    while queue:
        name, args = queue.pop(0)
        {TASK_TRAIN_SHARD: tasks.train_shard, TASK_REDUCE: tasks.reduce}[name](*args)
        run.append((name, args))
        if name == until:
            break
    return run


@pytest.mark.slow  # > 10 s on 2 cores
def test_a_self_stopping_job_grows_once_per_reduce_until_its_target(service):
    rt, plane, queue = service
    rec, _ = plane.submit("scoring", dict(SPEC, **NO_INFLUENCE, max_models=64))
    job = rec.job_id
    assert deliver(queue, until=TASK_REDUCE) == [(TASK_TRAIN_SHARD, [job, 0]), (TASK_REDUCE, [job])]
    rec = rt.jobs.get(job)
    assert (rec.state, rec.models_total, rec.shards_total) == ("RUNNING", 8, 2)
    assert rec.message.startswith("reliability 0.1") and rec.message.endswith("< 0.14 at 4 models: adding 4")
    assert set(rec.results) >= {"summary.json", "scores.parquet"}  # the results so far, for 4 models
    assert queue == [(TASK_TRAIN_SHARD, [job, 1])]

    tasks.reduce(job)  # redelivered: the job has grown already, shard 1 is queued (again) to heal
    assert rt.jobs.get(job).models_total == 8 and queue == [(TASK_TRAIN_SHARD, [job, 1])] * 2

    deliver(queue)  # shard 1 (twice: the second finds its trace), reduce -> +8, shards 2-3, reduce
    rec = rt.jobs.get(job)
    assert (rec.state, rec.models_total, rec.models_done, rec.shards_total) == ("SUCCEEDED", 16, 16, 4)
    assert rec.message.startswith("done: reliability") and rec.message.endswith(">= 0.14 at 16 models")
    assert rt.jobs.incr_attempts(job, 1) == 2  # trained once
    anytime = job_to_pb(rec).anytime
    assert anytime.memorization_reliability >= 0.14 and anytime.HasField("memorization_split_half")
    assert anytime.memorization_models_for_0_95 > 16 and anytime.HasField("memorization_soft_reliability")
    assert ScoringSpec.from_dict(rec.spec).models == 16

    summary = json.loads(rt.objects.get_bytes(rec.results["summary.json"]))
    assert summary["stopped_because"] == "reliability_reached" and summary["final"]
    assert summary["reliability"]["memorization"]["spearman_brown"] == anytime.memorization_reliability

    # ExtendJob with a request id: a retry extends once, the id with another count is refused
    extended = plane.extend(job, 4, request_id="ext-1")
    assert (extended.state, extended.models_total) == ("QUEUED", 20)
    assert plane.extend(job, 4, request_id="ext-1").models_total == 20 and len(queue) == 1
    with pytest.raises(InvalidArgument, match="request_id"):
        plane.extend(job, 8, request_id="ext-1")
    deliver(queue)
    rec = rt.jobs.get(job)
    assert (rec.state, rec.models_done) == ("SUCCEEDED", 20)
    assert plane.extend(job, 4, request_id="ext-1").models_total == 20  # still once, after it ended


def test_a_self_stopping_job_stops_at_max_models(service):
    rt, plane, queue = service
    rec, _ = plane.submit("scoring", dict(SPEC, **NO_INFLUENCE, until_reliability=0.99, max_models=8))
    deliver(queue)
    rec = rt.jobs.get(rec.job_id)
    assert (rec.state, rec.models_done) == ("SUCCEEDED", 8)
    assert rec.message.startswith("done: reliability") and rec.message.endswith("< 0.99 at max_models 8")


def test_a_worker_loads_a_dataset_once_while_its_identity_holds(make_settings, monkeypatch, tmp_path):
    """A job's shards and reduce on one worker process read its data once; a changed file, or
    another tenant (whose right to read it is checked anew), reads it again."""
    import os

    from tests.services.conftest import write_blobs_npz

    root = tmp_path / "root"
    root.mkdir()
    path = write_blobs_npz(root / "b.npz")
    rt = Runtime.from_settings(make_settings(data_roots=(str(root),)))
    loads, load = [], tasks.load_job_dataset
    monkeypatch.setattr(tasks, "load_job_dataset", lambda *a, **k: loads.append(a[0]) or load(*a, **k))
    monkeypatch.setattr(tasks, "_LAST_DATASET", {})
    spec = ScoringSpec(dataset=str(path))
    first = tasks._job_dataset(rt, spec, "team-a")
    assert tasks._job_dataset(rt, spec, "team-a") is first and len(loads) == 1
    assert tasks._job_dataset(rt, spec, "team-b") is not first and len(loads) == 2
    os.utime(path, ns=(1, 1))
    assert tasks._job_dataset(rt, spec, "team-b") is not first and len(loads) == 3
    rt.jobs.close()
