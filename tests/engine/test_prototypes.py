"""The prototypicality metrics (engine/prototypes.py) on planted predicted distributions: each
model's distribution on an example is drawn from a Dirichlet around a known mean, one mean for
the models that trained on it and one for those that held it out, so the true value of every
metric is known. The jackknife must remove the upward bias that noise gives the plug-in KL and
JS, and its standard errors must cover the truth at about their nominal rate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import digamma

from memscore.engine.prototypes import JACKKNIFE_GROUPS, PrototypeSums, group_of
from memscore.engine.traces import GROUP_FIELDS, Trace

N, C, K, CONC = 3000, 4, 32, 20.0  # examples, classes, models, Dirichlet concentration


def _planted(seed: int = 0):
    """(traces of 4 shards of 8 models, true in-mean (n, C), true out-mean (n, C), flags of the
    examples whose in- and out-means differ, the distributions (K, n, C), the masks (K, n))."""
    rng = np.random.default_rng(seed)
    base = rng.dirichlet(np.ones(C) * 2, N)
    moved = rng.random(N) < 0.5
    other = rng.dirichlet(np.ones(C) * 2, N)
    mean_in = np.where(moved[:, None], 0.5 * base + 0.5 * other, base)
    masks = rng.random((K, N)) < 0.5
    means = np.where(masks[..., None], mean_in[None], base[None])  # (K, n, C)
    p = _dirichlet(rng, means)
    traces = [_trace(np.arange(a, a + 8), masks[a : a + 8], p[a : a + 8]) for a in range(0, K, 8)]
    return traces, mean_in, base, moved, p, masks


def _dirichlet(rng, means: np.ndarray) -> np.ndarray:
    g = rng.gamma(CONC * means)
    return g / g.sum(-1, keepdims=True)


def _trace(ids: np.ndarray, masks: np.ndarray, p: np.ndarray) -> Trace:
    """A trace whose group sums are those the trainer writes (ensemble._group_sums) for
    distributions p (G, n, C)."""
    onehot = np.eye(JACKKNIFE_GROUPS)[group_of(ids)]  # (G, J)
    m = masks.astype(float)
    G, n = masks.shape
    zeros = np.zeros((G, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0).sum(-1)
    return Trace(
        model_ids=ids,
        masks=masks,
        train_correct=zeros.astype(bool),
        train_margin=zeros.astype(np.float32),
        test_correct=np.zeros((G, 1), bool),
        test_margin=np.zeros((G, 1), np.float32),
        group_prob_in=np.einsum("gj,gn,gnc->jnc", onehot, m, p).astype(np.float32),
        group_prob_out=np.einsum("gj,gn,gnc->jnc", onehot, 1 - m, p).astype(np.float32),
        group_entropy=np.einsum("gj,gn->jn", onehot, entropy).astype(np.float32),
        group_maxprob=np.einsum("gj,gn->jn", onehot, p.max(-1)).astype(np.float32),
    )


def _sym_kl(a, b):
    return ((a - b) * (np.log(a) - np.log(b))).sum(-1)


def _dirichlet_entropy(mean):
    """E[H(p)] for p ~ Dirichlet(CONC · mean)."""
    a = CONC * mean
    return digamma(CONC + 1) - (mean * digamma(a + 1)).sum(-1)


@pytest.fixture(scope="module")
def planted():
    traces, mean_in, mean_out, moved, p, masks = _planted()
    sums = PrototypeSums(N)
    for t in traces:
        sums.add(t)
    return sums.scores(), mean_in, mean_out, moved, p, masks


def _coverage(est, se, truth):
    ok = np.isfinite(est) & np.isfinite(se)
    return np.mean(np.abs(est[ok] - truth[ok]) <= 1.96 * se[ok])


def test_holdout_retraining_is_unbiased_where_the_plug_in_kl_is_not(planted):
    s, mean_in, mean_out, moved, p, masks = planted
    truth = _sym_kl(mean_in, mean_out)
    est = s["holdout_retraining"]
    # the plug-in KL of the sample means: positive on every unmoved example though the truth is 0
    n_in, n_out = masks.sum(0), (~masks).sum(0)
    plug = _sym_kl((p * masks[..., None]).sum(0) / n_in[:, None], (p * ~masks[..., None]).sum(0) / n_out[:, None])
    bias_plug = np.mean(plug[~moved])
    bias_jack = np.mean(est[~moved])
    assert bias_plug > 0.015  # noise alone: about (C-1)·(1/n_in + 1/n_out)/(CONC+1) = 0.018
    assert abs(bias_jack) < 0.15 * bias_plug
    assert abs(np.mean(est[moved] - truth[moved])) < 0.15 * bias_plug
    assert 0.90 <= _coverage(est, s["holdout_retraining_stderr"], truth) <= 0.99
    # and it ranks: the moved examples' estimates are far above the unmoved ones'
    assert np.mean(est[moved] > np.quantile(est[~moved], 0.95)) > 0.5


def test_ensemble_agreement_is_exp_minus_the_js_divergence_among_the_models(planted):
    s, mean_in, mean_out, moved, p, masks = planted
    mix = 0.5 * mean_in + 0.5 * mean_out  # half the models train on each example, on average
    expected_h = 0.5 * _dirichlet_entropy(mean_in) + 0.5 * _dirichlet_entropy(mean_out)
    truth_js = -(mix * np.log(mix)).sum(-1) - expected_h
    js = -np.log(s["ensemble_agreement"])
    assert abs(np.mean(js - truth_js)) < 0.002  # the plug-in H(p̄) is short by ~(C−1)/(2K)(1−E H/…)
    se_js = s["ensemble_agreement_stderr"] / s["ensemble_agreement"]
    assert 0.88 <= _coverage(js, se_js, truth_js) <= 0.99
    assert np.mean(s["ensemble_agreement"][moved]) < np.mean(s["ensemble_agreement"][~moved])


def test_model_confidence_is_the_mean_max_probability_with_its_standard_error(planted):
    s, _, _, _, p, _ = planted
    np.testing.assert_allclose(s["model_confidence"], p.max(-1).mean(0), atol=1e-5)
    se = p.max(-1).std(0, ddof=1) / np.sqrt(K)  # the delete-a-group jackknife of a mean ≈ this
    ratio = np.median(s["model_confidence_stderr"] / se)
    assert 0.8 < ratio < 1.2


def test_metrics_do_not_depend_on_how_models_were_sharded(planted):
    s, _, _, _, p, masks = planted
    cuts = [0, 5, 16, 32]  # the same 32 models in shards of 5, 11 and 16, added in reverse
    sums = PrototypeSums(N)
    for a, b in reversed(list(zip(cuts, cuts[1:]))):
        sums.add(_trace(np.arange(a, b), masks[a:b], p[a:b]))
    again = sums.scores()
    for k in s:
        np.testing.assert_allclose(again[k], s[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_group_sums_survive_the_trace_format_and_are_dropped_by_a_partial_select():
    traces, *_ = _planted()
    t = traces[0]
    u = Trace.from_bytes(t.to_bytes())
    for k in GROUP_FIELDS:
        np.testing.assert_array_equal(getattr(u, k), getattr(t, k))
    assert all(getattr(t.select(np.arange(8)), k) is not None for k in GROUP_FIELDS)
    assert all(getattr(t.select([0, 2]), k) is None for k in GROUP_FIELDS)


def test_without_group_sums_or_with_one_group_the_metrics_are_nan():
    traces, *_ = _planted()
    old = traces[0].select([0, 1])  # no sums: a trace written before them
    sums = PrototypeSums(N)
    sums.add(old)
    assert all(np.isnan(v).all() for v in sums.scores().values())
    one = _trace(np.array([0, 8, 16]), np.ones((3, N), bool) & (np.arange(N) % 2 == 0), np.full((3, N, C), 1 / C))
    sums = PrototypeSums(N)
    sums.add(one)  # model ids 0, 8, 16: all in group 0
    assert all(np.isnan(v).all() for v in sums.scores().values())
