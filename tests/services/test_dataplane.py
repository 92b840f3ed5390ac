"""The data plane without gRPC: submitting with the broker down, and anytime summaries."""

import pytest

from memscore.broker import make_app
from memscore.dataplane import ScoringPlane
from memscore.errors import Unavailable
from memscore.runtime import Runtime


def test_submit_with_the_broker_down_is_unavailable_and_leaves_no_job(make_settings, closed_port):
    settings = make_settings(broker_url=f"redis://127.0.0.1:{closed_port}/0")
    rt = Runtime.from_settings(settings)
    app = make_app(settings)
    app.conf.broker_connection_max_retries = 1
    app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
    rt._celery = app
    plane = ScoringPlane(rt)
    with pytest.raises(Unavailable, match="nothing was stored"):
        plane.submit("scoring", {"dataset": "mnist1d", "models": 4}, request_id="r1")
    assert rt.jobs.list()[0] == []
    assert rt.objects.list("jobs/") == []


def test_the_anytime_summary_of_a_running_job_carries_its_split_half_reliability(make_settings):
    import numpy as np

    from memscore.dataplane.anytime import AnytimeEstimates
    from memscore.engine.traces import Trace
    from memscore.rpc import anytime_to_pb
    from memscore.store import layout
    from memscore.store.jobs import JobRecord

    rt = Runtime.from_settings(make_settings())
    rng = np.random.default_rng(0)
    n, m = 500, 3
    p_out = rng.random(n)  # true P[correct | held out]; trained on, always correct
    rec = JobRecord(job_id="j", state="RUNNING", shards_total=4, models_total=16)
    estimates = AnytimeEstimates(rt)

    def store_shard(s: int) -> None:
        ids = np.arange(4 * s, 4 * s + 4)
        masks = rng.random((4, n)) < 0.7
        correct = masks | (rng.random((4, n)) < p_out)
        trace = Trace.from_probs(ids, masks, correct, correct * 0.8 + 0.1, np.ones((4, m), bool), np.ones((4, m)))
        rt.objects.put_bytes(layout.trace_key("j", s), trace.to_bytes())

    store_shard(0)  # 2 models per half: a reliability
    first = estimates.summary(rec)
    assert first["models_done"] == 4 and -1 <= first["memorization_reliability"] <= 1
    for s in (1, 2, 3):
        store_shard(s)
    later = estimates.summary(rec)
    assert later["models_done"] == 16 and later["memorization_reliability"] > 0.5
    assert later["memorization_models_for_0_95"] > 16 and "memorization_soft_reliability" in later
    assert 2 * later["memorization_split_half"] / (1 + later["memorization_split_half"]) == pytest.approx(
        later["memorization_reliability"]
    )
    rec.summary = later
    pb = anytime_to_pb(rec)
    assert pb.memorization_models_for_0_95 == later["memorization_models_for_0_95"]
    assert pb.memorization_soft_reliability == later["memorization_soft_reliability"]
    rec.summary = {"models_done": 2}  # too few models: the reliability fields stay unset
    assert not anytime_to_pb(rec).HasField("memorization_split_half")


def test_upload_spool_files_left_by_a_crash_are_swept_at_start(make_settings):
    import os
    import time

    from memscore.dataplane.uploads import SPOOL_PREFIX

    settings = make_settings()
    settings.home.mkdir(parents=True)
    stale, live = settings.home / (SPOOL_PREFIX + "dead"), settings.home / (SPOOL_PREFIX + "live")
    for p in (stale, live):
        p.write_bytes(b"x" * 10)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    ScoringPlane(Runtime.from_settings(settings), enqueue=lambda name, args: None)
    assert not stale.exists() and live.exists()
