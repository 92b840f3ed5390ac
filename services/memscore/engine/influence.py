"""Influence of training examples on test predictions (Feldman & Zhang 2020, eq. 2).

      infl(i, j) = Σ_k M[k,i] c'[k,j] / Σ_k M[k,i]  −  Σ_k (1−M[k,i]) c'[k,j] / Σ_k (1−M[k,i])

i.e. two mask-weighted matrix products Mᵀc' and (1−M)ᵀc' = 1ᵀc' − Mᵀc' (notation in
`estimators`). `InfluenceAccumulator` keeps one bit per (model, example) and computes influence in
blocks of training rows: at most `block_rows × m` floats at a time, never the n × m matrix.

In the same pass every pair gets the p-value of H0: infl(i, j) ≤ threshold (`significance`), and
Benjamini–Hochberg over all n·m pairs decides which pairs are significant at false discovery
rate `fdr`: the pairs are counted per distinct p-value ≤ fdr block by block, which gives BH's
exact cutoff at the end, and the candidates (p ≤ fdr, the loosest cutoff BH can reach) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .moments import binary_var_of_mean
from .significance import PairTest, PValueCounts
from .traces import Trace


@dataclass
class InfluenceResult:
    """Top-k training examples per test example, the global top pairs, and the significant pairs.
    p-values test H0: infl ≤ threshold; a pair is significant when p ≤ `pvalue_cutoff`."""

    topk_train: np.ndarray  # int64 (m, k): row j, the k most influential training examples, best first (-1 = none)
    topk_value: np.ndarray  # float32 (m, k), NaN where none
    topk_stderr: np.ndarray  # float32 (m, k)
    pairs_train: np.ndarray  # int64 (P,), pairs with influence >= threshold, best first
    pairs_test: np.ndarray  # int64 (P,)
    pairs_value: np.ndarray  # float32 (P,)
    pairs_stderr: np.ndarray  # float32 (P,)
    topk_pvalue: np.ndarray = None  # float64 (m, k), NaN where none
    pairs_pvalue: np.ndarray = None  # float64 (P,)
    sig_train: np.ndarray = None  # int64 (S,): significant pairs, smallest p-value first (at most max_pairs)
    sig_test: np.ndarray = None  # int64 (S,)
    sig_value: np.ndarray = None  # float32 (S,)
    sig_stderr: np.ndarray = None  # float32 (S,)
    sig_pvalue: np.ndarray = None  # float64 (S,)
    num_significant: int = 0  # significant pairs among all n·m, even beyond max_pairs
    num_above_threshold: int = 0  # pairs with influence >= threshold among all n·m
    pvalue_cutoff: float = float("nan")  # BH's cutoff; NaN when no pair is significant
    fdr: float = 0.05  # the false discovery rate q of the cutoff
    test: str = ""  # the per-pair test: "exact-unconditional" or "clopper-pearson-box" (significance.py)

    @property
    def topk_significant(self) -> np.ndarray:
        return self.topk_pvalue <= self.pvalue_cutoff

    @property
    def pairs_significant(self) -> np.ndarray:
        return self.pairs_pvalue <= self.pvalue_cutoff


class InfluenceAccumulator:
    """Collects 1 bit per (model, train example) and per (model, test example), then computes
    FZ eq. 2 in blocks of training rows."""

    def __init__(self, n: int, m: int):
        self.n, self.m = n, m
        self._masks: list[np.ndarray] = []  # packed bits, one (G, ⌈n/8⌉) array per trace
        self._test: list[np.ndarray] = []
        self.num_models = 0
        self.n_in = np.zeros(n, np.int64)  # models that trained on each training example

    def add(self, trace: Trace) -> None:
        self.add_models(trace.masks, trace.test_correct)

    def add_models(self, masks: np.ndarray, test_correct: np.ndarray) -> None:
        """G models' membership masks (G, n) and correctness on the test points (G, m)."""
        if masks.shape[0] != test_correct.shape[0] or masks.shape[1] != self.n or test_correct.shape[1] != self.m:
            raise ValueError(
                f"expected masks (G, {self.n}) and correctness (G, {self.m}), got {masks.shape} and "
                f"{test_correct.shape}"
            )
        self._masks.append(np.packbits(masks, axis=1))
        self._test.append(np.packbits(test_correct, axis=1))
        self.num_models += masks.shape[0]
        self.n_in += masks.sum(0)

    def compute(
        self,
        top_k: int = 10,
        threshold: float = 0.15,
        max_pairs: int = 100_000,
        block_rows: int | None = None,
        fdr: float = 0.05,
    ) -> InfluenceResult:
        """In one pass over blocks of training rows: each test example's top-k training examples,
        the pairs with influence >= threshold (the largest max_pairs) and the pairs significant at
        false discovery rate `fdr` (the max_pairs smallest p-values; `num_significant` counts all)."""
        K, n, m = self.num_models, self.n, self.m
        if K == 0:
            raise ValueError("no traces to compute influence from")
        C = np.unpackbits(np.concatenate(self._test), axis=1, count=m).astype(np.float32)  # (K, m)
        packed = np.concatenate(self._masks)  # (K, ⌈n/8⌉)
        total = C.sum(0)  # Σ_k c'[k, j]
        if block_rows is None:  # ~16 MiB per (block × m) float32 matrix, a handful of them at a time
            block_rows = max(8, (4 << 20) // max(m, 1))
        block_rows = max(8, block_rows - block_rows % 8)  # whole bytes of the packed masks
        test, counts = PairTest(K, threshold, self.n_in), PValueCounts(fdr)
        top = _TopK(m, min(top_k, n))
        above, candidates = _Pairs(max_pairs, by_pvalue=False), _Pairs(max_pairs, by_pvalue=True)
        num_above = 0
        for a in range(0, n, block_rows):
            b = min(n, a + block_rows)
            Mb = np.unpackbits(packed[:, a // 8 : (b + 7) // 8], axis=1, count=b - a).astype(np.float32)  # (K, rows)
            n_in = self.n_in[a:b, None]
            n_out = K - n_in
            s_in = Mb.T @ C  # Σ_k M[k,i] c'[k,j], (rows, m)
            s_out = total[None, :] - s_in
            with np.errstate(invalid="ignore", divide="ignore"):
                infl = np.where((n_in > 0) & (n_out > 0), s_in / n_in - s_out / n_out, np.nan).astype(np.float32)
                se = np.sqrt(binary_var_of_mean(s_in, n_in) + binary_var_of_mean(s_out, n_out)).astype(np.float32)
            ranked = np.where(np.isnan(infl), -np.inf, infl)
            pv = test.pvalues(n_in[:, 0], s_in, s_out)
            counts.add(pv)
            top.add(a, ranked, se, pv)
            is_above = ranked >= threshold
            num_above += int(is_above.sum())
            above.add(a, is_above, ranked, se, pv)
            candidates.add(a, pv <= fdr, ranked, se, pv)
        cutoff = counts.cutoff(n * m)
        k_idx, k_val, k_se, k_pv = top.result()
        tr, te, va, se, pv = above.result()
        sig = candidates.result()
        keep = sig[4] <= cutoff
        return InfluenceResult(
            k_idx, k_val, k_se, tr, te, va, se, topk_pvalue=k_pv, pairs_pvalue=pv,
            sig_train=sig[0][keep], sig_test=sig[1][keep], sig_value=sig[2][keep], sig_stderr=sig[3][keep],
            sig_pvalue=sig[4][keep], num_significant=counts.at_most(cutoff), num_above_threshold=num_above,
            pvalue_cutoff=cutoff, fdr=float(fdr), test=test.method,
        )  # fmt: skip


class _TopK:
    """Each test example's k largest influences so far, with their standard errors and p-values."""

    def __init__(self, m: int, k: int):
        self.m, self.k = m, k
        self.val = np.full((m, k), -np.inf, np.float32)
        self.idx = np.full((m, k), -1, np.int64)
        self.se = np.full((m, k), np.nan, np.float32)
        self.pv = np.full((m, k), np.nan)

    def add(self, a: int, ranked: np.ndarray, se: np.ndarray, pv: np.ndarray) -> None:
        """Rows a, a+1, ... of the (rows, m) block."""
        if not self.k:
            return
        rows = ranked.shape[0]
        cand_val = np.concatenate([self.val, ranked.T], axis=1)  # (m, k + rows)
        top = np.argpartition(-cand_val, self.k - 1, axis=1)[:, : self.k]
        self.val = np.take_along_axis(cand_val, top, 1)
        idx = np.concatenate([self.idx, np.broadcast_to(np.arange(a, a + rows), (self.m, rows))], axis=1)
        self.idx = np.take_along_axis(idx, top, 1)
        self.se = np.take_along_axis(np.concatenate([self.se, se.T], axis=1), top, 1)
        self.pv = np.take_along_axis(np.concatenate([self.pv, pv.T], axis=1), top, 1)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train index, influence, stderr, p-value), each (m, k), best first; -1/NaN where none."""
        order = np.argsort(-self.val, axis=1, kind="stable")
        val, idx, se, pv = (np.take_along_axis(v, order, 1) for v in (self.val, self.idx, self.se, self.pv))
        none = ~np.isfinite(val)
        idx[none], val[none], se[none], pv[none] = -1, np.nan, np.nan, np.nan
        return idx, val, se, pv


class _Pairs:
    """At most `limit` (train, test) pairs from the blocks: the largest influences first, or the
    smallest p-values first (ties: larger influence, then train and test index)."""

    def __init__(self, limit: int, by_pvalue: bool):
        self.limit, self.by_pvalue = limit, by_pvalue
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.size = 0

    def add(self, a: int, mask: np.ndarray, ranked: np.ndarray, se: np.ndarray, pv: np.ndarray) -> None:
        if not self.limit:
            return
        ii, jj = np.nonzero(mask)
        if len(ii) > self.limit:
            keep = np.argpartition(pv[ii, jj] if self.by_pvalue else -ranked[ii, jj], self.limit - 1)[: self.limit]
            ii, jj = ii[keep], jj[keep]
        self.parts.append((ii + a, jj, ranked[ii, jj], se[ii, jj], pv[ii, jj]))
        self.size += len(ii)
        if self.size > 2 * self.limit:
            self.parts = [self.result()]
            self.size = len(self.parts[0][0])

    def result(self) -> tuple[np.ndarray, ...]:
        """(train, test, influence, stderr, p-value), best first."""
        empty = (np.int64, np.int64, np.float32, np.float32, np.float64)
        tr, te, va, se, pv = (
            np.concatenate([p[c] for p in self.parts]) if self.parts else np.zeros(0, t) for c, t in enumerate(empty)
        )
        order = np.lexsort((te, tr, -va, pv) if self.by_pvalue else (te, tr, -va))[: self.limit]
        return tr[order].astype(np.int64), te[order].astype(np.int64), va[order], se[order], pv[order]
