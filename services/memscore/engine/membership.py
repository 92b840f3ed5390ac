"""Membership inference from a job's own subset models: LiRA, online (Carlini et al. 2022,
"Membership Inference Attacks From First Principles", §4).

Every model k of the job is attacked in turn, with the other K − 1 models as its shadow models.
For target k and training example i, with φ_ki the target's true-class margin (the
logit-scaled confidence log p − log(1 − p) the traces keep), the attack's score is the log
likelihood ratio

    Λ_ki = log N(φ_ki; μ_in,i, σ²_in,i) − log N(φ_ki; μ_out,i, σ²_out,i)

of Gaussians fitted, per example, to the margins of the shadow models that trained on i (in)
and of those that held it out (out), leaving the target out of both. With few shadow models a
per-example variance is noisy, so, as the paper does below 64 shadow models, both Gaussians
then take a global variance: the mean over examples of the per-example variances
(`variance="global"`). Pairs (k, i) whose example has fewer than MIN_SHADOWS shadows on a side
get no score.

From the scores and the truth (model k trained on i or not):
- the ROC over all scored pairs, its AUC (Mann–Whitney, ties half) and the true-positive rate
  at false-positive rates 0.1% and 1% (the paper's headline metric: the TPR at the largest FPR
  not above the target), each with a 95% interval from a bootstrap over training examples
  (pairs of one example share its shadow fit, so examples, not pairs, are resampled);
- per example, `privacy_risk`: the AUC of the attack on that example alone, across target
  models, P(Λ of a model that trained on i > Λ of one that did not), ties half. 0.5 means the
  models give nothing away about whether i was in their training set, 1 that every member is
  told from every non-member. Its standard error is Hanley & McNeil's (1982); a one-sided
  Mann–Whitney p-value (normal approximation) tests it against 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .significance import benjamini_hochberg

MIN_SHADOWS = 2  # shadow models needed on each side of an example to fit its Gaussians
PER_EXAMPLE_VARIANCE_MODELS = 64  # the paper's switch: per-example variances from this many models on
VAR_FLOOR = 1e-4  # margins' variance never taken below this (a constant margin, float32 saturation)
FPR_TARGETS = (0.001, 0.01)
# The ROC curve summary.json keeps (the report draws it on log-log axes, as the paper does): a 1-2-5 grid of FPRs
ROC_FPRS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BOOTSTRAP = 200
PERMUTATIONS = 50
FDR = 0.05  # false-discovery rate of the examples reported as leaking
MIN_MODELS = 8  # fewer models leave too few shadows on each side to fit anything
MAX_CELLS = 50_000_000  # K · n margins kept for the attack (200 MB of float32); beyond, it is skipped
# A running job's anytime attack (dataplane/anytime.py, on the gateway, once per new shard): at
# most this many cells, with fewer resamplings (~0.5 s at K = 32, n = 4,000; 5x under the reduce's).
ANYTIME_MAX_CELLS = 1_000_000
ANYTIME_BOOTSTRAP, ANYTIME_PERMUTATIONS = 50, 10
# Peak host memory of the attack per (model, example) cell: the kept margins and bits, and the
# float64 (K, n) arrays the scores, the ROC and each permutation make. Measured 180 B at K = 64,
# n = 20,000 (tests/engine/test_membership.py checks the bound); engine/cost.py counts it.
ATTACK_BYTES_PER_CELL = 200


@dataclass
class MembershipInference:
    scores: np.ndarray  # float64 (K, n): Λ_ki, NaN where not scored
    members: np.ndarray  # bool (K, n): model k trained on example i
    variance: str  # "per_example" | "global"
    auc: float
    auc_interval: tuple[float, float]
    tpr_at_fpr: dict[float, float]  # at FPR_TARGETS and ROC_FPRS
    tpr_intervals: dict[float, tuple[float, float]]
    privacy_risk: np.ndarray  # float64 (n,), NaN where an example has no member or no non-member scored
    privacy_risk_stderr: np.ndarray
    privacy_risk_pvalue: np.ndarray
    chance_auc: float  # the attack's mean AUC with membership shuffled: what a bank that leaks nothing scores
    chance_auc_interval: tuple[float, float]
    chance_tpr_at_fpr: dict[float, float]

    def significant_examples(self, q: float = FDR) -> int:
        """Examples whose privacy_risk is above chance at false-discovery rate `q`
        (Benjamini–Hochberg over the examples scored)."""
        p = self.privacy_risk_pvalue[np.isfinite(self.privacy_risk_pvalue)]
        if not len(p):
            return 0
        return int((p <= benjamini_hochberg(p, q)).sum())

    def summary(self) -> dict:
        """summary.json's `membership_inference`."""

        def r(x: float) -> float | None:
            return None if not math.isfinite(x) else round(float(x), 6)

        return {
            "models": int(self.members.shape[0]),
            "pairs_scored": int(np.isfinite(self.scores).sum()),
            "variance": self.variance,
            "auc": r(self.auc),
            "auc_interval": [r(v) for v in self.auc_interval],
            "tpr_at_fpr_0_001": r(self.tpr_at_fpr[0.001]),
            "tpr_at_fpr_0_001_interval": [r(v) for v in self.tpr_intervals[0.001]],
            "tpr_at_fpr_0_01": r(self.tpr_at_fpr[0.01]),
            "tpr_at_fpr_0_01_interval": [r(v) for v in self.tpr_intervals[0.01]],
            "chance_auc": r(self.chance_auc),
            "chance_auc_interval": [r(v) for v in self.chance_auc_interval],
            "chance_tpr_at_fpr_0_001": r(self.chance_tpr_at_fpr[0.001]),
            "chance_tpr_at_fpr_0_01": r(self.chance_tpr_at_fpr[0.01]),
            "significant": bool(
                math.isfinite(self.auc_interval[0])
                and math.isfinite(self.chance_auc_interval[1])
                and self.auc_interval[0] > self.chance_auc_interval[1]
            ),
            "privacy_risk_significant": self.significant_examples(),
            "roc": {
                "fpr": list(ROC_FPRS),
                "tpr": [r(self.tpr_at_fpr[f]) for f in ROC_FPRS],
                "chance_tpr": [r(self.chance_tpr_at_fpr[f]) for f in ROC_FPRS],
            },
        }


