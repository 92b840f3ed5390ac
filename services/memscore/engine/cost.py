"""What a scoring job will cost before it runs, from its spec and what is known of its dataset
(sizes, classes, example shape): each model's parameters, FLOPs and activations, a shard's
peak memory on its worker, the job's training FLOPs and the reduce step's memory.

Plain Python, no torch: the gateway's admission check (dataplane/admission.py) runs it on
every submit. The counts follow models.py layer by layer; tests/engine/test_cost.py checks
them against the real modules (parameters and FLOPs exactly) and the memory estimate against
a measured training run.

Memory of one shard of G models trained at once (ensemble.train_ensemble on a GPU):
    x_train resident on the device           n · F · 4  +  n · 8 (labels)
    stacked weights, grads, AdamW m and v    G · P · 4 · 4
    training activations and their grads    G · B · A · 4 · 2     (A: elements per example)
    or the evaluation pass, if larger        G · E · L · (W + C) · 4 (E: eval batch, W: the
                                             widest layer, L: EVAL_LIVE of them; no grads)
    plus RUNTIME_BYTES for the framework's own workspace. Float32 throughout: a GPU worker's
    bf16 autocast needs less, so the estimate errs on the safe side.

With `--metrics dp` each DP level is one more shard of DP_MODELS models (privacy_level.py)
whose steps cost DP_STEP_COST times a plain step (per-example gradients, measured) and which
hold the G · B per-example gradients at once (dp.py): G · B · P · 4 · 2 bytes more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .canaries import CanaryFormat
from .catalog import DEFAULT_ARCH
from .dynamics import CSR_SAMPLE, snapshot_steps
from .membership import ATTACK_BYTES_PER_CELL, MAX_CELLS
from .privacy_level import DP_MODELS, dp_shards
from .prototypes import JACKKNIFE_GROUPS
from .recipes import (
    ADV_BATCH,
    ADV_PGD_STEPS,
    LM_BATCH_SIZE,
    LM_SEQ_LEN,
    adversarial_passes,
    lm_steps,
    make_recipe,
    total_steps,
)
from .spec import ExposureSpec, ScoringSpec

RUNTIME_BYTES = 512 << 20  # allocator slack, cuDNN/oneDNN workspaces, the augmentation buffers
EVAL_BATCH = 8192  # examples per evaluation pass on a GPU (ensemble.train_ensemble)
# Layer outputs of the widest size alive at once per model in a pass without gradients: a
# layer's input and output and the activation's copy; in the ResNet also a block's residual and
# the norm's temporaries (measured on the CPU: the ResNet's evaluation peaked at ~4.7 of them,
# the MLP's at ~3; tests/engine/test_cost.py).
EVAL_LIVE = {"mlp": 3, "cnn1d": 3, "resnet": 5, "linear": 3}
# Models without an analytic cost (torchvision/<name>, plugins: measured by the gateway's dry
# run, registry.measured_cost) may keep more alive (branches, attention): 6, above the ResNet's.
EVAL_LIVE_DEFAULT = 6
FLOAT = 4  # bytes of a float32
# A DP-SGD step over a plain one (engine/dp.py: per-example gradients; 11x measured for 16 MLPs
# on mnist1d on the CPU, docs/performance.md)
DP_STEP_COST = 11.0


@dataclass(frozen=True)
class ModelCost:
    """One model of the zoo on one example: parameters, forward FLOPs (2 × multiply-adds of
    its Linear and Conv layers, as models.forward_flops counts them) and activation elements
    (every layer's output, the input included: what autograd keeps for the backward pass);
    `widest` is the largest single layer output (what a pass without gradients holds at once
    per model; the input batch is shared by the G models there)."""

    params: int
    forward_flops: int
    activations: int
    widest: int


def _conv_out(length: int, kernel: int, stride: int, pad: int) -> int:
    return (length + 2 * pad - kernel) // stride + 1


def _linear(feature_shape: tuple[int, ...], classes: int) -> ModelCost:
    d = math.prod(feature_shape)
    return ModelCost(d * classes + classes, 2 * d * classes, d + classes, classes)


def _mlp(feature_shape: tuple[int, ...], classes: int, width: int = 256) -> ModelCost:
    d = math.prod(feature_shape)
    params = d * width + width + width * width + width + width * classes + classes
    flops = 2 * (d * width + width * width + width * classes)
    return ModelCost(params, flops, d + 4 * width + classes, width)


def _cnn1d(feature_shape: tuple[int, ...], classes: int, ch: int = 32) -> ModelCost:
    c, length = (1, *feature_shape) if len(feature_shape) == 1 else feature_shape
    l1 = _conv_out(length, 5, 2, 2)
    l2 = _conv_out(l1, 3, 2, 1)
    l3 = _conv_out(l2, 3, 2, 1)
    params = (5 * c * ch + ch) + 2 * (3 * ch * ch + ch) + ch * l3 * classes + classes
    flops = 2 * (5 * c * ch * l1 + 3 * ch * ch * (l2 + l3) + ch * l3 * classes)
    return ModelCost(params, flops, c * length + 2 * ch * (l1 + l2 + l3) + classes, ch * l1)


def _resnet(feature_shape: tuple[int, ...], classes: int, w: int = 32) -> ModelCost:
    c, h, wd = feature_shape
    params = 9 * c * w + 2 * w  # stem conv (no bias) + GroupNorm
    flops = 2 * 9 * c * w * h * wd
    acts = c * h * wd + 3 * w * h * wd  # input; stem conv, norm, relu
    widest = w * h * wd
    for cin, cout, stride in ((w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2)):
        h, wd = _conv_out(h, 3, stride, 1), _conv_out(wd, 3, stride, 1)
        skip = stride != 1 or cin != cout
        params += 9 * cin * cout + 9 * cout * cout + 4 * cout + (cin * cout if skip else 0)
        flops += 2 * h * wd * (9 * cin * cout + 9 * cout * cout + (cin * cout if skip else 0))
        acts += (7 + skip) * cout * h * wd  # conv, norm, relu, conv, norm, [skip], add, relu
        widest = max(widest, cout * h * wd)
    params += 4 * w * classes + classes
    flops += 2 * 4 * w * classes
    return ModelCost(params, flops, acts + 4 * w + classes, widest)


def model_cost(arch: str, feature_shape: tuple[int, ...], num_classes: int) -> ModelCost:
    """The cost of one model `arch` of the zoo on examples of `feature_shape`; ValueError for
    other models (their cost is measured: registry.measured_cost)."""
    build = {"mlp": _mlp, "cnn1d": _cnn1d, "resnet": _resnet, "linear": _linear}.get(arch)
    if build is None:
        raise ValueError(f"no analytic cost for model {arch!r}; measure it (registry.measured_cost)")
    return build(tuple(int(d) for d in feature_shape), int(num_classes))


@dataclass(frozen=True)
class DatasetFacts:
    """What the gateway knows of a dataset without loading it (an upload's recorded meta, or
    catalog.BUILTIN_FACTS)."""

    n_train: int
    n_test: int
    num_classes: int
    kind: str  # vector, sequence, image
    feature_shape: tuple[int, ...]

    @classmethod
    def from_meta(cls, meta: dict) -> "DatasetFacts | None":
        """None when the meta lacks a fact (e.g. written by an older version)."""
        try:
            return cls(
                int(meta["n_train"]),
                int(meta["n_test"]),
                int(meta["num_classes"]),
                str(meta["kind"]),
                tuple(int(d) for d in meta["feature_shape"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class JobCost:
    arch: str
    model: ModelCost
    steps: int  # optimisation steps per model
    batch: int  # examples per model per step
    train_flops_per_model: float  # forward + backward (3 × forward) over its steps, + its evaluation pass
    data_bytes: int  # x_train and labels resident on the device
    per_model_bytes: int  # what each model of a shard adds at peak
    reduce_bytes: int  # the reduce step's peak memory (host)
    dp_shards: int = 0  # DP levels (`--metrics dp`), one shard of DP_MODELS models each
    dp_flops_per_model: float = 0.0  # a DP model's training and evaluation
    dp_per_model_bytes: int = 0  # what each DP model adds at peak

    def dp_shard_bytes(self) -> int:
        return RUNTIME_BYTES + self.data_bytes + DP_MODELS * self.dp_per_model_bytes

    def dp_shard_seconds(self, flops_per_s: float) -> float:
        return DP_MODELS * self.dp_flops_per_model / flops_per_s

    def total_flops(self, models: int) -> float:
        """Training and evaluation FLOPs of the whole job: `models` models and the DP levels."""
        return models * self.train_flops_per_model + self.dp_shards * DP_MODELS * self.dp_flops_per_model

    def total_seconds(self, models: int, flops_per_s: float) -> float:
        """The whole job on one worker: `models` models and the DP levels."""
        return self.seconds(models, flops_per_s) + self.dp_shards * self.dp_shard_seconds(flops_per_s)

    def shard_bytes(self, models: int) -> int:
        """Peak device memory of a shard that trains `models` at once."""
        return RUNTIME_BYTES + self.data_bytes + models * self.per_model_bytes

    def largest_shard(self, memory_bytes: int) -> int:
        """The most models one shard may train at once within `memory_bytes` (0: not even one)."""
        free = memory_bytes - RUNTIME_BYTES - self.data_bytes
        return max(0, free // self.per_model_bytes)

    def seconds(self, models: int, flops_per_s: float) -> float:
        """Estimated training time of `models` models on a worker sustaining `flops_per_s`."""
        return models * self.train_flops_per_model / flops_per_s


def job_cost(spec: ScoringSpec, facts: DatasetFacts, model: ModelCost | None = None) -> JobCost:
    """The cost of `spec` on a dataset with `facts` (the spec as submitted; `auto` resolved
    from the dataset's kind, as the worker resolves it). `model`: the model's measured cost,
    for models without an analytic one (torchvision/<name>, plugins; registry.measured_cost)."""
    arch = DEFAULT_ARCH[facts.kind] if spec.model in ("", "auto") else spec.model
    m = model or model_cost(arch, facts.feature_shape, facts.num_classes)
    recipe = make_recipe(arch, spec.epochs, spec.batch_size, spec.lr, kind=facts.kind)
    subset = max(1, round(spec.ratio * facts.n_train))
    steps = total_steps(recipe, subset)
    batch = min(recipe.batch_size, subset)
    examples = facts.n_train + facts.n_test
    train = 3.0 * m.forward_flops * batch * steps + m.forward_flops * examples
    if "adversarial" in spec.metrics:  # each pass is a forward and an input-gradient backward
        train += 3.0 * m.forward_flops * facts.n_train * adversarial_passes()
    if "dynamics" in spec.metrics:  # per snapshot an evaluation pass and a critical search of the sample
        snaps = len(snapshot_steps(steps, math.ceil(subset / batch)))  # as the trainer takes them
        search = 3.0 * m.forward_flops * ADV_PGD_STEPS
        train += snaps * (m.forward_flops * facts.n_train + search * min(CSR_SAMPLE, facts.n_train))
        train += search * facts.n_train  # the last snapshot searches every example
    per_model = per_model_bytes(arch, m, facts, batch, EVAL_BATCH, spec.metrics)
    levels = len(dp_shards(spec.metrics))
    dp_flops = DP_STEP_COST * 3.0 * m.forward_flops * batch * steps + m.forward_flops * examples
    # a DP model: a plain one (no adversarial searches) holding its B per-example gradients too
    dp_bytes = per_model_bytes(arch, m, facts, batch, EVAL_BATCH) + batch * m.params * FLOAT * 2
    return JobCost(
        arch=arch,
        model=m,
        steps=steps,
        batch=batch,
        train_flops_per_model=train,
        data_bytes=data_bytes(facts),
        per_model_bytes=per_model,
        reduce_bytes=reduce_bytes(max(spec.models, spec.max_models), facts, spec.max_influence_pairs),
        dp_shards=levels,
        dp_flops_per_model=dp_flops if levels else 0.0,
        dp_per_model_bytes=dp_bytes if levels else 0,
    )


def data_bytes(facts: DatasetFacts) -> int:
    """What a shard holds whatever its size: the training set resident on the device, its
    labels and the trace's group sums."""
    features = math.prod(facts.feature_shape)
    return facts.n_train * (features * FLOAT + 8 + group_sums_bytes(facts.num_classes))


def per_model_bytes(arch: str, m: ModelCost, facts: DatasetFacts, batch: int, eval_batch: int, metrics=()) -> int:
    """What each model of a group trained at once adds at peak: its weights, gradients and
    AdamW moments, and the largest of its training activations (with their gradients), its
    evaluation pass over `eval_batch` examples, and the adversarial searches' batches."""
    train_act = batch * m.activations * FLOAT * 2
    examples = facts.n_train + facts.n_test
    eval_act = (
        min(eval_batch, max(examples, 1))
        * EVAL_LIVE.get(arch, EVAL_LIVE_DEFAULT)
        * (m.widest + facts.num_classes)
        * FLOAT
    )
    searches = {"adversarial", "dynamics"} & set(metrics)  # both run PGD, ADV_BATCH examples at a time
    adv_act = ADV_BATCH * m.activations * FLOAT * 2 if searches else 0  # as a batch of training
    return m.params * FLOAT * 4 + max(train_act, eval_act, adv_act)


def group_memory(
    arch: str, facts: DatasetFacts, batch: int, eval_batch: int, metrics=(), model: ModelCost | None = None
) -> tuple[int, int]:
    """(bytes a group needs whatever its size, bytes each of its models adds) for training
    models `arch` (of measured cost `model`, if given) together on one device
    (ensemble.train_ensemble's group sizing)."""
    m = model or model_cost(arch, facts.feature_shape, facts.num_classes)
    return RUNTIME_BYTES + data_bytes(facts), per_model_bytes(arch, m, facts, batch, eval_batch, metrics)


def group_sums_bytes(num_classes: int) -> int:
    """Bytes per training example of a trace's group sums (traces.GROUP_FIELDS, float32)."""
    return JACKKNIFE_GROUPS * (2 * num_classes + 2) * FLOAT


def reduce_bytes(models: int, facts: DatasetFacts, max_pairs: int) -> int:
    """Peak host memory of reduce (estimators + influence.InfluenceAccumulator.compute): the
    models' packed masks and test bits, the unpacked (K, m) test correctness in float32, a
    handful of 16 MiB (rows × m) blocks, per-example sums (n × C held-out distributions, ~30
    score columns, the prototypicality group sums), the kept pairs and LiRA's working set."""
    n, m, c = facts.n_train, facts.n_test, facts.num_classes
    packed = models * ((n + 7) // 8 + (m + 7) // 8)
    correctness = models * m * FLOAT
    blocks = 8 * (16 << 20)
    # the held-out sums, ~30 score columns, the prototypicality group sums in float64 and their
    # leave-one-group-out copies (engine/prototypes.py)
    per_example = n * (2 * c * 8 + 30 * 8 + 4 * group_sums_bytes(c))
    pairs = 3 * max_pairs * 32 + m * 10 * 32
    attack = min(models * n, MAX_CELLS) * ATTACK_BYTES_PER_CELL  # LiRA (membership.py); skipped past MAX_CELLS
    return packed + correctness + blocks + per_example + pairs + attack


# -- exposure jobs ------------------------------------------------------------------------------

LM_HIDDEN, LM_LAYERS, LM_EMBED, LM_BLOCK = 256, 2, 64, 128  # lm.train_lm's model, as exposure jobs run it
BEAM = 5  # exposure.run_exposure_experiment's beam search


def lm_cost(arch: str, vocab: int, hidden: int = LM_HIDDEN, layers: int = LM_LAYERS) -> tuple[int, int]:
    """(parameters, forward FLOPs per token) of lm.build_lm's `arch` with `vocab` characters:
    2 × multiply-adds of its matrix products (attention over LM_SEQ_LEN tokens for the
    transformer), as for the zoo's models."""
    h, v = hidden, vocab
    if arch == "lstm":
        params, flops, width = v * LM_EMBED + h * v + v, 2 * h * v, LM_EMBED
        for _ in range(layers):
            params += 4 * h * (width + h) + 8 * h
            flops += 2 * 4 * h * (width + h)
            width = h
        return params, flops
    if arch == "transformer":
        per_layer = (3 * h * h + 3 * h) + (h * h + h) + (4 * h * h + 4 * h) + (4 * h * h + h) + 4 * h
        params = v * h + LM_BLOCK * h + layers * per_layer + 2 * h + h * v + v
        flops = layers * (2 * 12 * h * h + 2 * 2 * LM_SEQ_LEN * h) + 2 * h * v
        return params, flops
    raise ValueError(f"unknown language model {arch!r}")


@dataclass(frozen=True)
class ExposureCost:
    arch: str
    params: int
    steps: int  # training steps (LM_BATCH_SIZE windows of LM_SEQ_LEN characters each)
    training_chars: int  # the corpus with every inserted canary
    candidates: int  # secrets scored, over every planted canary
    train_flops: float  # forward + backward (3 × forward) over the training windows
    score_flops: float  # the candidates' log-perplexities, and greedy and beam extraction

    def seconds(self, flops_per_s: float) -> float:
        return (self.train_flops + self.score_flops) / flops_per_s


def exposure_cost(spec: ExposureSpec, corpus_chars: int, corpus_vocab: int) -> ExposureCost:
    """The cost of exposure job `spec` on a corpus of `corpus_chars` characters, `corpus_vocab`
    distinct (bounds will do: the estimate only grows with them). A valid spec is assumed."""
    formats = [CanaryFormat.parse(f) for f in spec.canaries]
    vocab = corpus_vocab + 1 + sum(len(f.charset()) for f in formats)  # CharTokenizer.build, at most
    inserted = sum(t * (len(f.prefix) + f.secret_length + 1) for f in formats for t in spec.insertions)
    chars = corpus_chars + inserted
    steps = lm_steps(chars, 0, float(spec.epochs))
    params, per_token = lm_cost(spec.model, vocab)
    candidates = 0
    score_tokens = 0
    for f in formats:
        each = f.space_size if f.space_size <= spec.enumeration_budget else spec.num_samples
        context = len(f.prefix) + 1  # "\n" + prefix: run once by the LSTM, with every candidate by the transformer
        per_candidate = f.secret_length + (context if spec.model == "transformer" else 0)
        candidates += each * len(spec.insertions)
        score_tokens += len(spec.insertions) * (each * per_candidate + context + 2 * BEAM * f.secret_length)
    return ExposureCost(
        arch=spec.model,
        params=params,
        steps=steps,
        training_chars=chars,
        candidates=candidates,
        train_flops=3.0 * per_token * steps * LM_BATCH_SIZE * LM_SEQ_LEN,
        score_flops=float(per_token) * score_tokens,
    )
