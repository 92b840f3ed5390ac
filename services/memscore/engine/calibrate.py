"""How long a scoring job will take on this machine, from a short measured burst of the job
itself (`memscore plan`): the job's model trained on the real dataset, in a group of the size
this device would train at once, for a few warm-up steps and then timed steps (their median);
an evaluation pass timed on a slice sized to take about EVAL_SECONDS; a reduce timed on up to
SLICE_TRAIN × SLICE_TEST examples (the group's trace, its examples repeated, its members to K).
The whole job is extrapolated as `run_scoring` runs it:

    Σ over the groups of every shard:  setup(g) + steps · step(g) + (n + m) · eval(g)
    + the opt-in metrics' extra work and the DP levels at the measured FLOP/s (cost.job_cost)
    + reduce: the slice's time × n/n' (per-example work), its influence step × n·m/(n'·m')

where g is each group's size (steps timed for every size that occurs). A few seconds in all.
Left out: the process's start-up and the dataset's loading (paid once, before the job), a
group retried smaller after running out of memory, and what else runs on the machine. A
self-stopping job is estimated at its largest size; `Recipe.stop_when_fit` only shortens it.
bench/plan_accuracy.py compares the estimate with measured runs (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from .cost import DatasetFacts, JobCost, job_cost
from .datasets import Dataset
from .ensemble import (
    GroupBatches,
    GroupStep,
    Speed,
    _stack_models,
    evaluated_trace,
    fitting_group_size,
    group_cap,
    resolve_arch,
    resolve_device,
)
from .recipes import Recipe, make_recipe, total_steps
from .registry import measured_cost
from .spec import ScoringSpec
from .subsets import masks_of, subset_indices, subset_size

WARMUP_STEPS = 3  # untimed: the allocator and the kernels' first calls
TIMED_SECONDS = 0.5  # per group size: at least this long and MIN_TIMED_STEPS steps
MIN_TIMED_STEPS = 5
SLICE_TRAIN, SLICE_TEST = 2048, 512  # at most, examples of the timed evaluation and reduce
MIN_SLICE = 256  # at least (one CPU evaluation batch)
EVAL_SECONDS = 0.5  # the slice is sized to evaluate in about this long
BLOCK = GroupBatches.block  # the batch streams draw this many steps at a time
# The estimate over the measured wall time, bench/plan_accuracy.py (docs/performance.md): 0.73 to
# 1.23 in 9 of 10 runs of five small jobs on a shared 2-core machine (the tenth 0.37: load rose
# during its run), 1.11 on 256 linear heads over 50,000 embeddings. The plan's stated range.
ESTIMATE_OVER_MEASURED = (0.73, 1.23)


@dataclass(frozen=True)
class GroupTiming:
    """One group of `size` models trained at once on this device, measured."""

    size: int
    setup_seconds: float  # build, stack and move the models and the training data
    step_seconds: float  # one optimisation step of all of them (the streams' draws included)
    eval_seconds_per_example: float  # evaluation of all of them (with the group sums), per example


@dataclass(frozen=True)
class Calibration:
    """The extrapolated wall time of a job on this machine and what it was measured from."""

    arch: str
    device: str
    models: int
    steps: int  # per model
    shard_size: int
    group_sizes: tuple[int, ...]  # every group the job trains, in order
    timings: tuple[GroupTiming, ...]  # one per distinct group size
    train_seconds: float  # the groups' setup and steps
    eval_seconds: float  # the groups' evaluation passes over train and test
    extra_seconds: float  # opt-in metrics and DP levels, at the measured FLOP/s
    reduce_seconds: float
    calibration_seconds: float  # what measuring took
    measured_flops_per_second: float  # training FLOP/s of the largest group
    cost: JobCost  # the analytic estimate (a model outside the zoo: from its measured ModelCost)

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.eval_seconds + self.extra_seconds + self.reduce_seconds

    @property
    def seconds_range(self) -> tuple[float, float]:
        """The wall time the estimate's measured error allows (ESTIMATE_OVER_MEASURED)."""
        low, high = ESTIMATE_OVER_MEASURED
        return self.seconds / high, self.seconds / low

    def flop_seconds(self) -> float | None:
        """The analytic estimate's time at the measured FLOP/s (training and evaluation; no reduce)."""
        if not self.measured_flops_per_second:
            return None
        return self.cost.total_seconds(self.models, self.measured_flops_per_second)