def _normal_logpdf(x: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var)


def lira_scores(masks: np.ndarray, margins: np.ndarray, variance: str | None = None) -> tuple[np.ndarray, str]:
    """(Λ, the variance used): Λ (K, n) float64 as the module docstring defines it, NaN where
    an example lacks MIN_SHADOWS shadow models on a side. `variance` None picks per-example
    variances from PER_EXAMPLE_VARIANCE_MODELS models on, global below."""
    m = np.asarray(masks, bool)
    phi = np.asarray(margins, np.float64)
    k = m.shape[0]
    if variance is None:
        variance = "per_example" if k >= PER_EXAMPLE_VARIANCE_MODELS else "global"
    if variance not in ("per_example", "global"):
        raise ValueError(f"variance must be 'per_example' or 'global', got {variance!r}")
    w_in = m.astype(np.float64)
    n_in, s_in, ss_in = w_in.sum(0), (w_in * phi).sum(0), (w_in * phi**2).sum(0)
    n_all, s_all, ss_all = float(k), phi.sum(0), (phi**2).sum(0)
    n_out, s_out, ss_out = n_all - n_in, s_all - s_in, ss_all - ss_in
    # leave the target out of its own side
    own = phi * w_in, phi**2 * w_in
    ni, si, ssi = n_in - w_in, s_in - own[0], ss_in - own[1]
    other = phi * (1 - w_in), phi**2 * (1 - w_in)
    no, so, sso = n_out - (1 - w_in), s_out - other[0], ss_out - other[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_in, mu_out = si / ni, so / no
        var_in = np.maximum((ssi - si**2 / ni) / (ni - 1), VAR_FLOOR)
        var_out = np.maximum((sso - so**2 / no) / (no - 1), VAR_FLOOR)
        if variance == "global":  # all models' per-example variances, averaged over examples
            vi = (ss_in - s_in**2 / n_in) / (n_in - 1)
            vo = (ss_out - s_out**2 / n_out) / (n_out - 1)
            var_in = np.full_like(var_in, max(float(np.nanmean(np.where(n_in >= MIN_SHADOWS, vi, np.nan))), VAR_FLOOR))
            var_out = np.full_like(
                var_out, max(float(np.nanmean(np.where(n_out >= MIN_SHADOWS, vo, np.nan))), VAR_FLOOR)
            )
        scores = _normal_logpdf(phi, mu_in, var_in) - _normal_logpdf(phi, mu_out, var_out)
    scores[(ni < MIN_SHADOWS) | (no < MIN_SHADOWS) | ~np.isfinite(scores)] = np.nan
    return scores, variance


class _Roc:
    """The ROC of scored pairs, sorted once, evaluated under any weights of the training
    examples (1 each for the estimate; a bootstrap resample's multiplicities for its interval)
    in O(pairs): pairs are grouped by equal score, ties count half in the AUC."""

    def __init__(self, scores: np.ndarray, members: np.ndarray):
        ok = np.isfinite(scores)
        col = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)[ok]
        s, pos = scores[ok], members[ok]
        values, self.group = np.unique(s, return_inverse=True)
        self.groups = len(values)
        self.col, self.pos = col, pos

    def figures(self, weights: np.ndarray, fprs=FPR_TARGETS) -> tuple[float, dict[float, float]]:
        """(AUC, {target FPR: TPR at the largest FPR not above it}) with `weights` per example."""
        w = weights[self.col].astype(np.float64)
        wpos = np.bincount(self.group, weights=w * self.pos, minlength=self.groups)
        wneg = np.bincount(self.group, weights=w * ~self.pos, minlength=self.groups)
        total_pos, total_neg = wpos.sum(), wneg.sum()
        if total_pos <= 0 or total_neg <= 0:
            return math.nan, {f: math.nan for f in fprs}
        neg_below = np.cumsum(wneg) - wneg
        auc = float((wpos * (neg_below + 0.5 * wneg)).sum() / (total_pos * total_neg))
        neg_above = total_neg - np.cumsum(wneg)  # strictly above each group's score
        pos_above = total_pos - np.cumsum(wpos)
        tprs = {}
        for f in fprs:
            g = int(np.argmax(neg_above <= f * total_neg + 1e-9))  # the lowest threshold letting few enough through
            tprs[f] = float(pos_above[g] / total_pos)
        return auc, tprs


