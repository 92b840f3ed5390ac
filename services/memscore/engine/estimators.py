"""From traces to scores: memorization, held-out consistency and influence estimates.

Notation (Feldman & Zhang 2020, "What Neural Networks Memorize and Why"): K models, model k
trained on subset S_k; M[k, i] = 1 if training example i is in S_k; c[k, i] = 1 if model k
predicts y_i on x_i; c'[k, j] likewise on test example j.

- memorization (FZ eq. 1, estimated as in their §3):
      mem(i) = P[h(x_i)=y_i | i ∈ S_k] − P[h(x_i)=y_i | i ∉ S_k]
             = Σ_k M c / Σ_k M  −  Σ_k (1−M) c / Σ_k (1−M)
  "soft" memorization replaces c by the true-class probability.
- influence (FZ eq. 2):
      infl(i, j) = Σ_k M[k,i] c'[k,j] / Σ_k M[k,i]  −  Σ_k (1−M[k,i]) c'[k,j] / Σ_k (1−M[k,i])
  i.e. two mask-weighted matrix products Mᵀc' and (1−M)ᵀc' = 1ᵀc' − Mᵀc'.
- held-out accuracy (the C-score proxy of Jiang et al. 2021): P[h(x_i)=y_i | i ∉ S_k].

An example that no model held out (or none included) has no estimate: NaN with its count 0,
never a number made up by a small-epsilon denominator. Standard errors are those of a
difference of two independent means, se = sqrt(v_in/n_in + v_out/n_out). For 0/1 outcomes
v = p̃(1−p̃) with p̃ = (s + ½)/(n + 1) (the Jeffreys-prior mean), so a side where all K models
agree still reports the uncertainty of a finite sample instead of a standard error of 0; for
probabilities v is the Bessel-corrected sample variance (NaN below two models on a side).

`ScoreAccumulator` merges traces one at a time and keeps O(n + m) sums, so memory does not grow
with K. `InfluenceAccumulator` keeps one bit per (model, example) and computes influence in
blocks of training rows: at most `block_rows × m` floats at a time, never the n × m matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .traces import Trace


def _mean(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _binary_var_of_mean(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Variance of the mean of n 0/1 outcomes summing to s, with p̃ = (s + ½)/(n + 1)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (s + 0.5) / (n + 1.0)
        return np.where(n > 0, p * (1 - p) / np.maximum(n, 1), np.nan)


def _var_of_mean(s: np.ndarray, ss: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Variance of a sample mean from its sum and sum of squares: s²/n with s² Bessel-corrected."""
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (ss - s * s / np.maximum(n, 1)) / np.maximum(n - 1, 1)
        return np.where(n > 1, np.maximum(var, 0.0) / np.maximum(n, 1), np.nan)


class ScoreAccumulator:
    """Streaming sums over traces for the per-training-example scores."""

    def __init__(self, n: int, m: int):
        self.n, self.m = n, m
        self.model_ids: set[int] = set()
        self.test_accuracy: dict[int, float] = {}
        self.n_in = np.zeros(n, np.int64)
        self.n_out = np.zeros(n, np.int64)
        self.correct_in = np.zeros(n, np.int64)  # 0/1, so Σc² = Σc
        self.correct_out = np.zeros(n, np.int64)
        self.prob_in = np.zeros(n, np.float64)
        self.prob_out = np.zeros(n, np.float64)
        self.prob2_in = np.zeros(n, np.float64)
        self.prob2_out = np.zeros(n, np.float64)
        self.test_correct = np.zeros(m, np.int64)

    @property
    def num_models(self) -> int:
        return len(self.model_ids)

    def add(self, trace: Trace) -> None:
        if trace.masks.shape[1] != self.n or trace.test_correct.shape[1] != self.m:
            raise ValueError(
                f"trace shape (n={trace.masks.shape[1]}, m={trace.test_correct.shape[1]}) does not match "
                f"the job's dataset (n={self.n}, m={self.m})"
            )
        dup = self.model_ids.intersection(int(k) for k in trace.model_ids)
        if dup:
            raise ValueError(f"models {sorted(dup)[:5]} were already merged; a trace must be added once")
        self.model_ids.update(int(k) for k in trace.model_ids)
        for k, acc in zip(trace.model_ids, trace.test_accuracy):
            self.test_accuracy[int(k)] = float(acc)
        M = trace.masks
        out = ~M
        c = trace.train_correct
        p = trace.train_prob.astype(np.float64)
        self.n_in += M.sum(0)
        self.n_out += out.sum(0)
        self.correct_in += (c & M).sum(0)
        self.correct_out += (c & out).sum(0)
        self.prob_in += np.where(M, p, 0).sum(0)
        self.prob_out += np.where(out, p, 0).sum(0)
        self.prob2_in += np.where(M, p * p, 0).sum(0)
        self.prob2_out += np.where(out, p * p, 0).sum(0)
        self.test_correct += trace.test_correct.sum(0)

    def scores(self) -> dict[str, np.ndarray]:
        """Per training example: memorization (0/1 and soft) with standard errors, in-sample
        and held-out accuracy, and the counts n_in, n_out behind them."""
        acc_in = _mean(self.correct_in, self.n_in)
        acc_out = _mean(self.correct_out, self.n_out)
        soft_in = _mean(self.prob_in, self.n_in)
        soft_out = _mean(self.prob_out, self.n_out)
        mem_se = np.sqrt(
            _binary_var_of_mean(self.correct_in, self.n_in) + _binary_var_of_mean(self.correct_out, self.n_out)
        )
        soft_se = np.sqrt(
            _var_of_mean(self.prob_in, self.prob2_in, self.n_in)
            + _var_of_mean(self.prob_out, self.prob2_out, self.n_out)
        )
        return {
            "memorization": acc_in - acc_out,
            "memorization_stderr": mem_se,
            "memorization_soft": soft_in - soft_out,
            "memorization_soft_stderr": soft_se,
            "in_sample_accuracy": acc_in,
            "heldout_accuracy": acc_out,
            "n_in": self.n_in.copy(),
            "n_out": self.n_out.copy(),
        }

    def test_scores(self) -> dict[str, np.ndarray]:
        """Per test example: the fraction of models that classify it correctly."""
        return {"test_accuracy": _mean(self.test_correct, np.full(self.m, self.num_models))}


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
