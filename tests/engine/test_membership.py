"""LiRA (engine/membership.py) on planted ground truth: margins drawn so that a known set of
examples leaks membership by a known amount. The attack must find exactly those, estimate the
AUC an oracle with the true distributions reaches, and say nothing where nothing leaks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memscore.engine.membership import (
    MembershipBank,
    _hanley_mcneil,
    _Roc,
    lira_scores,
    membership_inference,
    planted_bank,
)

_bank = planted_bank


def test_the_leave_one_out_gaussians_are_those_of_the_other_models():
    masks, margins, *_ = _bank(12, 30, 2.0, 0.5, seed=1)
    scores, used = lira_scores(masks, margins, variance="per_example")
    assert used == "per_example"
    k, i = 3, 7
    others = np.arange(12) != k
    phi = margins[:, i].astype(np.float64)
    inn, out = phi[others & masks[:, i]], phi[others & ~masks[:, i]]

    def logpdf(x, sample):
        mu, var = sample.mean(), sample.var(ddof=1)
        return -0.5 * (math.log(2 * math.pi * var) + (x - mu) ** 2 / var)

    assert scores[k, i] == pytest.approx(logpdf(phi[k], inn) - logpdf(phi[k], out), rel=1e-9)


def test_the_roc_under_weights_equals_a_brute_force_count_with_ties():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 6, size=(9, 40)).astype(np.float64)  # many ties
    scores[0, :3] = np.nan
    members = rng.random((9, 40)) < 0.5
    weights = rng.integers(0, 3, size=40)
    auc, tprs = _Roc(scores, members).figures(weights)
    w = np.broadcast_to(weights, scores.shape)
    ok = np.isfinite(scores)
    pos = [(s, wt) for s, m, wt, o in zip(scores.ravel(), members.ravel(), w.ravel(), ok.ravel()) if o and m]
    neg = [(s, wt) for s, m, wt, o in zip(scores.ravel(), members.ravel(), w.ravel(), ok.ravel()) if o and not m]
    u = sum(wp * wn * (1.0 if sp > sn else 0.5 if sp == sn else 0.0) for sp, wp in pos for sn, wn in neg)
    assert auc == pytest.approx(u / (sum(x for _, x in pos) * sum(x for _, x in neg)))
    # at FPR 1% of ~180 negatives no negative may pass: the threshold is the top negative's score
    top = max(s for s, wt in neg if wt > 0)
    expected = sum(wt for s, wt in pos if s > top) / sum(wt for _, wt in pos)
    assert tprs[0.001] == pytest.approx(expected) and tprs[0.01] == pytest.approx(expected)


def test_the_leaky_examples_and_only_they_carry_privacy_risk():
    masks, margins, delta, sigma, _ = _bank(64, 400, 3.0, 0.2)
    mi = membership_inference(masks, margins, bootstrap=100)
    assert mi.variance == "per_example"
    leaky = delta > 0
    # each leaky example's true per-example AUC is Φ(Δ / (σ√2)): 0.93 to 1.0 here
    truth = 0.5 * (1 + np.vectorize(math.erf)(delta / (sigma * math.sqrt(2)) / math.sqrt(2)))
    assert np.abs(mi.privacy_risk[leaky] - truth[leaky]).mean() < 0.05
    assert mi.privacy_risk[leaky].min() > 0.75
    safe = mi.privacy_risk[~leaky]
    assert abs(safe.mean() - 0.5) < 0.02 and np.percentile(np.abs(safe - 0.5), 90) < 0.3
    # the p-values of the examples that leak nothing are (about) uniform; the leaky are all found
    assert (mi.privacy_risk_pvalue[~leaky] < 0.05).mean() < 0.1
    assert (mi.privacy_risk_pvalue[leaky] < 1e-3).all()
    assert np.all(mi.privacy_risk_stderr[np.isfinite(mi.privacy_risk)] >= 0)
    found = mi.significant_examples()
    assert 0.9 * leaky.sum() <= found <= leaky.sum() / 0.95 + 3  # BH at 5%: few false discoveries


def _oracle_auc(masks, margins, delta, sigma, mu):
    """The AUC of the likelihood ratio with the true Gaussians: the best any attack can do."""
    phi = margins.astype(np.float64)
    score = (-((phi - mu - delta) ** 2) + (phi - mu) ** 2) / (2 * sigma**2)
    return _Roc(score, masks).figures(np.ones(masks.shape[1]))[0]


def test_the_auc_matches_the_oracles_within_its_interval_and_the_null_gives_chance():
    masks, margins, delta, sigma, mu = _bank(64, 400, 3.0, 0.2)
    mi = membership_inference(masks, margins, bootstrap=100)
    oracle = _oracle_auc(masks, margins, delta, sigma, mu)
    lo, hi = mi.auc_interval
    assert 0.55 < oracle < 0.75 and lo - 0.02 <= oracle <= hi + 0.02 and lo <= mi.auc <= hi
    assert mi.tpr_at_fpr[0.001] > 0.05  # the leaky fifth is told apart at a low false-positive rate

    null_masks, null_margins, *_ = _bank(16, 500, 0.0, 0.0, seed=3)
    null = membership_inference(null_masks, null_margins, bootstrap=100)
    assert null.variance == "global"  # 16 models: a global variance, as the paper does
    # Leaving the target out biases a small bank below 0.5 when nothing leaks; the chance level
    # measured by shuffling membership says so, and the AUC is not above it.
    assert null.auc < 0.5 and null.chance_auc_interval[0] <= null.auc <= null.chance_auc_interval[1]
    assert abs(np.nanmean(null.privacy_risk) - 0.5) < 0.01 and null.significant_examples() <= 2
    assert null.tpr_at_fpr[0.01] < 0.03
    s = null.summary()
    assert s["models"] == 16 and s["variance"] == "global" and not s["significant"]
    assert set(s) >= {"auc", "tpr_at_fpr_0_001", "tpr_at_fpr_0_01", "models"}
    assert mi.summary()["significant"]


def test_examples_without_shadows_on_a_side_get_no_score():
    masks = np.zeros((6, 3), bool)
    masks[:, 0] = [True, True, True, False, False, False]
    masks[:, 1] = [True, True, True, True, True, False]  # one out-model: no out-Gaussian
    masks[:, 2] = True
    scores, _ = lira_scores(masks, np.random.default_rng(4).normal(size=(6, 3)))
    assert np.isfinite(scores[:, 0]).all() and np.isnan(scores[:, 1:]).all()
    mi = membership_inference(masks, np.random.default_rng(4).normal(size=(6, 3)), bootstrap=10)
    assert np.isnan(mi.privacy_risk[1:]).all() and np.isfinite(mi.privacy_risk[0])


def test_the_attacks_peak_memory_stays_within_what_admission_counts_per_cell():
    """engine/cost.py sizes the reduce with ATTACK_BYTES_PER_CELL per (model, example) margin:
    the attack's peak, measured in a fresh process (its own VmHWM), must stay under it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from memscore.engine.membership import ATTACK_BYTES_PER_CELL

    code = """
import json, sys
sys.path.insert(0, sys.argv[1])
from shard_memory import peak_rss_bytes
from memscore.engine.membership import membership_inference, planted_bank
masks, margins, *_ = planted_bank(64, 8000, 2.0, 0.1, seed=1)
base = peak_rss_bytes()
membership_inference(masks, margins)
print(json.dumps({"cells": masks.size, "grew": peak_rss_bytes() - base}))
"""
    here = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", code, here], capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < r["grew"] <= ATTACK_BYTES_PER_CELL * r["cells"], r


