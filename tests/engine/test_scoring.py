"""`run_scoring` on small real data: every job reports its split-half reliability, and a
self-stopping job grows by whole shards until its target or max_models."""

from __future__ import annotations

import numpy as np
import pytest

from memscore.engine.catalog import RELIABILITY_METRICS
from memscore.engine.datasets import load_dataset
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec

# mnist1d, 3 epochs of the MLP: memorization's reliability is 0.11 at 4 models, 0.08 at 8,
# 0.19 at 16 (seed 1), so a target of 0.14 needs two rounds of growth.
SPEC = dict(dataset="mnist1d", model="mlp", epochs=3, seed=1)


@pytest.fixture(scope="module")
def mnist1d(torch_one_thread):
    return load_dataset("mnist1d")


def test_a_self_stopping_job_grows_until_its_reliability_reaches_the_target(mnist1d):
    totals = []
    spec = ScoringSpec(**SPEC, models=4, shard_size=4, until_reliability=0.14, max_models=64)
    result = run_scoring(mnist1d, spec, device="cpu", progress=lambda done, total: totals.append(total))
    s = result.summary
    assert s["stopped_because"] == "reliability_reached"
    assert s["models_done"] == s["spec"]["models"] == 16 and s["shards_done"] == s["shards_total"] == 4
    assert sorted(set(totals)) == [4, 8, 16]  # 4 -> +4 (projected 6) -> +8 (projected 15)
    r = s["reliability"]["memorization"]
    assert r["spearman_brown"] >= 0.14 and r["models"] == 16
    assert r["spearman_brown"] == pytest.approx(2 * r["split_half_spearman"] / (1 + r["split_half_spearman"]))
    assert set(s["reliability"]) == set(RELIABILITY_METRICS)
    assert spec.models == 4  # the caller's spec is left as it was
    history = s["reliability_history"]  # one entry per reduce, the last the final one
    assert [h["models"] for h in history] == [4, 8, 16]
    assert history[-1]["reliability"] == r["spearman_brown"] and history[0]["reliability"] < 0.14
    assert 0 < history[0]["seconds"] < history[1]["seconds"] < history[2]["seconds"]


def test_a_self_stopping_job_stops_at_max_models_with_the_scores_of_a_fixed_job(mnist1d):
    grown = run_scoring(
        mnist1d, ScoringSpec(**SPEC, models=4, shard_size=2, until_reliability=0.9, max_models=8), device="cpu"
    )
    assert grown.summary["stopped_because"] == "max_models" and grown.summary["models_done"] == 8
    fixed = run_scoring(mnist1d, ScoringSpec(**SPEC, models=8, shard_size=2), device="cpu")
    assert fixed.summary["stopped_because"] == "fixed"
    for col in ("memorization", "memorization_soft", "n_in"):
        np.testing.assert_array_equal(grown.scores[col], fixed.scores[col], err_msg=col)
    assert grown.summary["reliability"] == fixed.summary["reliability"]


def test_every_job_reports_the_membership_attack_on_its_own_models(mnist1d):
    """LiRA over the job's 16 models (engine/membership.py): 10% of the labels flipped, which
    only the models that trained on them fit, so membership leaks and the pooled AUC clears its
    chance interval; the figures do not depend on the order the shards are merged in."""
    from memscore.engine.scoring import merge_traces, prepare_dataset

    spec = ScoringSpec(**SPEC, models=16, shard_size=4, label_noise=0.1)
    traces: list = []
    result = run_scoring(mnist1d, spec, device="cpu", traces_out=traces)
    mi = result.summary["membership_inference"]
    assert mi["models"] == 16 and mi["variance"] == "global"
    assert mi["auc"] > mi["chance_auc_interval"][1] and mi["significant"]
    assert 0 <= mi["tpr_at_fpr_0_001"] <= mi["tpr_at_fpr_0_01"] <= 1
    ds, flipped = prepare_dataset(mnist1d, spec)
    assert len(flipped) == result.summary["dataset"]["labels_flipped"] > 0
    # per example: the flipped labels, fitted only by the models that saw them, leak most
    risk = result.scores["privacy_risk"]
    is_flipped = result.scores["label_flipped"]
    scored = np.isfinite(risk)  # not: an example with under 2 shadow models on a side (ratio 0.7 of 16)
    assert scored.mean() > 0.9 and (np.isfinite(result.scores["privacy_risk_stderr"]) == scored).all()
    # clean examples leak too, through the models' generalization gap (0.62 measured), flipped
    # ones more (0.71)
    assert np.mean(risk[scored & is_flipped]) > np.mean(risk[scored & ~is_flipped]) + 0.05 > 0.55
    again = merge_traces(ds, spec, traces[::-1], flipped)
    assert again.summary["membership_inference"] == mi

    few = run_scoring(mnist1d, ScoringSpec(**SPEC, models=4, shard_size=4), device="cpu")
    assert few.summary["membership_inference"] == {"models": 4, "skipped": "needs at least 8 models"}
    assert np.isnan(few.scores["privacy_risk"]).all()


