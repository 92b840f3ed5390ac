"""engine/calibrate.py: a few seconds' measured burst predicts the wall time of the whole job
(`run_scoring` on this machine) within a factor of 2, and it sizes its groups as the trainer
does."""

from __future__ import annotations

import time

import pytest

from memscore.engine.calibrate import calibrate, group_sizes
from memscore.engine.datasets import load_dataset
from memscore.engine.ensemble import make_recipe, resolve_device
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec


def _measured(ds, spec) -> float:
    t = time.perf_counter()
    run_scoring(ds, spec, device="cpu")
    return time.perf_counter() - t


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, model, models, epochs",
    [("mnist1d", "mlp", 8, 5), ("mnist1d", "cnn1d", 6, 3), ("digits", "resnet", 4, 2)],
)
def test_the_calibrated_estimate_is_within_a_factor_of_two_of_the_measured_time(name, model, models, epochs):
    ds = load_dataset(name)
    spec = ScoringSpec(dataset=name, model=model, models=models, epochs=epochs)
    cal = calibrate(ds, spec, "cpu")
    measured = _measured(ds, spec)
    assert 0.5 <= cal.seconds / measured <= 2.0, (cal.seconds, measured, cal)


def test_calibrating_a_long_job_takes_seconds_and_scales_with_its_models():
    ds = load_dataset("mnist1d")
    spec = ScoringSpec(dataset="mnist1d", model="mlp", models=64)  # default recipe: ~8 min here
    t = time.perf_counter()
    cal = calibrate(ds, spec, "cpu")
    assert time.perf_counter() - t < 10 and cal.calibration_seconds < 10
    assert cal.seconds > 20 * cal.calibration_seconds
    assert cal.group_sizes == (16, 16, 16, 16) and cal.steps == cal.cost.steps == 60 * 44  # 60 epochs of 2800
    assert cal.flop_seconds() is not None and cal.flop_seconds() > 0


def test_groups_are_sized_as_the_trainer_sizes_them():
    from memscore.engine.scoring import run_scoring

    ds = load_dataset("digits")
    spec = ScoringSpec(dataset="digits", model="mlp", models=20, epochs=1, shard_size=12)
    cpu = resolve_device("cpu")
    sizes = group_sizes(ds, spec, "mlp", make_recipe("mlp", 1), cpu)
    assert sizes == [12, 8]  # shards of 12 and 8, each within the CPU's 16 at once
    traces = []
    run_scoring(ds, spec, device="cpu", traces_out=traces)
    assert [min(t.meta["group_size"], len(t.model_ids)) for t in traces] == sizes  # each shard one group
    assert group_sizes(ds, ScoringSpec(dataset="digits", models=20), "mlp", make_recipe("mlp", 1), cpu) == [16, 4]


def test_opt_in_metrics_and_dp_levels_are_added_at_the_measured_flop_rate():
    import dataclasses

    from memscore.engine.cost import job_cost
    from memscore.engine.privacy_level import DP_MODELS

    ds = load_dataset("digits")
    spec = ScoringSpec(dataset="digits", model="mlp", models=4, epochs=2, metrics=["adversarial", "dp"])
    cal = calibrate(ds, spec, "cpu")
    plain = job_cost(dataclasses.replace(spec, metrics=[]), _facts(ds))
    extra_flops = 4 * (cal.cost.train_flops_per_model - plain.train_flops_per_model)
    extra_flops += cal.cost.dp_shards * DP_MODELS * cal.cost.dp_flops_per_model
    assert extra_flops > 0 and cal.extra_seconds == pytest.approx(extra_flops / cal.measured_flops_per_second)
    assert cal.seconds == pytest.approx(cal.train_seconds + cal.eval_seconds + cal.extra_seconds + cal.reduce_seconds)


def _facts(ds):
    from memscore.engine.calibrate import facts_of

    return facts_of(ds)
