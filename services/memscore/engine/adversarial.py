"""Distance to the nearest adversarial example, and critical samples, for G stacked models at once.

Adversarial robustness (Carlini, Erlingsson & Papernot 2019, "Distribution density, tails, and
outliers in machine learning: metrics and applications"): for model g and example x with
clean prediction p = argmax f_g(x), the distance

      d_g(x) = min { ‖δ‖ : argmax f_g(x + δ) ≠ p }      (‖·‖ the L2 or L∞ norm)

to the nearest input the model labels differently. Small d = the model drew its decision
boundary close around x = an outlier (or a point the model had to carve out, e.g. a mislabeled
one). `min_perturbation` upper-bounds d by a binary search on ε per (model, example) pair: a
pair's ε counts as "flipping" when projected gradient ascent (PGD, Madry et al. 2018) inside
the ε-ball finds a point whose prediction is not p. It returns the smallest flipping ε found,
to within eps_max / 2^search_steps.

Critical samples (Arpit et al. 2017, "A closer look at memorization in deep networks"):
x is critical for model g when some input in the L∞ box of radius r around x gets a different
prediction; the critical sample ratio of a set is the mean of `critical` over its examples.

How this differs from the papers:
  - Carlini et al. run their attacks to convergence per example; here one batched PGD of
    `steps` steps per bisection step searches all G×E pairs at once (PGD is an upper bound on
    d: a missed adversarial example only makes d look larger), and the bisection's resolution
    is absolute: eps_max / 2^search_steps.
  - Arpit et al.'s search takes noisy sign steps from x; here it is PGD from a random start in
    the box, the same core as the distance.
  - No clipping to a data range: inputs are arbitrary real features (standardised signals,
    tabular rows), not pixels in [0, 1], so the ball is the whole constraint.

The objective is the margin max_{c≠p} logit_c − logit_p (the untargeted form of Carlini & Wagner
2017's margin loss), flipped when it turns positive; any iterate that flips counts. Gradients are
taken w.r.t. the input only (parameters detached), so the functions need autograd: not under
torch.inference_mode(). The random start of example e is drawn from a generator seeded by
(seed, e), the same for every model and scaled by each pair's ε, so a result depends neither on
the chunk size nor on which other models are stacked with it.

Cost: (1 + search_steps) PGD runs of `steps` forward+backward passes over G×E inputs. Measured
on one CPU thread (2 shared cores): 16 trained mnist1d MLPs (40 features, width 256) × 1000
examples, 11 s per norm with the defaults; the median L2 distance there is 0.58 for eps_max 6.2
(`default_eps_max`), none censored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .recipes import ADV_BATCH, ADV_NORMS, ADV_PGD_STEPS, ADV_SEARCH_STEPS

# fn(params, buffers, x (G, B, *feature_shape)) -> logits (G, B, C): ensemble._stack_models' train_fn
StackedForward = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
Tensors = dict[str, torch.Tensor]

NORMS = ADV_NORMS
STEPS = ADV_PGD_STEPS  # PGD steps per ε tried; enough for the step size below to cross the ball 2.5 times
SEARCH_STEPS = ADV_SEARCH_STEPS  # bisection steps: resolution eps_max / 256
STEP_FACTOR = 2.5  # PGD step size = STEP_FACTOR · ε / steps (Madry et al. 2018)
BATCH = ADV_BATCH  # examples per chunk; the PGD batch is G × BATCH inputs
# The random start is uniform in the ball of radius START · ε: off x, so a flat or masked gradient
# at x cannot stall the search, yet close enough that 10 L2 steps converge (linear model: the
# found ε is within 1% of d; from the whole ball, the projections leave it up to 5% above d).
START = 0.5


@dataclass
class Perturbation:
    """Per model g and example e: `distance` the smallest ε at which a flip was found (eps_max
    where `censored`), `censored` no flip found at eps_max (d > eps_max as far as PGD can tell),
    `pred` the clean prediction the flip moves away from."""

    distance: torch.Tensor  # float32 (G, E), in the units of the features
    censored: torch.Tensor  # bool (G, E)
    pred: torch.Tensor  # int64 (G, E)


def default_eps_max(x: torch.Tensor | np.ndarray, norm: str, scale: float = 1.0) -> float:
    """A search range from the data's own scale: for l2, `scale` × the mean distance of an
    example to the data mean (moving x that far reaches the mean, beyond which most predictions
    have long changed); for linf, `scale` × the mean per-feature standard deviation (a box of
    side σ around x holds points ≈ σ·√d away, the same scale as the l2 choice)."""
    _check_norm(norm)
    x = torch.as_tensor(x, dtype=torch.float32).flatten(1)
    if norm == "l2":
        return scale * float((x - x.mean(0)).norm(dim=1).mean())
    return scale * float(x.std(0).mean())


def min_perturbation(
    fn: StackedForward,
    params: Tensors,
    buffers: Tensors,
    x: torch.Tensor | np.ndarray,
    norm: str,
    eps_max: float,
    steps: int = STEPS,
    search_steps: int = SEARCH_STEPS,
    batch: int = BATCH,
    seed: int = 0,
    start: float = START,
    step_factor: float = STEP_FACTOR,
) -> Perturbation:
    """Carlini et al.'s adversarial robustness of every example x (E, *feature_shape) under each
    of the G models stacked in `params`: bisection on ε per pair over [0, eps_max], all pairs of
    a chunk of `batch` examples at once. Results on the CPU."""
    _check_norm(norm)
    if not eps_max > 0:
        raise ValueError(f"eps_max must be positive, got {eps_max}")
    params, x = _detached(params), _on_device(x, params)
    out = [
        _search_chunk(fn, params, buffers, xb, u, norm, eps_max, steps, search_steps, step_factor)
        for xb, u in _chunks(x, norm, batch, seed, start)
    ]
    return Perturbation(*(torch.cat(parts, 1).cpu() for parts in zip(*out)))


def critical(
    fn: StackedForward,
    params: Tensors,
    buffers: Tensors,
    x: torch.Tensor | np.ndarray,
    radius: float,
    steps: int = STEPS,
    batch: int = BATCH,
    seed: int = 0,
    start: float = START,
    step_factor: float = STEP_FACTOR,
) -> torch.Tensor:
    """bool (G, E): Arpit et al.'s critical sample test, True when PGD from a random start in the
    L∞ box of `radius` around x finds an input that model g labels differently from x."""
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    params, x = _detached(params), _on_device(x, params)
    out = []
    for xb, u in _chunks(x, "linf", batch, seed, start):
        pred = _predict(fn, params, buffers, xb)
        eps = torch.full(pred.shape, float(radius), device=xb.device)
        out.append(_pgd_flips(fn, params, buffers, xb, pred, eps, u, "linf", steps, step_factor).cpu())
    return torch.cat(out, 1)


def _search_chunk(fn, params, buffers, x, start, norm, eps_max, steps, search_steps, step_factor):
    """(distance, censored, pred) of one chunk: PGD at eps_max decides censoring, then each
    bisection step halves every pair's [lo, hi] (hi flipped or is eps_max; lo did not flip)."""
    pred = _predict(fn, params, buffers, x)

    def flips(eps: torch.Tensor) -> torch.Tensor:
        return _pgd_flips(fn, params, buffers, x, pred, eps, start, norm, steps, step_factor)

    hi = torch.full(pred.shape, float(eps_max), device=x.device)
    censored = ~flips(hi)
    lo = torch.zeros_like(hi)
    for _ in range(search_steps):
        mid = (lo + hi) / 2
        flipped = flips(mid)
        hi, lo = torch.where(flipped, mid, hi), torch.where(flipped, lo, mid)
    return torch.where(censored, float(eps_max), hi), censored, pred