@pytest.fixture(scope="module")
def digits(torch_one_thread):
    return load_dataset("digits")


def test_flipped_labels_move_most_under_holdout_retraining_with_low_confidence_and_agreement(digits):
    """The prototypicality metrics (engine/prototypes.py) on planted label noise, with the
    balanced plan: digits, 16 MLPs for 20 epochs, 10% of the labels flipped. The models that
    train on a flipped example raise its label's probability while those that hold it out do
    not (measured: holdout retraining 0.12 vs 0.04), and every model is less sure of it
    (confidence 0.77 vs 0.83, agreement 0.94 vs 0.96)."""
    fields = dict(dataset="digits", model="mlp", epochs=20, seed=1, models=16, label_noise=0.1, plan="balanced")
    spec = ScoringSpec.from_dict(fields)
    assert spec.ratio == 0.5  # the balanced plan's own ratio when none is given
    result = run_scoring(digits, spec, device="cpu")
    s, flipped = result.scores, result.scores["label_flipped"]
    assert (s["n_in"] == 8).all() and (s["n_out"] == 8).all()  # every example in exactly half
    assert np.isfinite(s["memorization"]).all()
    for name in ("holdout_retraining", "ensemble_agreement", "model_confidence"):
        assert np.isfinite(s[name]).all() and (s[name + "_stderr"] > 0).all(), name
    assert s["holdout_retraining"][flipped].mean() > s["holdout_retraining"][~flipped].mean() + 0.04
    assert s["model_confidence"][flipped].mean() < s["model_confidence"][~flipped].mean() - 0.03
    assert s["ensemble_agreement"][flipped].mean() < s["ensemble_agreement"][~flipped].mean() - 0.005


def test_the_balanced_plan_needs_ratio_one_half_and_whole_pairs_of_models():
    def problems(**kw):
        return dict(ScoringSpec.from_dict({"dataset": "digits", "plan": "balanced", **kw}).validate())

    assert problems(models=16) == {}
    assert "ratio" in problems(models=16, ratio=0.7)
    assert "models" in problems(models=15)
    assert "shard_size" in problems(models=6, shard_size=3, until_reliability=0.9, max_models=12)
    assert "plan" in dict(ScoringSpec(dataset="digits", plan="stratified").validate())


def test_random_labels_are_fitted_in_sample_and_memorized_at_one_minus_one_over_c(digits):
    """Zhang et al. 2017's sanity run, `label_noise=1.0`: every label drawn at random, so the
    models can only memorize. 400 digits, 8 MLPs for 100 epochs: in-sample accuracy ≈ 1,
    held-out ≈ 1/C, memorization of the changed labels ≈ 1 − 1/C (measured 0.99, 0.10, 0.89)."""
    from dataclasses import replace

    small = replace(digits, x_train=digits.x_train[:400], y_train=digits.y_train[:400])
    fields = dict(dataset="digits", model="mlp", epochs=100, seed=2, models=8, plan="balanced", label_noise=1.0)
    spec = ScoringSpec.from_dict(fields)
    result = run_scoring(small, spec, device="cpu")
    s, C = result.scores, digits.num_classes
    changed = s["label_flipped"]
    assert 0.8 < changed.mean() < 0.97  # about 1/C keep their class by chance
    assert np.mean(s["in_sample_accuracy"]) > 0.95
    assert abs(np.mean(s["heldout_accuracy"][changed]) - 1 / C) < 0.06
    assert abs(np.mean(s["memorization"][changed]) - (1 - 1 / C)) < 0.08
    assert abs(result.summary["mean_test_accuracy"] - 1 / C) < 0.06  # random labels teach nothing