def group_sizes(ds: Dataset, spec: ScoringSpec, arch: str, recipe: Recipe, dev: torch.device) -> list[int]:
    """The groups `run_scoring` trains on `dev`, shard by shard, as `train_ensemble` sizes them
    (by the memory free now)."""
    batch = min(recipe.batch_size, subset_size(ds.n_train, spec.ratio))
    eval_batch = eval_batch_for(dev)
    models, g = job_models(spec), spec.effective_shard_size
    out = []
    for first in range(0, models, g):
        shard = min(g, models - first)
        size = fitting_group_size(ds, arch, batch, eval_batch, tuple(spec.metrics), dev, group_cap(dev, recipe, shard))
        out += [min(size, shard - a) for a in range(0, shard, size)]
    return out


def job_models(spec: ScoringSpec) -> int:
    """The models a job trains at most (a self-stopping one up to max_models)."""
    return max(spec.models, spec.max_models)


def eval_batch_for(dev: torch.device) -> int:
    return 8192 if dev.type == "cuda" else 256  # as train_ensemble chooses


def data_slice(ds: Dataset, n_train: int, at_least: int = MIN_SLICE) -> Dataset:
    """The first `n_train` training examples and a quarter as many test examples (at most
    SLICE_TRAIN, SLICE_TEST; at least `at_least` training examples where the data have them)."""
    n = min(ds.n_train, SLICE_TRAIN, max(at_least, n_train))
    m = min(ds.n_test, SLICE_TEST, max(1, n // 4))
    return dataclasses.replace(
        ds, x_train=ds.x_train[:n], y_train=ds.y_train[:n], x_test=ds.x_test[:m], y_test=ds.y_test[:m], extras={}
    )


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_group(ds: Dataset, spec: ScoringSpec, arch: str, recipe: Recipe, g: int, dev: torch.device, evaluate: bool):
    """(GroupTiming, the group's trace on a slice of `ds`) of the job's first
    `g` models: the trainer's own step (ensemble.GroupStep: stacked models, the group's batch
    streams, fused AdamW, bf16 autocast on a GPU), then, with `evaluate`, an evaluation pass
    over a slice sized to take about EVAL_SECONDS (else no trace and no evaluation time)."""
    t0 = time.perf_counter()
    ids = list(range(g))
    subsets = [subset_indices(ds.n_train, spec.ratio, spec.seed, k, spec.plan) for k in ids]
    masks = masks_of(subsets, ds.n_train)
    params, buffers, train_fn, eval_fn = _stack_models(arch, ds, spec.seed, ids, dev)
    take = GroupStep.build(
        ds, subsets, masks, ids, spec.ratio, spec.seed, recipe, dev, params, buffers, train_fn, eval_fn, Speed()
    )
    batch, steps, amp = take.batch, take.steps, take.amp
    _sync(dev)
    setup = time.perf_counter() - t0
    per_step = _time_steps(take, steps, dev)  # the streams draw once a block: their share added
    if not recipe.shared_batches:  # one shared stream's draw is negligible
        per_step += _draw_seconds(ds, subsets, ids, batch, spec.seed, recipe, dev) / BLOCK
    if not evaluate:
        return GroupTiming(g, setup, per_step, 0.0), None
    part = data_slice(ds, int(EVAL_SECONDS * batch / per_step))  # an evaluated example ~ a trained one's cost
    masks = masks[:, : part.n_train]
    tiny = data_slice(ds, 0, 32)  # untimed: the evaluation's first call pays one-time costs
    evaluated_trace(tiny, eval_fn, params, buffers, ids, masks[:, : tiny.n_train], dev, 32, {}, {}, amp)
    t2 = time.perf_counter()
    trace = evaluated_trace(part, eval_fn, params, buffers, ids, masks, dev, eval_batch_for(dev), {}, {}, amp)
    _sync(dev)
    per_example = (time.perf_counter() - t2) / (part.n_train + part.n_test)
    return GroupTiming(g, setup, per_step, per_example), trace


def _time_steps(step, steps: int, dev: torch.device) -> float:
    """The median seconds of a step (robust to other processes' bursts on a shared machine)
    after WARMUP_STEPS untimed ones: at least MIN_TIMED_STEPS steps and TIMED_SECONDS, at most
    the job's steps."""
    warm = min(WARMUP_STEPS, max(0, steps - 1))
    for i in range(warm):
        step(i)
    _sync(dev)
    times, start = [], time.perf_counter()
    for i in range(warm, steps):
        if len(times) >= MIN_TIMED_STEPS and time.perf_counter() - start >= TIMED_SECONDS:
            break
        t = time.perf_counter()
        step(i)
        _sync(dev)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _draw_seconds(ds, subsets, ids, batch, seed, recipe, dev) -> float:
    """A block's draw of the batch streams (once every BLOCK steps; a median step has none)."""
    inputs = GroupBatches(ds, subsets, ids, batch, seed, recipe, dev, BLOCK)
    t = time.perf_counter()
    inputs(0)
    inputs(1)  # and one plain step's gather, so the difference is the draw alone
    _sync(dev)
    both = time.perf_counter() - t
    t = time.perf_counter()
    inputs(2)
    _sync(dev)
    return max(0.0, both - 2 * (time.perf_counter() - t))


# Trace fields by the axis that runs over examples: (field, axis, train or test)
_EXAMPLE_AXES = (
    ("masks", 1, "train"), ("train_correct", 1, "train"), ("train_margin", 1, "train"), ("train_pred", 1, "train"),
    ("test_correct", 1, "test"), ("test_margin", 1, "test"), ("test_pred", 1, "test"),
    ("heldout_prob_sum", 0, "train"), ("group_prob_in", 1, "train"), ("group_prob_out", 1, "train"),
    ("group_entropy", 1, "train"), ("group_maxprob", 1, "train"),
)  # fmt: skip


def time_reduce(ds: Dataset, spec: ScoringSpec, trace, models: int) -> float:
    """The reduce of `models` models on `ds`, from a timed reduce on a slice of it (at most
    SLICE_TRAIN × SLICE_TEST) of the group's trace, its examples repeated to the slice's size
    and its members to `models`: per-example work scales with n, the influence step with n·m."""
    from .scoring import Reducer, make_plan

    part = data_slice(ds, SLICE_TRAIN)
    n, m = part.n_train, part.n_test
    sized = dataclasses.replace(spec, models=models, max_models=0, until_reliability=0.0, metrics=[])
    reducer = Reducer(part, sized, make_plan(part, sized))
    trace, g = _resized(trace, n, m), len(trace.model_ids)
    t0 = time.perf_counter()
    for first in range(0, models, g):
        reducer.add(_renumbered(trace, first, min(g, models - first)))
    reducer.result(with_influence=False)
    t1 = time.perf_counter()
    if sized.influence_top_k + sized.max_influence_pairs > 0:
        reducer.influence.compute(
            sized.influence_top_k, sized.influence_threshold, sized.max_influence_pairs, fdr=sized.influence_fdr
        )
    t2 = time.perf_counter()
    return (t1 - t0) * ds.n_train / n + (t2 - t1) * (ds.n_train * ds.n_test) / (n * m)


def _resized(trace, n: int, m: int):
    """The trace with its examples repeated (or cut) to n training and m test examples."""
    fields = {}
    for name, axis, side in _EXAMPLE_AXES:
        v = getattr(trace, name)
        if v is not None:
            idx = np.arange(n if side == "train" else m) % v.shape[axis]
            fields[name] = np.take(v, idx, axis=axis)
    return dataclasses.replace(trace, **fields)


_MEMBER_FIELDS = ("masks", "train_correct", "train_margin", "train_pred", "test_correct", "test_margin", "test_pred")


def _renumbered(trace, first: int, take: int):
    """The trace's first `take` members as models first, first+1, ... (timing only: the
    per-group sums stay the whole group's)."""
    fields = {f: getattr(trace, f)[:take] for f in _MEMBER_FIELDS if getattr(trace, f) is not None}
    return dataclasses.replace(trace, model_ids=np.arange(first, first + take, dtype=np.int64), **fields)


def calibrate(ds: Dataset, spec: ScoringSpec, device: str = "auto") -> Calibration:
    """Measure the job `spec` on `ds` briefly on `device` and extrapolate its wall time."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    _warm_process(dev)
    arch = resolve_arch(spec.model, ds)
    recipe = make_recipe(arch, spec.epochs, spec.batch_size, spec.lr)
    steps = total_steps(recipe, subset_size(ds.n_train, spec.ratio))
    sizes = group_sizes(ds, spec, arch, recipe, dev)
    largest = max(sizes)
    timings = {}
    timings[largest], trace = time_group(ds, spec, arch, recipe, largest, dev, evaluate=True)
    for g in set(sizes) - {largest}:  # a partial group: its steps timed, its evaluation in proportion
        t, _ = time_group(ds, spec, arch, recipe, g, dev, evaluate=False)
        per_example = timings[largest].eval_seconds_per_example * g / largest
        timings[g] = dataclasses.replace(t, eval_seconds_per_example=per_example)
    examples = ds.n_train + ds.n_test
    train = sum(timings[g].setup_seconds + steps * timings[g].step_seconds for g in sizes)
    evals = sum(examples * timings[g].eval_seconds_per_example for g in sizes)
    cost, rate = _analytic(spec, ds, timings[largest])
    extra = _extra_seconds(spec, ds, cost, rate)
    reduce = time_reduce(ds, spec, trace, job_models(spec))
    return Calibration(
        arch=arch,
        device=str(dev),
        models=job_models(spec),
        steps=steps,
        shard_size=spec.effective_shard_size,
        group_sizes=tuple(sizes),
        timings=tuple(timings[g] for g in sorted(timings)),
        train_seconds=train,
        eval_seconds=evals,
        extra_seconds=extra,
        reduce_seconds=reduce,
        calibration_seconds=time.perf_counter() - t0,
        measured_flops_per_second=rate,
        cost=cost,
    )


def _warm_process(dev: torch.device) -> None:
    """Pay this process's one-time costs before timing anything: the first AdamW imports
    torch's compiler stack (~1.2 s on the CPU), once per process, not once per group."""
    w = torch.zeros(1, device=dev, requires_grad=True)
    torch.optim.AdamW([w], **({"fused": True} if Speed().fused else {}))


def facts_of(ds: Dataset) -> DatasetFacts:
    return DatasetFacts(ds.n_train, ds.n_test, ds.num_classes, ds.kind, tuple(ds.feature_shape))


def _analytic(spec: ScoringSpec, ds: Dataset, timing: GroupTiming) -> tuple[JobCost, float]:
    """(cost.job_cost of the job, the training FLOP/s the timed group reached); a model outside
    the zoo is costed by its measured ModelCost (registry.measured_cost)."""
    facts = facts_of(ds)
    cost = job_cost(spec, facts, measured_cost(spec.model, facts.feature_shape, facts.num_classes))
    step_flops = 3.0 * cost.model.forward_flops * cost.batch * timing.size  # forward and backward
    return cost, step_flops / timing.step_seconds


def _extra_seconds(spec: ScoringSpec, ds: Dataset, cost: JobCost, rate: float) -> float:
    """The opt-in metrics' searches and snapshots and the DP levels, which the burst does not
    run: their FLOPs (cost.job_cost over the same job without them) at the measured rate."""
    if not rate or not spec.metrics:
        return 0.0
    plain = job_cost(dataclasses.replace(spec, metrics=[]), facts_of(ds), cost.model)
    per_model = max(0.0, cost.train_flops_per_model - plain.train_flops_per_model)
    return (job_models(spec) * per_model + cost.dp_shards * cost.dp_shard_seconds(1.0)) / rate
