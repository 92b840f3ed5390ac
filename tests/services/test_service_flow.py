"""End to end through the real parts: gRPC sockets, Redis, a Celery worker process, S3."""

from __future__ import annotations

import io
import json
import re
import time

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from memscore.api.v1 import job_pb2, results_service_pb2
from memscore.client import Client, field_violations
from memscore.engine.datasets import load_dataset
from memscore.engine.privacy_level import DP_EPSILONS
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec

from .conftest import wait_for, write_blobs_npz

pytestmark = pytest.mark.integration

SPEC = dict(model="mlp", models=8, epochs=3, seed=3, shard_size=2)


@pytest.fixture
def client(stack):
    with Client(stack.gateway, stack.results, timeout=30) as c:
        yield c


@pytest.fixture
def blobs(tmp_path):
    return write_blobs_npz(tmp_path / "blobs.npz")


@pytest.mark.slow  # > 10 s on 2 cores
def test_submit_watch_and_results_match_an_embedded_run(stack, client, blobs):
    ref = client.upload(blobs).dataset_ref
    assert ref.startswith("datasets/") and ref.endswith(".npz")
    stack.start_worker()
    job = client.submit_scoring(dataset=ref, request_id="req-1", **SPEC)
    assert job.state == job_pb2.JOB_STATE_QUEUED and job.progress.shards_total == 4
    events = list(client.watch(job.job_id, timeout=180))
    assert events[-1].state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
    assert max(e.progress.shards_done for e in events) == 4

    # the same spec and seed in-process, as `memscore run` does it
    local = run_scoring(load_dataset(str(blobs)), ScoringSpec(dataset=str(blobs), **SPEC), device="cpu")
    served = pq.read_table(io.BytesIO(client.artifact(job.job_id, "scores.parquet")))
    expected = local.scores_table()
    for col in ("index", "label", "memorization", "memorization_soft", "heldout_accuracy", "n_in", "n_out"):
        np.testing.assert_array_equal(served.column(col).to_numpy(), expected.column(col).to_numpy(), err_msg=col)
    # the finished job's record carries the LiRA figures of its summary.json
    mi, anytime = local.summary["membership_inference"], events[-1].anytime
    assert anytime.membership_auc == pytest.approx(mi["auc"]) and anytime.membership_chance_auc == pytest.approx(
        mi["chance_auc"]
    )
    assert [anytime.membership_auc_lower, anytime.membership_auc_upper] == pytest.approx(mi["auc_interval"])

    ranked = client.ranked(job.job_id, metric="memorization", limit=0)
    assert len(ranked) == 240 and ranked[0].rank == 1
    mem = local.scores["memorization"]
    order = np.lexsort((np.arange(len(mem)), np.where(np.isnan(mem), np.inf, -mem)))
    assert [e.index for e in ranked] == order.tolist()
    only_class_1 = client.ranked(job.job_id, classes=[1], limit=0)
    assert only_class_1 and all(e.label == 1 for e in only_class_1)

    ex = client.example(job.job_id, int(ranked[0].index))
    assert ex.final and ex.example.index == ranked[0].index and ex.example.memorization == ranked[0].memorization
    assert all(p.train_index == ranked[0].index for p in ex.influence)
    assert [p.influence for p in ex.influence] == sorted((p.influence for p in ex.influence), reverse=True)
    pairs = client.influence(job.job_id, test_index=5, limit=3)
    assert [p.test_index for p in pairs] == [5, 5, 5]
    assert pairs[0].influence >= pairs[1].influence >= pairs[2].influence

    # resubmitting with the same request id returns the same job and trains nothing
    again = client.submit_scoring(dataset=ref, request_id="req-1", **SPEC)
    assert again.job_id == job.job_id and again.state == job_pb2.JOB_STATE_SUCCEEDED
    assert all(stack.runtime.jobs.incr_attempts(job.job_id, s) == 2 for s in range(4))


@pytest.mark.slow  # > 10 s on 2 cores
def test_worker_killed_mid_job_loses_only_its_shard(stack, client, blobs):
    ref = client.upload(blobs).dataset_ref
    spec = dict(SPEC, models=12, epochs=300)
    w1 = stack.start_worker("first")
    job = client.submit_scoring(dataset=ref, **spec)
    wait_for(lambda: client.get(job.job_id).progress.shards_done >= 2, 120, what="two shards done")
    done_before = [s for s in range(6) if stack.runtime.objects.exists(f"jobs/{job.job_id}/shards/{s:06d}/trace.npz")]
    stack.kill_worker(w1)
    assert client.get(job.job_id).state == job_pb2.JOB_STATE_RUNNING
    time.sleep(7)  # past the 6 s visibility timeout: the new worker restores the lost shard at start
    stack.start_worker("second")
    final = client.wait(job.job_id, timeout=240)
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
    for s in done_before:  # one delivery each: none was trained again
        assert stack.runtime.jobs.incr_attempts(job.job_id, s) == 2

    local = run_scoring(load_dataset(str(blobs)), ScoringSpec(dataset=str(blobs), **spec), device="cpu")
    served = pq.read_table(io.BytesIO(client.artifact(job.job_id, "scores.parquet")))
    np.testing.assert_array_equal(served.column("memorization").to_numpy(), local.scores["memorization"])


