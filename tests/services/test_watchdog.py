"""The watchdog's rules, against a real SQLite job store with a fake clock, queue depth and
enqueue: what it queues again, when, and what it leaves alone."""

from __future__ import annotations

import pytest

from memscore.broker import TASK_EXPOSURE, TASK_REDUCE, TASK_TRAIN_SHARD
from memscore.dataplane.watchdog import Watchdog
from memscore.runtime import Runtime
from memscore.store.jobs import JobRecord

T = 100.0  # heartbeat timeout of these tests


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(make_settings):
    rt = Runtime.from_settings(make_settings(heartbeat_timeout_s=T, heartbeat_interval_s=1.0, watchdog_interval_s=1.0))
    sent: list[tuple[str, list]] = []
    depth = {"n": 0}
    clock = Clock()
    dog = Watchdog(rt, lambda name, args: sent.append((name, args)), clock=clock, depth=lambda q: depth["n"])
    clock.now += 10
    assert dog.sweep() == []  # the first sweep only starts watching
    clock.now += 10  # past the grace of two heartbeat intervals
    return rt, dog, clock, sent, depth


def _job(rt, job_id="j1", shards=3, kind="scoring") -> JobRecord:
    rec, _ = rt.jobs.create(JobRecord(job_id=job_id, kind=kind, shards_total=shards, models_total=2 * shards))
    return rec


def test_a_shard_whose_beats_stopped_is_queued_again_once_per_timeout(setup):
    rt, dog, clock, sent, depth = setup
    _job(rt)
    rt.jobs.shard_started("j1", 0)
    rt.jobs.beat("j1", "0", clock.now)
    depth["n"] = 5  # shards 1 and 2 wait in the queue: not lost
    clock.now += T - 1
    assert dog.sweep() == [] and sent == []
    clock.now += 2
    [r] = dog.sweep()
    assert (r.job_id, r.task, r.action) == ("j1", "0", "requeued") and sent == [(TASK_TRAIN_SHARD, ["j1", 0])]
    clock.now += T / 2
    assert dog.sweep() == []  # its beat was reset: not queued twice
    clock.now += T
    assert len(dog.sweep()) == 1 and len(sent) == 2


def test_a_live_shard_is_left_alone(setup):
    rt, dog, clock, sent, depth = setup
    _job(rt, shards=1)
    rt.jobs.shard_started("j1", 0)
    for _ in range(5):
        rt.jobs.beat("j1", "0", clock.now)
        clock.now += T / 2
        assert dog.sweep() == []
    assert sent == []


def test_a_done_shard_or_one_of_a_cancelled_job_is_released_not_requeued(setup):
    rt, dog, clock, sent, depth = setup
    _job(rt, "done", shards=2)
    rt.jobs.shard_started("done", 0)
    rt.jobs.mark_shard_done("done", 0, 2)
    rt.jobs.beat("done", "0", clock.now)
    _job(rt, "cancelled", shards=1)
    rt.jobs.shard_started("cancelled", 0)
    rt.jobs.beat("cancelled", "0", clock.now)
    rt.jobs.request_cancel("cancelled")
    assert rt.jobs.get("cancelled").state == "RUNNING"  # waits for its (dead) shard
    depth["n"] = 1
    clock.now += T + 1
    actions = {(r.job_id, r.action) for r in dog.sweep()}
    assert actions == {("done", "released"), ("cancelled", "released")} and sent == []
    assert rt.jobs.get("done").shards_running == [] and rt.jobs.get("cancelled").state == "CANCELLED"


def test_a_queued_shard_is_lost_only_when_its_queue_stayed_empty_a_timeout(setup):
    rt, dog, clock, sent, depth = setup
    _job(rt, shards=2)
    rt.jobs.mark_shard_done("j1", 0, 2)
    depth["n"] = 3
    for _ in range(3):  # a queue that holds work may hold it
        clock.now += T
        assert dog.sweep() == []
    depth["n"] = 0
    assert dog.sweep() == []  # the clock starts now
    clock.now += T - 1
    assert dog.sweep() == []
    clock.now += 2
    [r] = dog.sweep()
    assert r.task == "1" and sent == [(TASK_TRAIN_SHARD, ["j1", 1])]