def per_example_auc(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUC, members scored, non-members scored) per example (column): P(Λ of a member >
    Λ of a non-member) + ½ P(tie), over the target models scored; NaN without both."""
    from scipy.stats import rankdata

    ok = np.isfinite(scores)
    ranks = rankdata(np.where(ok, scores, -np.inf), axis=0, method="average")
    missing = (~ok).sum(axis=0)  # the -inf stand-ins rank below every score
    pos, neg = (ok & members).sum(axis=0), (ok & ~members).sum(axis=0)
    rank_sum = np.where(ok & members, ranks - missing, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)
    auc[(pos == 0) | (neg == 0)] = np.nan
    return auc, pos, neg


def _hanley_mcneil(auc: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Hanley & McNeil's (1982) standard error of an AUC from `pos` × `neg` pairs, at the AUC
    with one tied pseudo-pair added ((A·pos·neg + ½) / (pos·neg + 1)): the plain formula is 0 at
    AUC = 0 or 1, which a handful of models reaches by chance."""
    with np.errstate(invalid="ignore", divide="ignore"):
        pairs = pos * neg
        auc = (auc * pairs + 0.5) / (pairs + 1)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (auc * (1 - auc) + (pos - 1) * (q1 - auc**2) + (neg - 1) * (q2 - auc**2)) / (pos * neg)
    return np.sqrt(np.maximum(var, 0.0))


