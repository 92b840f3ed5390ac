"""The scoring-spec flags shared by `run` (in this process) and `submit` (on the service), the
ScoringSpec built from them, and spec problems reported as flag errors."""

from __future__ import annotations

import argparse
import sys

from ..engine.catalog import BUILTINS, OPT_IN_METRICS, PLANS, RELIABILITY_METRICS


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        help=" | ".join(BUILTINS) + " | PATH.npz | TABLE.parquet | DIR of Parquet shards (or train/ + test/) "
        "| ImageFolder DIR | s3://BUCKET/KEY.parquet or s3://BUCKET/PREFIX/ (run: with your MEMSCORE_S3_* "
        "endpoint and keys; submit: under the server's MEMSCORE_DATA_URIS) "
        "(submit: also datasets/<sha256>.npz from `memscore upload`)",
    )
    p.add_argument(
        "--feature-column",
        default="",
        help="Parquet: the features, a list of numbers (vectors) or encoded PNG/JPEG bytes (images); "
        "default embedding if the table has it, else image",
    )
    p.add_argument("--label-column", default="", help="Parquet: integer (>= 0) or string labels; default label")
    p.add_argument(
        "--split-column",
        default="",
        help="Parquet: 'train' or 'test' per row; default split (not needed with train/ and test/ tables)",
    )
    p.add_argument(
        "--model",
        default="auto",
        help="auto (by data kind) | mlp | linear | cnn1d | resnet | torchvision/resnet18 ... | an installed "
        "plugin's name (`memscore models` lists them; docs/models.md)",
    )
    p.add_argument("--models", type=int, default=64, help="K, number of subset models (default 64)")
    p.add_argument(
        "--ratio",
        type=float,
        default=None,
        help="subset ratio r (default 0.7, as in Feldman & Zhang; 0.5 with --plan balanced)",
    )
    p.add_argument(
        "--metrics",
        default="",
        help="comma list of opt-in metric groups, each costing extra work per model: "
        + " | ".join(OPT_IN_METRICS)
        + " (adversarial: every model's L2 and L-inf distance to the nearest adversarial example of each "
        "training example; dynamics: per-epoch snapshots, learning speed and critical samples; "
        "dp: 3 more shards of 8 DP-SGD models at epsilon 1, 4, 16 for privacy_level, ~11x a model each; "
        "the cheap metrics are always on)",
    )
    p.add_argument(
        "--plan",
        default="random",
        choices=PLANS,
        help="subsets: random (each drawn independently, default) | balanced (complementary pairs: every "
        "example in exactly half the models, as LiRA's shadow models; needs an even --models)",
    )
    p.add_argument("--epochs", type=int, default=0, help="epochs per model; 0 = the model's recipe default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=0, help="0 = recipe default")
    p.add_argument("--lr", type=float, default=0.0, help="peak learning rate; 0 = recipe default")
    p.add_argument("--shard-size", type=int, default=0, help="models trained at once; 0 = auto")
    p.add_argument("--top-k", type=int, default=10, help="influence: top training examples kept per test example")
    p.add_argument(
        "--influence-threshold", type=float, default=0.15, help="influence: global pairs kept at or above this"
    )
    p.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="flip this fraction of training labels to another class (validation experiments; "
        "1.0 = every label drawn at random, the sanity run of Zhang et al. 2017)",
    )
    p.add_argument("--keep-checkpoints", action="store_true", help="store each shard's stacked weights")
    p.add_argument(
        "--fdr",
        type=float,
        default=0.05,
        help="influence: false discovery rate q at which pairs are called significant (default 0.05)",
    )
    p.add_argument(
        "--until-reliability",
        type=float,
        default=0.0,
        help="self-stopping: add models until the split-half (Spearman-Brown) reliability reaches this; 0 = off",
    )
    p.add_argument(
        "--max-models",
        type=int,
        default=0,
        help="self-stopping: train at most this many models (--models is the first batch); 0 = --models",
    )
    p.add_argument(
        "--reliability-metric",
        default="memorization",
        help=" | ".join(RELIABILITY_METRICS) + " (the score whose reliability stops the job)",
    )


def spec_from_args(args: argparse.Namespace):
    from ..engine.spec import ScoringSpec

    fields = dict(
        dataset=args.dataset,
        model=args.model,
        models=args.models,
        plan=args.plan,
        metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        shard_size=args.shard_size,
        influence_top_k=args.top_k,
        influence_threshold=args.influence_threshold,
        label_noise=args.label_noise,
        keep_checkpoints=args.keep_checkpoints,
        influence_fdr=args.fdr,
        until_reliability=args.until_reliability,
        max_models=args.max_models,
        reliability_metric=args.reliability_metric,
        feature_column=args.feature_column,
        label_column=args.label_column,
        split_column=args.split_column,
    )
    if args.ratio is not None:
        fields["ratio"] = args.ratio
    return ScoringSpec.from_dict(fields)


_FLAG_OF = {"influence_top_k": "top-k", "influence_fdr": "fdr"}  # spec fields whose flag is not their name


def report_problems(problems: list[tuple[str, str]]) -> bool:
    """Print each (field, message) of a spec's validate() as `error: --flag: message`; True if any.
    A canary's field `canaries[i]` is the (i+1)-th --canary flag."""
    for field, msg in problems:
        flag = "canary" if field.startswith("canaries") else _FLAG_OF.get(field, field.replace("_", "-"))
        where = f" #{int(field[9:-1]) + 1}" if field.startswith("canaries[") else ""
        print(f"error: --{flag}{where}: {msg}", file=sys.stderr)
    return bool(problems)