def test_a_lost_reduce_is_queued_again_and_a_running_one_is_not(setup):
    rt, dog, clock, sent, depth = setup
    _job(rt, shards=2)
    for s in (0, 1):
        rt.jobs.mark_shard_done("j1", s, 2)
    rt.jobs.beat("j1", "reduce", clock.now)
    clock.now += T / 2
    assert dog.sweep() == []  # reducing
    clock.now += T
    assert dog.sweep() == []  # silent now: the clock starts
    clock.now += T + 1
    [r] = dog.sweep()
    assert r.task == "reduce" and sent == [(TASK_REDUCE, ["j1"])]


def test_a_lost_exposure_job_is_queued_again_as_an_exposure_task(setup):
    rt, dog, clock, sent, depth = setup
    _job(rt, "e1", shards=1, kind="exposure")
    assert dog.sweep() == []
    clock.now += T + 1
    dog.sweep()
    assert sent == [(TASK_EXPOSURE, ["e1"])]


def test_one_watchdog_sweeps_at_a_time(setup):
    rt, dog, clock, sent, depth = setup
    other = Watchdog(rt, lambda name, args: sent.append((name, args)), clock=clock, depth=lambda q: 0)
    _job(rt, shards=1)
    rt.jobs.shard_started("j1", 0)
    rt.jobs.beat("j1", "0", clock.now - 10 * T)
    assert other.sweep() == [] and sent == []  # the first holds the lease
    assert len(dog.sweep()) == 1


def test_an_outage_of_the_job_store_skips_sweeps_then_waits_for_workers_to_beat(setup, monkeypatch):
    import redis

    rt, dog, clock, sent, depth = setup
    _job(rt, shards=1)
    rt.jobs.shard_started("j1", 0)
    rt.jobs.beat("j1", "0", clock.now)
    real = rt.jobs.hold_lease

    def down(*a, **k):
        raise redis.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(rt.jobs, "hold_lease", down)
    clock.now += 3 * T
    assert dog.sweep() == []  # no error escapes
    monkeypatch.setattr(rt.jobs, "hold_lease", real)
    clock.now += 1
    assert dog.sweep() == []  # back: the workers get two heartbeat intervals to beat first
    clock.now += 2
    assert len(dog.sweep()) == 1 and sent == [(TASK_TRAIN_SHARD, ["j1", 0])]


def test_reduce_has_its_own_queue_and_workers_consume_both(make_settings, redis_db):
    from memscore.broker import make_app, queue_depth, send
    from memscore.worker.main import worker_argv

    s = make_settings(broker_url=redis_db, queue="q1")
    app = make_app(s)
    send(app, s, TASK_TRAIN_SHARD, ["j", 0])
    send(app, s, TASK_REDUCE, ["j"])
    assert (queue_depth(app, "q1"), queue_depth(app, "q1-reduce")) == (1, 1)
    assert "--queues=q1,q1-reduce" in worker_argv(s, [])
    assert make_settings(queue="q1", reduce_queue_setting="reducers").reduce_queue == "reducers"


@pytest.mark.slow  # ~20 s on 2 cores
@pytest.mark.integration
def test_a_finished_jobs_reduce_does_not_wait_behind_another_jobs_queued_shards(stack, tmp_path):
    from memscore.api.v1 import job_pb2
    from memscore.client import Client

    from .conftest import wait_for, write_blobs_npz

    blobs = write_blobs_npz(tmp_path / "blobs.npz")
    with Client(stack.gateway, stack.results, timeout=30) as c:
        ref = c.upload(blobs).dataset_ref
        small = c.submit_scoring(dataset=ref, model="mlp", models=2, shard_size=2, epochs=100, seed=1)
        big = c.submit_scoring(dataset=ref, model="mlp", models=12, shard_size=2, epochs=100, seed=2)
        stack.start_worker()  # one worker: the small job's shard first, then six of the big one's queued
        final = c.wait(small.job_id, timeout=120)
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
        done = c.get(big.job_id).progress.shards_done
        assert done <= 3, f"the small job's reduce ran only after {done} of the big job's shards"
        c.cancel(big.job_id)  # what it does next is the service flow tests' concern
        wait_for(lambda: c.get(big.job_id).state == job_pb2.JOB_STATE_CANCELLED, 60, 0.5, what="the big job's end")
