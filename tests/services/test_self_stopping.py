"""A self-stopping job end to end on `memscore up`'s deployment (embedded: memory broker and
worker thread, local store, SQLite, gRPC on loopback): it grows through the same Celery tasks
as a Redis/S3 deployment until its reliability target, WatchJob and `memscore watch` report the
reliability, and ExtendJob's request id extends once."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pyarrow.parquet as pq
import pytest

from memscore import embedded
from memscore.api.v1 import job_pb2
from memscore.cli import main
from memscore.client import Client
from memscore.engine.datasets import load_dataset
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec
from memscore.runtime import set_runtime
from memscore.settings import ENV_VARS, Settings

from .conftest import write_blobs_npz

pytestmark = pytest.mark.integration

# Blobs with 10% of labels flipped, 30 epochs: soft memorization's reliability is 0.375 at 8
# models, projected to reach 0.5 at 14, and 0.56 there (seed 1).
SPEC = dict(
    model="mlp",
    models=8,
    epochs=30,
    seed=1,
    shard_size=2,
    label_noise=0.1,
    until_reliability=0.5,
    reliability_metric="memorization_soft",
    max_models=32,
    influence_top_k=2,
)


@pytest.fixture
def up(tmp_path, monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    e = embedded.start(Settings(home=tmp_path / "home", device="cpu", data_roots=(str(tmp_path),)), 0, 0, "127.0.0.1")
    try:
        yield f"127.0.0.1:{e.gateway_port}", f"127.0.0.1:{e.results_port}"
    finally:
        e.stop()
        set_runtime(None)


def cli(*args) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue() + err.getvalue()


@pytest.mark.slow  # > 10 s on 2 cores
def test_a_self_stopping_job_grows_to_its_target_and_extends_once_per_request_id(up, tmp_path):
    gateway, results = up
    svc = ["--gateway", gateway, "--results", results]
    blobs = write_blobs_npz(tmp_path / "blobs.npz")
    with Client(gateway, results, timeout=30) as c:
        job = c.submit_scoring(dataset=str(blobs), **SPEC)  # a server path under MEMSCORE_DATA_ROOTS
        events = list(c.watch(job.job_id, timeout=300))
        final = events[-1]
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED, final.message
        assert sorted({e.progress.models_total for e in events}) == [8, 14]
        assert final.message == "done: reliability 0.562 >= 0.5 at 14 models"
        assert final.anytime.memorization_soft_reliability == pytest.approx(0.562, abs=5e-4)
        assert final.anytime.HasField("memorization_reliability") and final.anytime.models_done == 14
        summary = json.loads(c.artifact(job.job_id, "summary.json"))
        assert summary["stopped_because"] == "reliability_reached" and summary["spec"]["models"] == 14

        # `memscore run` follows the same rule to the same models and scores
        local = run_scoring(load_dataset(str(blobs)), ScoringSpec(dataset=str(blobs), **SPEC), device="cpu")
        assert local.summary["models_done"] == 14 and local.summary["reliability"] == summary["reliability"]
        served = pq.read_table(io.BytesIO(c.artifact(job.job_id, "scores.parquet")))
        for col in ("memorization", "memorization_soft", "n_in"):
            np.testing.assert_array_equal(served.column(col).to_numpy(), local.scores[col], err_msg=col)

        code, out = cli("watch", job.job_id, *svc)
        assert code == 0 and "SUCCEEDED, memorization reliability" in out and ", soft 0.562" in out

        extend = ("extend", job.job_id, "--models", "2", "--request-id", "ext-1", *svc)
        assert cli(*extend) == (0, f"{job.job_id}: QUEUED, 16 models\n")
        code, out = cli(*extend)  # a retry: the job is not extended again
        assert code == 0 and "16 models" in out
        code, out = cli("extend", job.job_id, "--models", "4", "--request-id", "ext-1", *svc)
        assert code == 1 and "INVALID_ARGUMENT" in out and "request_id" in out
        done = c.wait(job.job_id, timeout=300)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED and done.progress.models_done == 16