def membership_inference(
    masks: np.ndarray,
    margins: np.ndarray,
    variance: str | None = None,
    bootstrap: int = BOOTSTRAP,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> MembershipInference:
    """LiRA over a job's models: masks (K, n) bool, margins (K, n) φ of the training examples."""
    members = np.asarray(masks, bool)
    scores, used = lira_scores(members, margins, variance)
    roc = _Roc(scores, members)
    n = members.shape[1]
    auc, tprs = roc.figures(np.ones(n), FPR_TARGETS + ROC_FPRS)
    rng = np.random.default_rng(seed)
    boot = [roc.figures(np.bincount(rng.integers(0, n, size=n), minlength=n)) for _ in range(bootstrap)] if n else []

    def interval(values: list[float]) -> tuple[float, float]:
        v = np.asarray([x for x in values if math.isfinite(x)])
        return (float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))) if len(v) else (math.nan, math.nan)

    raw, pos, neg = per_example_auc(scores, members)
    # The permutation null: membership shuffled across the models of each example, the whole
    # attack run again. Leaving the target out of its own side's fit makes a finite bank score
    # members slightly *below* non-members when nothing leaks (a leave-one-out bias of order
    # 1/K); the null measures that bias for this bank, and privacy_risk is centred by it.
    null_sum, null_squares = np.zeros(n), np.zeros(n)
    null_roc = []
    for _ in range(permutations):
        shuffled = rng.permuted(members, axis=0)
        null_scores, _ = lira_scores(shuffled, margins, used)
        null_auc, _, _ = per_example_auc(null_scores, shuffled)
        null_sum += np.nan_to_num(null_auc, nan=0.5)
        null_squares += np.nan_to_num(null_auc, nan=0.5) ** 2
        null_roc.append(_Roc(null_scores, shuffled).figures(np.ones(n), FPR_TARGETS + ROC_FPRS))
    null_mean = null_sum / permutations if permutations else np.full(n, 0.5)
    risk = np.clip(0.5 + raw - null_mean, 0.0, 1.0)
    # The scores of one example's targets share its shadow fits, so its AUC varies more under
    # the null than Mann–Whitney's formula says (about 1.5x at K = 64): the permutations' own
    # spread is the yardstick, never below Mann–Whitney's.
    with np.errstate(invalid="ignore", divide="ignore"):
        mw_sd = np.sqrt((pos + neg + 1) / (12.0 * pos * neg))
        null_sd = np.sqrt(np.maximum(null_squares / max(permutations, 1) - null_mean**2, 0.0))
        z = (raw - null_mean) / np.maximum(null_sd, mw_sd)
    pvalue = 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2)) if n else np.zeros(0)
    pvalue[~np.isfinite(raw)] = np.nan
    chance = [r[0] for r in null_roc]
    return MembershipInference(
        scores=scores,
        members=members,
        variance=used,
        auc=auc,
        auc_interval=interval([b[0] for b in boot]),
        tpr_at_fpr=tprs,
        tpr_intervals={f: interval([b[1][f] for b in boot]) for f in FPR_TARGETS},
        privacy_risk=risk,
        privacy_risk_stderr=_hanley_mcneil(raw, pos, neg),
        privacy_risk_pvalue=pvalue,
        chance_auc=float(np.mean(chance)) if chance else math.nan,
        chance_auc_interval=interval(chance),
        chance_tpr_at_fpr={
            f: float(np.mean([r[1][f] for r in null_roc])) if null_roc else math.nan for f in FPR_TARGETS + ROC_FPRS
        },
    )


