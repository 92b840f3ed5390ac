"""SubmitJob's dry_run over a real gRPC socket: the spec is validated and sized exactly as for a
real submit (the same errors, RESOURCE_EXHAUSTED with the estimate for a job the workers cannot
hold), then its JobEstimate comes back with nothing stored or queued and neither the request_id
nor the tenant's quota used up. A real submit carries the same estimate. Expected figures come
from engine.cost (checked against the real models in tests/engine/test_cost.py)."""

from __future__ import annotations

import grpc
import pytest

from memscore.api.v1 import job_pb2
from memscore.cli import main
from memscore.client import Client, field_violations
from memscore.dataplane.admission import admit
from memscore.engine.catalog import BUILTIN_CORPUS_FACTS, BUILTIN_FACTS, BUILTIN_SHAPES
from memscore.engine.cost import DatasetFacts, exposure_cost, job_cost
from memscore.engine.spec import ExposureSpec, ScoringSpec

pytestmark = pytest.mark.integration

GIB = 1 << 30


def _facts(name: str) -> DatasetFacts:
    return DatasetFacts.from_meta({**BUILTIN_FACTS[name], "feature_shape": BUILTIN_SHAPES[name]})


def _scoring(**fields) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(scoring=job_pb2.ScoringSpec(**fields))


def _nothing_stored(rt, c: Client) -> None:
    assert c.list()[0] == []
    assert rt.objects.list("jobs/") == []


def test_a_dry_run_returns_the_analytic_estimate_and_stores_nothing(start):
    rt, target = start()
    spec = ScoringSpec(dataset="mnist1d", model="cnn1d", models=40, epochs=5)
    cost = job_cost(spec, _facts("mnist1d"))
    g = admit(spec, _facts("mnist1d"), rt.settings)
    with Client(target, target, timeout=10) as c:
        est = c.submit_scoring(dataset="mnist1d", model="cnn1d", models=40, epochs=5, dry_run=True)
        _nothing_stored(rt, c)
    assert est.model == "cnn1d" and est.params == cost.model.params and est.steps == cost.steps
    assert est.forward_flops == cost.model.forward_flops
    assert est.total_flops == pytest.approx(40 * cost.train_flops_per_model)
    assert est.shard_size == g and est.shards == -(-40 // g)
    assert est.shard_peak_bytes == cost.shard_bytes(g) and est.reduce_peak_bytes == cost.reduce_bytes
    assert est.flops_per_second == rt.settings.worker_flops
    assert est.seconds == pytest.approx(est.total_flops / rt.settings.worker_flops)


def test_a_dry_run_uses_neither_the_request_id_nor_the_quota(start):
    rt, target = start(tenant_max_active_jobs=1)
    spec = _scoring(dataset="mnist1d", models=8, epochs=2)
    with Client(target, target, timeout=10) as c:
        dry = c.submit_response(spec, request_id="r-1", dry_run=True)
        assert not dry.HasField("job") and not dry.created and dry.estimate.shards >= 1
        _nothing_stored(rt, c)
        real = c.submit_response(spec, request_id="r-1")  # the id is still free, and so is the one slot
        assert real.created and real.job.job_id
        assert real.estimate == dry.estimate  # a real submit carries the same estimate
        again = c.submit_response(spec, request_id="r-1", dry_run=True)  # a retry's dry run: no error
        assert again.estimate == dry.estimate and [j.job_id for j in c.list()[0]] == [real.job.job_id]


def test_a_dry_run_answers_every_error_a_real_submit_would(start):
    rt, target = start(tenant_max_active_jobs=1)
    bad = _scoring(dataset="mnist1d", epochs=-1, ratio=1.5)
    with Client(target, target, timeout=10) as c:
        errors = []
        for dry_run in (True, False):
            with pytest.raises(grpc.RpcError) as e:
                c.submit(bad, dry_run=dry_run)
            errors.append((e.value.code(), sorted(field_violations(e.value))))
        assert errors[0] == errors[1] and errors[0][0] == grpc.StatusCode.INVALID_ARGUMENT
        assert {"spec.scoring.epochs", "spec.scoring.ratio"} <= {f for f, _ in errors[0][1]}
        c.submit(_scoring(dataset="mnist1d", models=4, epochs=2), request_id="used")
        for spec, rid, code in (
            (_scoring(dataset="mnist1d", models=8, epochs=2), "used", grpc.StatusCode.INVALID_ARGUMENT),
            (_scoring(dataset="mnist1d", models=8, epochs=2), "", grpc.StatusCode.RESOURCE_EXHAUSTED),  # quota
        ):
            for dry_run in (True, False):
                with pytest.raises(grpc.RpcError) as e:
                    c.submit(spec, request_id=rid, dry_run=dry_run)
                assert e.value.code() == code, e.value.details()


def test_a_job_the_workers_cannot_hold_is_resource_exhausted_on_a_dry_run_with_its_estimate(start):
    rt, target = start(worker_memory_bytes=2 * GIB)
    with Client(target, target, timeout=10) as c:
        for fields, setting in (
            (dict(dataset="mnist1d", models=100000, epochs=10000), "MEMSCORE_MAX_JOB_WORKER_HOURS"),
            (dict(dataset="longtail", models=8, shard_size=8), "MEMSCORE_WORKER_MEMORY_BYTES"),
        ):
            with pytest.raises(grpc.RpcError) as e:
                c.submit_scoring(dry_run=True, **fields)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert setting in e.value.details() and "estimated" in e.value.details()
        _nothing_stored(rt, c)


def test_an_exposure_dry_run_estimates_its_language_model(start):
    rt, target = start()
    cost = exposure_cost(ExposureSpec(), BUILTIN_CORPUS_FACTS["chars"], BUILTIN_CORPUS_FACTS["vocab"])
    with Client(target, target, timeout=10) as c:
        est = c.submit_exposure(dry_run=True)
        _nothing_stored(rt, c)
    assert est.model == "lstm" and est.params == cost.params and est.steps == cost.steps
    assert est.shards == 1 and est.total_flops == pytest.approx(cost.train_flops + cost.score_flops)
    assert est.seconds == pytest.approx(cost.seconds(rt.settings.worker_flops)) and est.forward_flops > 0


def test_submit_dry_run_prints_the_estimate_and_queues_nothing(start, capsys):
    rt, target = start()
    flags = ["--gateway", target, "--results", target]
    assert main(["submit", "--dataset", "mnist1d", "--models", "16", "--epochs", "2", "--dry-run", *flags]) == 0
    out = capsys.readouterr().out
    cost = job_cost(ScoringSpec(dataset="mnist1d", models=16, epochs=2), _facts("mnist1d"))
    assert f"{cost.model.params:,} parameters" in out and f"{cost.steps} steps" in out
    assert "shards: 1 of 16 models" in out and "MEMSCORE_WORKER_FLOPS" in out
    with Client(target, target, timeout=10) as c:
        _nothing_stored(rt, c)
