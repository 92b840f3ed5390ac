"""Memorization intervals and noise-corrected fractions against published values and simulation
with known true memorization."""

from functools import lru_cache

import numpy as np
import pytest
from scipy import stats

from memscore.engine.intervals import (
    _GridMixture,
    corrected_fractions,
    count_lower_ge,
    mean_difference_interval,
    newcombe_interval,
    wilson_interval,
)


@lru_cache(maxsize=None)
def planted(K: int, seed: int, n: int = 4000):
    """True (p_in, p_out) from a known mixture and the counts K models (70% subsets) would give:
    70% typical examples (p_in ≈ p_out ≈ 0.9), 15% memorized (p_in ≈ 1, p_out in 0.2..0.5),
    15% hard ones (p_out ≈ 0.4, p_in a little above it)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.7, 0.15, 0.15])
    p_in, p_out = np.empty(n), np.empty(n)
    for k, (draw_out, draw_in) in enumerate(
        [
            (lambda m: rng.beta(18, 2, m), lambda po: po + (1 - po) * rng.beta(2, 8, len(po))),
            (lambda m: rng.uniform(0.2, 0.5, m), lambda po: rng.beta(40, 1, len(po))),
            (lambda m: rng.beta(2, 3, m), lambda po: po + (1 - po) * rng.beta(1.5, 4, len(po))),
        ]
    ):
        sel = kind == k
        p_out[sel] = draw_out(sel.sum())
        p_in[sel] = draw_in(p_out[sel])
    n_in = rng.binomial(K, 0.7, n)
    n_out = K - n_in
    return p_in, p_out, rng.binomial(n_in, p_in), n_in, rng.binomial(n_out, p_out), n_out


# --- Wilson and Newcombe -----------------------------------------------------------------------


def test_wilson_matches_known_values():
    lo, hi = wilson_interval([0, 8, 10, 3], [10, 10, 10, 0])
    np.testing.assert_allclose(lo[:3], [0.0, 0.4902, 0.7225], atol=5e-5)
    np.testing.assert_allclose(hi[:3], [0.2775, 0.9433, 1.0], atol=5e-5)
    assert np.isnan(lo[3]) and np.isnan(hi[3])


# Newcombe RG (1998), "Interval estimation for the difference between independent proportions:
# comparison of eleven methods", Statistics in Medicine 17:873-890, Table II, method 10.
NEWCOMBE_TABLE_II = [
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
    (0, 10, 0, 10, -0.2775, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0000),
    (10, 10, 0, 10, 0.6075, 1.0000),
]


def test_newcombe_matches_newcombe_1998_table_ii():
    s1, n1, s2, n2, lo, hi = np.array(NEWCOMBE_TABLE_II).T
    got_lo, got_hi = newcombe_interval(s1, n1, s2, n2)  # vectorised over the eight rows
    np.testing.assert_allclose(got_lo, lo, atol=5e-5)
    np.testing.assert_allclose(got_hi, hi, atol=5e-5)


def test_newcombe_is_nan_without_models_and_never_of_zero_width():
    s_in = np.array([[0], [5], [5]])
    lo, hi = newcombe_interval(s_in, 5, [0, 1, 3], [3, 3, 0])  # broadcasts to 3×3
    assert lo.shape == (3, 3)
    assert np.isnan(lo[:, 2]).all() and np.isnan(hi[:, 2]).all()
    d = s_in / 5 - np.array([0, 1]) / 3
    assert np.all(lo[:, :2] <= d) and np.all(d <= hi[:, :2])
    assert np.all(hi[:, :2] - lo[:, :2] > 0.2)  # all-or-nothing sides still carry their uncertainty
    assert np.all(lo[:, :2] >= -1) and np.all(hi[:, :2] <= 1)


@pytest.mark.parametrize("n1, n2", [(11, 5), (5, 11), (22, 10), (3, 2)])
def test_newcombe_covers_p_in_minus_p_out_at_small_counts(n1, n2):
    """Exact coverage (every outcome weighted by its binomial probability), averaged over a
    20×20 grid of (p1, p2): Newcombe reports a mean of 0.956 for method 10."""
    s1, s2 = np.meshgrid(np.arange(n1 + 1), np.arange(n2 + 1), indexing="ij")
    lo, hi = newcombe_interval(s1, n1, s2, n2)
    ps = np.linspace(0.025, 0.975, 20)
    coverage = [
        (stats.binom.pmf(s1, n1, p1) * stats.binom.pmf(s2, n2, p2))[(lo <= p1 - p2) & (p1 - p2 <= hi)].sum()
        for p1 in ps
        for p2 in ps
    ]
    assert np.mean(coverage) >= 0.945
    assert np.min(coverage) >= 0.85


# --- Welch for the soft score ------------------------------------------------------------------


def test_mean_difference_interval_is_welch_with_satterthwaite_df():
    rng = np.random.default_rng(0)
    for n1, n2 in [(11, 5), (22, 10), (3, 40)]:
        a, b = rng.beta(2, 3, n1), rng.beta(5, 1, n2)
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
        lo, hi = mean_difference_interval(a.sum(), (a * a).sum(), n1, b.sum(), (b * b).sum(), n2, level=0.9)
        assert (float(lo), float(hi)) == pytest.approx((ci.low, ci.high), abs=1e-10)


def test_mean_difference_interval_has_width_from_one_model_or_identical_values():
    # one model in; five models out, all saturated at probability 1; nobody out
    lo, hi = mean_difference_interval(
        [0.9, 4.0, 0.5], [0.81, 4.0, 0.25], [1, 4, 1], [5.0, 3.0, 0.0], [5.0, 3.0, 0.0], [5, 3, 0]
    )
    assert np.isnan(lo[2]) and np.isnan(hi[2])
    assert np.all(hi[:2] - lo[:2] > 0.1)
    # both sides identical (all 1.0): the Bernoulli bound at the Jeffreys-style mean, as for 0/1
    m = (4 + 0.5) / 5, (3 + 0.5) / 4
    se = np.sqrt(m[0] * (1 - m[0]) / 4 + m[1] * (1 - m[1]) / 3)
    assert hi[1] == pytest.approx(stats.norm.ppf(0.975) * se)
    assert lo[1] == pytest.approx(-hi[1])


@pytest.mark.parametrize("n1, n2", [(11, 5), (22, 10)])
def test_mean_difference_interval_covers_beta_distributed_probabilities(n1, n2):
    rng = np.random.default_rng(n1)
    shapes = [(2, 2), (20, 1), (5, 1), (0.5, 0.5), (1, 9)]
    reps, coverage = 4000, []
    for a1, b1 in shapes:
        for a2, b2 in shapes:
            x1, x2 = rng.beta(a1, b1, (reps, n1)), rng.beta(a2, b2, (reps, n2))
            lo, hi = mean_difference_interval(x1.sum(1), (x1 * x1).sum(1), n1, x2.sum(1), (x2 * x2).sum(1), n2)
            true = a1 / (a1 + b1) - a2 / (a2 + b2)
            coverage.append(np.mean((lo <= true) & (true <= hi)))
    assert np.mean(coverage) >= 0.93
    assert np.min(coverage) >= 0.85


# --- the grid NPMLE ----------------------------------------------------------------------------


@pytest.mark.parametrize("K", [6, 9])
def test_grid_em_equals_dense_em(K):
    """The factorised, compressed EM equals EM on the dense likelihood of every example."""
    rng = np.random.default_rng(K)
    n = 300
    n_in = rng.integers(1, K, n)
    n_out = K - n_in
    s_in, s_out = rng.binomial(n_in, 0.8), rng.binomial(n_out, 0.5)
    G = 11
    g = np.linspace(0, 1, G)
    L = (
        stats.binom.pmf(s_in[:, None], n_in[:, None], g)[:, :, None]
        * stats.binom.pmf(s_out[:, None], n_out[:, None], g)[:, None, :]
    )
    w = np.full((G, G), 1 / G**2)
    for _ in range(25):
        post = L * w / (L * w).sum((1, 2), keepdims=True)
        w = post.mean(0)
    mix = _GridMixture(s_in, n_in, s_out, n_out, G)
    np.testing.assert_allclose(mix.em(mix.counts, 25), w, rtol=1e-9, atol=1e-14)


def test_mass_on_the_threshold_line_counts_half():
    mix = _GridMixture(np.array([1]), np.array([2]), np.array([1]), np.array([2]), 41)
    w = np.zeros((41, 41))
    w[30, 20] = 0.5  # p_in − p_out = 0.25 exactly
    w[40, 10] = 0.3  # 0.75
    w[20, 20] = 0.2  # 0
    np.testing.assert_allclose(mix.mass_ge(w, [0.25, 0.5, 0.26]), [0.3 + 0.25, 0.3, 0.3 + 0.5 * 0.6**2 / 2])


# --- noise-corrected fractions on planted data ---------------------------------------------------


def _check_against_truth(K, seed):
    p_in, p_out, s_in, n_in, s_out, n_out = planted(K, seed)
    r = corrected_fractions(s_in, n_in, s_out, n_out, seed=seed)
    rows = []
    for t, f in r["fractions"].items():
        truth = np.mean(p_in - p_out >= t)
        assert f["lower"] <= truth <= f["upper"], (K, seed, t, truth, f)
        rows.append((abs(f["estimate"] - truth), abs(f["raw"] - truth)))
    return np.array(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrected_fraction_covers_truth_and_beats_raw_at_32_models(seed):
    err_corrected, err_raw = _check_against_truth(32, seed).T
    assert np.all(err_corrected < err_raw)  # raw overstates the ≥ 0.25 tail by ~0.045 here
    assert err_raw[0] > 0.03 and err_corrected[0] < 0.02


@pytest.mark.parametrize("seed", [0, 1])
def test_corrected_fraction_covers_truth_at_128_models(seed):
    err_corrected, err_raw = _check_against_truth(128, seed).T
    assert err_corrected.sum() < err_raw.sum()  # raw is already within ~0.01 here


@pytest.mark.parametrize("K", [32, 128])
def test_count_of_lower_bounds_above_threshold_is_conservative(K):
    for seed in range(3):
        p_in, p_out, s_in, n_in, s_out, n_out = planted(K, seed)
        lo, _ = newcombe_interval(s_in, n_in, s_out, n_out)
        assert count_lower_ge(lo, 0.25) <= np.sum(p_in - p_out >= 0.25) + 0.025 * len(lo)


def test_corrected_equals_raw_when_models_are_plentiful():
    p_in, p_out, *_ = planted(32, 5, n=2000)
    rng = np.random.default_rng(5)
    n_in = np.full(len(p_in), 7000)
    s_in, s_out = rng.binomial(n_in, p_in), rng.binomial(3000, p_out)
    r = corrected_fractions(s_in, n_in, s_out, 3000, n_boot=4)
    for t, f in r["fractions"].items():
        assert f["estimate"] == pytest.approx(f["raw"], abs=0.01)
        assert f["raw"] == pytest.approx(np.mean(p_in - p_out >= t), abs=0.01)


def test_examples_without_estimate_are_left_out():
    _, _, s_in, n_in, s_out, n_out = planted(32, 0, n=600)
    s_in, n_in, s_out, n_out = (a.copy() for a in (s_in, n_in, s_out, n_out))
    n_out[:50], s_out[:50] = 0, 0
    n_in[50:60], s_in[50:60] = 0, 0
    r = corrected_fractions(s_in, n_in, s_out, n_out, thresholds=[0.25], n_boot=3)
    r_kept = corrected_fractions(s_in[60:], n_in[60:], s_out[60:], n_out[60:], thresholds=[0.25], n_boot=3)
    assert r["n_examples"] == 540 and r["fractions"] == r_kept["fractions"]
    assert set(r) == {"method", "level", "n_examples", "n_boot", "grid_points", "em_iterations", "fractions"}
    assert set(r["fractions"][0.25]) == {"estimate", "lower", "upper", "raw", "estimate_smooth", "se"}
    empty = corrected_fractions(s_in[:50], n_in[:50], s_out[:50], n_out[:50])
    assert empty["n_examples"] == 0 and all(np.isnan(v) for f in empty["fractions"].values() for v in f.values())
    assert np.isnan(corrected_fractions(s_in, n_in, s_out, n_out, n_boot=1)["fractions"][0.25]["lower"])
    with pytest.raises(ValueError):
        corrected_fractions([3], [2], [0], [1])
