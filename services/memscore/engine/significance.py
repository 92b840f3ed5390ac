"""Which influence pairs are real: an exact test per pair, Benjamini–Hochberg over all n·m pairs.

Pair (i, j): of the K models, n_in trained on training example i and s_in of them classify test
example j right; of the n_out = K − n_in others, s_out do. Given the masks the models are
independent, so s_in ~ Bin(n_in, p_in) and s_out ~ Bin(n_out, p_out) independently, and
infl(i, j) = p_in − p_out (FZ eq. 2). Each pair is tested against H0: p_in − p_out ≤ δ, where δ is
the influence threshold (the paper's 0.15).

The test (`exact_pvalue_table`) is exact and unconditional (Chan 1998, Stat. Med. 17:1403;
Röhmel & Mansmann 1999, Biom. J. 41:149). Outcomes are ordered by the Jeffreys-smoothed Wald
statistic

    T = (p̃_in − p̃_out − δ) / sqrt(p̃_in(1 − p̃_in)/n_in + p̃_out(1 − p̃_out)/n_out),   p̃ = (s + ½)/(n + 1)

(the standard error `estimators` reports), replaced by its least majorant that increases in s_in
and decreases in s_out, and p(x) = sup_H0 P(T ≥ T(x)), outcomes tied in T counted as extreme.
Its rejection regions {T ≥ t} are monotone, so the sup over H0 is reached on the boundary
p_in = p_out + δ; it is taken over GRID_POINTS equally spaced p_out in [max(0, −δ), min(1, 1 − δ)]
(both ends included), refined by a parabola through log P at the best grid point and its two
neighbours. The p-value is thus valid, P_H0(p ≤ α) ≤ α, at every count, up to the grid's error:
against 2049 grid points that is under 4·10⁻⁴ of p (relative, for p ≤ 0.05, K ≤ 512; see
docs/validation.md). The p-value depends only on (n_in, s_in, s_out): one table per n_in, cached
per (n_in, n_out, δ), costing O(GRID_POINTS · n_in · n_out) to build.

When a job's tables would hold more than EXACT_TABLE_CELLS p-values (K beyond about 800), its
pairs get the Clopper–Pearson box test instead (`box_pvalues`): also exact at every count, but
conservative (at large counts it needs up to about 1.4× the standard errors of the exact test).

Multiple testing (`PValueCounts`, `benjamini_hochberg`): Benjamini & Hochberg (1995) at level q
over all N = n·m pairs (a pair that no model held out, or none included, gets p = 1). Only
p ≤ q can be rejected, and the p-values take finitely many values, so counting the pairs per
distinct p-value ≤ q block by block gives BH's exact cutoff without ever holding n × m values.
Guarantee: FDR ≤ q·N₀/N ≤ q when the true nulls' p-values are independent or positively
regression dependent (PRDS; Benjamini & Yekutieli 2001). Pairs share models, so that is an
assumption; the tests check it by simulation on null data.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from scipy.stats import binom

GRID_POINTS = 129  # nuisance values p_out on the H0 boundary, ends included
EXACT_TABLE_CELLS = 16_000_000  # p-values a job's exact tables may hold (float64: 128 MB)
_CACHE_CELLS = 16_000_000  # tables kept across jobs
_GRID_CHUNK = 16  # grid points evaluated at once: (cells × 16) float64 in memory


def wald_statistic(n_in: int, n_out: int, delta: float) -> np.ndarray:
    """T(s_in, s_out), shape (n_in + 1, n_out + 1): the Jeffreys-smoothed Wald statistic of
    p_in − p_out − δ, made increasing in s_in and decreasing in s_out (its least such majorant)."""
    a = (np.arange(n_in + 1.0)[:, None] + 0.5) / (n_in + 1.0)
    b = (np.arange(n_out + 1.0)[None, :] + 0.5) / (n_out + 1.0)
    t = (a - b - delta) / np.sqrt(a * (1 - a) / n_in + b * (1 - b) / n_out)
    t = np.maximum.accumulate(t, axis=0)
    t = np.maximum.accumulate(t[:, ::-1], axis=1)[:, ::-1]
    return np.round(t, 9)  # values equal in exact arithmetic compare equal (ties)


def exact_pvalue_table(n_in: int, n_out: int, delta: float) -> np.ndarray:
    """p[s_in, s_out] of the exact unconditional test of H0: p_in − p_out ≤ δ (module docstring)."""
    delta = max(float(delta), -1.0)
    if n_in == 0 or n_out == 0 or delta >= 1.0:
        return np.ones((n_in + 1, n_out + 1))
    t = wald_statistic(n_in, n_out, delta).ravel()
    _, group = np.unique(-t, return_inverse=True)  # group 0: the most extreme outcomes
    order = np.argsort(group, kind="stable")
    last = np.cumsum(np.bincount(group)) - 1  # position in `order` of each group's last outcome
    s_in, s_out = np.divmod(order, n_out + 1)
    grid = np.linspace(max(0.0, -delta), min(1.0, 1.0 - delta), GRID_POINTS)
    peak = _RunningPeak(len(last))
    for g in range(0, GRID_POINTS, _GRID_CHUNK):
        p = grid[g : g + _GRID_CHUNK]
        pmf = binom.pmf(np.arange(n_in + 1)[:, None], n_in, np.clip(p + delta, 0.0, 1.0))[s_in]  # (cells, g)
        pmf *= binom.pmf(np.arange(n_out + 1)[:, None], n_out, p)[s_out]
        np.cumsum(pmf, axis=0, out=pmf)  # P(T ≥ T of the outcome), outcomes in decreasing T
        with np.errstate(divide="ignore"):
            for row in np.log(pmf[last]).T:
                peak.add(row)
    return np.minimum(np.exp(peak.value()), 1.0)[group].reshape(n_in + 1, n_out + 1)


class _RunningPeak:
    """Max over a grid of a function per column, seen one grid point at a time, refined by the
    vertex of the parabola through the best point and its two neighbours (error O(h³), not the
    grid's O(h²), at a smooth peak)."""

    def __init__(self, size: int):
        self.best = np.full(size, -np.inf)
        self.left = np.full(size, -np.inf)  # value one grid point before the best
        self.right = np.full(size, -np.inf)  # value one grid point after it
        self.prev = np.full(size, -np.inf)
        self.best_is_prev = np.zeros(size, bool)

    def add(self, y: np.ndarray) -> None:
        self.right = np.where(self.best_is_prev, y, self.right)
        new = y > self.best
        self.left = np.where(new, self.prev, self.left)
        self.right = np.where(new, -np.inf, self.right)
        self.best = np.where(new, y, self.best)
        self.best_is_prev = new
        self.prev = y

    def value(self) -> np.ndarray:
        y0, ym, yp = self.best, self.left, self.right
        with np.errstate(invalid="ignore", divide="ignore"):
            curv = 2 * y0 - ym - yp
            ok = np.isfinite(ym) & np.isfinite(yp) & (curv > 0)
            return np.where(ok, y0 + (yp - ym) ** 2 / (8 * np.where(ok, curv, 1.0)), y0)


class _TableCache:
    """Exact tables by (n_in, n_out, δ), least recently used dropped beyond `max_cells`."""

    def __init__(self, max_cells: int):
        self.max_cells = max_cells
        self._tables: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, n_in: int, n_out: int, delta: float) -> np.ndarray:
        key = (int(n_in), int(n_out), float(delta))
        with self._lock:
            if key in self._tables:
                self._tables.move_to_end(key)
                return self._tables[key]
        table = exact_pvalue_table(*key)
        table.setflags(write=False)
        with self._lock:
            self._tables[key] = table
            while sum(t.size for t in self._tables.values()) > self.max_cells and len(self._tables) > 1:
                self._tables.popitem(last=False)
        return table


