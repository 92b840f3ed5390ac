"""What a submitted job will cost (SubmitJobResponse.estimate): the analytic estimate of
engine/cost.py at the workers' configured throughput and memory (MEMSCORE_WORKER_FLOPS), for a
spec that passed validation and admission (specs.py), so its shard size is the one it will run
with. Plain Python: the gateway never loads torch.

A scoring job on a dataset the gateway knows nothing of (a file under MEMSCORE_DATA_ROOTS whose
facts could not be read) carries only its model, shard size and shards; an exposure job carries
what `cost.exposure_cost` gives (its forward FLOPs are per character; memory is not sized)."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.cost import DatasetFacts, exposure_cost, job_cost
from ..engine.recipes import LM_BATCH_SIZE, LM_SEQ_LEN
from ..engine.registry import measured_cost
from ..engine.spec import ExposureSpec, ScoringSpec
from ..settings import Settings


@dataclass(frozen=True)
class JobEstimate:
    """Field by field memscore.v1.JobEstimate."""

    model: str = ""
    params: int = 0
    forward_flops: int = 0  # one model on one example (a language model: one character)
    steps: int = 0  # per model
    total_flops: float = 0.0  # every model's training and evaluation
    shard_size: int = 0  # models per shard (worker task)
    shards: int = 0
    shard_peak_bytes: int = 0
    reduce_peak_bytes: int = 0
    seconds: float = 0.0  # the whole job on one worker
    flops_per_second: float = 0.0  # what `seconds` assumes


def scoring_estimate(spec: ScoringSpec, facts: DatasetFacts | None, settings: Settings) -> JobEstimate:
    """The estimate of a checked scoring spec (its shard size fixed by admission)."""
    shards = len(spec.shards())
    if facts is None:
        return JobEstimate(model=spec.model, shard_size=spec.effective_shard_size, shards=shards)
    cost = job_cost(spec, facts, measured_cost(spec.model, facts.feature_shape, facts.num_classes))
    models, flops = max(spec.models, spec.max_models), settings.worker_flops
    peak = cost.shard_bytes(spec.effective_shard_size)
    if cost.dp_shards:
        peak = max(peak, cost.dp_shard_bytes())
    return JobEstimate(
        model=cost.arch,
        params=cost.model.params,
        forward_flops=cost.model.forward_flops,
        steps=cost.steps,
        total_flops=cost.total_flops(models),
        shard_size=spec.effective_shard_size,
        shards=shards,
        shard_peak_bytes=peak,
        reduce_peak_bytes=cost.reduce_bytes,
        seconds=cost.total_seconds(models, flops),
        flops_per_second=flops,
    )


def exposure_estimate(spec: ExposureSpec, corpus_chars: int, corpus_vocab: int, settings: Settings) -> JobEstimate:
    """The estimate of a checked exposure spec: one task training one language model."""
    cost = exposure_cost(spec, corpus_chars, corpus_vocab)
    chars_trained = cost.steps * LM_BATCH_SIZE * LM_SEQ_LEN
    return JobEstimate(
        model=cost.arch,
        params=cost.params,
        forward_flops=int(cost.train_flops / (3.0 * chars_trained)) if chars_trained else 0,
        steps=cost.steps,
        total_flops=cost.train_flops + cost.score_flops,
        shard_size=1,
        shards=1,
        seconds=cost.seconds(settings.worker_flops),
        flops_per_second=settings.worker_flops,
    )
