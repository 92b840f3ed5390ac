"""The engine's vocabulary, as plain data: what the services need to know about datasets,
models and score columns without importing torch (the gateway and results servers never do).

Every other module reads these tables instead of keeping its own copy.
"""

from __future__ import annotations

# Built-in datasets and the shape of one example (without the batch dimension), as
# `engine.datasets.load_dataset(name)` returns them (tests/engine/test_datasets.py checks).
BUILTIN_SHAPES: dict[str, tuple[int, ...]] = {"mnist1d": (40,), "digits": (1, 8, 8), "longtail": (1, 16, 16)}
BUILTINS: tuple[str, ...] = tuple(BUILTIN_SHAPES)
# What else the gateway records of a dataset (as for an upload's meta): sizes, classes and kind,
# which size a job before it runs (engine/cost.py).
BUILTIN_FACTS: dict[str, dict] = {
    "mnist1d": {"n_train": 4000, "n_test": 1000, "num_classes": 10, "kind": "sequence"},
    "digits": {"n_train": 1347, "n_test": 450, "num_classes": 10, "kind": "image"},
    "longtail": {"n_train": 2000, "n_test": 500, "num_classes": 10, "kind": "image"},
}

# The built-in corpus of exposure jobs (corpus.builtin_corpus): characters and distinct ones,
# which size an exposure job before it runs (cost.exposure_cost); a test checks them.
BUILTIN_CORPUS_FACTS: dict[str, int] = {"chars": 43054, "vocab": 92}

# The model a dataset of each kind gets when the spec says `auto`.
DEFAULT_ARCH: dict[str, str] = {"vector": "mlp", "sequence": "cnn1d", "image": "resnet"}

# Models of the zoo (`engine.models.build_model`) and the example ranks each takes:
# vectors (d,) for the MLP and the linear model (any shape is flattened), sequences (L,) or
# (c, L), images (c, h, w).
ARCH_FEATURE_NDIM: dict[str, tuple[int, ...] | None] = {"mlp": None, "cnn1d": (1, 2), "resnet": (3,), "linear": None}
ARCH_INPUT_DESCRIPTION = {
    "mlp": "any shape (flattened)",
    "cnn1d": "(L,) or (c, L) sequences",
    "resnet": "(c, h, w) images",
    "linear": "any shape (flattened)",
}

# torchvision classification architectures a spec may name as `torchvision/<name>`
# (engine/vision.py adapts them: GroupNorm for BatchNorm, no dropout, a small-image stem for the
# resnets). Each is checked to build, train under vmap and backpropagate on 1- and 3-channel
# 16x16 images (tests/engine/test_vision.py); others (e.g. efficientnet's stochastic depth)
# draw random numbers in forward, which the vectorised trainer does not allow.
TORCHVISION_PREFIX = "torchvision/"
TORCHVISION_MODELS: tuple[str, ...] = ("mobilenet_v3_small", "regnet_y_400mf", "resnet18", "resnet34")

# Metric groups a job opts into (ScoringSpec.metrics, `--metrics`): they cost extra work per model.
# adversarial: each model's distance to the nearest adversarial example of every training example
# (engine/adversarial.py), L2 and L∞, after training.
# dynamics: per-epoch snapshots of every model's training predictions (learning speed, first
# learned epoch) and Arpit et al.'s critical samples (engine/dynamics.py).
# dp: a few groups of models trained with DP-SGD at a ladder of ε, and per example the strongest
# ε at which it is still classified correctly (engine/privacy_level.py); ~11x a model's training each.
OPT_IN_METRICS: tuple[str, ...] = ("adversarial", "dynamics", "dp")

# Subset plans (engine/subsets.py): independent random subsets, or LiRA's balanced complementary pairs.
PLANS: tuple[str, ...] = ("random", "balanced")

# Feldman & Zhang 2020 call an example memorized at mem >= 0.25.
MEMORIZED_AT = 0.25

# Columns of scores.parquet, in order (one row per training example). `label_flipped` follows
# them in validation runs with label noise.
SCORE_COLUMNS: tuple[str, ...] = (
    "index",
    "label",
    "memorization",
    "memorization_stderr",
    "memorization_soft",
    "memorization_soft_stderr",
    "in_sample_accuracy",
    "heldout_accuracy",
    "n_in",
    "n_out",
    "memorization_lower",
    "memorization_upper",
    "memorization_soft_lower",
    "memorization_soft_upper",
    "memorization_log_odds",
    "memorization_log_odds_stderr",
    "label_quality",
    "predicted_label_heldout",
    "privacy_risk",
    "privacy_risk_stderr",
    "privacy_risk_pvalue",
    "model_confidence",
    "model_confidence_stderr",
    "holdout_retraining",
    "holdout_retraining_stderr",
    "ensemble_agreement",
    "ensemble_agreement_stderr",
    "adv_distance_l2",
    "adv_distance_l2_stderr",
    "adv_distance_l2_heldout",
    "adv_distance_l2_heldout_stderr",
    "adv_distance_linf",
    "adv_distance_linf_stderr",
    "adv_distance_linf_heldout",
    "adv_distance_linf_heldout_stderr",
    "learning_speed",
    "learning_speed_stderr",
    "first_learned_epoch",
    "first_learned_epoch_stderr",
    "critical",
    "critical_fraction",
    "critical_fraction_stderr",
    "privacy_level",
    "privacy_level_lower",
    "privacy_level_upper",
)

# Score columns examples can be ranked by (Results.StreamRanked `metric`, `memscore results --metric`).
RANK_METRICS: tuple[str, ...] = (
    "memorization",
    "memorization_soft",
    "in_sample_accuracy",
    "heldout_accuracy",
    "memorization_stderr",
    "memorization_soft_stderr",
    "memorization_log_odds",
    "label_quality",
    "memorization_lower",
    "memorization_upper",
    "memorization_soft_lower",
    "privacy_risk",
    "model_confidence",
    "holdout_retraining",
    "ensemble_agreement",
    "adv_distance_l2",
    "adv_distance_linf",
    "learning_speed",
    "first_learned_epoch",
    "critical_fraction",
    "privacy_level",
)

# Scores whose split-half reliability every job reports (summary.json `reliability`), and which
# can stop a self-stopping job (ScoringSpec.reliability_metric).
RELIABILITY_METRICS: tuple[str, ...] = ("memorization", "memorization_soft", "memorization_log_odds")


def model_takes(arch: str, feature_shape: tuple[int, ...]) -> str | None:
    """None if model `arch` takes examples of `feature_shape`, else why not."""
    ndims = ARCH_FEATURE_NDIM.get(arch)
    if ndims is None or len(feature_shape) in ndims:
        return None
    return f"{arch} takes {ARCH_INPUT_DESCRIPTION[arch]}; this dataset's examples have shape {tuple(feature_shape)}"