def planted_bank(k: int, n: int, shift: float, leaky: float, seed: int = 0):
    """A bank with known leakage, for validation (tests, bench/membership.py, docs): masks
    (k, n) with each example in half of the models, margins φ = μ_i + Δ_i·member + σ_i·ε
    with μ_i ~ N(2, 1.5²), σ_i ~ U(0.5, 1.5), ε ~ N(0, 1), and Δ_i = `shift` on the first
    `leaky` fraction of the examples, 0 elsewhere. Returns (masks, margins float32, Δ, σ, μ)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((k, n), bool)
    for i in range(n):
        masks[rng.permutation(k)[: k // 2], i] = True
    mu = rng.normal(2.0, 1.5, n)
    sigma = rng.uniform(0.5, 1.5, n)
    delta = np.where(np.arange(n) < int(leaky * n), shift, 0.0)
    margins = mu + delta * masks + sigma * rng.standard_normal((k, n))
    return masks, margins.astype(np.float32), delta, sigma, mu


class MembershipBank:
    """The masks and training margins of a job's models, kept as traces arrive (any order) so
    the reduce step can run the attack (`summary`). Holds K · n float32 margins and bits; past
    MAX_CELLS it stops keeping them and the summary says the attack was skipped."""

    def __init__(
        self, n: int, max_cells: int = MAX_CELLS, bootstrap: int = BOOTSTRAP, permutations: int = PERMUTATIONS
    ):
        self.n, self.max_cells = n, max_cells
        self.bootstrap, self.permutations = bootstrap, permutations
        self.ids: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.margins: list[np.ndarray] = []
        self.models = 0
        self.too_large = False

    def add(self, model_ids: np.ndarray, masks: np.ndarray, margins: np.ndarray) -> None:
        self.models += len(model_ids)
        if self.models * self.n > self.max_cells:
            self.too_large = True
            self.ids, self.masks, self.margins = [], [], []
            return
        self.ids.append(np.asarray(model_ids, np.int64))
        self.masks.append(np.packbits(np.asarray(masks, bool), axis=1))
        self.margins.append(np.asarray(margins, np.float32))

    def result(self, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
        """(summary.json's `membership_inference`, the score columns `privacy_risk`,
        `privacy_risk_stderr` and `privacy_risk_pvalue`): the attack's figures (`MembershipInference.summary`), or
        {"skipped": why} and NaN columns for too few models or too many margins."""
        nan = {c: np.full(self.n, np.nan) for c in ("privacy_risk", "privacy_risk_stderr", "privacy_risk_pvalue")}
        if self.too_large:
            why = f"{self.models} models x {self.n} examples exceeds {self.max_cells:,} margins kept for the attack"
            return {"models": self.models, "skipped": why}, nan
        if self.models < MIN_MODELS:
            return {"models": self.models, "skipped": f"needs at least {MIN_MODELS} models"}, nan
        ids = np.concatenate(self.ids)
        order = np.argsort(ids, kind="stable")  # the same figures whatever order the shards came in
        masks = np.unpackbits(np.concatenate(self.masks), axis=1, count=self.n).astype(bool)[order]
        margins = np.concatenate(self.margins)[order]
        mi = membership_inference(masks, margins, bootstrap=self.bootstrap, permutations=self.permutations, seed=seed)
        return mi.summary(), {
            "privacy_risk": mi.privacy_risk,
            "privacy_risk_stderr": mi.privacy_risk_stderr,
            "privacy_risk_pvalue": mi.privacy_risk_pvalue,
        }


def anytime_fields(mi: dict) -> dict:
    """The job record's (AnytimeSummary's) flat figures of summary.json's
    `membership_inference`: the AUC and TPRs with their 95% intervals beside the chance AUC;
    none when the attack was skipped."""
    if "auc" not in mi:
        return {}
    out = {"membership_auc": mi["auc"], "membership_chance_auc": mi["chance_auc"]}
    out["membership_auc_lower"], out["membership_auc_upper"] = mi["auc_interval"]
    for f in ("tpr_at_fpr_0_001", "tpr_at_fpr_0_01"):
        out[f"membership_{f}"] = mi[f]
        out[f"membership_{f}_lower"], out[f"membership_{f}_upper"] = mi[f + "_interval"]
    return {k: v for k, v in out.items() if v is not None}
