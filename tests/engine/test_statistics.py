"""Which memorization statistic to trust at small K, checked on simulated traces with planted
ground truth: examples whose true-class margin φ = log p_y − log(1 − p_y) is high when trained
on and low when held out (memorized), among typical ones that generalise."""

from __future__ import annotations

import numpy as np

from memscore.engine.estimators import ScoreAccumulator
from memscore.engine.traces import Trace, prob_of_margin

N = 2000  # training examples
M = 2  # test examples (unused)
MEMORIZED = 200  # the first MEMORIZED examples are memorized


def population(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per example, the mean margin of models that trained on it and of those that did not:
    typical examples are right out of sample; hard ones are fitted when trained on and wrong,
    unsurely, when held out; the memorized ones (a mislabeled example's pattern) are fitted when
    trained on and confidently wrong when held out. The 0/1 score cannot tell the last two apart
    by how wrong the held-out models are; the margins can."""
    mu_in = np.full(N, 5.0)
    mu_out = rng.uniform(1.0, 4.0, N)
    mu_in[MEMORIZED : 2 * MEMORIZED], mu_out[MEMORIZED : 2 * MEMORIZED] = 4.0, -1.0  # hard
    mu_in[:MEMORIZED], mu_out[:MEMORIZED] = 4.0, -8.0  # memorized
    return mu_in, mu_out


def simulate(mu_in, mu_out, models: int, rng) -> list[Trace]:
    """One trace of `models` models on 70% subsets; each margin is Normal(mu, 1.5), correct = φ > 0.
    `heldout_prob_sum` is that of a two-class problem whose given label is class 1."""
    masks = np.zeros((models, N), bool)
    for k in range(models):
        masks[k, rng.choice(N, round(0.7 * N), replace=False)] = True
    phi = (np.where(masks, mu_in, mu_out) + 1.5 * rng.standard_normal(masks.shape)).astype(np.float32)
    p = prob_of_margin(phi).astype(np.float64)
    held = np.stack([((1 - p) * ~masks).sum(0), (p * ~masks).sum(0)], axis=1).astype(np.float32)
    ids = np.arange(models)
    return [
        Trace(
            model_ids=ids,
            masks=masks,
            train_correct=phi > 0,
            train_margin=phi,
            test_correct=np.ones((models, M), bool),
            test_margin=np.full((models, M), 3.0, np.float32),
            heldout_prob_sum=held,
        )
    ]


def scores(traces: list[Trace]) -> dict[str, np.ndarray]:
    acc = ScoreAccumulator(N, M)
    for t in traces:
        acc.add(t)
    return acc.scores(np.ones(N, np.int64))


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(random positive outranks random negative), ties half; no estimate ranks last."""
    from scipy.stats import rankdata

    r = rankdata(np.where(np.isfinite(score), score, -np.inf))
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_log_odds_memorization_ranks_planted_memorized_examples_at_least_as_well_as_0_1_at_small_k():
    rng = np.random.default_rng(0)
    mu_in, mu_out = population(rng)
    memorized = np.arange(N) < MEMORIZED
    for models in (8, 16):
        s = scores(simulate(mu_in, mu_out, models, rng))
        ok = np.isfinite(s["memorization"])  # at K = 8, 6% of examples were held out by no model
        assert (np.isfinite(s["memorization_log_odds"]) == ok).all()
        a01 = auroc(s["memorization"][ok], memorized[ok])
        alogit = auroc(s["memorization_log_odds"][ok], memorized[ok])
        assert alogit >= a01, (models, a01, alogit)
        assert alogit > 0.98, (models, alogit)


def test_log_odds_memorization_converges_to_the_true_margin_difference_with_honest_stderr():
    """memorization_log_odds = mean_in φ − mean_out φ estimates μ_in − μ_out; its standard error
    covers the error as a normal one would."""
    rng = np.random.default_rng(1)
    mu_in, mu_out = population(rng)
    s = scores(simulate(mu_in, mu_out, 256, rng))
    err = s["memorization_log_odds"] - (mu_in - mu_out)
    assert np.abs(np.nanmean(err)) < 0.05 and np.sqrt(np.nanmean(err**2)) < 0.3
    se_ok = np.abs(err) <= 1.96 * s["memorization_log_odds_stderr"]
    assert 0.92 < se_ok.mean() < 0.98


def test_label_quality_is_the_heldout_mean_probability_of_the_given_label():
    """bench/validate.py derives label_quality for any subset of models as mean_out p_y."""
    rng = np.random.default_rng(2)
    mu_in, mu_out = population(rng)
    traces = simulate(mu_in, mu_out, 8, rng)
    s = scores(traces)
    acc = ScoreAccumulator(N, M)
    for t in traces:
        acc.add(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        soft_out = np.where(acc.n_out > 0, acc.prob_out / acc.n_out, np.nan)
    np.testing.assert_allclose(s["label_quality"], soft_out, atol=1e-5)
    assert (np.isnan(s["label_quality"]) == (s["n_out"] == 0)).all()
