"""The privacy metric of Carlini, Erlingsson & Papernot 2019 on a job (`--metrics dp`): a few
groups of models trained with DP-SGD (engine/dp.py) at a ladder of privacy levels, and per
training example the strongest level at which it is still classified correctly.

Each level ℓ of DP_EPSILONS (strongest first) is one extra shard of the job (shard id
DP_SHARD_BASE + ℓ, beside the FZ shards 0..S-1, so a job that grows keeps its numbering): DP_MODELS
models with ids DP_MODEL_BASE + ℓ·DP_MODELS + g, on the job's subset plan and recipe, with the noise
σ_ℓ that makes each model (ε_ℓ, δ)-DP for the accountant (dp.noise_for_epsilon; δ = DP_DELTA, or
1/(10·|S|) when that is smaller). Their traces never reach the FZ estimators, LiRA or the
split-half reliability: those describe the job's non-private models.

    privacy_level_i = min { ε_ℓ : the majority of level ℓ's models that trained on i
                                  classify i correctly }        (+inf when no level does)

Where the paper trains each private model on the whole training set, memscore's private models
train on the job's subsets, so "the models that trained on i" is about r·DP_MODELS of them per
level. A level where none of them trained on i says nothing about i; if such a level is
stronger than the first level that classifies i correctly, the example gets no estimate (NaN).

Uncertainty: `privacy_level_lower` / `_upper`, the 2.5% and 97.5% points of the same statistic
over BOOTSTRAP resamplings of each level's models (with replacement; a percentile bootstrap
over models, as the estimate's noise is which models were trained). They are levels of the
ladder or +inf. With 8 models per level the interval is often wide; it says so instead of
hiding it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .datasets import Dataset
from .recipes import Recipe
from .subsets import subset_size
from .traces import Trace

DP_EPSILONS: tuple[float, ...] = (1.0, 4.0, 16.0)  # the ladder, strongest privacy first
DP_MODELS = 8  # models per level
DP_DELTA = 1e-5  # or 1/(10·|S|) when that is smaller (δ must be well below 1/|S|)
DP_CLIP = 1.0  # per-example L2 clip norm C (Adam is scale-free, so C needs no tuning with the rate)
DP_SHARD_BASE = 1 << 20  # shard ids of the DP levels: base + level (FZ shards are < 100,000)
DP_MODEL_BASE = 1 << 30  # model ids of the DP models: their own subsets, weights, batches and noise
BOOTSTRAP = 200  # resamplings of each level's models for the interval
COLUMNS = ("privacy_level", "privacy_level_lower", "privacy_level_upper")


def dp_shards(metrics) -> list[int]:
    """The shard ids of a job's DP levels: none unless it opts into `dp`."""
    return [DP_SHARD_BASE + lvl for lvl in range(len(DP_EPSILONS))] if "dp" in metrics else []


def is_dp_shard(shard: int) -> bool:
    return shard >= DP_SHARD_BASE


def level_model_ids(level: int) -> list[int]:
    start = DP_MODEL_BASE + level * DP_MODELS
    return list(range(start, start + DP_MODELS))


def shard_model_ids(shard: int) -> list[int]:
    """Model ids trained by DP shard `shard`."""
    level = shard - DP_SHARD_BASE
    if not 0 <= level < len(DP_EPSILONS):
        raise ValueError(f"shard {shard} is not a DP level shard")
    return level_model_ids(level)


def dp_delta(n_train: int, ratio: float) -> float:
    return min(DP_DELTA, 1.0 / (10 * subset_size(n_train, ratio)))


