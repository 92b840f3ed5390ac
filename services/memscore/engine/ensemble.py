"""Train G subset models at once, and record what each predicts (a `Trace`).

The G models are one stacked set of parameters (`torch.func.stack_module_state`); one
`vmap(functional_call)` runs all of them on a (G, B, ...) batch in which row g holds model
g's own minibatch drawn from its own subset. Optimisers are elementwise (AdamW, SGD), so one
optimiser over the stacked tensors *is* G independent optimisers, and the loss is the sum of
the G per-model means, so each slice's gradient is its own model's gradient. All data stay
resident on the device; nothing crosses to the host until the trace.

Reproducibility: model k's subset, initial weights, batch order and augmentation (images
only: translations and flips) come from CPU generators seeded by (seed, k, purpose)
(`subsets.model_seed`), so model k trained in any shard, in a group of any size, on any device,
or alone by the plain loop in `reference.py`, starts and proceeds identically. The per-model
draws are made a block of steps at a time, stacked and moved to the device once per block;
each step then augments the whole (G, B, ...) batch with one pad and one gather (batches.py).
A recipe with shared batches gives every model of the group one batch instead, each counting
its own subset's members (shared_batches.py). How a step executes (fused AdamW, compile,
bf16) and per-model early stopping are in step_options.py.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from .batches import AugmentStream, BatchStream, GroupBatches, augment_images, augment_pad  # noqa: F401  (re-exported)
from .datasets import Dataset
from .models import build_model, default_arch
from .prototypes import JACKKNIFE_GROUPS, group_of
from .recipes import RECIPES, Recipe, make_recipe, total_steps  # noqa: F401  (re-exported: the trainer's API)
from .shared_batches import SharedBatches, linear_heads, masked_loss
from .step_options import FIT_LOSS, Compiled, FitStop, Speed  # noqa: F401  (re-exported: the trainer's API)
from .subsets import INIT, masks_of, model_seed, subset_indices, subset_size
from .traces import ADV_FIELDS, GROUP_FIELDS, SNAP_FIELDS, Trace


class Cancelled(Exception):
    """`should_stop()` returned True during training."""


def resolve_arch(arch: str, ds: Dataset) -> str:
    return default_arch(ds.kind) if arch in ("", "auto") else arch


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


@dataclass
class TrainOutput:
    trace: Trace
    weights: dict[str, torch.Tensor] | None  # stacked (G, ...) state dict on the CPU, if kept


# Models trained at once on the CPU, whatever the model: measured on 2 cores (see
# docs/performance.md), G=16 is fastest per model for both the cnn1d and the MLP (activations
# stay in cache; a larger G only adds memory traffic). GPUs take the whole shard at once, as
# far as its memory allows, and so does the CPU with shared batches (shared_batches.py).
CPU_GROUP_SIZE = 16
# The share of the device's free memory a group is planned to use: cost.group_memory's estimate
# is within ~2x of the measured peak (tests/engine/test_cost.py), and others may share the device.
MEMORY_SAFETY = 0.5


def free_memory(dev: torch.device) -> int:
    """Bytes free on `dev` now: the GPU's free memory, or the host's available memory."""
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def group_cap(dev: torch.device, recipe: Recipe, shard_models: int) -> int:
    """The most of a shard's models trained at once, before memory is considered: all of them
    on a GPU, and on the CPU with shared batches (which gather nothing per model: the more
    models a step, the better); CPU_GROUP_SIZE otherwise."""
    return shard_models if dev.type == "cuda" or recipe.shared_batches else CPU_GROUP_SIZE


def fitting_group_size(
    ds: Dataset, arch: str, batch: int, eval_batch: int, metrics, dev: torch.device, cap: int, free: int | None = None
) -> int:
    """The most models, at most `cap`, whose estimated peak memory (cost.group_memory) fits in
    MEMORY_SAFETY of the `free` bytes (default: what `dev` has free now); at least 1. Models
    without an analytic cost (torchvision/<name>, plugins) are measured on one built model."""
    from .cost import DatasetFacts, group_memory
    from .registry import measured_cost

    facts = DatasetFacts(ds.n_train, ds.n_test, ds.num_classes, ds.kind, tuple(ds.feature_shape))
    model = measured_cost(arch, facts.feature_shape, facts.num_classes)
    fixed, per_model = group_memory(arch, facts, batch, eval_batch, metrics, model)
    free = free_memory(dev) if free is None else free
    return max(1, min(cap, int((free * MEMORY_SAFETY - fixed) // per_model)))


def is_out_of_memory(e: BaseException) -> bool:
    """A device (CUDA) or host allocation that failed."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


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
    plan: str = "random",
    metrics: tuple[str, ...] = (),
    speed: Speed = Speed(),
) -> TrainOutput:
    """Train models `model_ids` on their subsets (`subsets.PLANS`); return their trace. The
    models are trained `group_size` at a time (0 = as many as the device's free memory allows
    by cost.group_memory's estimate, at most all of them on a GPU and `CPU_GROUP_SIZE` on the
    CPU; smaller groups after an out-of-memory error); the result does not depend on the
    grouping. `metrics`: opt-in groups (catalog.OPT_IN_METRICS) measured on the trained models
    before they are dropped. `speed`: how the steps are executed (`Speed`). `progress(step,
    steps)` counts the shard's steps as if all its models trained at once."""
    dev = resolve_device(device) if isinstance(device, str) else device
    if not eval_batch:  # examples per evaluation pass; on the CPU small passes stay in cache (256: 3x faster than 2048)
        eval_batch = 8192 if dev.type == "cuda" else 256
    if not group_size:
        cap = group_cap(dev, recipe, len(model_ids))
        batch = min(recipe.batch_size, subset_size(ds.n_train, ratio))
        group_size = fitting_group_size(ds, arch, batch, eval_batch, metrics, dev, cap)

    def train(ids: list[int], report) -> TrainOutput:
        return _train_group(
            ds, arch, ids, ratio, seed, recipe, dev, report, should_stop, keep_weights, eval_batch, plan, metrics, speed
        )

    # Groups in order; a group that runs out of memory is retried, with everything after it, in
    # groups of half its size (down to one model). Models do not depend on their group, so
    # neither does the result.
    pending, outs, done, splits = list(model_ids), [], 0, 0
    while pending:
        ids = pending[:group_size]

        def group_progress(step, steps, done=done, g=len(ids)):
            if progress is not None:  # in steps of the whole shard: (models done + this group's share) / models
                progress((done * steps + g * step) // len(model_ids), steps)

        try:
            outs.append(train(ids, group_progress))
        except Exception as e:
            if not is_out_of_memory(e) or group_size == 1:
                raise
            group_size, splits = (group_size + 1) // 2, splits + 1
            _release(dev)
            continue
        pending, done = pending[len(ids) :], done + len(ids)
    out = outs[0] if len(outs) == 1 else _concat(outs)
    out.trace.meta.update(group_size=group_size, oom_splits=splits)
    return out


def _release(dev: torch.device) -> None:
    """Return what a failed group held to the allocator (and, on a GPU, to the device)."""
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _concat(outs: list[TrainOutput]) -> TrainOutput:
    t = [o.trace for o in outs]
    meta = dict(t[0].meta)
    for key in ("train_seconds", "total_seconds", "adversarial_seconds", "compile_seconds"):
        if key in meta:
            meta[key] = sum(x.meta[key] for x in t)
    if "fit_stop_steps" in meta:
        meta["fit_stop_steps"] = [s for x in t for s in x.meta["fit_stop_steps"]]
    held = [x.heldout_prob_sum for x in t]
    groups = {k: sum(getattr(x, k) for x in t) for k in GROUP_FIELDS}
    groups.update({k: np.concatenate([getattr(x, k) for x in t]) for k in ADV_FIELDS if t[0].adv_l2 is not None})
    if t[0].snap_correct is not None:  # snapshots: members along axis 1
        groups.update({k: np.concatenate([getattr(x, k) for x in t], axis=1) for k in SNAP_FIELDS[:2]})
        groups["critical_final"] = np.concatenate([x.critical_final for x in t])
    trace = Trace(
        model_ids=np.concatenate([x.model_ids for x in t]),
        masks=np.concatenate([x.masks for x in t]),
        train_correct=np.concatenate([x.train_correct for x in t]),
        train_margin=np.concatenate([x.train_margin for x in t]),
        test_correct=np.concatenate([x.test_correct for x in t]),
        test_margin=np.concatenate([x.test_margin for x in t]),
        train_pred=np.concatenate([x.train_pred for x in t]),
        test_pred=np.concatenate([x.test_pred for x in t]),
        heldout_prob_sum=None if any(h is None for h in held) else np.sum(held, axis=0),
        **groups,
        meta=meta,
    )
    weights = None
    if outs[0].weights is not None:
        weights = {k: torch.cat([o.weights[k] for o in outs]) for k in outs[0].weights}
    return TrainOutput(trace=trace, weights=weights)


@dataclass
class GroupStep:
    """One optimisation step of a group's G models, as the trainer takes it (and
    calibrate.py times it): the step's inputs (each model's own batch, or one shared batch
    with each model's membership weights: Recipe.shared_batches), the stacked forward pass
    under bf16 autocast where enabled, the sum of the G models' own mean losses, and AdamW
    over the stacked parameters at the schedule's learning rate."""

    inputs: GroupBatches | SharedBatches
    opt: torch.optim.Optimizer
    recipe: Recipe
    steps: int
    batch: int  # examples per model per step
    forward: Callable  # (params, buffers, (G, B, ...)) -> (G, B, C)
    shared_forward: Callable  # (params, buffers, (B, ...)) -> (G, B, C)
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    dev: torch.device
    amp: bool

    @classmethod
    def build(cls, ds, subsets, masks, model_ids, ratio, seed, recipe, dev, params, buffers, forward, shared, speed):
        s_size = subset_size(ds.n_train, ratio)  # not len(subsets[0]): a balanced pair's odd member may have one less
        batch, steps = min(recipe.batch_size, s_size), total_steps(recipe, s_size)
        if recipe.shared_batches:  # one batch for all the models, each counting its own members
            if augment_pad(ds, recipe):
                raise ValueError("a recipe with shared_batches takes no augmentation")
            inputs = SharedBatches(ds, masks, batch, ratio, seed, dev, steps)
        else:
            inputs = GroupBatches(ds, subsets, model_ids, batch, seed, recipe, dev, steps, speed.channels_last)
        fused = {"fused": True} if speed.fused else {}
        opt = torch.optim.AdamW(params.values(), lr=recipe.lr, weight_decay=recipe.weight_decay, **fused)
        return cls(inputs, opt, recipe, steps, batch, forward, shared, params, buffers, dev, speed.amp(dev))

    def __call__(self, step: int, fit_stop: FitStop | None = None) -> bool:
        """Take step `step`; False, with nothing done, once every model has stopped (FitStop)."""
        for group in self.opt.param_groups:
            group["lr"] = self.recipe.lr * lr_factor(step, self.steps, self.recipe.warmup)
        loss = self._loss(step, fit_stop)
        if loss is None:
            return False
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if fit_stop is not None:
            fit_stop.hold()
        return True

    def _loss(self, step: int, fit_stop: FitStop | None) -> torch.Tensor | None:
        if self.recipe.shared_batches:
            xb, yb, weights = self.inputs(step)
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.shared_forward(self.params, self.buffers, xb)  # (G, Bs, C): one input, G weight sets
            return masked_loss(logits, yb, weights)
        xb, yb = self.inputs(step)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.forward(self.params, self.buffers, xb)  # (G, B, C)
        if fit_stop is None:
            return F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum") / self.batch
        each = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none")
        fit_stop.see(each.view(yb.shape), step)
        return None if fit_stop.all_stopped else each.sum() / self.batch


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
    plan: str = "random",
    metrics: tuple[str, ...] = (),
    speed: Speed = Speed(),
) -> TrainOutput:
    """Train models `model_ids` at once."""
    t0 = time.perf_counter()
    n = ds.n_train
    subsets = [subset_indices(n, ratio, seed, k, plan) for k in model_ids]
    masks = masks_of(subsets, n)
    params, buffers, train_fn, eval_fn = _stack_models(arch, ds, seed, model_ids, dev)
    step_fn, eval_step = _compiled_fns(train_fn, eval_fn) if speed.compile else (train_fn, eval_fn)
    compile_before = step_fn.seconds + eval_step.seconds if speed.compile else 0.0
    take = GroupStep.build(
        ds, subsets, masks, model_ids, ratio, seed, recipe, dev, params, buffers, step_fn, eval_step, speed
    )
    steps, epoch = take.steps, -(-subset_size(n, ratio) // take.batch)  # an epoch's steps of its own subset
    check_every = max(1, steps // 100)
    snaps = _snapshots(ds, metrics, steps, epoch, seed, train_fn, eval_fn, params, buffers, dev, eval_batch)
    # per-model early stopping (not with snapshots, which follow the whole schedule, nor shared batches)
    stoppable = recipe.stop_when_fit and snaps is None and not recipe.shared_batches
    fit_stop = FitStop(params, epoch) if stoppable else None
    for step in range(steps):
        if should_stop is not None and step % check_every == 0 and should_stop():
            raise Cancelled(f"stopped at step {step} of {steps}")
        if not take(step, fit_stop):
            break
        if snaps is not None and snaps.due(step + 1):
            snaps.take()
        if progress is not None and (step % check_every == 0 or step == steps - 1):
            progress(step + 1, steps)
    t_train = time.perf_counter() - t0

    extra, meta = snaps.fields() if snaps is not None else ({}, {})
    if fit_stop is not None:  # the step each model stopped at (the schedule's length if it never fit)
        meta["fit_stop_steps"] = [steps if s is None else s for s in fit_stop.stop_steps]
    if "adversarial" in metrics:
        from .adversarial import trace_distances

        t_adv = time.perf_counter()
        distances, meta["adv_eps_max"] = trace_distances(train_fn, params, buffers, ds.x_train, seed)
        extra.update(distances)
        meta["adversarial_seconds"] = time.perf_counter() - t_adv
    meta.update(arch=arch, recipe=asdict(recipe), ratio=ratio, plan=plan, seed=seed, steps=steps, device=str(dev))
    if speed.compile:
        meta["compile_error"] = step_fn.error or eval_step.error
    trace = evaluated_trace(ds, eval_step, params, buffers, model_ids, masks, dev, eval_batch, extra, meta, take.amp)
    trace.meta.update(train_seconds=t_train, total_seconds=time.perf_counter() - t0)
    if speed.compile:  # this group's share: compiling happens in the first group of each input shape
        trace.meta["compile_seconds"] = step_fn.seconds + eval_step.seconds - compile_before
    weights = None
    if keep_weights:
        weights = {k: v.detach().cpu() for k, v in {**params, **buffers}.items()}
    return TrainOutput(trace=trace, weights=weights)


def evaluated_trace(
    ds: Dataset,
    eval_fn,
    params,
    buffers,
    model_ids,
    masks: np.ndarray,
    dev,
    eval_batch: int,
    extra: dict,
    meta: dict,
    amp: bool | None = None,
) -> Trace:
    """The trace of G trained models: their predictions on the training and test sets, the
    held-out and group sums, and `extra` fields (the opt-in metrics). Shared with engine/dp.py."""
    amp = dev.type == "cuda" if amp is None else amp
    with torch.no_grad():
        train = _evaluate(
            eval_fn, params, buffers, ds.x_train, ds.y_train, dev, eval_batch, amp, masks, group_of(model_ids)
        )
        test = _evaluate(eval_fn, params, buffers, ds.x_test, ds.y_test, dev, eval_batch, amp)
    return Trace(
        model_ids=np.asarray(model_ids, dtype=np.int64),
        masks=masks,
        train_correct=train.correct,
        train_margin=train.margin,
        test_correct=test.correct,
        test_margin=test.margin,
        train_pred=train.pred,
        test_pred=test.pred,
        heldout_prob_sum=train.groups["group_prob_out"].sum(0),
        **train.groups,
        **extra,
        meta=meta,
    )


def _snapshots(ds, metrics, steps, steps_per_epoch, seed, train_fn, eval_fn, params, buffers, dev, eval_batch):
    """With the `dynamics` metrics, the Snapshots of this group (engine/dynamics.py), whose
    `take()` evaluates the models as they are at that step; None without them."""
    if "dynamics" not in metrics:
        return None
    from .adversarial import critical
    from .dynamics import Snapshots

    def correct():
        with torch.no_grad():
            return _evaluate(
                eval_fn, params, buffers, ds.x_train, ds.y_train, dev, eval_batch, dev.type == "cuda"
            ).correct

    def is_critical(x, radius, seed):
        return critical(train_fn, params, buffers, x, radius, seed=seed).numpy()

    return Snapshots(ds.x_train, steps, steps_per_epoch, seed, correct, is_critical)


def _stack_models(arch: str, ds: Dataset, seed: int, model_ids: list[int], dev: torch.device):
    """The G models' initial weights stacked on the device, and the vmapped forward passes:
    `train_fn` on one batch per model (G, B, ...), `eval_fn` on one batch shared by all."""
    models = [init_model(arch, ds, seed, k) for k in model_ids]
    params, buffers = stack_module_state(models)
    params = {k: v.to(dev).requires_grad_() for k, v in params.items()}
    buffers = {k: v.to(dev) for k, v in buffers.items()}
    train_fn, eval_fn = _forward_fns(arch, tuple(ds.feature_shape), ds.num_classes, models[0])
    return params, buffers, train_fn, eval_fn


# (arch, feature shape, classes) -> the vmapped forward passes, one pair per process: the same
# function objects for every group, so that a compiled step (`Compiled`, cached alike) is
# compiled once per process and input shape, not once per group.
_FORWARDS: dict[tuple, tuple] = {}
_COMPILED: dict = {}  # a train_fn of _FORWARDS -> its compiled pair


def _forward_fns(arch: str, feature_shape: tuple[int, ...], num_classes: int, model: torch.nn.Module):
    key = (arch, feature_shape, num_classes)
    if key not in _FORWARDS:
        base = copy.deepcopy(model).to("meta")  # the architecture only: weights come from the stacked state

        def fmodel(p, b, x):
            return functional_call(base, (p, b), (x,))

        shared = linear_heads if arch == "linear" else torch.vmap(fmodel, in_dims=(0, 0, None))
        _FORWARDS[key] = (torch.vmap(fmodel, in_dims=(0, 0, 0)), shared)
    return _FORWARDS[key]


def _compiled_fns(train_fn, eval_fn) -> tuple[Compiled, Compiled]:
    """The compiled forward passes of `_forward_fns`, one pair per process."""
    if train_fn not in _COMPILED:
        _COMPILED[train_fn] = (Compiled(train_fn), Compiled(eval_fn))
    return _COMPILED[train_fn]


@dataclass
class Evaluation:
    correct: np.ndarray  # bool (G, E)
    margin: np.ndarray  # float32 (G, E): logit_y − logsumexp of the other logits
    pred: np.ndarray  # int32 (G, E)
    groups: dict[str, np.ndarray] | None  # Trace.GROUP_FIELDS: per jackknife group, sums over its members


def _evaluate(
    eval_fn, params, buffers, x: np.ndarray, y: np.ndarray, dev, eval_batch: int, use_amp: bool, masks=None, groups=None
) -> Evaluation:
    """Per model and example: the predicted class, whether it is the true one, and the true-class
    margin; with the membership `masks` (bool (G, E)) and each member's jackknife group (G,), the
    per-group sums of the predicted distributions over members that trained on / held out each
    example, of their entropies and of their max probabilities (engine/prototypes.py)."""
    correct, margin, pred, sums = [], [], [], []
    if masks is not None:
        onehot = F.one_hot(torch.as_tensor(groups, device=dev), JACKKNIFE_GROUPS).float()  # (G, J)
    for a in range(0, len(x), eval_batch):
        xb = torch.from_numpy(x[a : a + eval_batch]).to(dev)
        yb = torch.from_numpy(y[a : a + eval_batch]).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = eval_fn(params, buffers, xb).float()  # (G, E, C)
        is_true = F.one_hot(yb, logits.shape[-1]).bool().expand_as(logits)
        true_logit = logits.masked_select(is_true).view(logits.shape[:2])
        others = logits.masked_fill(is_true, float("-inf")).logsumexp(-1)
        p_hat = logits.argmax(-1)
        pred.append(p_hat.to(torch.int32).cpu())
        correct.append((p_hat == yb).cpu())
        margin.append((true_logit - others).cpu())
        if masks is not None:
            sums.append(_group_sums(logits.softmax(-1), torch.from_numpy(masks[:, a : a + eval_batch]).to(dev), onehot))
    return Evaluation(
        correct=torch.cat(correct, 1).numpy(),
        margin=torch.cat(margin, 1).numpy().astype(np.float32),
        pred=torch.cat(pred, 1).numpy(),
        groups={k: torch.cat([s[k] for s in sums], 1).numpy() for k in GROUP_FIELDS} if sums else None,
    )


def _group_sums(p: torch.Tensor, inside: torch.Tensor, onehot: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over each group's members of p (G, E, C) split by membership `inside` (G, E), of the
    entropy and of the max of p: float32 (J, E, C) and (J, E) on the CPU."""
    m_in = inside.to(p.dtype)
    return {
        "group_prob_in": torch.einsum("gj,ge,gec->jec", onehot, m_in, p).cpu(),
        "group_prob_out": torch.einsum("gj,ge,gec->jec", onehot, 1 - m_in, p).cpu(),
        "group_entropy": torch.einsum("gj,ge->je", onehot, torch.special.entr(p).sum(-1)).cpu(),
        "group_maxprob": torch.einsum("gj,ge->je", onehot, p.amax(-1)).cpu(),
    }
