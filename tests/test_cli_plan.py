"""`memscore plan`: the cost preflight prints the analytic figures (engine/cost.py), the group
and shard sizes, the service's admission and the calibrated wall time, without training the job
(nothing is written), and `--json` gives the same as one object."""

import json

import pytest

from memscore.cli import main
from memscore.engine.cost import DatasetFacts, job_cost
from memscore.engine.spec import ScoringSpec

from .services.conftest import write_blobs_npz

FLAGS = ["--model", "mlp", "--models", "20", "--epochs", "3", "--shard-size", "10", "--device", "cpu"]


def _cost(data):
    spec = ScoringSpec(dataset=str(data), model="mlp", models=20, epochs=3, shard_size=10)
    return job_cost(spec, DatasetFacts(240, 80, 4, "vector", (16,)))


def test_plan_prints_flops_memory_shards_and_the_calibrated_time(tmp_path, capsys):
    data = write_blobs_npz(tmp_path / "blobs.npz")
    assert main(["plan", "--dataset", str(data), *FLAGS]) == 0
    out = capsys.readouterr().out
    cost = _cost(data)
    assert f"parameters: {cost.model.params:,} per model" in out
    assert (
        f"{cost.train_flops_per_model:.3g} per model" in out and f"{20 * cost.train_flops_per_model:.3g} total" in out
    )
    assert f"20 models × {cost.steps} steps" in out
    assert "2 shard(s) of 10, trained in 2 group(s) of up to 10 models" in out  # shards of 10 fit one group each
    assert "peak memory per group" in out and "reduce: peak memory" in out
    assert "service: shard size 10" in out and "estimated wall time:" in out and "FLOP-based:" in out
    assert "likely " in out and "0.73-1.23x the measured time" in out  # the estimate with its measured error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs.npz"]  # nothing trained, nothing written


def test_plan_json_holds_the_same_figures(tmp_path, capsys):
    data = write_blobs_npz(tmp_path / "blobs.npz")
    assert main(["plan", "--dataset", str(data), "--json", *FLAGS]) == 0
    r = json.loads(capsys.readouterr().out)
    cost = _cost(data)
    assert r["params"] == cost.model.params and r["steps"] == cost.steps and r["shards"] == 2
    assert r["total_flops"] == 20 * cost.train_flops_per_model and r["group_size"] == 10
    assert r["group_peak_bytes"] == cost.shard_bytes(10) and r["service"]["shard_size"] == 10
    parts = r["seconds_parts"]
    assert r["seconds"] == pytest.approx(sum(parts.values())) and parts["train"] > 0 and parts["reduce"] > 0
    assert r["calibration"]["measured_flops_per_second"] > 0 and r["flop_seconds"] > 0


def test_plan_says_when_the_service_would_refuse_the_job(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEMSCORE_MAX_JOB_WORKER_HOURS", "0.0000001")
    data = write_blobs_npz(tmp_path / "blobs.npz")
    assert main(["plan", "--dataset", str(data), *FLAGS]) == 0
    out = capsys.readouterr().out
    assert "service: would refuse this job (RESOURCE_EXHAUSTED)" in out and "MEMSCORE_MAX_JOB_WORKER_HOURS" in out
    assert "estimated wall time:" in out  # this machine's plan still stands


def test_plan_reports_a_bad_flag_without_calibrating(tmp_path, capsys):
    data = write_blobs_npz(tmp_path / "blobs.npz")
    assert main(["plan", "--dataset", str(data), "--ratio", "1.5"]) == 2
    assert "--ratio" in capsys.readouterr().err


def test_plan_reads_a_dataset_and_checks_its_model_as_run_does(tmp_path, capsys):
    """A Parquet table through its column flags; a model that does not take the data is
    refused as `run` refuses it, before any calibration."""
    from tests.engine.test_parquet import vector_table, write

    table = write(vector_table(n=60, d=8).rename_columns(["vec", "target", "split"]), tmp_path / "t.parquet")
    flags = ["--dataset", str(table), "--feature-column", "vec", "--label-column", "target", "--device", "cpu"]
    assert main(["plan", *flags, "--model", "linear", "--models", "4", "--epochs", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["dataset"]["n_train"], r["dataset"]["n_test"], r["dataset"]["num_classes"]) == (45, 15, 3)
    assert r["params"] == 8 * 3 + 3
    assert main(["plan", "--dataset", "digits", "--model", "cnn1d", "--models", "4", "--device", "cpu"]) == 2
    assert "cnn1d takes" in capsys.readouterr().err
