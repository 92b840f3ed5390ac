"""Influence of training examples on test predictions (Feldman & Zhang 2020, eq. 2).

      infl(i, j) = Σ_k M[k,i] c'[k,j] / Σ_k M[k,i]  −  Σ_k (1−M[k,i]) c'[k,j] / Σ_k (1−M[k,i])

i.e. two mask-weighted matrix products Mᵀc' and (1−M)ᵀc' = 1ᵀc' − Mᵀc' (notation in
`estimators`). `InfluenceAccumulator` keeps one bit per (model, example) and computes influence in
blocks of training rows: at most `block_rows × m` floats at a time, never the n × m matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .estimators import _binary_var_of_mean
from .traces import Trace


@dataclass
class InfluenceResult:
    """Top-k training examples per test example, and the global top pairs."""

    topk_train: np.ndarray  # int64 (m, k): row j, the k most influential training examples, best first (-1 = none)
    topk_value: np.ndarray  # float32 (m, k), NaN where none
    topk_stderr: np.ndarray  # float32 (m, k)
    pairs_train: np.ndarray  # int64 (P,), pairs with influence >= threshold, best first
    pairs_test: np.ndarray  # int64 (P,)
    pairs_value: np.ndarray  # float32 (P,)
    pairs_stderr: np.ndarray  # float32 (P,)


class InfluenceAccumulator:
    """Collects 1 bit per (model, train example) and per (model, test example), then computes
    FZ eq. 2 in blocks of training rows."""

    def __init__(self, n: int, m: int):
        self.n, self.m = n, m
        self._masks: list[np.ndarray] = []  # packed bits, one (G, ⌈n/8⌉) array per trace
        self._test: list[np.ndarray] = []
        self.num_models = 0

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

    def compute(
        self, top_k: int = 10, threshold: float = 0.15, max_pairs: int = 100_000, block_rows: int | None = None
    ) -> InfluenceResult:
        K, n, m = self.num_models, self.n, self.m
        if K == 0:
            raise ValueError("no traces to compute influence from")
        C = np.unpackbits(np.concatenate(self._test), axis=1, count=m).astype(np.float32)  # (K, m)
        packed = np.concatenate(self._masks)  # (K, ⌈n/8⌉)
        total = C.sum(0)  # Σ_k c'[k, j]
        if block_rows is None:  # ~64 MiB of float32 per (block × m) matrix
            block_rows = max(8, (16 << 20) // max(m, 1))
        block_rows = max(8, block_rows - block_rows % 8)  # whole bytes of the packed masks
        k = min(top_k, n)
        best_val = np.full((m, k), -np.inf, np.float32)
        best_idx = np.full((m, k), -1, np.int64)
        best_se = np.full((m, k), np.nan, np.float32)
        p_train, p_test, p_val, p_se = [], [], [], []
        for a in range(0, n, block_rows):
            b = min(n, a + block_rows)
            Mb = np.unpackbits(packed[:, a // 8 : (b + 7) // 8], axis=1, count=b - a).astype(np.float32)  # (K, rows)
            n_in = Mb.sum(0)[:, None]
            n_out = K - n_in
            s_in = Mb.T @ C  # Σ_k M[k,i] c'[k,j], (rows, m)
            s_out = total[None, :] - s_in
            with np.errstate(invalid="ignore", divide="ignore"):
                p_in = s_in / n_in
                p_out = s_out / n_out
                infl = np.where((n_in > 0) & (n_out > 0), p_in - p_out, np.nan).astype(np.float32)
                se = np.sqrt(_binary_var_of_mean(s_in, n_in) + _binary_var_of_mean(s_out, n_out)).astype(np.float32)
            ranked = np.where(np.isnan(infl), -np.inf, infl)
            if k:
                cand_val = np.concatenate([best_val, ranked.T], axis=1)  # (m, k + rows)
                cand_idx = np.concatenate([best_idx, np.broadcast_to(np.arange(a, b), (m, b - a))], axis=1)
                cand_se = np.concatenate([best_se, se.T], axis=1)
                top = np.argpartition(-cand_val, k - 1, axis=1)[:, :k]
                best_val = np.take_along_axis(cand_val, top, 1)
                best_idx = np.take_along_axis(cand_idx, top, 1)
                best_se = np.take_along_axis(cand_se, top, 1)
            if max_pairs:
                ii, jj = np.nonzero(ranked >= threshold)
                if len(ii) > max_pairs:
                    keep = np.argpartition(-ranked[ii, jj], max_pairs - 1)[:max_pairs]
                    ii, jj = ii[keep], jj[keep]
                p_train.append(ii + a)
                p_test.append(jj)
                p_val.append(ranked[ii, jj])
                p_se.append(se[ii, jj])
                if sum(len(v) for v in p_val) > 2 * max_pairs:
                    p_train, p_test, p_val, p_se = _top_pairs(p_train, p_test, p_val, p_se, max_pairs)
        order = np.argsort(-best_val, axis=1, kind="stable")
        best_val = np.take_along_axis(best_val, order, 1)
        best_idx = np.take_along_axis(best_idx, order, 1)
        best_se = np.take_along_axis(best_se, order, 1)
        none = ~np.isfinite(best_val)
        best_idx[none], best_val[none], best_se[none] = -1, np.nan, np.nan
        tr, te, va, se = _top_pairs(p_train, p_test, p_val, p_se, max_pairs)
        return InfluenceResult(best_idx, best_val, best_se, tr[0], te[0], va[0], se[0])


def _top_pairs(tr, te, va, se, limit):
    """Concatenate pair lists and keep the `limit` largest, best first (ties by train, test index)."""
    tr = np.concatenate(tr) if tr else np.zeros(0, np.int64)
    te = np.concatenate(te) if te else np.zeros(0, np.int64)
    va = np.concatenate(va) if va else np.zeros(0, np.float32)
    se = np.concatenate(se) if se else np.zeros(0, np.float32)
    order = np.lexsort((te, tr, -va))[:limit]
    return [tr[order].astype(np.int64)], [te[order].astype(np.int64)], [va[order]], [se[order]]
