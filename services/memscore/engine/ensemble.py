"""Train G subset models at once, and record what each predicts (a `Trace`).

The G models are one stacked set of parameters (`torch.func.stack_module_state`); one
`vmap(functional_call)` runs all of them on a (G, B, ...) batch in which row g holds model
g's own minibatch drawn from its own subset. Optimisers are elementwise (AdamW, SGD), so one
optimiser over the stacked tensors *is* G independent optimisers, and the loss is the sum of
the G per-model means, so each slice's gradient is its own model's gradient. All data stay
resident on the device; nothing crosses to the host until the trace.

Reproducibility: model k's subset, initial weights and batch order come from generators
seeded by (seed, k) (`subsets.model_seed`), so model k trained in any shard, or alone by the
plain loop in `reference.py`, starts and proceeds identically. Augmentation draws (images only)
are per shard, seeded by (seed, first model id).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from .datasets import Dataset
from .models import build_model, default_arch
from .subsets import AUGMENT, BATCHES, INIT, model_seed, subset_indices
from .traces import Trace


class Cancelled(Exception):
    """`should_stop()` returned True during training."""


@dataclass(frozen=True)
class Recipe:
    """How one subset model is trained. Training length is max(epochs, min_steps): small
    subsets get enough optimisation steps to fit their data (labels noise included), as the
    paper's models do (mean in-sample accuracy near 100%)."""

    epochs: int  # passes over the model's own subset
    min_steps: int  # at least this many optimisation steps, whatever the subset size
    batch_size: int  # examples per model per step
    lr: float  # peak learning rate (AdamW), after linear warm-up
    weight_decay: float  # AdamW decoupled decay
    warmup: float  # fraction of steps with linear warm-up; then linear decay to 0
    augment: bool  # images of 16 px and more: random translation by size/8 px (reflect pad), optional flip
    flip: bool  # horizontal flips (off for digits, where a flip changes meaning)


RECIPES = {
    "mlp": Recipe(
        epochs=60, min_steps=1500, batch_size=64, lr=2e-3, weight_decay=0.0, warmup=0.05, augment=False, flip=False
    ),
    "cnn1d": Recipe(
        epochs=100, min_steps=1500, batch_size=64, lr=3e-3, weight_decay=0.0, warmup=0.05, augment=False, flip=False
    ),
    "resnet": Recipe(
        epochs=40, min_steps=1000, batch_size=64, lr=2e-3, weight_decay=0.0, warmup=0.05, augment=True, flip=False
    ),
}


def resolve_arch(arch: str, ds: Dataset) -> str:
    return default_arch(ds.kind) if arch in ("", "auto") else arch


def make_recipe(arch: str, epochs: int = 0, batch_size: int = 0, lr: float = 0.0) -> Recipe:
    """The arch's default recipe with the user's non-zero overrides. An explicit `epochs`
    drops the min_steps floor: the user asked for exactly that much training."""
    r = RECIPES[arch]
    if epochs:
        r = replace(r, epochs=epochs, min_steps=0)
    if batch_size:
        r = replace(r, batch_size=batch_size)
    if lr:
        r = replace(r, lr=lr)
    return r


def total_steps(recipe: Recipe, subset_size: int) -> int:
    batch = min(recipe.batch_size, subset_size)
    return max(recipe.epochs * math.ceil(subset_size / batch), recipe.min_steps)


def lr_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction, then linear decay to zero."""
    w = max(1, int(warmup * steps))
    if step < w:
        return (step + 1) / w
    return max(0.0, (steps - step) / max(1, steps - w))


def resolve_device(device: str = "auto") -> torch.device:
    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def init_model(arch: str, ds: Dataset, seed: int, k: int) -> torch.nn.Module:
    """Model k's initial weights: the module's own initialisers under a generator seeded by
    (seed, k), built on the CPU so the weights do not depend on the device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed(seed, k, INIT))
        return build_model(arch, ds.feature_shape, ds.num_classes)


