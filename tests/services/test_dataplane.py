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

    from memscore.convert import anytime_to_pb
    from memscore.dataplane.anytime import AnytimeEstimates
    from memscore.engine.traces import Trace
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


@pytest.mark.parametrize("claimed_rows", [10**9, 10**12])
def test_a_query_npz_claiming_a_huge_array_is_invalid_argument_not_a_memory_error(claimed_rows):
    """Found by test_fuzz.py: an x.npy header claiming 10^9 rows in a few bytes made numpy raise
    MemoryError, answered INTERNAL; and a member stating more than any query needs is not inflated."""
    import io
    import zipfile

    import numpy as np

    from memscore.dataplane.queries import query_points
    from memscore.errors import InvalidArgument

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    claimed = io.BytesIO()
    with zipfile.ZipFile(claimed, "w") as z:
        with z.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": (claimed_rows, 16)}
            )
            f.write(bytes(64))
        z.writestr("y.npy", npy(np.zeros(4, np.int64)))
    inflating = io.BytesIO()  # 19 MB of zeros in ~20 KB: more than 10,000 points of 16 features take
    with zipfile.ZipFile(inflating, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", npy(np.zeros((300_000, 16), np.float32)))
        z.writestr("y.npy", npy(np.zeros(300_000, np.int64)))
    for data in (claimed.getvalue(), inflating.getvalue()):
        with pytest.raises(InvalidArgument) as e:
            query_points(data, (16,), 4)
        assert [f for f, _ in e.value.violations] == ["examples_npz"]


def test_the_change_feed_calls_back_each_watcher_once_when_its_job_moves(make_settings):
    """One poll reads every watched job; a watcher hears once, when the version passes its own
    or the job ends; a job that disappears is NOT_FOUND; an unsubscribed watcher hears nothing."""
    from memscore.dataplane.watch import ChangeFeed
    from memscore.errors import NotFound
    from memscore.store.jobs import JobRecord

    rt = Runtime.from_settings(make_settings())
    feed = ChangeFeed(rt.jobs)
    feed._thread = object()  # no polling thread: this test polls
    a, _ = rt.jobs.create(JobRecord(job_id="a", kind="scoring"))
    rt.jobs.create(JobRecord(job_id="b", kind="scoring"))
    heard = []
    feed.subscribe("a", a.version, lambda rec, err: heard.append(("a1", rec and rec.version, err)))
    feed.subscribe("a", a.version, lambda rec, err: heard.append(("a2", rec and rec.version, err)))
    quiet = feed.subscribe("b", 1, lambda rec, err: heard.append(("b", rec, err)))
    feed.subscribe("gone", 0, lambda rec, err: heard.append(("gone", rec, type(err))))
    assert feed.poll() == 1 and heard == [("gone", None, NotFound)]  # nothing moved yet
    rt.jobs.update("a", state="RUNNING")
    quiet()
    rt.jobs.update("b", state="RUNNING")
    assert feed.poll() == 2 and feed.watchers() == 0
    assert sorted(heard[1:]) == [("a1", a.version + 1, None), ("a2", a.version + 1, None)]
    assert feed.poll() == 0  # each heard once


def test_the_change_feed_ends_every_watcher_with_the_stores_outage(make_settings, monkeypatch):
    import redis

    from memscore.dataplane.watch import ChangeFeed

    rt = Runtime.from_settings(make_settings())
    feed = ChangeFeed(rt.jobs)
    feed._thread = object()
    heard = []
    for job_id in ("a", "b"):
        feed.subscribe(job_id, 0, lambda rec, err: heard.append(type(err)))

    def down(job_ids):
        raise redis.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(rt.jobs, "get_many", down)
    assert feed.poll() == 2 and heard == [redis.exceptions.ConnectionError] * 2


def test_the_anytime_summary_carries_lira_so_far_and_a_job_too_large_for_it_waits_for_the_reduce(
    make_settings, monkeypatch
):
    """Planted leakage (engine.membership.planted_bank: 10% of the examples leak): after 16 of
    32 models the anytime summary has the attack's AUC, as the full attack on those 16 models
    computes it, with an interval and a chance level; the examples' privacy_risk is in the
    anytime scores. Past ANYTIME_MAX_CELLS the attack is left to the reduce: no figure at all."""
    import numpy as np

    from memscore.convert import anytime_to_pb
    from memscore.dataplane import anytime
    from memscore.engine import membership
    from memscore.engine.traces import Trace
    from memscore.store import layout
    from memscore.store.jobs import JobRecord

    rt = Runtime.from_settings(make_settings())
    n = 600
    masks, margins, delta, _, _ = membership.planted_bank(32, n, 2.0, 0.1, seed=5)

    def store_shard(job: str, s: int) -> None:
        ids = np.arange(8 * s, 8 * s + 8)
        trace = Trace(
            ids,
            masks[ids],
            margins[ids] > 0,
            margins[ids].astype(np.float32),
            np.ones((8, 3), bool),
            np.ones((8, 3), np.float32),
        )
        rt.objects.put_bytes(layout.trace_key(job, s), trace.to_bytes())

    estimates = anytime.AnytimeEstimates(rt)
    rec = JobRecord(job_id="j", state="RUNNING", shards_total=4, models_total=32, spec={"seed": 3})
    store_shard("j", 0)
    assert estimates.summary(rec)["models_done"] == 8
    store_shard("j", 1)
    s = estimates.summary(rec)
    full = membership.membership_inference(masks[:16], margins[:16], seed=3).summary()
    assert s["membership_auc"] == pytest.approx(full["auc"])
    assert s["membership_auc_lower"] < s["membership_auc"] < s["membership_auc_upper"]
    assert abs(s["membership_chance_auc"] - 0.5) < 0.05 and s["membership_auc_lower"] > s["membership_chance_auc"]
    assert s["membership_tpr_at_fpr_0_01_lower"] <= s["membership_tpr_at_fpr_0_01"]
    risk = estimates.snapshot(rec).scores["privacy_risk"]
    assert np.nanmean(risk[delta > 0]) > np.nanmean(risk[delta == 0]) + 0.2
    rec.summary = s
    pb = anytime_to_pb(rec)
    assert pb.membership_auc == pytest.approx(s["membership_auc"]) and pb.HasField("membership_tpr_at_fpr_0_001")
    assert not pb.HasField("critical_sample_ratio")  # no dynamics in this job

    monkeypatch.setattr(membership, "ANYTIME_MAX_CELLS", 8 * n)
    big = JobRecord(job_id="k", state="RUNNING", shards_total=4, models_total=32, spec={})
    for shard in range(2):
        store_shard("k", shard)
    s = estimates.summary(big)
    assert s["models_done"] == 16 and not any(k.startswith("membership_") for k in s)
    assert np.isnan(estimates.snapshot(big).scores["privacy_risk"]).all()
