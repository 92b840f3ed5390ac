"""Train G subset models at once with DP-SGD, and account for their privacy.

This is the training half of Carlini, Erlingsson & Papernot's "privacy" prototypicality metric
(Distribution Density, Tails, and Outliers in Machine Learning, 2019): train models under
differential privacy at a few noise levels; an example that is still classified correctly at a
strong privacy level (small ε) is prototypical, one learned only at weak levels is an outlier.
A caller trains one group per noise level (`train_dp_group`), converts each level to ε
(`dp_epsilon`, or picks the noise for a target ε with `noise_for_epsilon`), and per example
takes the smallest ε at which it is classified correctly.

Each step is DP-SGD (Abadi et al., Deep Learning with Differential Privacy, 2016, Alg. 1) for
every model g at once: the per-example gradients g_b of the loss on each of the model's B
examples (`torch.func`: vmap over models of vmap over examples of grad), each clipped to L2 norm
C over all the model's parameters together, summed, plus Gaussian noise, over B:

    ĝ = (Σ_b g_b · min(1, C / ‖g_b‖) + N(0, σ²C² I)) / B,

then an AdamW step on ĝ (post-processing: any optimiser keeps the guarantee). AdamW, not the
paper's SGD, because (a) it is the recipe's optimiser, so the recipe's learning rate and schedule
apply unchanged, and σ = 0 with C = ∞ gives exactly the ensemble trainer's models (ensemble.py);
(b) Adam's update is invariant to the gradient's scale, so C need not be tuned jointly with the
learning rate as DP-SGD with plain SGD requires. σ = 0 is plain clipped training (no privacy).
The training is float32 on every device (clipping compares norms; no bf16 autocast); evaluation
is ensemble._evaluate's. Per step it holds the G·B per-example gradients: 4·G·B·P bytes for P
parameters per model (16 MLPs of 79k parameters at B = 64: 0.3 GB). Cost, measured on one CPU
thread for those 16 MLPs on mnist1d: 0.22 s a step, 11x the ensemble trainer's 0.02 s; writing
and reading the per-example gradients is most of it.

Reproducibility: model k's subset, initial weights and batch order are the ensemble trainer's
(same streams, `subsets.model_seed`); its noise comes from a CPU generator seeded by (seed, k,
NOISE), P normals per step in parameter order, so model k is the same in any group on any device.

Accounting: the Rényi-DP accountant of the sampled Gaussian mechanism (Mironov, Rényi
Differential Privacy, 2017; Mironov, Talwar & Zhang 2019), as implemented by Opacus (Meta), with
its RDP-to-(ε, δ) conversion (Balle et al. 2020, Thm. 21), minimised over RDP orders up to 1024.
Assumptions: (1) the guarantee is with respect to the model's own subset S_k (adding or removing
one of its examples); examples outside S_k are never touched. (2) The accountant assumes Poisson
subsampling at rate q = B / |S_k|; memscore's batches are fixed-size slices of shuffled epochs, so
the result treats them as Poisson samples at that rate — the usual approximation of DP-SGD
implementations with shuffled batches (e.g. Opacus without Poisson sampling, TF Privacy's
tutorials), not a proof for shuffling. (3) It covers the trained weights; the correctness this
module reports is computed from the weights and the examples themselves, a measurement of the
private models, not itself a private release.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .datasets import Dataset
from .ensemble import Cancelled, GroupBatches, _stack_models, evaluated_trace, lr_factor, resolve_device
from .models import build_model
from .recipes import Recipe, total_steps
from .subsets import model_seed, subset_indices, subset_size
from .traces import Trace

NOISE = 5  # subsets.model_seed purpose of the DP noise stream (subsets.py uses 0..4)

# RDP orders α the (ε, δ) conversion is minimised over: Opacus's integer defaults (≤ 63) and
# larger ones, which give the bound at large σ (with α ≤ 63 alone, ε cannot fall below ~0.1 at
# δ=1e-5), and fractional ones below 10 every 0.25 rather than Opacus's 0.1: a fractional order's
# series converges slowly at large q (0.004 s an order at q = 0.5, 30x an integer one), and ε moves
# by under 1% (Abadi et al.'s setting: 1.035 either way).
RDP_ORDERS = [1 + x / 4.0 for x in range(1, 36)] + list(range(10, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024]


@dataclass
class DPOutput:
    trace: Trace  # as ensemble.train_ensemble's: masks, train/test correctness and margins per model
    noise_multiplier: float  # σ: noise std over the clip norm
    clip_norm: float  # C: per-example L2 bound over all of a model's parameters
    sample_rate: float  # q = B / |S_k| (the smallest subset of the plan), as the accountant sees it
    steps: int

    def epsilon(self, delta: float) -> float:
        """ε of every model of the group at `delta` (dp_epsilon)."""
        return dp_epsilon(self.noise_multiplier, self.sample_rate, self.steps, delta)


def train_dp_group(
    ds: Dataset,
    arch: str,
    model_ids: list[int],
    ratio: float,
    seed: int,
    recipe: Recipe,
    noise_multiplier: float,
    clip_norm: float,
    device: str | torch.device = "cpu",
    plan: str = "random",
    eval_batch: int = 256,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DPOutput:
    """Train models `model_ids` at once with DP-SGD (σ = `noise_multiplier`, C = `clip_norm`) on
    the ensemble trainer's subsets, initial weights, batches and schedule; evaluate them."""
    if not clip_norm > 0 or not noise_multiplier >= 0 or (noise_multiplier > 0 and math.isinf(clip_norm)):
        raise ValueError(
            f"need clip_norm > 0 (finite with noise), noise_multiplier >= 0; got {clip_norm}, {noise_multiplier}"
        )
    t0 = time.perf_counter()
    dev = resolve_device(device) if isinstance(device, str) else device
    n = ds.n_train
    subsets = [subset_indices(n, ratio, seed, k, plan) for k in model_ids]
    batch, steps, q = dp_schedule(n, ratio, plan, recipe)
    params, buffers, _, eval_fn = _stack_models(arch, ds, seed, model_ids, dev)
    with torch.device("meta"):  # the structure functional_call needs; on meta, initialisers draw nothing
        base = build_model(arch, ds.feature_shape, ds.num_classes)
    inputs = GroupBatches(ds, subsets, model_ids, batch, seed, recipe, dev, steps)
    noise = NoiseStream(sum(p[0].numel() for p in params.values()), seed, model_ids)
    opt = torch.optim.AdamW(params.values(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    check_every = max(1, steps // 100)
    for step in range(steps):
        if should_stop is not None and step % check_every == 0 and should_stop():
            raise Cancelled(f"stopped at step {step} of {steps}")
        for group in opt.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, steps, recipe.warmup)
        z = noise.next().to(dev) if noise_multiplier > 0 else None
        xb, yb = inputs(step)
        for name, g in private_gradients(base, params, buffers, xb, yb, clip_norm, noise_multiplier, z).items():
            params[name].grad = g
        opt.step()
        if progress is not None and (step % check_every == 0 or step == steps - 1):
            progress(step + 1, steps)
    meta = {"arch": arch, "recipe": asdict(recipe), "ratio": ratio, "plan": plan, "seed": seed, "steps": steps}
    meta |= {"device": str(dev), "train_seconds": time.perf_counter() - t0, "optimizer": "adamw"}
    meta |= {"noise_multiplier": noise_multiplier, "clip_norm": clip_norm, "sample_rate": q}
    trace = _trace(ds, eval_fn, params, buffers, model_ids, subsets, dev, eval_batch, meta)
    trace.meta["total_seconds"] = time.perf_counter() - t0
    return DPOutput(trace=trace, noise_multiplier=noise_multiplier, clip_norm=clip_norm, sample_rate=q, steps=steps)


def private_gradients(
    base: torch.nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    clip_norm: float,
    noise_multiplier: float = 0.0,
    z: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One DP-SGD gradient per model, ĝ = (Σ_b clip_C(g_b) + σC·z) / B: (G, *shape) per
    parameter, for the models' batches x (G, B, ...), y (G, B) and standard normals z (G, P),
    cut into the parameters in their (stack_module_state) order; no noise if σ = 0."""
    summed = clipped_sum(per_example_gradients(base, params, buffers, x, y), clip_norm)
    out, at = {}, 0
    for name, s in summed.items():
        size = s[0].numel()
        if noise_multiplier > 0:
            s = s + noise_multiplier * clip_norm * z[:, at : at + size].view_as(s)
        out[name] = s / x.shape[1]
        at += size
    return out


def per_example_gradients(
    base: torch.nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """∇_θ CE(f_θg(x_gb), y_gb) for every model g and example b: (G, B, *shape) per parameter,
    from stacked (G, ...) `params`/`buffers`, inputs (G, B, ...) and labels (G, B). `base` is
    the module (on the meta device) that `functional_call` runs with each model's weights."""

    def loss(p, b, xi, yi):
        return F.cross_entropy(functional_call(base, (p, b), (xi[None],)), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, None, 0, 0))
    detached = {k: v.detach() for k, v in params.items()}  # no graph back to the optimiser's tensors
    return vmap(per_example, in_dims=(0, 0, 0, 0))(detached, buffers, x, y)


def per_example_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """‖g_b‖ over all of a model's parameters together: (G, B)."""
    per_param = [torch.linalg.vector_norm(g.flatten(2), dim=-1) for g in grads.values()]  # no (G, B, P) temporary
    return torch.linalg.vector_norm(torch.stack(per_param), dim=0)


def clipped_sum(grads: dict[str, torch.Tensor], clip_norm: float) -> dict[str, torch.Tensor]:
    """Σ_b g_b · min(1, C / ‖g_b‖) per model: (G, *shape) per parameter (Abadi et al., Alg. 1;
    the 1e-6 guards a zero gradient, as in Opacus)."""
    factor = (clip_norm / (per_example_norms(grads) + 1e-6)).clamp(max=1.0)  # (G, B)
    return {k: torch.einsum("gb,gb...->g...", factor, g) for k, g in grads.items()}


class NoiseStream:
    """The G models' DP noise, step by step: model k's P standard normals per step come from a
    CPU generator seeded by (seed, k, NOISE), whatever the group and the device."""

    def __init__(self, num_params: int, seed: int, model_ids: list[int]):
        self.num_params = num_params
        self.gens = [torch.Generator().manual_seed(model_seed(seed, k, NOISE)) for k in model_ids]

    def next(self) -> torch.Tensor:
        """One step's noise, (G, P) float32 on the CPU."""
        return torch.stack([torch.randn(self.num_params, generator=g) for g in self.gens])


def dp_schedule(n: int, ratio: float, plan: str, recipe: Recipe) -> tuple[int, int, float]:
    """(batch B, steps, sample rate q) of a DP group on n examples: the ensemble trainer's batch
    and step count for the plan's subset size, and q = B / |S_k| for the plan's smallest subset,
    as the accountant sees it (known before training, so a level's σ can be chosen for it)."""
    s_size = subset_size(n, ratio)  # the plan's size, as the ensemble trainer's
    batch = min(recipe.batch_size, s_size)
    return batch, total_steps(recipe, s_size), batch / smallest_subset(n, ratio, plan)


def smallest_subset(n: int, ratio: float, plan: str) -> int:
    """The plan's smallest |S_k|: a balanced pair's odd member has n − round(n/2) examples."""
    size = subset_size(n, ratio)
    return min(size, n - size) if plan == "balanced" else size


def _trace(ds: Dataset, eval_fn, params, buffers, model_ids, subsets, dev, eval_batch: int, meta: dict) -> Trace:
    """The models' trace, evaluated as ensemble._train_group evaluates its models."""
    masks = np.zeros((len(model_ids), ds.n_train), dtype=bool)
    for g, s in enumerate(subsets):
        masks[g, s] = True
    return evaluated_trace(ds, eval_fn, params, buffers, model_ids, masks, dev, eval_batch, {}, meta)


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε of `steps` compositions of the sampled Gaussian mechanism (noise σ = `noise_multiplier`,
    Poisson rate q = `sample_rate`) at `delta`: Opacus's RDP accountant (Mironov 2017), its
    conversion minimised over RDP_ORDERS. ∞ for σ = 0, 0 for no steps."""
    from opacus.accountants.analysis import rdp  # imported here: 2 s, and only accounting needs it

    if not 0 < sample_rate <= 1 or steps < 0 or noise_multiplier < 0 or not 0 < delta < 1:
        raise ValueError(
            f"need 0 < q <= 1, steps >= 0, σ >= 0, 0 < δ < 1; got {sample_rate}, {steps}, {noise_multiplier}, {delta}"
        )
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    orders = RDP_ORDERS
    curve = rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
    with warnings.catch_warnings():  # "optimal order is the largest alpha": still a valid (looser) bound
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp.get_privacy_spent(orders=orders, rdp=curve, delta=delta)
    return float(eps)


def noise_for_epsilon(
    target_eps: float, sample_rate: float, steps: int, delta: float, rtol: float = 1e-3, max_sigma: float = 1e4
) -> float:
    """The smallest σ (to a relative `rtol`, rounded up) with dp_epsilon(σ, q, steps, δ) ≤
    `target_eps`: bisection, ε being decreasing in σ. ValueError if even `max_sigma` is not enough."""
    if not target_eps > 0:
        raise ValueError(f"target ε must be positive; got {target_eps}")
    lo, hi = 0.0, 1.0
    while dp_epsilon(hi, sample_rate, steps, delta) > target_eps:
        lo, hi = hi, 2 * hi
        if hi > max_sigma:
            raise ValueError(
                f"ε = {target_eps} at δ = {delta} needs σ > {max_sigma} for q = {sample_rate}, {steps} steps"
            )
    while hi - lo > rtol * hi:
        mid = (lo + hi) / 2
        if dp_epsilon(mid, sample_rate, steps, delta) > target_eps:
            lo = mid
        else:
            hi = mid
    return hi