def _early_in_a_shard(rec) -> bool:
    """A shard is in flight and its last progress note says it is in the first half of training
    (so it is still training when CancelJob arrives a moment later)."""
    m = re.fullmatch(r"shard (\d+): step (\d+)/(\d+)", rec.message)
    return bool(m) and int(m[1]) in rec.shards_running and int(m[2]) < int(m[3]) * 0.5


def _traces(stack, job_id: str, shards: int) -> list[int]:
    return [s for s in range(shards) if stack.runtime.objects.exists(f"jobs/{job_id}/shards/{s:06d}/trace.npz")]


@pytest.mark.slow  # > 10 s on 2 cores
def test_anytime_results_while_running_then_cancel(stack, client, blobs):
    ref = client.upload(blobs).dataset_ref
    stack.start_worker()
    job = client.submit_scoring(dataset=ref, **dict(SPEC, models=40, epochs=200))
    wait_for(lambda: client.get(job.job_id).progress.shards_done >= 2, 120, what="two shards done")
    page = next(client.ranked_pages(job.job_id, limit=0, page_size=1000))
    assert not page.final and 4 <= page.models < 40
    running = client.get(job.job_id)
    assert running.state == job_pb2.JOB_STATE_RUNNING and 4 <= running.anytime.models_done < 40
    assert 0 < running.anytime.mean_test_accuracy <= 1
    anytime_se = np.nanmean([e.memorization_stderr for e in page.examples])

    jobs = stack.runtime.jobs
    wait_for(lambda: _early_in_a_shard(jobs.get(job.job_id)), 60, every=0.05, what="a shard early in training")
    asked = client.cancel(job.job_id)
    asked_at = time.monotonic()
    # the shard in flight stops at its next check; until then the job is RUNNING, cancel requested
    assert asked.state == job_pb2.JOB_STATE_RUNNING and asked.cancel_requested, asked
    events = list(client.watch(job.job_id, timeout=10))
    assert events[-1].state == job_pb2.JOB_STATE_CANCELLED
    assert time.monotonic() - asked_at < 5, "the worker did not stop within a few seconds"
    stopped = client.get(job.job_id)
    assert stopped.cancel_requested and "cancelled" in stopped.error
    assert jobs.get(job.job_id).shards_running == []
    traces = _traces(stack, job.job_id, 20)
    assert stopped.progress.shards_done <= len(traces) < 20
    # a final job of the same data with all its models has smaller standard errors
    full = client.submit_scoring(dataset=ref, **dict(SPEC, models=40))
    assert client.wait(full.job_id, timeout=240).state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
    final_page = next(client.ranked_pages(full.job_id, limit=0, page_size=1000))
    assert final_page.final
    assert np.nanmean([e.memorization_stderr for e in final_page.examples]) < anytime_se
    # the cancelled job trained nothing more: its queued shards (served before the new job's) never started
    assert _traces(stack, job.job_id, 20) == traces
    assert client.get(job.job_id).progress.shards_done == stopped.progress.shards_done


