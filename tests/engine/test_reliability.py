"""Split-half reliability and the self-stopping rule, checked against planted ground truth:
simulated examples with known in/out accuracies and binomial outcomes for K subset models."""

from __future__ import annotations

import numpy as np
import pytest

from memscore.engine.estimators import ScoreAccumulator
from memscore.engine.reliability import SplitHalf, models_for, next_growth, spearman, spearman_brown
from memscore.engine.spec import ScoringSpec
from memscore.engine.traces import Trace

N = 2000  # training examples simulated
M = 3  # test examples (unused by the reliability)


def population(rng: np.random.Generator, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """True P[correct | in] and P[correct | out] per example: a long tail of memorized ones."""
    p_in = 1 - 0.1 * rng.random(n)
    return p_in, p_in * rng.beta(2.0, 0.6, n)


def simulate(p_in, p_out, models: int, rng, shard: int = 16, first_id: int = 0) -> list[Trace]:
    """Traces of `models` subset models (70% subsets) whose outcomes are Bernoulli(p) and
    whose true-class probabilities are Beta around p."""
    n = len(p_in)
    traces = []
    for start in range(0, models, shard):
        ids = np.arange(first_id + start, first_id + min(start + shard, models))
        masks = np.zeros((len(ids), n), bool)
        for g in range(len(ids)):
            masks[g, rng.choice(n, int(round(0.7 * n)), replace=False)] = True
        p = np.where(masks, p_in, p_out)
        correct = rng.random(p.shape) < p
        prob = rng.beta(4 * p + 1e-3, 4 * (1 - p) + 1e-3).astype(np.float32)
        g = len(ids)
        traces.append(
            Trace.from_probs(ids, masks, correct, prob, np.ones((g, M), bool), np.full((g, M), 0.9, np.float32))
        )
    return traces


def reduce(traces: list[Trace]) -> tuple[dict, dict]:
    acc, halves = ScoreAccumulator(N, M), SplitHalf(N, M)
    for t in traces:
        acc.add(t)
        halves.add(t)
    return acc.scores(), halves.report()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    return spearman(a[both], b[both])


def test_spearman_brown_and_models_for_follow_the_prophecy_formula():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(0.8, 0.5) == pytest.approx(0.8 * 0.5 / (1 - 0.5 * 0.8))
    assert spearman_brown(-0.2) == pytest.approx(-0.5) and spearman_brown(-1.0) == spearman_brown(-0.5) == -1.0
    assert models_for(0.5, 10, 0.95) == 190  # 10 * 0.95 * 0.5 / (0.5 * 0.05), exactly
    assert models_for(0.9, 64, 0.95) == 136  # 135.1 rounded up
    assert models_for(spearman_brown(0.9, 136 / 64), 136, 0.95) == 136  # consistent with the projection
    assert models_for(0.0, 64) is None and models_for(-0.2, 64) is None and models_for(None, 64) is None


def test_each_model_goes_to_the_half_of_its_id_parity():
    rng = np.random.default_rng(1)
    halves = SplitHalf(N, M)
    for t in simulate(*population(rng), 10, rng, shard=3):  # shards straddle the parity
        halves.add(t)
    even, odd = halves.halves
    assert even.model_ids == {0, 2, 4, 6, 8} and odd.model_ids == {1, 3, 5, 7, 9}
    report = halves.report()
    assert set(report) >= {"memorization", "memorization_soft"}
    assert report["memorization"]["models"] == 10 and N / 2 < report["memorization"]["examples"] < N


def test_no_reliability_below_two_models_per_half():
    rng = np.random.default_rng(2)
    halves = SplitHalf(N, M)
    for t in simulate(*population(rng), 3, rng):
        halves.add(t)
    r = halves.report()["memorization"]
    assert r["split_half_spearman"] is None and r["spearman_brown"] is None and r["models_for_0_95"] is None


@pytest.mark.parametrize("models", [32, 128])
def test_split_half_projection_predicts_the_agreement_of_two_independent_runs(models):
    """The Spearman–Brown projection at K is the correlation two independent K-model runs
    have with each other: checked on two replicates, each against a fresh second run."""
    rng = np.random.default_rng(models)
    p_in, p_out = population(rng)
    for _ in range(2):
        scores_a, report = reduce(simulate(p_in, p_out, models, rng))
        scores_b, _ = reduce(simulate(p_in, p_out, models, rng))
        for metric in ("memorization", "memorization_soft"):
            predicted = report[metric]["spearman_brown"]
            observed = correlation(scores_a[metric], scores_b[metric])
            assert abs(predicted - observed) < 0.04, (metric, predicted, observed)


def test_models_for_0_95_reaches_about_0_95_between_two_runs_of_that_size():
    rng = np.random.default_rng(7)
    p_in, p_out = population(rng)
    _, report = reduce(simulate(p_in, p_out, 64, rng))
    for metric in ("memorization", "memorization_soft"):
        k = report[metric]["models_for_0_95"]
        assert 64 < k < 1000
        observed = correlation(
            reduce(simulate(p_in, p_out, k, rng))[0][metric], reduce(simulate(p_in, p_out, k, rng))[0][metric]
        )
        assert 0.92 < observed < 0.97, (metric, k, observed)


def _report(rho, metric="memorization"):
    return {metric: {"spearman_brown": rho}}


def test_next_growth_adds_whole_shards_up_to_max_models_and_stops_for_a_reason():
    spec = ScoringSpec(dataset="digits", models=64, shard_size=16, until_reliability=0.95, max_models=512)
    assert next_growth(ScoringSpec(dataset="digits", models=64), _report(0.5)).stopped_because == "fixed"
    done = next_growth(spec, _report(0.96))
    assert (done.add_models, done.stopped_because) == (0, "reliability_reached")
    grow = next_growth(spec, _report(0.9))  # projected 136 models: 72 more, 5 shards of 16 = 80
    assert (grow.add_models, grow.stopped_because) == (80, None)
    assert grow.message == "reliability 0.900 < 0.95 at 64 models: adding 80"
    assert next_growth(spec, _report(0.5)).add_models == 512 - 64  # projected 1216: capped
    unknown = next_growth(spec, _report(None))  # no estimate yet: double
    assert (unknown.add_models, unknown.message) == (64, "no reliability estimate at 64 models: adding 64")
    assert next_growth(spec, _report(0.949999)).add_models == 16  # at least one shard
    assert next_growth(spec, _report(0.9, "memorization_soft")).add_models == 64  # other metric: unknown
    at_cap = next_growth(ScoringSpec(**{**spec.to_dict(), "models": 512}), _report(0.9))
    assert (at_cap.add_models, at_cap.stopped_because) == (0, "max_models")
    soft = ScoringSpec(**{**spec.to_dict(), "reliability_metric": "memorization_soft"})
    assert next_growth(soft, _report(0.97, "memorization_soft")).stopped_because == "reliability_reached"


def test_a_self_stopping_spec_needs_whole_shards():
    bad = ScoringSpec(dataset="digits", models=100, until_reliability=0.9, max_models=200)
    assert [f for f, _ in bad.validate()] == ["models"]
    assert ScoringSpec(dataset="digits", models=128, until_reliability=0.9, max_models=200).validate() == []
    assert (
        ScoringSpec(dataset="digits", models=100, until_reliability=0.9, shard_size=25, max_models=200).validate() == []
    )
