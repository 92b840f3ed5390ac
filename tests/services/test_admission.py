"""Admission control over a real gRPC socket: a job the workers cannot hold (memory, shard time,
job time, reduce memory; an exposure job's time) is RESOURCE_EXHAUSTED naming the setting and
the fix, before anything is stored or queued; an automatic shard size shrinks to what fits;
ExtendJob is held to the same limits; a dataset under the data roots is sized from its headers.
Expected figures come from engine.cost, which tests/engine/test_cost.py checks against the real
models and a measured run."""

from __future__ import annotations

import grpc
import pytest

from memscore.client import Client
from memscore.dataplane.admission import largest_shard
from memscore.engine.catalog import BUILTIN_CORPUS_FACTS, BUILTIN_FACTS, BUILTIN_SHAPES
from memscore.engine.cost import DatasetFacts, exposure_cost, job_cost
from memscore.engine.privacy_level import DP_EPSILONS
from memscore.engine.spec import ExposureSpec, ScoringSpec

pytestmark = pytest.mark.integration

GIB = 1 << 30


def _facts(name: str) -> DatasetFacts:
    return DatasetFacts.from_meta({**BUILTIN_FACTS[name], "feature_shape": BUILTIN_SHAPES[name]})


def _refused(call) -> str:
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    return e.value.details()


def _nothing_stored(rt, c: Client) -> None:
    assert c.list()[0] == []
    assert rt.objects.list("jobs/") == []


def test_a_job_of_thousands_of_worker_hours_is_refused_before_anything_is_stored(start):
    rt, target = start()
    with Client(target, target, timeout=10) as c:
        why = _refused(lambda: c.submit_scoring(dataset="mnist1d", models=100000, epochs=10000))
        assert "MEMSCORE_MAX_JOB_WORKER_HOURS" in why and "fewer models or epochs" in why
        _nothing_stored(rt, c)
        assert (
            c.submit_scoring(dataset="mnist1d", models=100, epochs=10).progress.models_total == 100
        )  # a sane one passes


