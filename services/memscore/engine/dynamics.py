"""Learning dynamics (`--metrics dynamics`): what per-epoch snapshots of the models' training
predictions say about each example.

- **learning_speed** (Jiang et al. 2021's C-score proxy): the mean, over the models that
  trained on the example and over the snapshots, of whether the model classified it correctly:
  the area under its training-accuracy curve, 1 = learned from the first epoch.
- **first_learned_epoch**: the mean, over the models that trained on it, of the first epoch at
  whose end the model classified it correctly; an example a model never got right counts as
  one epoch past the last snapshot (a lower bound).
- **critical** (Arpit et al. 2017): at the last snapshot, an input in the L∞ box of radius r
  around the example gets a different prediction (engine/adversarial.critical) for at least
  half the models that trained on it. The critical sample ratio (CSR) of a set of examples is
  the fraction that are critical; summary.json's `critical_sample_ratio` follows it epoch by
  epoch on a fixed sample of training examples, split into clean and planted-noise examples,
  which shows the paper's finding: networks fit the real patterns first and the noise later.

Snapshots are taken at the end of each epoch of the model's subset (at most MAX_SNAPSHOTS,
evenly spaced, always the last step); the trainer writes them into the trace
(`Trace.snap_*`), the reducer sums them here.
"""

from __future__ import annotations

import numpy as np

from .moments import binary_var_of_mean, mean, var_of_mean

MAX_SNAPSHOTS = 20  # evaluation passes over the training set a model makes at most
CSR_SAMPLE = 500  # training examples searched for critical inputs at every snapshot
CSR_RADIUS_SCALE = 0.1  # r = this × the mean per-feature standard deviation (L∞)
SAMPLE_SEED = 0x435352  # "CSR": the sample depends on the job's seed and n only