class BatchStream:
    """Model k's training example indices: consecutive epochs of fresh permutations of its
    subset, cut into batches of B (a batch may straddle two epochs, so every step has exactly
    B examples). Drawn in blocks so memory stays O(block·B) however long training is."""

    def __init__(self, subset: np.ndarray, batch_size: int, seed: int, k: int):
        self.subset = torch.from_numpy(subset)
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(model_seed(seed, k, BATCHES))
        self.pending = self.subset[:0]

    def next(self, steps: int) -> torch.Tensor:
        """The next `steps` batches, (steps, B)."""
        need = steps * self.batch_size
        parts, have = [self.pending], len(self.pending)
        while have < need:
            parts.append(self.subset[torch.randperm(len(self.subset), generator=self.gen)])
            have += len(self.subset)
        flat = torch.cat(parts)
        self.pending = flat[need:]
        return flat[:need].view(steps, self.batch_size)


def augment_images(x: torch.Tensor, gen: torch.Generator, flip: bool, pad: int = 2) -> torch.Tensor:
    """Random translation by up to `pad` pixels (reflect padding) and optional horizontal flip,
    per example, for a (N, C, H, W) batch, on its device."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    out = xp[torch.arange(n, device=x.device)[:, None, None], :, rows, cols]  # (N, H, W, C)
    out = out.permute(0, 3, 1, 2)
    if flip:
        do = torch.rand(n, generator=gen, device=x.device) < 0.5
        out = torch.where(do[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


@dataclass
class TrainOutput:
    trace: Trace
    weights: dict[str, torch.Tensor] | None  # stacked (G, ...) state dict on the CPU, if kept


def cpu_group_size(arch: str) -> int:
    """Models trained at once on the CPU, measured on 2 cores (see docs/performance.md): per
    model, G=16 is fastest for both the cnn1d and the MLP (activations stay in cache; a larger
    G only adds memory traffic). GPUs take the whole shard at once."""
    return 16


def train_ensemble(
    ds: Dataset,
    arch: str,
    model_ids: list[int],
    ratio: float,
    seed: int,
    recipe: Recipe,
    device: str | torch.device = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_weights: bool = False,
    eval_batch: int = 0,
    group_size: int = 0,
) -> TrainOutput:
    """Train models `model_ids` on their subsets; return their trace. The models are trained
    `group_size` at a time (0 = all at once on a GPU, `cpu_group_size(arch)` on the CPU); the
    result does not depend on the grouping."""
    dev = resolve_device(device) if isinstance(device, str) else device
    if not group_size:
        group_size = len(model_ids) if dev.type == "cuda" else cpu_group_size(arch)
    if not eval_batch:  # examples per evaluation pass; on the CPU small passes stay in cache (256: 3x faster than 2048)
        eval_batch = 8192 if dev.type == "cuda" else 256
    if len(model_ids) <= group_size:
        return _train_group(
            ds, arch, model_ids, ratio, seed, recipe, dev, progress, should_stop, keep_weights, eval_batch
        )
    outs = []
    groups = [model_ids[a : a + group_size] for a in range(0, len(model_ids), group_size)]
    for gi, ids in enumerate(groups):

        def group_progress(step, steps, gi=gi):
            if progress is not None:
                progress(gi * steps + step, len(groups) * steps)

        outs.append(
            _train_group(ds, arch, ids, ratio, seed, recipe, dev, group_progress, should_stop, keep_weights, eval_batch)
        )
    return _concat(outs)


def _concat(outs: list[TrainOutput]) -> TrainOutput:
    t = [o.trace for o in outs]
    meta = dict(t[0].meta)
    for key in ("train_seconds", "total_seconds"):
        meta[key] = sum(x.meta[key] for x in t)
    trace = Trace(
        model_ids=np.concatenate([x.model_ids for x in t]),
        masks=np.concatenate([x.masks for x in t]),
        train_correct=np.concatenate([x.train_correct for x in t]),
        train_prob=np.concatenate([x.train_prob for x in t]),
        test_correct=np.concatenate([x.test_correct for x in t]),
        test_prob=np.concatenate([x.test_prob for x in t]),
        meta=meta,
    )
    weights = None
    if outs[0].weights is not None:
        weights = {k: torch.cat([o.weights[k] for o in outs]) for k in outs[0].weights}
    return TrainOutput(trace=trace, weights=weights)


def _train_group(
    ds: Dataset,
    arch: str,
    model_ids: list[int],
    ratio: float,
    seed: int,
    recipe: Recipe,
    dev: torch.device,
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
    keep_weights: bool,
    eval_batch: int,
) -> TrainOutput:
    """Train models `model_ids` at once."""
    t0 = time.perf_counter()
    G, n = len(model_ids), ds.n_train
    subsets = [subset_indices(n, ratio, seed, k) for k in model_ids]
    masks = np.zeros((G, n), dtype=bool)
    for g, s in enumerate(subsets):
        masks[g, s] = True
    s_size = len(subsets[0])
    batch = min(recipe.batch_size, s_size)
    steps = total_steps(recipe, s_size)

    x_train = torch.from_numpy(ds.x_train).to(dev)
    y_train = torch.from_numpy(ds.y_train).to(dev)
    models = [init_model(arch, ds, seed, k) for k in model_ids]
    params, buffers = stack_module_state(models)
    params = {k: v.to(dev).requires_grad_() for k, v in params.items()}
    buffers = {k: v.to(dev) for k, v in buffers.items()}
    base = copy.deepcopy(models[0]).to("meta")
    del models

    def fmodel(p, b, x):
        return functional_call(base, (p, b), (x,))

    train_fn = torch.vmap(fmodel, in_dims=(0, 0, 0))
    eval_fn = torch.vmap(fmodel, in_dims=(0, 0, None))

    streams = [BatchStream(s, batch, seed, k) for s, k in zip(subsets, model_ids)]
    block = 64  # steps of batch indices drawn and moved to the device at a time
    opt = torch.optim.AdamW(params.values(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    aug_gen = torch.Generator(device=dev).manual_seed(model_seed(seed, model_ids[0], AUGMENT))
    use_amp = dev.type == "cuda"
    # translations of size/8 pixels (4 px on 32×32, as for CIFAR); none below 16 px, where even
    # one pixel is a large part of the image (8×8 digits)
    pad = ds.feature_shape[-1] // 8 if ds.kind == "image" else 0
    augment = recipe.augment and pad >= 2

    check_every = max(1, steps // 100)
    for step in range(steps):
        if should_stop is not None and step % check_every == 0 and should_stop():
            raise Cancelled(f"stopped at step {step} of {steps}")
        for group in opt.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, steps, recipe.warmup)
        if step % block == 0:
            order = torch.stack([st.next(min(block, steps - step)) for st in streams], dim=1).to(dev)
        idx = order[step % block]  # (G, B)
        xb = x_train[idx]
        if augment:
            xb = augment_images(xb.flatten(0, 1), aug_gen, recipe.flip, pad).view_as(xb)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = train_fn(params, buffers, xb)  # (G, B, C)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y_train[idx].flatten(), reduction="sum") / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None and (step % check_every == 0 or step == steps - 1):
            progress(step + 1, steps)
    t_train = time.perf_counter() - t0

    with torch.no_grad():
        train_correct, train_prob = _evaluate(
            eval_fn, params, buffers, ds.x_train, ds.y_train, dev, eval_batch, use_amp
        )
        test_correct, test_prob = _evaluate(eval_fn, params, buffers, ds.x_test, ds.y_test, dev, eval_batch, use_amp)
    t_total = time.perf_counter() - t0

    trace = Trace(
        model_ids=np.asarray(model_ids, dtype=np.int64),
        masks=masks,
        train_correct=train_correct,
        train_prob=train_prob,
        test_correct=test_correct,
        test_prob=test_prob,
        meta={
            "arch": arch,
            "recipe": asdict(recipe),
            "ratio": ratio,
            "seed": seed,
            "steps": steps,
            "device": str(dev),
            "train_seconds": t_train,
            "total_seconds": t_total,
        },
    )
    weights = None
    if keep_weights:
        weights = {k: v.detach().cpu() for k, v in {**params, **buffers}.items()}
    return TrainOutput(trace=trace, weights=weights)


def _evaluate(eval_fn, params, buffers, x: np.ndarray, y: np.ndarray, dev, eval_batch: int, use_amp: bool):
    """Per model and example: does it predict the true label, and with what probability."""
    correct, prob = [], []
    for a in range(0, len(x), eval_batch):
        xb = torch.from_numpy(x[a : a + eval_batch]).to(dev)
        yb = torch.from_numpy(y[a : a + eval_batch]).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = eval_fn(params, buffers, xb).float()  # (G, E, C)
        p = logits.softmax(-1)
        correct.append((logits.argmax(-1) == yb).cpu())
        prob.append(p.gather(-1, yb.expand(p.shape[0], -1).unsqueeze(-1)).squeeze(-1).cpu())
    return torch.cat(correct, 1).numpy(), torch.cat(prob, 1).numpy().astype(np.float32)
