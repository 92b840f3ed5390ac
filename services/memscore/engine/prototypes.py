"""Three of the prototypicality metrics of Carlini, Erlingsson & Papernot 2019 ("Distribution
Density, Tails, and Outliers in Machine Learning: Metrics and Applications", arXiv 1910.13427),
from the predicted distributions the job's subset models already compute, and a fourth,
adversarial robustness, from the distances jobs that opt in measure (engine/adversarial.py).

With p_k(i) the softmax of model k on training example i, K models of which K_in trained on i:

- **model_confidence** = mean_k max_c p_k(i)_c over all K models (the paper's "conf").
- **holdout_retraining** = KL(p̄_in ‖ p̄_out) + KL(p̄_out ‖ p̄_in), the symmetric KL between the
  mean distribution of the models that trained on i and of those that held it out. The paper
  fine-tunes one model on a held-out split and compares; the subset models give both sides
  directly (the same in/out contrast Feldman & Zhang's estimator uses).
- **ensemble_agreement** = exp(−JS(i)) in (0, 1], where JS(i) = H(p̄) − mean_k H(p_k) is the
  generalised Jensen–Shannon divergence among all K models' distributions (nats). 1 means every
  model predicts the same distribution; lower means the models disagree. JS = −ln(agreement).

- **adv_distance_l2 / adv_distance_linf** = the mean, over the models that trained on i (as the
  paper's models all did), of the distance to the nearest input the model labels differently;
  `_heldout` the same over the models that held i out. Small = the boundary runs close by.
  A plain mean of independent models, with its standard error; a pair whose search found no
  flip within eps_max counts as eps_max (a lower bound; summary.json says how many).

The models never see each other's predictions, so each metric is a plug-in function of sums
that shards add up: per *jackknife group* (model id mod J), the sums of p over members that
trained on / held out each example, of H(p_k) and of max p_k (the trainer writes them into the
trace, `Trace.group_*`). The plug-in KL and JS are biased upward by sampling noise at finite K
(an example without any true effect gets KL > 0 from noise alone), so each estimate is the
delete-a-group jackknife's bias-corrected value, with the jackknife standard error
(Efron & Tibshirani 1993, ch. 11):

    T_J = J·T − (J − 1)·mean_j T_(−j),     se² = (J − 1)/J · Σ_j (T_(−j) − mean T_(−·))²,

over the J groups that hold models. Bias correction can take an estimate slightly below its
natural range (a KL below 0, an agreement above 1) where the true value is at the boundary: the
standard error says how far that is from noise. tests/engine/test_prototypes.py checks the
correction and the standard errors on planted distributions.
"""

from __future__ import annotations

import numpy as np

from .moments import mean, var_of_mean
from .traces import ADV_FIELDS

JACKKNIFE_GROUPS = 8  # J: model k belongs to group k mod J, whichever shard trained it
_P_FLOOR = 1e-7  # probabilities floored inside the KL's logs (float32 softmax can underflow to 0)