def test_a_perfectly_separated_example_keeps_a_nonzero_standard_error():
    """Hanley & McNeil's formula is 0 at AUC = 1, which 2 members and 2 non-members reach by
    chance one time in six: with the tied pseudo-pair it is not reported as certain."""
    auc = np.array([1.0, 0.0, 0.75, 1.0])
    pos, neg = np.array([2.0, 2.0, 2.0, 32.0]), np.array([2.0, 2.0, 2.0, 32.0])
    se = _hanley_mcneil(auc, pos, neg)
    assert se[0] > 0.1 and se[1] > 0.1  # 4 pairs say little
    assert 0 < se[3] < 0.01  # 1,024 pairs say much
    assert se[2] == pytest.approx(_hanley_mcneil(np.array([0.75]), pos[:1], neg[:1])[0])


def test_the_bank_gives_privacy_risk_with_its_stderr_and_pvalue():
    masks, margins, delta, _, _ = planted_bank(16, 400, 2.0, 0.1, seed=3)
    bank = MembershipBank(400)
    bank.add(np.arange(16), masks, margins)
    _, cols = bank.result()
    assert set(cols) == {"privacy_risk", "privacy_risk_stderr", "privacy_risk_pvalue"}
    p = cols["privacy_risk_pvalue"]
    assert np.median(p[delta > 0]) < 0.05 < np.median(p[delta == 0])
