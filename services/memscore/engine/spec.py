"""What a scoring job asks for. Shared by `memscore run`, the gateway and the workers.

`validate()` returns *every* problem at once as (field, message) pairs, so the gateway can
answer INVALID_ARGUMENT naming each bad field and the CLI can print them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .catalog import ARCH_FEATURE_NDIM, OPT_IN_METRICS, PLANS, RELIABILITY_METRICS
from .privacy_level import dp_shards, is_dp_shard
from .registry import name_problem

ARCHS = ("auto", *ARCH_FEATURE_NDIM)  # the built-ins; registry.available_models lists every model
DEFAULT_SHARD_SIZE = 64  # models per shard (one task) when the spec says 0


def _from_dict(cls, d: dict):
    """A spec dataclass from a dict, refusing fields it does not know (typos fail loudly)."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown spec fields: {', '.join(unknown)}")
    return cls(**d)


@dataclass
class ScoringSpec:
    dataset: str  # built-in name, a local path (.npz, ImageFolder, Parquet), datasets/<sha256>.npz, s3://BUCKET/KEY
    # auto (by data kind), a built-in (mlp, cnn1d, resnet, linear), torchvision/<name>, or an
    # installed plugin's name (engine/registry.py)
    model: str = "auto"
    models: int = 64  # K, number of subset models
    ratio: float = 0.7  # subset ratio r: each model trains on round(r*n) examples (0.5 with plan "balanced")
    epochs: int = 0  # 0 = the recipe's default for the arch
    seed: int = 0
    batch_size: int = 0  # 0 = recipe default
    lr: float = 0.0  # 0 = recipe default (peak learning rate)
    shard_size: int = 0  # G models trained at once per shard; 0 = auto
    influence_top_k: int = 10  # per test example, its top-k training examples
    influence_threshold: float = 0.15  # global pairs kept when influence >= this (paper: 0.15)
    max_influence_pairs: int = 100_000
    label_noise: float = 0.0  # fraction of training labels flipped (validation; 1 = random labels, Zhang et al. 2017)
    keep_checkpoints: bool = False
    influence_fdr: float = 0.05  # false discovery rate q for significant influence pairs
    until_reliability: float = 0.0  # self-stopping target (Spearman-Brown reliability); 0 = off
    max_models: int = 0  # cap on models a self-stopping job trains; 0 = `models`
    reliability_metric: str = "memorization"  # whose reliability stops the job (RELIABILITY_METRICS)
    plan: str = "random"  # subset plan (subsets.PLANS): "balanced" = each example in exactly half the models
    metrics: list[str] = dataclasses.field(default_factory=list)  # opt-in metric groups (OPT_IN_METRICS)
    # Parquet datasets (engine/parquet.py): the feature, label and split columns; "" = the defaults
    # ("embedding" if the table has it, else "image"; "label"; "split" with values train/test).
    feature_column: str = ""
    label_column: str = ""
    split_column: str = ""

    @property
    def effective_shard_size(self) -> int:
        return max(1, min(self.models, self.shard_size or DEFAULT_SHARD_SIZE))

    @property
    def num_shards(self) -> int:
        g = self.effective_shard_size
        return (self.models + g - 1) // g

    def shards(self) -> list[int]:
        """Every shard of the job: its models' 0..num_shards-1, then the DP levels' with
        `--metrics dp` (engine/privacy_level.py; numbered apart, so a growing job keeps them)."""
        return [*range(self.num_shards), *dp_shards(self.metrics)]

    def shard_models(self, shard: int) -> int:
        """How many of the job's K models shard `shard` trains (a DP level's are none of them)."""
        if is_dp_shard(shard):
            return 0
        g = self.effective_shard_size
        return max(0, min(g, self.models - shard * g))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScoringSpec":
        """A spec from its fields; a balanced plan without a ratio gets its ratio, 0.5."""
        if d.get("plan") == "balanced" and "ratio" not in d:
            d = {**d, "ratio": 0.5}
        return _from_dict(cls, d)

    def validate(self, max_models: int = 100_000) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if not self.dataset:
            problems.append(("dataset", "is required"))
        if why := name_problem(self.model):
            problems.append(("model", why))
        if not 2 <= self.models <= max_models:
            problems.append(("models", f"must be between 2 and {max_models}, got {self.models}"))
        if not 0.0 < self.ratio < 1.0:
            problems.append(("ratio", f"must be strictly between 0 and 1, got {self.ratio}"))
        if not 0 <= self.epochs <= 10_000:
            problems.append(("epochs", f"must be between 0 (default) and 10000, got {self.epochs}"))
        if self.seed < 0:
            problems.append(("seed", f"must be >= 0, got {self.seed}"))
        if not 0 <= self.batch_size <= 65_536:
            problems.append(("batch_size", f"must be between 0 (default) and 65536, got {self.batch_size}"))
        if not (self.lr >= 0.0 and self.lr < 100.0):  # also rejects NaN
            problems.append(("lr", f"must be >= 0 (0 = default) and < 100, got {self.lr}"))
        if not 0 <= self.shard_size <= 4096:
            problems.append(("shard_size", f"must be between 0 (auto) and 4096, got {self.shard_size}"))
        if not 0 <= self.influence_top_k <= 1000:
            problems.append(("influence_top_k", f"must be between 0 and 1000, got {self.influence_top_k}"))
        if not (-1.0 <= self.influence_threshold <= 1.0):
            problems.append(("influence_threshold", f"must be in [-1, 1], got {self.influence_threshold}"))
        if not 0 <= self.max_influence_pairs <= 10_000_000:
            problems.append(("max_influence_pairs", f"must be between 0 and 10000000, got {self.max_influence_pairs}"))
        if not 0.0 <= self.label_noise <= 1.0:
            problems.append(("label_noise", f"must be in [0, 1], got {self.label_noise}"))
        if not 0.0 < self.influence_fdr < 1.0:  # also rejects NaN
            problems.append(("influence_fdr", f"must be strictly between 0 and 1, got {self.influence_fdr}"))
        if not (self.until_reliability == 0.0 or 0.0 < self.until_reliability < 1.0):
            problems.append(("until_reliability", f"must be 0 (off) or in (0, 1), got {self.until_reliability}"))
        if self.max_models and not self.models <= self.max_models <= max_models:
            problems.append(("max_models", f"must be 0 or between models ({self.models}) and {max_models}"))
        elif self.until_reliability and self.max_models > self.models and self.models % self.effective_shard_size:
            # a job grows by whole shards; a partial last shard would change when the job grows
            problems.append(
                (
                    "models",
                    f"a self-stopping job grows by whole shards: models ({self.models}) must be a multiple of "
                    f"the shard size ({self.effective_shard_size}); set models or shard_size accordingly",
                )
            )
        problems += self._plan_problems()
        if not isinstance(self.metrics, list) or any(m not in OPT_IN_METRICS for m in self.metrics):
            problems.append(
                ("metrics", f"unknown metric groups {self.metrics!r}; this memscore offers {', '.join(OPT_IN_METRICS)}")
            )
        elif len(set(self.metrics)) != len(self.metrics):
            problems.append(("metrics", f"each metric group once, got {self.metrics!r}"))
        if self.reliability_metric not in RELIABILITY_METRICS:
            problems.append(
                (
                    "reliability_metric",
                    f"must be one of {', '.join(RELIABILITY_METRICS)}, got {self.reliability_metric!r}",
                )
            )
        return problems

    def _plan_problems(self) -> list[tuple[str, str]]:
        if self.plan not in PLANS:
            return [("plan", f"unknown subset plan {self.plan!r}; choose one of {', '.join(PLANS)}")]
        if self.plan != "balanced":
            return []
        problems = []
        if self.ratio != 0.5:
            problems.append(
                (
                    "ratio",
                    f"the balanced plan trains every example in half the models: ratio must be 0.5, got {self.ratio}",
                )
            )
        if self.models % 2 or (self.max_models and self.max_models % 2):
            problems.append(
                ("models", "the balanced plan trains models in complementary pairs: models and max_models must be even")
            )
        elif self.until_reliability and self.max_models > self.models and self.effective_shard_size % 2:
            problems.append(
                (
                    "shard_size",
                    "a self-stopping balanced job grows by whole shards of pairs: the shard size must be even",
                )
            )
        return problems