def train_level(
    ds: Dataset,
    arch: str,
    recipe: Recipe,
    ratio: float,
    seed: int,
    plan: str,
    shard: int,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Trace:
    """Train DP shard `shard`'s models at its level's ε; the trace's meta says the level."""
    from .dp import dp_schedule, noise_for_epsilon, train_dp_group  # torch and opacus: only here

    level = shard - DP_SHARD_BASE
    eps = DP_EPSILONS[level]
    _, steps, q = dp_schedule(ds.n_train, ratio, plan, recipe)
    delta = dp_delta(ds.n_train, ratio)
    sigma = noise_for_epsilon(eps, q, steps, delta)
    out = train_dp_group(
        ds, arch, shard_model_ids(shard), ratio, seed, recipe, sigma, DP_CLIP, device, plan,
        progress=progress, should_stop=should_stop,
    )  # fmt: skip
    out.trace.meta.update(dp_level=level, dp_epsilon_target=eps, dp_epsilon=out.epsilon(delta), dp_delta=delta)
    return out.trace


@dataclass
class _Level:
    correct: np.ndarray  # bool (G, n): model g classifies training example i correctly
    masks: np.ndarray  # bool (G, n): model g trained on i
    meta: dict
    test_accuracy: np.ndarray  # (G,)


class PrivacyLevels:
    """The DP levels' traces of a job, and the columns and summary they give."""

    def __init__(self, n_train: int):
        self.n = n_train
        self.levels: dict[int, _Level] = {}

    def add(self, trace: Trace) -> None:
        level = int(trace.meta["dp_level"])
        if level in self.levels:
            raise ValueError(f"DP level {level} was added twice")
        self.levels[level] = _Level(
            trace.train_correct.astype(bool), trace.masks.astype(bool), dict(trace.meta), trace.test_correct.mean(1)
        )

    @property
    def seconds(self) -> float:
        return sum(float(lv.meta.get("total_seconds", 0.0)) for lv in self.levels.values())

    def columns(self, seed: int = 0) -> dict[str, np.ndarray]:
        """privacy_level and its bootstrap interval; NaN everywhere without DP levels."""
        if not self.levels:
            return {c: np.full(self.n, np.nan) for c in COLUMNS}
        order = sorted(self.levels)
        eps = np.array([DP_EPSILONS[lv] for lv in order])
        correct = [self.levels[lv].correct for lv in order]
        masks = [self.levels[lv].masks for lv in order]
        point = strongest_correct(eps, [(c & m).sum(0) for c, m in zip(correct, masks)], [m.sum(0) for m in masks])
        rng = np.random.default_rng([int(seed), 0x5EED])
        reps = np.empty((BOOTSTRAP, self.n))
        for b in range(BOOTSTRAP):
            picks = [rng.integers(0, len(m), len(m)) for m in masks]
            hits = [(c[p] & m[p]).sum(0) for c, m, p in zip(correct, masks, picks)]
            reps[b] = strongest_correct(eps, hits, [m[p].sum(0) for m, p in zip(masks, picks)])
        lower, upper = _percentiles(reps)
        return {"privacy_level": point, "privacy_level_lower": lower, "privacy_level_upper": upper}

    def summary(self, level_values: np.ndarray | None = None) -> dict | None:
        """summary.json `dp`: each level's ε (target and accounted), δ, σ, C, q, steps, models
        and accuracies; the distribution of privacy_level over the ladder."""
        if not self.levels:
            return None
        out = []
        for lv in sorted(self.levels):
            v = self.levels[lv]
            m = v.meta
            in_acc = (v.correct & v.masks).sum() / max(1, v.masks.sum())
            out.append(
                {
                    "level": lv,
                    "epsilon_target": m["dp_epsilon_target"],
                    "epsilon": m["dp_epsilon"],
                    "delta": m["dp_delta"],
                    "noise_multiplier": m["noise_multiplier"],
                    "clip_norm": m["clip_norm"],
                    "sample_rate": m["sample_rate"],
                    "steps": m["steps"],
                    "models": len(v.test_accuracy),
                    "mean_test_accuracy": float(v.test_accuracy.mean()),
                    "mean_in_sample_accuracy": float(in_acc),
                }
            )
        result = {"levels": out, "models_per_level": DP_MODELS, "bootstrap": BOOTSTRAP, "seconds": self.seconds}
        if level_values is not None:
            finite = level_values[~np.isnan(level_values)]
            ladder = [*(DP_EPSILONS[lv] for lv in sorted(self.levels)), math.inf]
            result["examples_at_level"] = {
                _key(e): int((finite == e).sum()) for e in ladder
            }  # how many examples each level is the strongest for ("inf": none of them)
            result["examples_without_estimate"] = int(np.isnan(level_values).sum())
        return result


def strongest_correct(eps: np.ndarray, hits: list[np.ndarray], members: list[np.ndarray]) -> np.ndarray:
    """Per example, the smallest ε_ℓ (levels in `eps` order, strongest first) whose member
    models (`members[ℓ]` of them, `hits[ℓ]` correct) classify it correctly by majority; +inf
    where none does; NaN where a stronger level without members precedes the first correct one."""
    n = len(hits[0])
    out = np.full(n, np.inf)
    open_ = np.ones(n, bool)  # no level decided yet
    unknown = np.zeros(n, bool)
    for e, h, m in zip(eps, hits, members):
        unknown |= open_ & (m == 0)
        won = open_ & (m > 0) & (2 * h > m)
        out[won] = e
        open_ &= ~won
    out[unknown & (out < np.inf) | unknown & open_] = np.nan
    return out


def _percentiles(reps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2.5% and 97.5% points per column of `reps`, NaN replicates ignored (inf is a value);
    NaN where more than half the replicates are NaN."""
    nan = np.isnan(reps)
    filled = np.where(nan, np.inf, reps)  # sort NaNs past +inf, then index within the valid ones
    s = np.sort(filled, axis=0)
    valid = (~nan).sum(0)
    cols = np.arange(reps.shape[1])
    lo_i = np.clip(np.floor(0.025 * (valid - 1)).astype(int), 0, None)
    hi_i = np.clip(np.ceil(0.975 * (valid - 1)).astype(int), 0, None)
    lower, upper = s[lo_i, cols], s[hi_i, cols]
    bad = valid < reps.shape[0] / 2
    lower[bad], upper[bad] = np.nan, np.nan
    return lower, upper


def _key(e: float) -> str:
    return "inf" if math.isinf(e) else f"{e:g}"