def _pgd_flips(fn, params, buffers, x, pred, eps, start, norm, steps, step_factor) -> torch.Tensor:
    """bool (G, b): whether any PGD iterate in the ball of radius eps (G, b) around x (b, *f),
    from `start` (b, *f, in the unit ball) scaled by eps, is labelled other than pred (G, b)."""
    radius = eps.view(*eps.shape, *(1,) * (x.dim() - 1))
    alpha = step_factor * radius / steps
    delta = start.unsqueeze(0) * radius
    flipped = torch.zeros_like(pred, dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            margin = _margin(fn(params, buffers, x + delta), pred)
            (grad,) = torch.autograd.grad(margin.sum(), delta)
        flipped |= margin.detach() > 0
        if flipped.all():
            return flipped
        delta = _ascend(delta.detach(), grad, alpha, radius, norm)
    with torch.no_grad():
        return flipped | (_margin(fn(params, buffers, x + delta), pred) > 0)


def _ascend(delta, grad, alpha, radius, norm: str) -> torch.Tensor:
    """One PGD step: L∞ sign step clamped to the box; L2 normalised step projected to the ball."""
    if norm == "linf":
        return torch.minimum(torch.maximum(delta + alpha * grad.sign(), -radius), radius)
    delta = delta + alpha * grad / _norm(grad).clamp_min(1e-12)
    return delta * (radius / _norm(delta).clamp_min(1e-12)).clamp(max=1.0)


def _margin(logits: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """max_{c≠p} logit_c − logit_p per pair: positive iff the prediction moved off p."""
    p = pred.unsqueeze(-1)
    own = logits.gather(-1, p).squeeze(-1)
    return logits.scatter(-1, p, float("-inf")).amax(-1) - own


def _predict(fn, params, buffers, x) -> torch.Tensor:
    """int64 (G, b): each model's prediction on the clean chunk x (b, *f)."""
    G = next(iter(params.values())).shape[0]
    with torch.no_grad():
        return fn(params, buffers, x.expand(G, *x.shape)).argmax(-1)


def _chunks(x: torch.Tensor, norm: str, batch: int, seed: int, start: float) -> Iterator[tuple[torch.Tensor, ...]]:
    """(x[a:a+batch], its random starts in the ball of radius `start`) for each chunk."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if len(x) == 0:
        raise ValueError("x holds no examples")
    if not 0 <= start <= 1:
        raise ValueError(f"start must be in [0, 1] (a fraction of ε), got {start}")
    for a in range(0, len(x), batch):
        xb = x[a : a + batch]
        yield xb, start * _random_starts(xb.shape, a, norm, seed).to(xb.device)


def _random_starts(shape: torch.Size, first: int, norm: str, seed: int) -> torch.Tensor:
    """float32 (b, *f): example e's start in the unit ball of `norm`, from a generator seeded
    by (seed, e): uniform in the box for linf, uniform in the ball for l2."""
    d = math.prod(shape[1:])
    rows = []
    for e in range(first, first + shape[0]):
        rng = np.random.default_rng([seed, e])
        if norm == "linf":
            rows.append(rng.uniform(-1.0, 1.0, d))
        else:
            g = rng.standard_normal(d)
            rows.append(g / max(np.linalg.norm(g), 1e-12) * rng.random() ** (1.0 / d))
    return torch.from_numpy(np.asarray(rows, np.float32).reshape(shape))


def _norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm over the feature dims of (G, b, *f), shaped to broadcast against it."""
    return t.flatten(2).norm(dim=-1).view(*t.shape[:2], *(1,) * (t.dim() - 2))


def _detached(params: Tensors) -> Tensors:
    return {k: v.detach() for k, v in params.items()}


def _on_device(x: torch.Tensor | np.ndarray, params: Tensors) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=next(iter(params.values())).device)


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def trace_distances(
    fn: StackedForward, params: Tensors, buffers: Tensors, x: np.ndarray, seed: int
) -> tuple[dict, dict]:
    """What the trainer records for a job with the `adversarial` metrics: ({trace field:
    distance float32 (G, n)} for both norms, {norm: eps_max}). eps_max comes from the data alone
    (`default_eps_max`), so every shard searches the same range."""
    fields, eps = {}, {}
    for norm in NORMS:
        eps[norm] = default_eps_max(x, norm)
        found = min_perturbation(fn, params, buffers, x, norm, eps[norm], seed=seed)
        fields[f"adv_{norm}"] = found.distance.numpy().astype(np.float32)
    return fields, eps
