"""The privacy metric (engine/privacy_level.py): DP levels as extra shards of a job, and per
example the strongest ε at which it is still classified correctly."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from memscore.engine.datasets import load_dataset
from memscore.engine.privacy_level import (
    DP_EPSILONS,
    DP_MODELS,
    DP_SHARD_BASE,
    _percentiles,
    dp_shards,
    shard_model_ids,
    strongest_correct,
)
from memscore.engine.scoring import make_plan, run_scoring
from memscore.engine.spec import ScoringSpec

EPS = np.array([1.0, 4.0, 16.0])


@pytest.fixture(scope="module")
def digits(torch_one_thread):
    return load_dataset("digits")


def test_the_strongest_level_whose_members_mostly_classify_it_correctly():
    hits = [np.array([3, 0, 0, 0, 0, 2]), np.array([0, 3, 0, 0, 0, 2]), np.array([0, 3, 4, 0, 1, 0])]
    members = [np.array([4, 4, 4, 4, 0, 4]), np.array([4, 4, 4, 4, 4, 4]), np.array([4, 4, 4, 4, 1, 4])]
    got = strongest_correct(EPS, hits, members)
    # 0: first level; 1: second; 2: third; 3: never (+inf); 4: the first level had no members and a
    # later one wins: unknown; 5: 2 of 4 is no majority anywhere
    np.testing.assert_array_equal(got, [1.0, 4.0, 16.0, np.inf, np.nan, np.inf])


def test_an_example_no_level_decides_for_lack_of_members_has_no_estimate():
    got = strongest_correct(EPS, [np.array([0])] * 3, [np.array([0]), np.array([2]), np.array([2])])
    assert np.isnan(got[0])  # the first level, untested, might have classified it correctly


def test_bootstrap_percentiles_treat_inf_as_a_value_and_nan_as_missing():
    reps = np.array([[1.0, np.inf, np.nan], [4.0, np.inf, np.nan], [4.0, 16.0, 1.0], [16.0, np.inf, np.nan]])
    lo, hi = _percentiles(reps)
    np.testing.assert_array_equal(lo, [1.0, 16.0, np.nan])  # column 3: 3 of 4 replicates missing
    np.testing.assert_array_equal(hi, [16.0, np.inf, np.nan])


def test_dp_levels_are_shards_numbered_apart_from_the_models_shards():
    spec = ScoringSpec(dataset="digits", models=130, shard_size=64, metrics=["dp"])
    assert spec.shards() == [0, 1, 2, *(DP_SHARD_BASE + lvl for lvl in range(len(DP_EPSILONS)))]
    assert [spec.shard_models(s) for s in spec.shards()] == [64, 64, 2, 0, 0, 0]
    assert ScoringSpec(dataset="digits", metrics=["adversarial"]).shards() == [0]
    assert dp_shards([]) == []
    ids = [shard_model_ids(s) for s in dp_shards(["dp"])]
    assert all(len(i) == DP_MODELS for i in ids) and len(set(sum(ids, []))) == DP_MODELS * len(DP_EPSILONS)
    assert min(sum(ids, [])) > 100_000  # never one of the job's own model ids
    with pytest.raises(ValueError):
        shard_model_ids(DP_SHARD_BASE + len(DP_EPSILONS))


def test_flipped_labels_need_weaker_privacy_than_clean_ones(digits):
    """Planted ground truth: 400 digits, 20% of the labels flipped, 8 MLPs per level at ε = 1, 4,
    16 for 6 epochs. DP bounds what a model can learn from one example, so a flipped label
    (learnable only by memorizing it) is classified correctly at no level, while most clean
    examples are learned at some level (measured: 0.91 of the flipped at +inf, 0.20 of the clean).
    The DP traces never reach the FZ estimators: memorization is the same with and without `dp`."""
    small = replace(digits, x_train=digits.x_train[:400], y_train=digits.y_train[:400])
    fields = dict(dataset="digits", model="mlp", epochs=6, lr=0.02, seed=2, models=8, label_noise=0.2)
    traces: list = []
    calls: list = []
    progress = lambda done, total: calls.append((done, total))  # noqa: E731
    result = run_scoring(small, ScoringSpec.from_dict({**fields, "metrics": ["dp"]}), "cpu", progress, traces)
    total = 8 + len(DP_EPSILONS) * DP_MODELS  # the DP models count in the progress, after the job's
    assert {t for _, t in calls} == {total} and calls[-1][0] == total
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    s, flipped = result.scores, result.scores["label_flipped"]
    level = s["privacy_level"]
    assert np.isin(level[~np.isnan(level)], [*DP_EPSILONS, np.inf]).all()
    assert np.mean(np.isinf(level[flipped])) > 0.8
    assert np.mean(np.isinf(level[~flipped])) < 0.35
    lo, hi = s["privacy_level_lower"], s["privacy_level_upper"]
    ok = ~np.isnan(level) & ~np.isnan(lo)
    assert (lo[ok] <= level[ok]).all() and (level[ok] <= hi[ok]).all()
    assert (lo[ok] < hi[ok]).any()  # eight models per level leave some examples undecided
    dp = result.summary["dp"]
    eps = [lv["epsilon"] for lv in dp["levels"]]
    assert [lv["epsilon_target"] for lv in dp["levels"]] == list(DP_EPSILONS)
    assert all(t * 0.98 <= e <= t for e, t in zip(eps, DP_EPSILONS))  # σ chosen to just meet the target
    sigmas = [lv["noise_multiplier"] for lv in dp["levels"]]
    assert sigmas == sorted(sigmas, reverse=True) and all(lv["models"] == DP_MODELS for lv in dp["levels"])
    assert sum(dp["examples_at_level"].values()) + dp["examples_without_estimate"] == len(level)
    assert result.summary["shards_total"] == 1 + len(DP_EPSILONS)
    assert sum(t.meta.get("dp_level") is not None for t in traces) == len(DP_EPSILONS)
    from memscore.report import render_report

    assert "Privacy level" in render_report(result.scores, {}, result.summary, None).split('id="dp"', 1)[1]
    plain = run_scoring(small, ScoringSpec.from_dict(fields), device="cpu")
    assert "dp" not in plain.summary and np.isnan(plain.scores["privacy_level"]).all()
    np.testing.assert_array_equal(plain.scores["memorization"], s["memorization"])
    np.testing.assert_array_equal(plain.scores["privacy_risk"], s["privacy_risk"])


def test_a_plan_with_dp_lists_its_levels(digits):
    plan = make_plan(digits, ScoringSpec(dataset="digits", models=8, metrics=["dp"]))
    assert plan.shards() == [0, *dp_shards(["dp"])]
    assert plan.model_ids(plan.dp_shards[0], 8) == shard_model_ids(DP_SHARD_BASE)
    assert not math.isnan(DP_EPSILONS[0])