def snapshot_steps(steps: int, steps_per_epoch: int) -> list[int]:
    """Steps (1-based: after that many optimisation steps) at which the models are evaluated."""
    epochs = max(1, -(-steps // steps_per_epoch))
    ends = [min((e + 1) * steps_per_epoch, steps) for e in range(epochs)]
    if len(ends) > MAX_SNAPSHOTS:
        pick = np.unique(np.round(np.linspace(0, len(ends) - 1, MAX_SNAPSHOTS)).astype(int))
        ends = [ends[i] for i in pick]
    return ends


def csr_sample(n: int, seed: int) -> np.ndarray:
    """The training examples whose criticality is followed over epochs (sorted)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SAMPLE_SEED]))
    return np.sort(rng.choice(n, size=min(n, CSR_SAMPLE), replace=False))


def csr_radius(x: np.ndarray) -> float:
    """The L∞ radius of the critical-sample test: CSR_RADIUS_SCALE × the mean per-feature
    standard deviation of the training inputs (the data alone decide it, so every shard agrees)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return CSR_RADIUS_SCALE * float(x.std(0).mean())


class Snapshots:
    """Taken by the trainer while G models train: at each snapshot step, which training examples
    each model classifies correctly, and which of the CSR sample are critical; at the last one,
    which of all training examples are critical. `fields()` are the trace's snap_* arrays.
    correct_fn() -> bool (G, n) and critical_fn(x, radius, seed) -> bool (G, len(x)) evaluate the
    models as they are when `take()` is called."""

    def __init__(self, x_train: np.ndarray, steps: int, steps_per_epoch: int, seed: int, correct_fn, critical_fn):
        self.correct_fn, self.critical_fn = correct_fn, critical_fn
        self.steps = snapshot_steps(steps, steps_per_epoch)
        self.epochs = [s / steps_per_epoch for s in self.steps]
        self.sample, self.radius, self.seed = csr_sample(len(x_train), seed), csr_radius(x_train), seed
        self.x = x_train
        self.correct: list[np.ndarray] = []
        self.critical: list[np.ndarray] = []
        self.final: np.ndarray | None = None

    def due(self, done_steps: int) -> bool:
        return done_steps in self.steps

    def take(self) -> None:
        self.correct.append(np.asarray(self.correct_fn(), bool))
        if len(self.correct) < len(self.steps):
            self.critical.append(np.asarray(self.critical_fn(self.x[self.sample], self.radius, self.seed), bool))
            return
        self.final = np.asarray(self.critical_fn(self.x, self.radius, self.seed), bool)  # the sample is part of it
        self.critical.append(self.final[:, self.sample])

    def fields(self) -> tuple[dict[str, np.ndarray], dict]:
        """(trace fields, trace meta)."""
        return (
            {
                "snap_correct": np.stack(self.correct),
                "snap_critical": np.stack(self.critical),
                "critical_final": self.final,
            },
            {"snapshot_epochs": self.epochs, "csr_radius": self.radius, "csr_sample": self.sample.tolist()},
        )


class DynamicsSums:
    """Per-example sums over merged traces with snapshots (`scores`, `summary`)."""

    def __init__(self, n: int):
        self.n = n
        self.models = np.zeros(n)  # models that trained on i, with snapshots
        self.speed, self.speed2 = np.zeros(n), np.zeros(n)
        self.first, self.first2 = np.zeros(n), np.zeros(n)
        self.critical = np.zeros(n)
        self.epochs: list[float] | None = None
        self.radius = None
        self.csr_hits: np.ndarray | None = None  # (S, sample) critical (model, example) pairs
        self.csr_pairs: np.ndarray | None = None  # (sample,) pairs

    def add(self, trace) -> None:
        if trace.snap_correct is None:
            return
        epochs = list(trace.meta["snapshot_epochs"])
        if self.epochs is None:
            self.epochs, self.radius = epochs, trace.meta["csr_radius"]
            self.sample = np.asarray(trace.meta["csr_sample"], np.int64)
            self.csr_hits, self.csr_pairs = np.zeros((len(epochs), len(self.sample))), np.zeros(len(self.sample))
        elif epochs != self.epochs:
            raise ValueError("traces with different snapshot epochs cannot be merged")
        m = trace.masks.astype(np.float64)
        correct = trace.snap_correct
        speed = correct.mean(0)
        ever = correct.any(0)
        first = np.where(ever, np.asarray(epochs)[correct.argmax(0)], epochs[-1] + 1)
        self.models += m.sum(0)
        self.speed += (m * speed).sum(0)
        self.speed2 += (m * speed**2).sum(0)
        self.first += (m * first).sum(0)
        self.first2 += (m * first**2).sum(0)
        self.critical += (m * trace.critical_final).sum(0)
        inside = m[:, self.sample]
        self.csr_hits += (trace.snap_critical * inside[None]).sum(1)
        self.csr_pairs += inside.sum(0)

    def scores(self) -> dict[str, np.ndarray]:
        n, k = self.n, self.models
        out = {}
        for name, s, ss in (
            ("learning_speed", self.speed, self.speed2),
            ("first_learned_epoch", self.first, self.first2),
        ):
            out[name], out[name + "_stderr"] = mean(s, k), np.sqrt(var_of_mean(s, ss, k))
        out["critical"] = (k > 0) & (self.critical >= 0.5 * k)
        out["critical_fraction"] = mean(self.critical, k)
        out["critical_fraction_stderr"] = np.sqrt(binary_var_of_mean(self.critical, k))
        if self.epochs is None:
            out = {c: np.full(n, np.nan) for c in out} | {"critical": np.zeros(n, bool)}
        return out

    def summary(self, flipped: np.ndarray) -> dict | None:
        """summary.json's `critical_sample_ratio`: per snapshot epoch, the fraction of (model that
        trained on it, sampled example) pairs that are critical, over all sampled examples and,
        with planted label noise, over the clean and the flipped ones."""
        if self.epochs is None:
            return None
        noisy = np.isin(self.sample, flipped)
        out = {"epochs": self.epochs, "radius": self.radius, "sample": int(len(self.sample))}
        for key, pick in (("all", np.ones(len(self.sample), bool)), ("clean", ~noisy), ("noisy", noisy)):
            pairs = self.csr_pairs[pick].sum()
            if pick.any() and pairs > 0 and (key == "all" or noisy.any()):
                ratio, stderr = ratio_and_stderr(self.csr_hits[:, pick], self.csr_pairs[pick])
                out[key] = [float(v) for v in ratio]
                out[key + "_stderr"] = [float(v) if np.isfinite(v) else None for v in stderr]
        return out


def ratio_and_stderr(hits: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per snapshot, the CSR Σ_i hits_si / Σ_i pairs_i over the examples i and its standard
    error with the examples as clusters (the ratio estimator's linearisation: a (model, example)
    pair is not independent of the example's other pairs). NaN below two examples."""
    total, e = pairs.sum(), pairs.shape[0]
    ratio = hits.sum(1) / total
    if e < 2:
        return ratio, np.full(len(ratio), np.nan)
    resid = hits - ratio[:, None] * pairs[None]
    return ratio, np.sqrt(e / (e - 1) * (resid**2).sum(1)) / total


def anytime_fields(csr: dict | None) -> dict:
    """The job record's (AnytimeSummary's) figures of summary.json's `critical_sample_ratio`:
    the CSR of all sampled examples at the last snapshot, its standard error and epoch."""
    if not csr or "all" not in csr:
        return {}
    out = {"critical_sample_ratio": csr["all"][-1], "critical_sample_ratio_epoch": csr["epochs"][-1]}
    if csr.get("all_stderr") and csr["all_stderr"][-1] is not None:
        out["critical_sample_ratio_stderr"] = csr["all_stderr"][-1]
    return out