def test_bad_requests_get_the_right_status_codes(stack, client, tmp_path):
    with pytest.raises(grpc.RpcError) as e:
        client.submit_scoring(dataset="no-such-dataset", models=1, ratio=1.5, model="vgg")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {f for f, _ in field_violations(e.value)}
    assert {"spec.scoring.dataset", "spec.scoring.models", "spec.scoring.ratio", "spec.scoring.model"} <= fields

    with pytest.raises(grpc.RpcError) as e:
        client.submit_scoring(dataset="mnist1d", models=10**6)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    with pytest.raises(grpc.RpcError) as e:  # a model that cannot take the data fails now, not in a worker
        client.submit_scoring(dataset="mnist1d", model="resnet", models=4)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(e.value)] == ["spec.scoring.model"]

    with pytest.raises(grpc.RpcError) as e:  # a balanced plan needs pairs; metric groups must exist
        client.submit_scoring(dataset="mnist1d", models=7, plan="balanced", metrics=["adversarial", "telepathy"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(e.value)} == {"spec.scoring.models", "spec.scoring.metrics"}

    with pytest.raises(grpc.RpcError) as e:
        client.submit(job_pb2.JobSpec())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    for call in (
        lambda: client.get("job-nope"),
        lambda: client.cancel("job-nope"),
        lambda: client.ranked("job-nope"),
        lambda: list(client.watch("job-nope")),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

    bad = tmp_path / "bad.npz"
    np.savez(
        bad,
        x_train=np.full((10, 3), np.nan, np.float32),
        y_train=np.zeros(10, int),
        x_test=np.zeros((4, 3), np.float32),
        y_test=np.zeros(4, int),
    )
    with pytest.raises(grpc.RpcError) as e:
        client.upload(bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in e.value.details()
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(grpc.RpcError) as e:
        client.upload(junk)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.RpcError) as e:
        client.ranked("job-nope", metric="bogus")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection_are_served(stack):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for target, service in (
        (stack.gateway, "memscore.v1.ScoringService"),
        (stack.results, "memscore.v1.ResultsService"),
    ):
        with grpc.insecure_channel(target) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow  # > 10 s on 2 cores
def test_extend_job_adds_models_without_retraining_old_shards(stack, client, blobs):
    ref = client.upload(blobs).dataset_ref
    stack.start_worker()
    job = client.submit_scoring(dataset=ref, **dict(SPEC, models=4))
    assert client.wait(job.job_id, timeout=120).state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
    with pytest.raises(grpc.RpcError) as e:
        client.extend(job.job_id, 3)  # not a multiple of the shard size
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    extended = client.extend(job.job_id, 4)
    assert extended.progress.models_total == 8 and extended.progress.shards_total == 4
    final = client.wait(job.job_id, timeout=120)
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED and final.progress.models_done == 8, stack.worker_logs()
    assert stack.runtime.jobs.incr_attempts(job.job_id, 0) == 2  # shard 0 trained once, before the extension
    local = run_scoring(load_dataset(str(blobs)), ScoringSpec(dataset=str(blobs), **dict(SPEC, models=8)), device="cpu")
    served = pq.read_table(io.BytesIO(client.artifact(job.job_id, "scores.parquet")))
    np.testing.assert_array_equal(served.column("memorization").to_numpy(), local.scores["memorization"])
    with pytest.raises(grpc.RpcError) as e:  # this job kept no checkpoints
        client.results.QueryInfluence(results_service_pb2.QueryInfluenceRequest(job_id=job.job_id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.slow  # > 10 s on 2 cores
def test_query_influence_of_new_points_equals_the_jobs_own_influence(stack, client, blobs):
    ref = client.upload(blobs).dataset_ref
    stack.start_worker()
    job = client.submit_scoring(dataset=ref, keep_checkpoints=True, **dict(SPEC, influence_top_k=5))
    assert client.wait(job.job_id, timeout=120).state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
    with np.load(blobs) as z:  # "new" points: test examples 3, 7, 11, whose influence the job computed
        x, y = z["x_test"][[3, 7, 11]], z["y_test"][[3, 7, 11]]
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    resp = client.results.QueryInfluence(
        results_service_pb2.QueryInfluenceRequest(job_id=job.job_id, examples_npz=buf.getvalue(), top_k=5)
    )
    for q, j in enumerate((3, 7, 11)):
        got = [p.influence for p in resp.pairs if p.test_index == q]
        want = [p.influence for p in client.influence(job.job_id, test_index=j, limit=5)]
        np.testing.assert_allclose(got, want, atol=1e-6)
    bad = io.BytesIO()
    np.savez(bad, x=x[:, :3], y=y)
    with pytest.raises(grpc.RpcError) as e:
        client.results.QueryInfluence(
            results_service_pb2.QueryInfluenceRequest(job_id=job.job_id, examples_npz=bad.getvalue())
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow  # > 10 s on 2 cores
def test_exposure_job_runs_on_a_worker_and_serves_its_canaries(stack, client):
    stack.start_worker()
    job = client.submit_exposure(canaries=["the pin is {dddd}"], insertions=[0, 8], epochs=1, seed=2)
    assert job.kind == job_pb2.JOB_KIND_EXPOSURE
    final = client.wait(job.job_id, timeout=240)
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
    res = client.exposure(job.job_id)
    assert sorted(c.insertions for c in res.canaries) == [0, 8]
    for c in res.canaries:
        assert c.rank_exact and 1 <= c.rank <= 10_000
        assert 0 <= c.exposure <= 13.3  # log2(10^4)
    assert "exposure.parquet" in final.artifacts
    with pytest.raises(grpc.RpcError) as e:
        client.submit_exposure(canaries=["no slot here"], insertions=[1])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f == "spec.exposure.canaries[0]" for f, _ in field_violations(e.value))


@pytest.mark.slow  # > 10 s on 2 cores
def test_a_self_stopping_job_grows_on_redis_and_s3_until_max_models(stack, client, blobs):
    """Blobs have no memorization to measure: the reliability stays unknown, so the job doubles
    (2 -> 4, then 2 more up to max_models 6) and ends for max_models, with the scores of 6."""
    ref = client.upload(blobs).dataset_ref
    stack.start_worker()
    spec = dict(SPEC, models=2, until_reliability=0.9, max_models=6)
    job = client.submit_scoring(dataset=ref, **spec)
    events = list(client.watch(job.job_id, timeout=180))
    assert events[-1].state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
    assert sorted({e.progress.models_total for e in events}) == [2, 4, 6]
    assert events[-1].message == "done: no reliability estimate at max_models 6"
    summary = json.loads(client.artifact(job.job_id, "summary.json"))
    assert summary["stopped_because"] == "max_models" and summary["models_done"] == 6
    local = run_scoring(load_dataset(str(blobs)), ScoringSpec(dataset=str(blobs), **dict(SPEC, models=6)), device="cpu")
    served = pq.read_table(io.BytesIO(client.artifact(job.job_id, "scores.parquet")))
    np.testing.assert_array_equal(served.column("memorization").to_numpy(), local.scores["memorization"])
    assert all(stack.runtime.jobs.incr_attempts(job.job_id, s) == 2 for s in range(3))  # each shard trained once


def test_a_balanced_job_with_adversarial_and_dp_metrics_matches_an_embedded_run(stack, client, blobs):
    """The plan and the opt-in metric groups travel from SubmitJob to the worker: every example in
    exactly half the models, and the adversarial distances and DP privacy levels the workers
    measured are the ones an embedded run measures. Each DP level is one more shard (3 beside the
    job's 2), trained by the workers as any shard and kept apart from the job's models."""
    spec = dict(SPEC, models=4, plan="balanced", metrics=["adversarial", "dp"])
    ref = client.upload(blobs).dataset_ref
    stack.start_worker()
    job = client.submit_scoring(dataset=ref, **spec)
    assert job.spec.scoring.plan == "balanced" and list(job.spec.scoring.metrics) == ["adversarial", "dp"]
    events = list(client.watch(job.job_id, timeout=240))
    assert events[-1].state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
    assert events[-1].progress.shards_total == 2 + len(DP_EPSILONS) == events[-1].progress.shards_done
    assert events[-1].progress.models_done == 4  # the DP models are not among the job's K
    served = pq.read_table(io.BytesIO(client.artifact(job.job_id, "scores.parquet")))
    assert (served.column("n_in").to_numpy() == 2).all() and (served.column("n_out").to_numpy() == 2).all()
    local = run_scoring(load_dataset(str(blobs)), ScoringSpec.from_dict({"dataset": str(blobs), **spec}), device="cpu")
    for col in ("adv_distance_l2", "adv_distance_linf_heldout", "holdout_retraining"):
        np.testing.assert_allclose(served.column(col).to_numpy(), local.scores[col], rtol=1e-5, err_msg=col)
    summary = json.loads(client.artifact(job.job_id, "summary.json"))
    assert summary["spec"]["ratio"] == 0.5 and set(summary["adversarial"]["eps_max"]) == {"l2", "linf"}
    top = client.ranked(job.job_id, metric="adv_distance_l2", ascending=True, limit=3)
    assert [e.adv_distance_l2 for e in top] == sorted(local.scores["adv_distance_l2"])[:3]
    for col in ("privacy_level", "privacy_level_lower", "privacy_level_upper"):
        np.testing.assert_array_equal(served.column(col).to_numpy(), local.scores[col], err_msg=col)
    assert [lv["epsilon_target"] for lv in summary["dp"]["levels"]] == list(DP_EPSILONS)
    level = local.scores["privacy_level"]
    strongest = client.ranked(job.job_id, metric="privacy_level", ascending=True, limit=5)
    assert [e.privacy_level for e in strongest] == sorted(level[~np.isnan(level)])[:5]
    one = client.example(job.job_id, int(strongest[0].index))
    assert one.example.privacy_level == strongest[0].privacy_level
    assert one.example.privacy_level_upper >= one.example.privacy_level
