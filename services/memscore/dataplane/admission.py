"""Admission control: a scoring job is sized from its spec before anything is stored or queued
(engine/cost.py) and refused, RESOURCE_EXHAUSTED naming the setting and what to change, when

- one model does not fit a worker's memory (MEMSCORE_WORKER_MEMORY_BYTES);
- a shard of the requested size does not fit it, or would take more than half of
  MEMSCORE_SHARD_TIMEOUT_S at MEMSCORE_WORKER_FLOPS (the answer names the largest shard that
  would fit both);
- the whole job would take more than MEMSCORE_MAX_JOB_WORKER_HOURS of one worker;
- its reduce step would need more than MEMSCORE_REDUCE_MEMORY_BYTES.

An exposure job (one task) is refused when its estimated time (training the language model,
scoring every candidate secret) exceeds half of MEMSCORE_SHARD_TIMEOUT_S (`admit_exposure`).

An automatic shard size (spec.shard_size 0) becomes the largest that fits memory and time, at
most DEFAULT_SHARD_SIZE; for a self-stopping job also a divisor of `models` (it grows by whole
shards). Half the timeout, because the estimate is an estimate: a shard killed at its limit is
retried until MEMSCORE_MAX_ATTEMPTS and fails the job.
"""

from __future__ import annotations

from ..engine.cost import DatasetFacts, JobCost, ModelCost, exposure_cost, job_cost
from ..engine.privacy_level import DP_MODELS
from ..engine.spec import DEFAULT_SHARD_SIZE, ExposureSpec, ScoringSpec
from ..errors import ResourceExhausted
from ..settings import Settings

SHARD_TIME_SHARE = 0.5  # of MEMSCORE_SHARD_TIMEOUT_S a shard's estimated time may take


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 360 else f"{seconds:,.0f} s"


def largest_shard(cost: JobCost, settings: Settings) -> int:
    """The most models one shard may train within the worker's memory and time share."""
    by_memory = cost.largest_shard(settings.worker_memory_bytes)
    per_model_s = cost.seconds(1, settings.worker_flops)
    by_time = int(SHARD_TIME_SHARE * settings.shard_timeout_s // per_model_s) if per_model_s > 0 else by_memory
    return min(by_memory, by_time)


def admit(spec: ScoringSpec, facts: DatasetFacts, settings: Settings, model: ModelCost | None = None) -> int:
    """The shard size `spec` will run with on a dataset with `facts`; raises ResourceExhausted
    for a job the workers cannot hold. `model`: the measured cost of a model cost.py has no
    table for (registry.measured_cost)."""
    cost = job_cost(spec, facts, model)
    flops = settings.worker_flops
    one_model = cost.shard_bytes(1)
    if one_model > settings.worker_memory_bytes:
        raise ResourceExhausted(
            f"spec.scoring: one {cost.arch} model on this dataset needs an estimated {_gib(one_model)} "
            f"({_gib(cost.data_bytes)} of it the training data), more than a worker has "
            f"({_gib(settings.worker_memory_bytes)}, MEMSCORE_WORKER_MEMORY_BYTES)"
        )
    models = max(spec.models, spec.max_models)
    job_s = cost.total_seconds(models, flops)
    if job_s > settings.max_job_worker_hours * 3600:
        raise ResourceExhausted(
            f"spec.scoring: {models} {cost.arch} models × {cost.steps} steps"
            f"{f' and {cost.dp_shards} DP levels' if cost.dp_shards else ''} would take an estimated "
            f"{_hours(job_s)} of one worker at {flops:.3g} FLOP/s (MEMSCORE_WORKER_FLOPS), over this server's "
            f"limit of {settings.max_job_worker_hours:g} h (MEMSCORE_MAX_JOB_WORKER_HOURS); "
            "train fewer models or epochs"
        )
    if cost.reduce_bytes > settings.reduce_memory_bytes:
        raise ResourceExhausted(
            f"spec.scoring: reducing {models} models on this dataset needs an estimated {_gib(cost.reduce_bytes)}, "
            f"more than {_gib(settings.reduce_memory_bytes)} (MEMSCORE_REDUCE_MEMORY_BYTES); "
            "train fewer models or lower max_influence_pairs"
        )
    if cost.dp_shards:
        _admit_dp(cost, settings)
    fit = largest_shard(cost, settings)
    if fit < 1:
        raise ResourceExhausted(
            f"spec.scoring: one {cost.arch} model would take an estimated {_hours(cost.seconds(1, flops))}, "
            f"over {SHARD_TIME_SHARE:g} of the shard time limit {settings.shard_timeout_s} s "
            "(MEMSCORE_SHARD_TIMEOUT_S); train fewer epochs"
        )
    if spec.shard_size:
        g = spec.effective_shard_size
        if g > fit:
            raise ResourceExhausted(
                f"spec.scoring.shard_size: a shard of {g} {cost.arch} models needs an estimated "
                f"{_gib(cost.shard_bytes(g))} and {_hours(cost.seconds(g, flops))}; a worker holds at most {fit} "
                f"at once (MEMSCORE_WORKER_MEMORY_BYTES {_gib(settings.worker_memory_bytes)}, "
                f"{SHARD_TIME_SHARE:g} × MEMSCORE_SHARD_TIMEOUT_S); set shard_size <= {fit}, or 0 for automatic"
            )
        return g
    g = max(1, min(spec.models, DEFAULT_SHARD_SIZE, fit))
    if spec.until_reliability and spec.max_models > spec.models:
        while spec.models % g:  # a self-stopping job grows by whole shards
            g -= 1
    return g


def _admit_dp(cost: JobCost, settings: Settings) -> None:
    """A DP level's shard (engine/privacy_level.py) must fit one worker's memory and time share."""
    need, secs = cost.dp_shard_bytes(), cost.dp_shard_seconds(settings.worker_flops)
    if need > settings.worker_memory_bytes or secs > SHARD_TIME_SHARE * settings.shard_timeout_s:
        raise ResourceExhausted(
            f"spec.scoring.metrics: a DP level of `dp` trains {DP_MODELS} {cost.arch} models with per-example "
            f"gradients: an estimated {_gib(need)} and {_hours(secs)}, over a worker's "
            f"{_gib(settings.worker_memory_bytes)} (MEMSCORE_WORKER_MEMORY_BYTES) or {SHARD_TIME_SHARE:g} × "
            f"MEMSCORE_SHARD_TIMEOUT_S ({settings.shard_timeout_s} s); train fewer epochs or leave out `dp`"
        )


def admit_exposure(spec: ExposureSpec, corpus_chars: int, corpus_vocab: int, settings: Settings) -> None:
    """Raises ResourceExhausted for an exposure job one worker cannot run within half of
    MEMSCORE_SHARD_TIMEOUT_S at MEMSCORE_WORKER_FLOPS (see `cost.exposure_cost`)."""
    cost = exposure_cost(spec, corpus_chars, corpus_vocab)
    flops = settings.worker_flops
    seconds = cost.seconds(flops)
    if seconds > SHARD_TIME_SHARE * settings.shard_timeout_s:
        raise ResourceExhausted(
            f"spec.exposure: training the {cost.arch} for {cost.steps:,} steps on {cost.training_chars:,} characters "
            f"and scoring {cost.candidates:,} candidate secrets would take an estimated {_hours(seconds)} at "
            f"{flops:.3g} FLOP/s (MEMSCORE_WORKER_FLOPS), over {SHARD_TIME_SHARE:g} of the task time limit "
            f"{settings.shard_timeout_s} s (MEMSCORE_SHARD_TIMEOUT_S); lower epochs, enumeration_budget or num_samples"
        )