def test_opted_in_metrics_find_the_flipped_labels_a_model_memorized_late_and_narrowly(digits):
    """metrics=["adversarial", "dynamics"]: 400 digits, 20% of the labels flipped, 8 MLPs of 100
    epochs that fit them all. A model that trained on a flipped example carves a small region
    around it, so the nearest input it labels differently is close (measured L2 0.13 vs 0.26 for
    clean examples; models that held it out: 0.17 vs 0.19), it learns it late (learning speed
    0.69 vs 0.94, first learned at epoch 29 vs 6) and leaves it critical (0.70 vs 0.13): Arpit et
    al.'s patterns first, noise later."""
    from dataclasses import replace

    small = replace(digits, x_train=digits.x_train[:400], y_train=digits.y_train[:400])
    fields = dict(dataset="digits", model="mlp", epochs=100, seed=2, models=8, plan="balanced", label_noise=0.2)
    traces: list = []
    opted = {**fields, "metrics": ["adversarial", "dynamics"]}
    result = run_scoring(small, ScoringSpec.from_dict(opted), "cpu", None, traces)
    s, flipped = result.scores, result.scores["label_flipped"]
    for name in ("adv_distance_l2", "adv_distance_linf"):
        for col in (name, name + "_stderr", name + "_heldout", name + "_heldout_stderr"):
            assert np.isfinite(s[col]).all(), col
        assert s[name][flipped].mean() < 0.7 * s[name][~flipped].mean(), name
    # the column is the mean over the models that trained on each example of their distances
    masks = np.concatenate([t.masks for t in traces])
    d = np.concatenate([t.adv_l2 for t in traces])
    np.testing.assert_allclose(s["adv_distance_l2"], (d * masks).sum(0) / masks.sum(0), rtol=1e-5)
    adv = result.summary["adversarial"]
    assert set(adv["eps_max"]) == {"l2", "linf"} and 0 <= adv["censored_fraction"]["l2"] < 0.05
    assert 0 < result.summary["timings"]["adversarial_seconds"] < result.summary["timings"]["train_seconds"]
    # dynamics
    for col in ("learning_speed", "learning_speed_stderr", "first_learned_epoch", "first_learned_epoch_stderr"):
        assert np.isfinite(s[col]).all(), col
    assert s["learning_speed"][flipped].mean() < s["learning_speed"][~flipped].mean() - 0.15
    assert s["first_learned_epoch"][flipped].mean() > s["first_learned_epoch"][~flipped].mean() + 10
    assert s["critical"].dtype == bool and s["critical"][flipped].mean() > s["critical"][~flipped].mean() + 0.3
    # `critical` thresholds critical_fraction at 1/2; the fraction carries its binomial stderr
    np.testing.assert_array_equal(s["critical"], s["critical_fraction"] >= 0.5)
    assert (s["critical_fraction_stderr"] > 0).all() and (s["critical_fraction_stderr"] < 0.3).all()
    csr = result.summary["critical_sample_ratio"]
    assert len(csr["epochs"]) == len(csr["clean"]) == len(csr["noisy"]) == 20 and csr["epochs"][-1] == 100
    assert len(csr["noisy_stderr"]) == 20 and all(0 < v < 0.2 for v in csr["noisy_stderr"] + csr["clean_stderr"])
    lo_noisy = np.array(csr["noisy"]) - 1.96 * np.array(csr["noisy_stderr"])
    hi_clean = np.array(csr["clean"]) + 1.96 * np.array(csr["clean_stderr"])
    assert (lo_noisy[-5:] > hi_clean[-5:]).all()  # the separation is beyond the examples' sampling noise
    assert csr["noisy"][-1] > csr["clean"][-1] + 0.3  # noise is fitted by carving critical regions
    assert max(csr["clean"][5:]) < min(csr["noisy"][5:])  # from epoch ~27 on, every snapshot shows it
    from memscore.report import render_report

    page = render_report(result.scores, {}, result.summary, None)
    assert 'alt="critical sample ratio per epoch"' in page.split('<section id="dynamics">', 1)[1]
    # without opting in: none of it is computed, the columns are "no estimate"
    plain = run_scoring(small, ScoringSpec.from_dict(fields), device="cpu")
    assert "adversarial" not in plain.summary and np.isnan(plain.scores["adv_distance_l2"]).all()
    assert "critical_sample_ratio" not in plain.summary and not plain.scores["critical"].any()
    assert np.isnan(plain.scores["learning_speed"]).all()
    np.testing.assert_array_equal(plain.scores["memorization"], s["memorization"])  # the models are the same


def test_unknown_metric_groups_are_refused():
    problems = dict(ScoringSpec(dataset="digits", metrics=["dynamics", "telepathy"]).validate())
    assert "telepathy" in problems["metrics"] and "adversarial, dynamics" in problems["metrics"]
    assert "metrics" in dict(ScoringSpec(dataset="digits", metrics=["adversarial", "adversarial"]).validate())
    assert ScoringSpec(dataset="digits", metrics=["adversarial"]).validate() == []


def test_the_anytime_figures_of_the_critical_sample_ratio_are_its_last_snapshot():
    from memscore.engine.dynamics import anytime_fields

    csr = {"epochs": [1, 2, 3], "all": [0.5, 0.4, 0.3], "all_stderr": [0.05, 0.04, 0.03], "radius": 0.1}
    assert anytime_fields(csr) == {
        "critical_sample_ratio": 0.3,
        "critical_sample_ratio_stderr": 0.03,
        "critical_sample_ratio_epoch": 3,
    }
    assert anytime_fields(None) == {} and "critical_sample_ratio_stderr" not in anytime_fields(
        {**csr, "all_stderr": [None] * 3}
    )