TABLES = _TableCache(_CACHE_CELLS)


def box_pvalues(n_in, s_in, n_out, s_out, delta: float) -> np.ndarray:
    """Clopper–Pearson box test of H0: p_in − p_out ≤ δ, elementwise:
    p = 2 · min_c max(P_c(S_in ≥ s_in), P_{c−δ}(S_out ≤ s_out)). Valid because, under H0, every c
    has p_in ≤ c or p_out ≥ c − δ, so rejecting means one of two exact one-sided binomial tests
    at level α/2 rejected a true hypothesis. c is found by bisection; any c gives an upper bound."""
    n_in, s_in, n_out, s_out = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (n_in, s_in, n_out, s_out)))
    delta = min(max(float(delta), -1.0), 1.0)

    def tails(c):  # P_c(S_in ≥ s_in) increases in c, P_{c−δ}(S_out ≤ s_out) decreases
        return binom.sf(s_in - 1, n_in, c), binom.cdf(s_out, n_out, np.clip(c - delta, 0.0, 1.0))

    lo = np.full(n_in.shape, max(0.0, delta))
    hi = np.full(n_in.shape, min(1.0, 1.0 + delta))
    for _ in range(32):  # c to 2⁻³² ≈ 2·10⁻¹⁰
        mid = (lo + hi) / 2
        up, down = tails(mid)
        right = up < down
        lo, hi = np.where(right, mid, lo), np.where(right, hi, mid)
    at_lo, at_hi = np.maximum(*tails(lo)), np.maximum(*tails(hi))
    return np.minimum(1.0, 2 * np.minimum(at_lo, at_hi))


