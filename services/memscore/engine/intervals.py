"""Intervals for per-example memorization, and noise-corrected population fractions.

Per example i the accumulator keeps, over the models that trained on i ("in") and those that
did not ("out"), the counts n_in, n_out, the 0/1 successes s_in, s_out and, for the soft score,
the sums and sums of squares of the true-class probability. From these:

- `newcombe_interval`: an interval for mem = p_in − p_out (0/1 score), Newcombe's (1998) hybrid
  score interval (his method 10) from the two Wilson intervals. Exact coverage at 95%, averaged
  over (p_in, p_out): 0.953 at 11 models in / 5 out, 0.953 at 22 / 10.
- `mean_difference_interval`: Welch's interval for the soft score (a difference of two means of
  values in [0, 1]), with the Bernoulli bound where a side has one model or no spread.
  Simulated coverage at 95% over betas and saturated mixtures: 0.950 at 11 / 5, 0.945 at 22 / 10.
- `corrected_fractions`: the fraction of examples whose *true* memorization is ≥ t, corrected
  for the binomial noise of the per-example estimates by deconvolution (the Kiefer–Wolfowitz
  NPMLE of the distribution of (p_in, p_out) over examples), with an interval. The raw fraction
  (mem_hat ≥ t) counts every typical example that noise pushed over t.
- `count_lower_ge`: how many examples are above t with confidence (lower bound ≥ t).

Measured numbers and the command behind them: docs/validation.md, "Memorization intervals and
noise-corrected fractions". Examples that no model held out (or none included) have no
estimate: NaN, and they are left out of the population figures.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse, stats


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(stats.norm.ppf(0.5 + level / 2))


def wilson_interval(s, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's (1927) score interval for a binomial proportion, vectorised; NaN where n == 0.

    With p̂ = s/n and z the normal quantile, the interval solves |p̂ − p| = z·sqrt(p(1−p)/n):
        (s + z²/2)/(n + z²)  ±  z/(n + z²) · sqrt(s(n − s)/n + z²/4).
    """
    s, n = np.asarray(s, np.float64), np.asarray(n, np.float64)
    z = _z(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (s + z * z / 2) / (n + z * z)
        half = z / (n + z * z) * np.sqrt(np.maximum(s * (n - s), 0.0) / n + z * z / 4)
        ok = n > 0
        lower = np.where(ok, np.clip(centre - half, 0.0, 1.0), np.nan)
        upper = np.where(ok, np.clip(centre + half, 0.0, 1.0), np.nan)
    # At s = 0 (s = n) the bound is exactly 0 (1); keep it so rather than a rounding residue.
    lower = np.where(ok & (s <= 0), 0.0, lower)
    upper = np.where(ok & (s >= n), 1.0, upper)
    return lower, upper


def newcombe_interval(s1, n1, s2, n2, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's (1998) hybrid score interval for p1 − p2 (his method 10), vectorised.

    With (l_k, u_k) the Wilson interval (`wilson_interval`) of p̂_k = s_k/n_k and d = p̂1 − p̂2:
        lower = d − sqrt((p̂1 − l1)² + (u2 − p̂2)²)
        upper = d + sqrt((u1 − p̂1)² + (p̂2 − l2)²)
    Its coverage stays near the nominal level down to a handful of trials per side (Newcombe
    reports a mean of 0.956 at 95%), where the Wald interval has zero width at s ∈ {0, n}.
    Arrays broadcast; NaN where n1 == 0 or n2 == 0; the bounds lie in [−1, 1].
    """
    s1, n1, s2, n2 = (np.asarray(a, np.float64) for a in (s1, n1, s2, n2))
    l1, u1 = wilson_interval(s1, n1, level)
    l2, u2 = wilson_interval(s2, n2, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = s1 / n1, s2 / n2
        d = p1 - p2
        lower = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
        upper = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    ok = (n1 > 0) & (n2 > 0)
    return np.where(ok, np.clip(lower, -1.0, 1.0), np.nan), np.where(ok, np.clip(upper, -1.0, 1.0), np.nan)


def _welch_side(s: np.ndarray, ss: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance of one side's mean and its degrees of freedom for Welch–Satterthwaite.

    The sample variance (Bessel-corrected) where n ≥ 2 and it is positive; otherwise the
    Bernoulli bound m̃(1 − m̃) with the Jeffreys-style mean m̃ = (s + ½)/(n + 1): a value in [0, 1]
    with mean μ has variance at most μ(1 − μ), so one model, or a side where every model gave the
    same (e.g. saturated) probability, still has the width of a finite sample. A bound is not
    estimated, so it brings no degrees of freedom of its own (df = ∞ for that side).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.maximum(n, 1)
        var = (ss - s * s / nn) / np.maximum(n - 1, 1)
        sample = (n >= 2) & (var > 1e-12)  # below 1e-12: float cancellation of identical values
        m = (s + 0.5) / (n + 1.0)
        var = np.where(sample, var, m * (1 - m))
        df = np.where(sample, n - 1.0, np.inf)
        return var / nn, df


def mean_difference_interval(s1, ss1, n1, s2, ss2, n2, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Welch's interval for the difference of two means of values in [0, 1] (the soft score).

    From each side's sum s, sum of squares ss and count n: the means m_k = s_k/n_k, the variances
    of the means v_k = var_k/n_k (see `_welch_side` for sides with < 2 models or zero variance),
    and Welch (1947) with Satterthwaite's (1946) degrees of freedom
        d = m1 − m2 ± t_{ν, (1+level)/2} · sqrt(v1 + v2),    ν = (v1 + v2)² / (v1²/ν1 + v2²/ν2),
    ν_k = n_k − 1 (∞ for a bounded side). Arrays broadcast; NaN where a side has 0 models;
    the bounds are clipped to [−1, 1].
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    s1, ss1, n1, s2, ss2, n2 = (np.asarray(a, np.float64) for a in (s1, ss1, n1, s2, ss2, n2))
    v1, df1 = _welch_side(s1, ss1, n1)
    v2, df2 = _welch_side(s2, ss2, n2)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = s1 / n1 - s2 / n2
        v = v1 + v2
        nu = v * v / (v1 * v1 / df1 + v2 * v2 / df2)
        q = stats.t.ppf(0.5 + level / 2, np.where(np.isfinite(nu), nu, 1e12))
        half = q * np.sqrt(v)
    ok = (n1 > 0) & (n2 > 0)
    return np.where(ok, np.clip(d - half, -1.0, 1.0), np.nan), np.where(ok, np.clip(d + half, -1.0, 1.0), np.nan)


def count_lower_ge(lower, t: float) -> int:
    """How many examples' lower bound is ≥ t (NaN, an example without an estimate, never counts)."""
    lower = np.asarray(lower, np.float64)
    return int(np.count_nonzero(lower >= t))


# --- Noise-corrected population fractions (NPMLE deconvolution) -----------------------------

_TINY = 1e-100  # prior masses and likelihoods below this are 0: keeps EM out of subnormal floats


def _compress(s_in, n_in, s_out, n_out):
    """Distinct observations (s_in, n_in, s_out, n_out) with their multiplicities, as indices into
    the distinct in-side pairs (s_in, n_in) and out-side pairs (s_out, n_out)."""
    top = int(max(n_in.max(), n_out.max())) + 1
    key_in, key_out = n_in * top + s_in, n_out * top + s_out
    pairs, c = np.unique(key_in * (top * top) + key_out, return_counts=True)
    u_in, ii = np.unique(pairs // (top * top), return_inverse=True)
    u_out, jj = np.unique(pairs % (top * top), return_inverse=True)
    return (u_in % top, u_in // top), (u_out % top, u_out // top), ii.ravel(), jj.ravel(), c.astype(np.float64)


def _smooth(w: np.ndarray) -> np.ndarray:
    """(¼, ½, ¼) along axis 0, reflecting at the ends (so mass is kept)."""
    padded = np.concatenate([w[:1], w, w[-1:]])
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]


class _GridMixture:
    """Binomial likelihoods of the distinct observations on a G×G grid of (p_in, p_out).

    L[u, a, b] = Bin(s_in; n_in, g_a) · Bin(s_out; n_out, g_b) factorises, so the mixture density
    f_u = Σ_ab L[u,a,b] w[a,b] = Σ_b (S w)[i_u, b] O[j_u, b] costs O(I·G² + U·G), with S (I×G)
    the likelihoods of the I distinct pairs of the side with fewer of them and O those of the other.
    """

    def __init__(self, s_in, n_in, s_out, n_out, grid_points: int):
        (si, ni), (so, no), ii, jj, self.counts = _compress(s_in, n_in, s_out, n_out)
        self.grid = np.linspace(0.0, 1.0, grid_points)
        lik_in = stats.binom.pmf(si[:, None], ni[:, None], self.grid[None, :])
        lik_out = stats.binom.pmf(so[:, None], no[:, None], self.grid[None, :])
        self.swapped = len(so) < len(si)  # rows of w are the side with fewer distinct pairs
        if self.swapped:
            lik_in, lik_out, ii, jj = lik_out, lik_in, jj, ii
        order = np.lexsort((jj, ii))
        self.ii, jj, self.counts = ii[order], jj[order], self.counts[order]
        lik_in[lik_in < _TINY], lik_out[lik_out < _TINY] = 0.0, 0.0
        self.S, self.O = lik_in, lik_out
        self.O_u = np.ascontiguousarray(lik_out[jj])  # U×G, gathered once
        indptr = np.searchsorted(self.ii, np.arange(len(lik_in) + 1))
        self.R = sparse.csr_matrix((np.ones(len(jj)), jj, indptr), shape=(len(lik_in), len(lik_out)))
        # OpenBLAS runs a product of more than 2¹⁸ multiply-adds on several threads; for these
        # thin products that costs more than it gains, 100× on a busy machine (measured: 8 ms
        # against 0.04 ms for 506×41 by 41×41), so they are taken in blocks of rows below that.
        step = max(1, 200_000 // (grid_points * grid_points))
        self.blocks = [slice(k, k + step) for k in range(0, len(lik_in), step)]

    def em(self, weights: np.ndarray, iterations: int, smooth: bool = False) -> np.ndarray:
        """`iterations` EM steps for the NPMLE (Laird 1978) from the uniform prior:
            w_ab ← w_ab · (1/N) Σ_u c_u L[u,a,b] / f_u,
        the average posterior of the N examples (c_u of them share observation u). With
        `smooth`, each step is followed by the (¼, ½, ¼) smoother along both axes: the EMS
        algorithm of Silverman, Jones, Wilson & Nychka (1990), a smooth rather than atomic estimate.
        Returns w as a G×G array indexed [p_in, p_out]."""
        G, U = len(self.grid), len(self.ii)
        w = np.full((G, G), 1.0 / (G * G))
        P, f, num = np.empty((len(self.S), G)), np.empty(U), np.empty((G, G))
        per_row = np.diff(self.R.indptr)  # observations are sorted by their row-side pair
        N = weights.sum()
        for _ in range(iterations):
            for rows in self.blocks:
                np.matmul(self.S[rows], w, out=P[rows])
            np.einsum("ug,ug->u", np.repeat(P, per_row, axis=0), self.O_u, out=f)
            np.divide(weights, np.maximum(f, 1e-300), out=self.R.data)
            RO = self.R @ self.O
            num[:] = 0.0
            for rows in self.blocks:
                num += self.S[rows].T @ RO[rows]
            w *= num
            w /= N
            if smooth:
                w = _smooth(_smooth(w).T).T
            w[w < _TINY] = 0.0
        return w.T if self.swapped else w

    def mass_ge(self, w: np.ndarray, thresholds) -> np.ndarray:
        """W's mass with p_in − p_out ≥ t, per t.

        A grid atom stands for the true values rounded to it: each of p_in, p_out carries a
        rounding error uniform on ±h/2 (h the grid step), so the atom's difference d stands for
        d + e with e triangular on (−h, h). It counts with P(d + e ≥ t): ½ for an atom exactly on
        the line d = t (counting that line whole overstates the fraction by ½·density(t)·h).
        """
        h = self.grid[1] - self.grid[0]
        d = self.grid[:, None] - self.grid[None, :]
        out = []
        for t in thresholds:
            x = np.clip((t - d) / h, -1.0, 1.0)
            share = np.where(x <= 0, 1.0 - (1.0 + x) ** 2 / 2, (1.0 - x) ** 2 / 2)
            out.append(float((w * share).sum()))
        return np.array(out)


def _counts_with_estimate(s_in, n_in, s_out, n_out):
    """The four count arrays (broadcast, flat, int64), checked, without examples lacking an estimate."""
    arrays = np.broadcast_arrays(*(np.asarray(a, np.int64) for a in (s_in, n_in, s_out, n_out)))
    s_in, n_in, s_out, n_out = (np.ravel(a) for a in arrays)
    if np.any((s_in < 0) | (s_in > n_in)) or np.any((s_out < 0) | (s_out > n_out)):
        raise ValueError("successes must lie in [0, n] on both sides")
    ok = (n_in > 0) & (n_out > 0)
    return s_in[ok], n_in[ok], s_out[ok], n_out[ok]


def corrected_fractions(
    s_in,
    n_in,
    s_out,
    n_out,
    thresholds=(0.25, 0.5),
    level: float = 0.95,
    n_boot: int = 50,
    seed: int = 0,
    grid_points: int = 41,
    em_iterations: int = 100,
) -> dict:
    """Noise-corrected fraction of examples whose true memorization p_in − p_out is ≥ t.

    Model: given its true (p_in, p_out), example i has s_in ~ Bin(n_in, p_in) and
    s_out ~ Bin(n_out, p_out), independent (different models), and (p_in, p_out) ~ W over the
    examples. W is the Kiefer–Wolfowitz (1956) nonparametric maximum likelihood estimate on a
    `grid_points`² grid (`_GridMixture`), stopped after `em_iterations` EM steps from the uniform
    prior (early stopping keeps it from collapsing onto a few atoms). The corrected fraction is
    W's mass with p_in − p_out ≥ t (`_GridMixture.mass_ge`). The raw fraction, mean(mem_hat ≥ t),
    counts every example that binomial noise pushed over t and misses those pushed under: at
    K = 32 it overstates a 19% tail by about 5 points (docs/validation.md).

    Interval. A binomial mixture with n trials identifies only the first n moments of W, so at
    small K the mass beyond a threshold is only partly determined by the data, whatever the
    sample size, and any estimate of it leans on its regularisation. Two opposite ones bracket
    it: the early-stopped NPMLE leans atomic (it clumps a thin tail onto nearby clusters) and EMS
    (`_GridMixture.em(smooth=True)`) over-smooths (it fits worse: log-likelihood 90 below at
    K = 32, n = 4000). In simulation one of them was within ~0.005 of the truth where the other
    was off by up to 0.01, and they erred in opposite directions or the truth lay within z·se of
    them (docs/validation.md). The interval spans both,
    widened by z·se, with se the standard deviation of `n_boot` bootstrap refits of the NPMLE
    (Efron & Tibshirani 1993, ch. 6): each resamples the N examples with replacement
    (multinomial weights on the distinct observations), so se covers the sampling of examples
    and of models together:
        [min(F_npmle, F_ems) − z·se,  max(F_npmle, F_ems) + z·se] ∩ [0, 1].

    Examples with n_in == 0 or n_out == 0 have no estimate and are left out. Returns
        {"method": str, "level", "n_examples", "n_boot", "grid_points", "em_iterations",
         "fractions": {t: {"estimate", "lower", "upper", "raw", "estimate_smooth", "se"}}}
    keyed by the thresholds as floats, all values Python floats (or ints); "estimate" is
    F_npmle. NaN everywhere without examples; NaN bounds and se when n_boot < 2.
    """
    z = _z(level)
    if grid_points < 2 or em_iterations < 1 or n_boot < 0:
        raise ValueError(
            f"need grid_points >= 2, em_iterations >= 1, n_boot >= 0; got {grid_points}, {em_iterations}, {n_boot}"
        )
    s_in, n_in, s_out, n_out = _counts_with_estimate(s_in, n_in, s_out, n_out)
    thresholds = [float(t) for t in thresholds]
    keys = ("estimate", "lower", "upper", "raw", "estimate_smooth", "se")
    result = {
        "method": "binomial deconvolution: grid NPMLE (EM) and EMS, bootstrap over examples",
        "level": float(level),
        "n_examples": int(len(s_in)),
        "n_boot": int(n_boot),
        "grid_points": int(grid_points),
        "em_iterations": int(em_iterations),
        "fractions": {t: dict.fromkeys(keys, float("nan")) for t in thresholds},
    }
    if not len(s_in):
        return result
    raw = s_in / n_in - s_out / n_out
    mix = _GridMixture(s_in, n_in, s_out, n_out, grid_points)
    estimate = mix.mass_ge(mix.em(mix.counts, em_iterations), thresholds)
    smooth = mix.mass_ge(mix.em(mix.counts, em_iterations, smooth=True), thresholds)
    rng, N = np.random.default_rng(seed), int(mix.counts.sum())
    boots = [
        mix.mass_ge(mix.em(rng.multinomial(N, mix.counts / N).astype(np.float64), em_iterations), thresholds)
        for _ in range(n_boot)
    ]
    se = np.std(boots, axis=0, ddof=1) if n_boot >= 2 else np.full(len(thresholds), np.nan)
    lower = np.clip(np.minimum(estimate, smooth) - z * se, 0.0, 1.0)
    upper = np.clip(np.maximum(estimate, smooth) + z * se, 0.0, 1.0)
    for k, t in enumerate(thresholds):
        values = (estimate[k], lower[k], upper[k], np.mean(raw >= t - 1e-12), smooth[k], se[k])
        result["fractions"][t] = {key: float(v) for key, v in zip(keys, values)}
    return result
