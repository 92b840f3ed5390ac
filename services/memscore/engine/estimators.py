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
with K. Influence (FZ eq. 2 above) is computed in `influence.py`.
"""

from __future__ import annotations

import numpy as np

from .dynamics import DynamicsSums
from .intervals import corrected_fractions, mean_difference_interval, newcombe_interval
from .moments import binary_var_of_mean, mean, var_of_mean
from .prototypes import PrototypeSums
from .traces import Trace


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
        self.margin_in = np.zeros(n, np.float64)  # Σ φ and Σ φ² of the true-class margin
        self.margin_out = np.zeros(n, np.float64)
        self.margin2_in = np.zeros(n, np.float64)
        self.margin2_out = np.zeros(n, np.float64)
        self.heldout_sum: np.ndarray | None = None  # (n, C) Σ of held-out predicted distributions
        self.heldout_models = np.zeros(n, np.int64)  # held-out members behind heldout_sum
        self.test_correct = np.zeros(m, np.int64)
        self.prototypes = PrototypeSums(n)  # model_confidence, holdout_retraining, ensemble_agreement
        self.dynamics = DynamicsSums(n)  # learning_speed, first_learned_epoch, critical

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
        phi = trace.train_margin.astype(np.float64)
        self.margin_in += np.where(M, phi, 0).sum(0)
        self.margin_out += np.where(out, phi, 0).sum(0)
        self.margin2_in += np.where(M, phi * phi, 0).sum(0)
        self.margin2_out += np.where(out, phi * phi, 0).sum(0)
        if trace.heldout_prob_sum is not None:  # format-1 traces have none
            if self.heldout_sum is None:
                self.heldout_sum = np.zeros((self.n, trace.heldout_prob_sum.shape[1]), np.float64)
            self.heldout_sum += trace.heldout_prob_sum
            self.heldout_models += out.sum(0)
        self.test_correct += trace.test_correct.sum(0)
        self.prototypes.add(trace)
        self.dynamics.add(trace)

    def heldout_probs(self) -> np.ndarray | None:
        """Per training example, the mean predicted distribution of the models that held it out
        (n × C float32, rows of NaN where none did): cleanlab's out-of-sample `pred_probs`.
        None when no trace carried held-out distributions (format 1)."""
        if self.heldout_sum is None:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.heldout_sum / self.heldout_models[:, None]
        mean[self.heldout_models == 0] = np.nan
        return mean.astype(np.float32)

    def scores(self, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per training example: memorization (0/1, soft and log-odds) with standard errors,
        in-sample and held-out accuracy, the counts n_in, n_out behind them, and from the
        held-out distributions the predicted class and (given the training `labels`) the label
        quality; the prototypicality metrics of engine/prototypes.py."""
        acc_in = mean(self.correct_in, self.n_in)
        acc_out = mean(self.correct_out, self.n_out)
        soft_in = mean(self.prob_in, self.n_in)
        soft_out = mean(self.prob_out, self.n_out)
        mem_se = np.sqrt(
            binary_var_of_mean(self.correct_in, self.n_in) + binary_var_of_mean(self.correct_out, self.n_out)
        )
        soft_se = np.sqrt(
            var_of_mean(self.prob_in, self.prob2_in, self.n_in) + var_of_mean(self.prob_out, self.prob2_out, self.n_out)
        )
        return {
            "memorization": acc_in - acc_out,
            "memorization_stderr": mem_se,
            "memorization_soft": soft_in - soft_out,
            "memorization_soft_stderr": soft_se,
            **self.intervals(),
            **self._log_odds_memorization(),
            "in_sample_accuracy": acc_in,
            "heldout_accuracy": acc_out,
            "n_in": self.n_in.copy(),
            "n_out": self.n_out.copy(),
            **label_quality(self.heldout_probs(), labels, self.n),
            **self.prototypes.scores(),
            **self.dynamics.scores(),
        }

    def intervals(self, level: float = 0.95) -> dict[str, np.ndarray]:
        """`level` intervals valid at small counts: Newcombe's hybrid score interval for the 0/1
        score, Welch's with a floor on the variance for the soft one (engine/intervals.py)."""
        lo, hi = newcombe_interval(self.correct_in, self.n_in, self.correct_out, self.n_out, level)
        slo, shi = mean_difference_interval(
            self.prob_in, self.prob2_in, self.n_in, self.prob_out, self.prob2_out, self.n_out, level
        )
        return {
            "memorization_lower": lo,
            "memorization_upper": hi,
            "memorization_soft_lower": slo,
            "memorization_soft_upper": shi,
        }

    def corrected_fractions(self, thresholds, level: float = 0.95, seed: int = 0) -> dict:
        """The population fraction of examples whose true memorization is >= each threshold,
        corrected for the sampling noise of K models, with its interval (intervals.py)."""
        return corrected_fractions(
            self.correct_in, self.n_in, self.correct_out, self.n_out, thresholds, level=level, seed=seed
        )

    def _log_odds_memorization(self) -> dict[str, np.ndarray]:
        """Δφ = mean_in φ − mean_out φ, the in/out difference of the mean true-class margin
        φ = log p_y − log(1 − p_y) (LiRA's logit scaling, where per-example confidences are close
        to Gaussian): the label's geometric-mean odds are e^Δφ times higher in the models that
        trained on the example. Its standard error is that of a difference of two means.
        Of the statistics compared in docs/validation.md §6 it needs the fewest models; mapping
        it back to probabilities, σ(mean_in φ) − σ(mean_out φ), erases exactly the held-out
        side's differences that find mislabeled examples."""
        d = mean(self.margin_in, self.n_in) - mean(self.margin_out, self.n_out)
        var = var_of_mean(self.margin_in, self.margin2_in, self.n_in) + var_of_mean(
            self.margin_out, self.margin2_out, self.n_out
        )
        return {"memorization_log_odds": d, "memorization_log_odds_stderr": np.sqrt(var)}

    def test_scores(self) -> dict[str, np.ndarray]:
        """Per test example: the fraction of models that classify it correctly."""
        return {"test_accuracy": mean(self.test_correct, np.full(self.m, self.num_models))}


def label_quality(heldout_probs: np.ndarray | None, labels: np.ndarray | None, n: int) -> dict[str, np.ndarray]:
    """cleanlab's self-confidence on out-of-sample probabilities (Northcutt et al. 2021): the
    held-out mean probability of the given label (low = likely mislabeled), and the held-out
    predicted class (-1 where no model held the example out). NaN without labels or held-out
    distributions."""
    quality = np.full(n, np.nan)
    pred = np.full(n, -1, np.int64)
    if heldout_probs is not None:
        known = np.isfinite(heldout_probs).all(1)
        pred[known] = heldout_probs[known].argmax(1)
        if labels is not None:
            quality = heldout_probs[np.arange(n), np.asarray(labels, np.int64)].astype(np.float64)
    return {"label_quality": quality, "predicted_label_heldout": pred}
