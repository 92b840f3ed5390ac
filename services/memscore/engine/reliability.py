"""How precise a job's scores are: split-half reliability, and how many models a target needs.

Split the K models by the parity of their id (even / odd: a split that does not depend on
which shard trained a model) and estimate every score twice, once per half. Over the examples
estimated in both halves, the Spearman correlation r of the two estimates is the split-half
reliability of a K/2-model run. The Spearman–Brown prophecy formula (Spearman 1910; Brown
1910) projects a reliability ρ_k of k models to K = f·k models,

    ρ_K = f·ρ_k / (1 + (f − 1)·ρ_k),        so the full run has ρ_K = 2r / (1 + r),

and, solved for f, the models that reach a target reliability R from ρ_K at K models:

    K_R = K · R(1 − ρ_K) / (ρ_K (1 − R)).

Reliability here is the correlation two independent runs of K models would have with each
other (classical test theory's parallel forms), which is what a user comparing two runs sees
(tests/engine/test_reliability.py checks this by simulation; docs/validation.md).

`next_growth` is the one rule a self-stopping job follows, embedded (`run_scoring`) and
distributed (the worker's reduce) alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .catalog import RELIABILITY_METRICS
from .estimators import ScoreAccumulator
from .spec import ScoringSpec
from .traces import Trace

RELIABILITY_TARGET = 0.95  # the target every job reports `models_for_0_95` for
MIN_MODELS_PER_HALF = 2
MIN_EXAMPLES = 3


def spearman_brown(rho: float, factor: float = 2.0) -> float:
    """Reliability of `factor` times as many models as a reliability `rho` was measured at.
    A negative split-half correlation (halves that disagree: no signal yet) projects below
    itself; the result is kept a correlation, in [-1, 1]."""
    den = 1.0 + (factor - 1.0) * rho
    return max(-1.0, factor * rho / den) if den > 0 else -1.0


def models_for(rho: float | None, models: int, target: float = RELIABILITY_TARGET) -> int | None:
    """Models projected (Spearman–Brown) to reach reliability `target`, from reliability `rho`
    at `models` models, rounded up; None when `rho` is unknown or not positive."""
    if rho is None or not rho > 0:
        return None
    if rho >= 1.0:
        return 1
    k = models * target * (1.0 - rho) / (rho * (1.0 - target))
    return max(1, math.ceil(k - 1e-9))  # the tolerance keeps an exact whole number from rounding up


def _key_for(target: float) -> str:
    return "models_for_" + f"{target:g}".replace(".", "_")  # 0.95 -> models_for_0_95


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (ties get mean ranks); None when either side is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else None


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's correlation; None when either side is constant."""
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else None


class SplitHalf:
    """Two streaming score accumulators, one per parity of model id: feed it every trace the
    job's reducer sees, ask for `report()` at any time."""

    def __init__(self, n: int, m: int):
        self.halves = (ScoreAccumulator(n, m), ScoreAccumulator(n, m))

    @property
    def models(self) -> int:
        return sum(h.num_models for h in self.halves)

    def add(self, trace: Trace) -> None:
        parity = np.asarray(trace.model_ids) % 2
        for p, half in enumerate(self.halves):
            keep = parity == p
            if keep.any():
                half.add(trace.select(keep))

    def report(self, metrics=RELIABILITY_METRICS, target: float = RELIABILITY_TARGET) -> dict:
        """Per metric: `split_half_spearman` (r), `spearman_brown` (ρ at all models),
        `models_for_0_95` (for target 0.95; the key names the target), `models` and `examples`
        (those estimated in both halves). None where there is no estimate: below
        MIN_MODELS_PER_HALF models in a half or MIN_EXAMPLES examples. A metric the
        accumulator does not compute is left out."""
        ready = all(h.num_models >= MIN_MODELS_PER_HALF for h in self.halves)
        even, odd = (h.scores() for h in self.halves)
        out = {}
        for metric in metrics:
            a, b = even.get(metric), odd.get(metric)
            if a is None or b is None:
                continue
            both = np.isfinite(a) & np.isfinite(b)
            examples = int(both.sum())
            enough = ready and examples >= MIN_EXAMPLES
            r = spearman(a[both], b[both]) if enough else None
            rho = spearman_brown(r) if r is not None else None
            rp = pearson(a[both], b[both]) if enough else None
            out[metric] = {
                "split_half_spearman": r,
                "spearman_brown": rho,
                # Pearson's r: the reliability of the values themselves. On long-tailed data,
                # where most true scores are about 0, Spearman's r mostly measures how the noise
                # around 0 is ranked and understates it (docs/validation.md §6).
                "split_half_pearson": rp,
                "spearman_brown_pearson": spearman_brown(rp) if rp is not None else None,
                _key_for(target): models_for(rho, self.models, target),
                "models": self.models,
                "examples": examples,
            }
        return out


def anytime_fields(report: dict) -> dict:
    """The reliability figures of GetJob's anytime summary (AnytimeSummary fields) that have a
    value: memorization's split-half r, its Spearman–Brown reliability and models for 0.95,
    and soft memorization's reliability."""
    mem, soft = report.get("memorization", {}), report.get("memorization_soft", {})
    out = {
        "memorization_split_half": mem.get("split_half_spearman"),
        "memorization_reliability": mem.get("spearman_brown"),
        "memorization_models_for_0_95": mem.get(_key_for(RELIABILITY_TARGET)),
        "memorization_soft_reliability": soft.get("spearman_brown"),
    }
    return {k: v for k, v in out.items() if v is not None}


STOPPED_BECAUSE = ("reliability_reached", "max_models", "fixed")


@dataclass(frozen=True)
class Growth:
    """What a job does once its current models are reduced: add `add_models` more (> 0), or
    stop (0) for `stopped_because` (one of STOPPED_BECAUSE)."""

    add_models: int
    stopped_because: str | None
    reliability: float | None  # the stopping metric's Spearman–Brown reliability now
    message: str


def next_growth(spec: ScoringSpec, report: dict) -> Growth:
    """The self-stopping rule. With `until_reliability` R off, a job trains exactly `models`.
    Otherwise, while the reliability ρ of `reliability_metric` is below R and fewer than
    `max_models` are trained, add the models Spearman–Brown projects for R (K_R − K; K more
    when ρ is unknown or not positive), rounded up to whole shards, at least one shard, capped
    at `max_models`. Models are rebuilt from (seed, k), so a job that grew equals one that
    asked for its final count from the start."""
    k, target = spec.models, spec.until_reliability
    rho = report.get(spec.reliability_metric, {}).get("spearman_brown")
    if not target:
        return Growth(0, "fixed", rho, "done")
    below = "no reliability estimate" if rho is None else f"reliability {rho:.3f} < {target:g}"
    if rho is not None and rho >= target:
        return Growth(0, "reliability_reached", rho, f"done: reliability {rho:.3f} >= {target:g} at {k} models")
    cap = spec.max_models or k
    if k >= cap:
        return Growth(0, "max_models", rho, f"done: {below} at max_models {cap}")
    g = spec.effective_shard_size
    need = models_for(rho, k, target)
    want = need - k if need is not None else k
    add = min(max(1, math.ceil(want / g)) * g, cap - k)
    return Growth(add, None, rho, f"{below} at {k} models: adding {add}")