LM_ARCHS = ("lstm", "transformer")


@dataclass
class ExposureSpec:
    """A Secret Sharer experiment (Carlini et al. 2019): canaries inserted into a corpus, a
    language model trained on it, the exposure of each canary measured."""

    canaries: list[str] = dataclasses.field(default_factory=lambda: ["my social security number is {ddd-dd-dddd}"])
    insertions: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 4, 16])
    corpus: str = "builtin"  # "builtin", a local path, or datasets/<sha256>.txt in the store
    model: str = "lstm"  # one of LM_ARCHS
    epochs: int = 0  # 0 = the LM recipe's default
    seed: int = 0
    enumeration_budget: int = 100_000  # largest |R| scored exactly; above it, extrapolation
    num_samples: int = 10_000  # candidates sampled for extrapolation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExposureSpec":
        return _from_dict(cls, d)

    def validate(self) -> list[tuple[str, str]]:
        from .canaries import CanaryFormat  # numpy only: the gateway can validate without torch

        problems: list[tuple[str, str]] = []
        counts_ok = isinstance(self.insertions, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in self.insertions
        )
        if not self.canaries:
            problems.append(("canaries", "at least one canary format is required"))
        for i, fmt in enumerate(self.canaries):
            try:
                parsed = CanaryFormat.parse(fmt)
            except ValueError as e:
                problems.append((f"canaries[{i}]", str(e)))
                continue
            if counts_ok and len(self.insertions) > parsed.space_size:
                # One distinct secret per insertion count (run_exposure_experiment).
                problems.append(
                    (
                        f"canaries[{i}]",
                        f"{fmt!r} has only {parsed.space_size} possible secrets, fewer than the "
                        f"{len(self.insertions)} insertion counts (each count gets its own secret)",
                    )
                )
        if not counts_ok:
            problems.append(("insertions", f"must be a list of whole numbers, got {self.insertions!r}"))
        elif not self.insertions:
            problems.append(("insertions", "at least one insertion count is required"))
        elif any(t < 0 or t > 100_000 for t in self.insertions):
            problems.append(("insertions", f"each count must be between 0 and 100000, got {self.insertions}"))
        if self.model not in LM_ARCHS:
            problems.append(("model", f"unknown model {self.model!r}; choose one of {', '.join(LM_ARCHS)}"))
        if not 0 <= self.epochs <= 10_000:
            problems.append(("epochs", f"must be between 0 (default) and 10000, got {self.epochs}"))
        if self.seed < 0:
            problems.append(("seed", f"must be >= 0, got {self.seed}"))
        if not 1 <= self.enumeration_budget <= 100_000_000:
            problems.append(("enumeration_budget", f"must be between 1 and 100000000, got {self.enumeration_budget}"))
        if not 100 <= self.num_samples <= 10_000_000:
            problems.append(("num_samples", f"must be between 100 and 10000000, got {self.num_samples}"))
        return problems
