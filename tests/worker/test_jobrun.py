"""worker.jobrun.JobRun against a real (SQLite) job store: the in-flight bracket, throttled
progress and cancel checks, failing, and the log context."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from memscore.runtime import Runtime
from memscore.store.jobs import JobRecord
from memscore.worker import jobrun
from memscore.worker.jobrun import JobRun


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rt(make_settings):
    rt = Runtime.from_settings(make_settings())
    rt.jobs.create(JobRecord(job_id="j", shards_total=4, models_total=8))
    yield rt
    rt.jobs.close()


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(jobrun, "time", SimpleNamespace(monotonic=clock))  # only JobRun's clock
    return clock


def test_in_flight_brackets_the_shard_however_it_ends(rt):
    run = JobRun("j", 2, rt)
    with run.in_flight() as rec:
        assert (rec.state, rec.shards_running) == ("RUNNING", [2]) and not run.stopping(rec)
    assert rt.jobs.get("j").shards_running == []
    with pytest.raises(RuntimeError, match="boom"):
        with run.in_flight():
            rt.jobs.request_cancel("j")  # cancelled mid-shard, then the shard crashes
            raise RuntimeError("boom")
    rec = rt.jobs.get("j")
    assert (rec.state, rec.shards_running) == ("CANCELLED", [])


def test_a_cancelled_job_is_stopping_and_its_next_shard_only_stops(rt):
    rt.jobs.shard_started("j", 0)
    rt.jobs.request_cancel("j")
    with JobRun("j", 1, rt).in_flight() as rec:
        assert JobRun.stopping(rec) and rec.shards_running == [0]
    assert rt.jobs.get("j").state == "RUNNING"  # shard 0 is still in flight
    with JobRun("j", 0, rt).in_flight() as rec:
        assert JobRun.stopping(rec)
    assert rt.jobs.get("j").state == "CANCELLED"


def test_progress_is_throttled_and_estimates_the_jobs_remaining_time(rt, clock):
    rt.jobs.mark_shard_done("j", 0, 2)
    run = JobRun("j", 1, rt)
    run.start_clock()
    clock.now += 10
    run.progress(1, 4, "step 1/4")  # a quarter of a shard in 10 s: 40 s a shard, 2.75 shards to go
    rec = rt.jobs.get("j")
    assert (rec.message, rec.eta_s) == ("step 1/4", pytest.approx(110.0))
    clock.now += 0.5
    run.progress(2, 4, "step 2/4")  # within PROGRESS_EVERY_S: not written
    assert rt.jobs.get("j").version == rec.version
    run.progress(4, 4, "step 4/4")  # the last one always is
    assert rt.jobs.get("j").message == "step 4/4"
    run.progress(0, 4, "nothing yet")
    assert rt.jobs.get("j").message == "step 4/4"
    clock.now += 1
    run.progress(0, 4, "nothing yet")
    assert rt.jobs.get("j").eta_s is None


def test_should_stop_reads_the_store_at_most_every_second(rt, clock):
    run = JobRun("j", 0, rt)
    assert not run.should_stop()
    rt.jobs.shard_started("j", 0)
    rt.jobs.request_cancel("j")
    assert not run.should_stop()  # checked just now: not read again yet
    clock.now += jobrun.PROGRESS_EVERY_S
    assert run.should_stop() and run.should_stop()


def test_fail_marks_the_job_failed_and_ignores_a_deleted_job(rt):
    assert JobRun("j", 0, rt).fail("dataset: broken") == "failed"
    rec = rt.jobs.get("j")
    assert (rec.state, rec.error, rec.message, rec.eta_s) == ("FAILED", "dataset: broken", "failed", None)
    rt.jobs.delete("j")
    assert JobRun("j", 0, rt).fail("again") == "failed"


def test_records_inside_the_run_carry_job_and_shard(rt, captured):
    logger, records = captured
    with JobRun("j", 5, rt):
        logger.info("training")
    logger.info("idle")
    assert [(r.job_id, r.shard) for r in records[:1]] == [("j", 5)] and not hasattr(records[1], "job_id")