def group_of(model_ids) -> np.ndarray:
    return np.asarray(model_ids, np.int64) % JACKKNIFE_GROUPS


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, 0·log 0 = 0 (as the trainer's torch.special.entr)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def _sym_kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.maximum(a, _P_FLOOR), np.maximum(b, _P_FLOOR)
    a, b = a / a.sum(-1, keepdims=True), b / b.sum(-1, keepdims=True)
    return ((a - b) * (np.log(a) - np.log(b))).sum(-1)


class PrototypeSums:
    """Per-group sums over merged traces; `scores()` gives the three metrics with standard errors.
    Memory: 2·J·n·C + 4·J·n float64."""

    def __init__(self, n: int):
        self.n = n
        self.prob_in: np.ndarray | None = None  # (J, n, C) Σ p over members that trained on i
        self.prob_out: np.ndarray | None = None  # (J, n, C) Σ p over members that held i out
        self.entropy = np.zeros((JACKKNIFE_GROUPS, n))  # Σ H(p_k(i))
        self.maxprob = np.zeros((JACKKNIFE_GROUPS, n))  # Σ max_c p_k(i)_c
        self.n_in = np.zeros((JACKKNIFE_GROUPS, n))
        self.n_out = np.zeros((JACKKNIFE_GROUPS, n))
        # adversarial distances: per field, Σd and Σd² over members in / out; censored pairs
        self.adv: dict[str, np.ndarray] = {}  # field -> (4, n): Σd in, Σd² in, Σd out, Σd² out
        self.adv_counts = np.zeros((2, n))  # members in / out with distances
        self.adv_censored: dict[str, list[int]] = {}  # field -> [censored pairs, pairs]
        self.adv_eps_max: dict[str, float] = {}

    def add(self, trace) -> None:
        """One trace's group sums (`Trace.group_*`; a trace without them adds nothing) and its
        adversarial distances, if it has them."""
        self._add_adversarial(trace)
        if trace.group_prob_in is None:
            return
        if self.prob_in is None:
            shape = (JACKKNIFE_GROUPS, self.n, trace.group_prob_in.shape[-1])
            self.prob_in, self.prob_out = np.zeros(shape), np.zeros(shape)
        self.prob_in += trace.group_prob_in
        self.prob_out += trace.group_prob_out
        self.entropy += trace.group_entropy
        self.maxprob += trace.group_maxprob
        groups = group_of(trace.model_ids)
        for j in np.unique(groups):
            rows = trace.masks[groups == j]
            self.n_in[j] += rows.sum(0)
            self.n_out[j] += (~rows).sum(0)

    def _add_adversarial(self, trace) -> None:
        if trace.adv_l2 is None:
            return
        inside = trace.masks.astype(np.float64)
        self.adv_counts += [inside.sum(0), (1 - inside).sum(0)]
        for field in ADV_FIELDS:
            d = getattr(trace, field).astype(np.float64)
            sums = self.adv.setdefault(field, np.zeros((4, self.n)))
            sums += [
                (inside * d).sum(0),
                (inside * d * d).sum(0),
                ((1 - inside) * d).sum(0),
                ((1 - inside) * d * d).sum(0),
            ]
            eps = float(trace.meta.get("adv_eps_max", {}).get(field[4:], np.inf))
            self.adv_eps_max[field] = eps
            counts = self.adv_censored.setdefault(field, [0, 0])
            counts[0] += int((d >= eps * (1 - 1e-6)).sum())
            counts[1] += d.size

    def adversarial_summary(self) -> dict | None:
        """summary.json's `adversarial`: the search range and the share of (model, example) pairs
        whose search found no flip within it; None for jobs without the adversarial metrics."""
        if not self.adv:
            return None
        return {
            "eps_max": {f[4:]: self.adv_eps_max[f] for f in self.adv},
            "censored_fraction": {f[4:]: c[0] / max(c[1], 1) for f, c in self.adv_censored.items()},
        }

    def scores(self) -> dict[str, np.ndarray]:
        """The three metrics and their standard errors, float64 (n,); NaN where an estimate
        needs models the job does not have (no trace with sums; fewer than two groups; for
        holdout_retraining, no model in or none out)."""
        return {**self._distribution_scores(), **self._adversarial_scores()}

    def _adversarial_scores(self) -> dict[str, np.ndarray]:
        out = {}
        for field in ADV_FIELDS:
            name = "adv_distance_" + field[4:]
            sums = self.adv.get(field, np.full((4, self.n), np.nan))
            for side, suffix in ((0, ""), (1, "_heldout")):
                n = self.adv_counts[side] if field in self.adv else np.zeros(self.n)
                s, ss = sums[2 * side], sums[2 * side + 1]
                out[name + suffix] = mean(s, n)
                out[name + suffix + "_stderr"] = np.sqrt(var_of_mean(s, ss, n))
        return out

    def _distribution_scores(self) -> dict[str, np.ndarray]:
        names = ("model_confidence", "holdout_retraining", "ensemble_agreement")
        if self.prob_in is None:
            nan = np.full(self.n, np.nan)
            return {k: v for name in names for k, v in ((name, nan), (name + "_stderr", nan))}
        full = self._stats(slice(None))
        held = [j for j in range(JACKKNIFE_GROUPS) if (self.n_in[j] + self.n_out[j]).any()]
        loo = [self._stats([g for g in held if g != j]) for j in held]
        out = {}
        for name, js in zip(names, (0, 1, 2)):
            est, se = _jackknife(full[js], [s[js] for s in loo])
            if name == "ensemble_agreement":  # computed on JS, reported as exp(−JS)
                est, se = np.exp(-est), se * np.exp(-est)
            out[name], out[name + "_stderr"] = est, se
        return out

    def _stats(self, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(confidence, symmetric KL, JS) from the sums over `groups`."""
        n_in, n_out = self.n_in[groups].sum(0), self.n_out[groups].sum(0)
        s_in, s_out = self.prob_in[groups].sum(0), self.prob_out[groups].sum(0)
        total = n_in + n_out
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = np.where(total > 0, self.maxprob[groups].sum(0) / total, np.nan)
            mean_in = s_in / n_in[:, None]
            mean_out = s_out / n_out[:, None]
            kl = np.where((n_in > 0) & (n_out > 0), _sym_kl(mean_in, mean_out), np.nan)
            p_bar = (s_in + s_out) / total[:, None]
            js = np.where(total > 0, _entropy(p_bar) - self.entropy[groups].sum(0) / total, np.nan)
        return conf, kl, js


def _jackknife(full: np.ndarray, leave_one_out: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected estimate and standard error from the full-sample and delete-a-group values;
    NaN below two groups or where any delete-a-group value is undefined."""
    J = len(leave_one_out)
    if J < 2:
        nan = np.full_like(full, np.nan)
        return nan, nan
    loo = np.stack(leave_one_out)
    mean = loo.mean(0)
    est = J * full - (J - 1) * mean
    se = np.sqrt((J - 1) / J * ((loo - mean) ** 2).sum(0))
    return est, se