class PairTest:
    """p-values of H0: infl(i, j) ≤ δ for the pairs of a job with K models, whose training
    examples were included by the models counts in `n_in_values`."""

    def __init__(self, num_models: int, delta: float, n_in_values: np.ndarray):
        K = self.num_models = int(num_models)
        self.delta = float(delta)
        ns = np.unique(np.asarray(n_in_values, np.int64))
        cells = int(((ns + 1) * (K - ns + 1)).sum())
        self.constant = self.delta >= 1.0  # H0 always holds: p = 1
        self.exact = cells <= EXACT_TABLE_CELLS
        self.method = "exact-unconditional" if self.exact else "clopper-pearson-box"
        if self.exact and not self.constant:
            self._offset = np.zeros(K + 1, np.int64)
            parts, pos = [], 0
            for v in ns.tolist():
                table = TABLES.get(v, K - v, self.delta)
                self._offset[v] = pos
                pos += table.size
                parts.append(table.ravel())
            self._flat = np.concatenate(parts)

    def pvalues(self, n_in: np.ndarray, s_in: np.ndarray, s_out: np.ndarray) -> np.ndarray:
        """n_in (rows,); s_in, s_out (rows, m) integer counts -> float64 (rows, m) p-values."""
        K = self.num_models
        n_in = np.asarray(n_in, np.int64)[:, None]
        s_in, s_out = np.rint(s_in).astype(np.int64), np.rint(s_out).astype(np.int64)
        if self.constant:
            return np.ones(s_in.shape)
        if self.exact:
            return self._flat[self._offset[n_in] + s_in * (K - n_in + 1) + s_out]
        key = (n_in * (K + 1) + s_in) * (K + 1) + s_out
        cells, inverse = np.unique(key, return_inverse=True)
        n, rest = np.divmod(cells, (K + 1) ** 2)
        s, t = np.divmod(rest, K + 1)
        return box_pvalues(n, s, K - n, t, self.delta)[inverse].reshape(key.shape)


class PValueCounts:
    """How many pairs seen so far have each distinct p-value ≤ q: all Benjamini–Hochberg needs."""

    def __init__(self, q: float):
        self.q = float(q)
        self.values = np.zeros(0)
        self.counts = np.zeros(0, np.int64)

    def add(self, p: np.ndarray) -> None:
        p = p[p <= self.q]
        if p.size:
            v, c = np.unique(p, return_counts=True)
            self.values, inverse = np.unique(np.concatenate([self.values, v]), return_inverse=True)
            self.counts = np.bincount(inverse, np.concatenate([self.counts, c])).astype(np.int64)

    def cutoff(self, total: int) -> float:
        """BH's cutoff over `total` hypotheses: the largest p with p ≤ q·#{p' ≤ p}/total; NaN if none."""
        ok = np.flatnonzero(self.values <= self.q * np.cumsum(self.counts) / total)
        return float(self.values[ok[-1]]) if len(ok) else float("nan")

    def at_most(self, cutoff: float) -> int:
        """How many pairs have p ≤ cutoff (0 for NaN)."""
        return int(self.counts[self.values <= cutoff].sum())


def benjamini_hochberg(p: np.ndarray, q: float, total: int | None = None) -> float:
    """BH's cutoff read directly off all p-values (`total` hypotheses, default p.size); NaN if none."""
    p = np.sort(np.asarray(p, np.float64).ravel())
    ok = np.flatnonzero(p <= q * np.arange(1, len(p) + 1) / (total or len(p)))
    return float(p[ok[-1]]) if len(ok) else float("nan")