def test_an_automatic_shard_size_shrinks_to_what_a_worker_holds(start):
    rt, target = start(worker_memory_bytes=2 * GIB)
    fit = largest_shard(job_cost(ScoringSpec(dataset="longtail", models=8), _facts("longtail")), rt.settings)
    assert 1 <= fit < 8  # the ResNet's evaluation passes need ~0.4 GiB a model
    with Client(target, target, timeout=10) as c:
        job = c.submit_scoring(dataset="longtail", models=8)
        assert job.spec.scoring.shard_size == fit
        assert job.progress.shards_total == -(-8 // fit)


def test_a_self_stopping_jobs_automatic_shard_size_divides_its_models(start):
    rt, target = start(worker_memory_bytes=2 * GIB)
    with Client(target, target, timeout=10) as c:
        job = c.submit_scoring(dataset="longtail", models=8, max_models=16, until_reliability=0.9)
        g = job.spec.scoring.shard_size
        assert 8 % g == 0 and g <= largest_shard(
            job_cost(ScoringSpec(dataset="longtail"), _facts("longtail")), rt.settings
        )


def test_an_explicit_shard_size_too_large_is_refused_with_the_largest_that_fits(start):
    rt, target = start(worker_memory_bytes=2 * GIB)
    fit = largest_shard(job_cost(ScoringSpec(dataset="longtail", models=8), _facts("longtail")), rt.settings)
    with Client(target, target, timeout=10) as c:
        why = _refused(lambda: c.submit_scoring(dataset="longtail", models=8, shard_size=8))
        assert (
            "spec.scoring.shard_size" in why and f"shard_size <= {fit}" in why and "MEMSCORE_WORKER_MEMORY_BYTES" in why
        )
        _nothing_stored(rt, c)
        assert c.submit_scoring(dataset="longtail", models=8, shard_size=fit).spec.scoring.shard_size == fit


def test_a_model_larger_than_a_worker_is_refused(start):
    rt, target = start(worker_memory_bytes=256 << 20)
    with Client(target, target, timeout=10) as c:
        why = _refused(lambda: c.submit_scoring(dataset="mnist1d", models=4))
        assert "more than a worker has" in why and "MEMSCORE_WORKER_MEMORY_BYTES" in why
        _nothing_stored(rt, c)


def test_shards_are_sized_to_half_the_shard_time_limit_and_a_model_over_it_is_refused(start):
    rt, target = start(worker_flops=1e9, shard_timeout_s=1000)
    per_model_s = job_cost(ScoringSpec(dataset="mnist1d"), _facts("mnist1d")).seconds(1, 1e9)
    assert 10 < per_model_s < 500  # ~87 s: 4400 cnn1d steps at 1 GFLOP/s
    with Client(target, target, timeout=10) as c:
        job = c.submit_scoring(dataset="mnist1d", models=64)
        assert job.spec.scoring.shard_size == int(500 // per_model_s)
        why = _refused(lambda: c.submit_scoring(dataset="mnist1d", models=4, epochs=10000))
        assert "MEMSCORE_SHARD_TIMEOUT_S" in why and "fewer epochs" in why


def test_a_dp_level_over_half_the_shard_time_is_refused_naming_the_metric(start):
    rt, target = start(worker_flops=1e10, shard_timeout_s=1000)
    cost = job_cost(ScoringSpec(dataset="digits", model="mlp", epochs=20, metrics=["dp"]), _facts("digits"))
    assert (
        cost.dp_shard_seconds(1e10)
        < 500
        < job_cost(
            ScoringSpec(dataset="digits", model="mlp", epochs=2000, metrics=["dp"]), _facts("digits")
        ).dp_shard_seconds(1e10)
    )
    with Client(target, target, timeout=10) as c:
        why = _refused(lambda: c.submit_scoring(dataset="digits", model="mlp", models=4, epochs=2000, metrics=["dp"]))
        assert "`dp`" in why and "MEMSCORE_SHARD_TIMEOUT_S" in why and "leave out `dp`" in why
        _nothing_stored(rt, c)
        job = c.submit_scoring(dataset="digits", model="mlp", models=4, epochs=2000)  # the same job without DP fits
        assert job.progress.shards_total >= 1
        dp = c.submit_scoring(dataset="digits", model="mlp", models=4, epochs=20, metrics=["dp"])
        assert dp.progress.shards_total == 1 + len(DP_EPSILONS)


def test_a_reduce_larger_than_its_memory_is_refused(start):
    rt, target = start(reduce_memory_bytes=64 << 20)
    with Client(target, target, timeout=10) as c:
        why = _refused(lambda: c.submit_scoring(dataset="mnist1d", models=64))
        assert "MEMSCORE_REDUCE_MEMORY_BYTES" in why
        _nothing_stored(rt, c)


def test_extending_a_job_past_the_time_limit_is_refused_and_leaves_it_as_it_was(start):
    limit_h = 0.05  # 180 s at 1e10 FLOP/s: about 20 mnist1d models of 8.6 s
    rt, target = start(worker_flops=1e10, max_job_worker_hours=limit_h)
    with Client(target, target, timeout=10) as c:
        job = c.submit_scoring(dataset="mnist1d", models=8, shard_size=8)
        rt.jobs.update(job.job_id, state="SUCCEEDED")
        why = _refused(lambda: c.extend(job.job_id, 64))
        assert "MEMSCORE_MAX_JOB_WORKER_HOURS" in why
        after = c.get(job.job_id)
        assert after.progress.models_total == 8 and after.progress.shards_total == 1
        assert c.extend(job.job_id, 8).progress.models_total == 16  # within the limit it grows


def test_an_exposure_job_over_half_the_task_time_is_refused_and_a_sane_one_passes(start):
    rt, target = start(worker_flops=1e10, shard_timeout_s=3600)
    facts = BUILTIN_CORPUS_FACTS["chars"], BUILTIN_CORPUS_FACTS["vocab"]
    assert exposure_cost(ExposureSpec(epochs=10000), *facts).seconds(1e10) > 1800  # ~214,000 steps of the LSTM
    assert exposure_cost(ExposureSpec(), *facts).seconds(1e10) < 1800  # 322 steps, 40,000 candidates
    with Client(target, target, timeout=10) as c:
        why = _refused(lambda: c.submit_exposure(epochs=10000))
        assert "spec.exposure" in why and "MEMSCORE_SHARD_TIMEOUT_S" in why and "lower epochs" in why
        _nothing_stored(rt, c)
        big_space = dict(canaries=["my pin is {dddddddd}"], insertions=[1], num_samples=10_000_000)
        why = _refused(lambda: c.submit_exposure(enumeration_budget=100_000_000, **big_space))
        assert "candidate secrets" in why
        assert c.submit_exposure().kind  # the defaults pass: ~325 steps


def _npz(path, x_train, n_test=10, classes=3, **extra):
    import numpy as np

    rng = np.random.default_rng(0)
    x_test = rng.random((n_test, *x_train.shape[1:])).astype(x_train.dtype)
    np.savez(
        path, x_train=x_train, y_train=np.arange(len(x_train)) % classes, x_test=x_test,
        y_test=np.arange(n_test) % classes, **extra,
    )  # fmt: skip
    return path


def test_a_dataset_under_the_data_roots_is_sized_like_an_upload(start, tmp_path):
    import numpy as np

    root = tmp_path / "data"
    root.mkdir()
    ok = _npz(root / "small.npz", np.random.default_rng(1).random((200, 32), dtype=np.float32))
    wide = _npz(root / "wide.npz", np.zeros((64, 3_000_000), np.float32))  # 0.7 GiB of x_train
    rt, target = start(data_roots=(str(root),), worker_memory_bytes=1 * GIB)
    with Client(target, target, timeout=10) as c:
        why = _refused(lambda: c.submit_scoring(dataset=str(wide), models=4))
        assert "more than a worker has" in why and "MEMSCORE_WORKER_MEMORY_BYTES" in why
        _nothing_stored(rt, c)
        job = c.submit_scoring(dataset=str(ok), models=8)
        fit = largest_shard(
            job_cost(ScoringSpec(dataset=str(ok), models=8), DatasetFacts(200, 10, 3, "vector", (32,))), rt.settings
        )
        assert job.spec.scoring.shard_size == min(8, fit)
        (root / "cut.npz").write_bytes(ok.read_bytes()[:300])
        with pytest.raises(grpc.RpcError) as e:
            c.submit_scoring(dataset=str(root / "cut.npz"), models=4)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec.scoring.dataset" in e.value.details()


def test_a_torchvision_model_is_sized_by_its_measured_cost(start):
    """No table in engine/cost.py for torchvision/resnet18: the gateway measures the model it
    dry-ran (registry.measured_cost: 11M parameters) and sizes the shard from that."""
    from memscore.engine.registry import measured_cost

    rt, target = start(worker_memory_bytes=2 * GIB)
    model = measured_cost("torchvision/resnet18", BUILTIN_SHAPES["longtail"], 10)
    assert model.params > 11_000_000
    cost = job_cost(ScoringSpec(dataset="longtail", model="torchvision/resnet18", models=8), _facts("longtail"), model)
    fit = largest_shard(cost, rt.settings)
    assert 1 <= fit < 8
    with Client(target, target, timeout=30) as c:
        job = c.submit_scoring(dataset="longtail", model="torchvision/resnet18", models=8)
        assert job.spec.scoring.shard_size == fit
        why = _refused(
            lambda: c.submit_scoring(dataset="longtail", model="torchvision/resnet18", models=8, shard_size=8)
        )
        assert f"shard_size <= {fit}" in why
