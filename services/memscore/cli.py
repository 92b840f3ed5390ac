"""The `memscore` command.

Each subcommand is one `_add_<name>(subparsers)` function that registers its flags and sets
`func`; `main` wires them together. Heavy imports (torch, grpc) happen inside the command
functions so `memscore --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def _add_health(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="exit 0 if a memscore gRPC server reports SERVING (for container healthchecks)")
    p.add_argument("target", help="HOST:PORT of a gateway or results server")
    p.add_argument("--service", default="", help="service name to check; empty = whole server")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")

    def run(args: argparse.Namespace) -> int:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.insecure_channel(args.target) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
                )
        except grpc.RpcError as e:
            print(f"{args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        print(f"{args.target}: {status}")
        return 0 if status == "SERVING" else 1

    p.set_defaults(func=run)


def _add_spec_flags(p: argparse.ArgumentParser) -> None:
    """The scoring-spec flags, shared by `run` (embedded) and `submit` (service)."""
    p.add_argument("--dataset", required=True, help="mnist1d | digits | longtail | PATH.npz | ImageFolder DIR (submit: also datasets/<sha256>.npz from `memscore upload`)")
    p.add_argument("--model", default="auto", help="auto | mlp | cnn1d | resnet (auto: by data kind)")
    p.add_argument("--models", type=int, default=64, help="K, number of subset models (default 64)")
    p.add_argument("--ratio", type=float, default=0.7, help="subset ratio r (default 0.7, as in Feldman & Zhang)")
    p.add_argument("--epochs", type=int, default=0, help="epochs per model; 0 = the model's recipe default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=0, help="0 = recipe default")
    p.add_argument("--lr", type=float, default=0.0, help="peak learning rate; 0 = recipe default")
    p.add_argument("--shard-size", type=int, default=0, help="models trained at once; 0 = auto")
    p.add_argument("--top-k", type=int, default=10, help="influence: top training examples kept per test example")
    p.add_argument("--influence-threshold", type=float, default=0.15, help="influence: global pairs kept at or above this")
    p.add_argument("--label-noise", type=float, default=0.0, help="flip this fraction of training labels (validation experiments)")
    p.add_argument("--keep-checkpoints", action="store_true", help="store each shard's stacked weights")


def _spec_from_args(args: argparse.Namespace):
    from .engine.spec import ScoringSpec

    return ScoringSpec(
        dataset=args.dataset,
        model=args.model,
        models=args.models,
        ratio=args.ratio,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        shard_size=args.shard_size,
        influence_top_k=args.top_k,
        influence_threshold=args.influence_threshold,
        label_noise=args.label_noise,
        keep_checkpoints=args.keep_checkpoints,
    )


def _print_ranked(rows: list[dict], file=sys.stdout) -> None:
    cols = ("index", "label", "memorization", "memorization_stderr", "memorization_soft", "heldout_accuracy", "n_in", "n_out")
    print("  ".join(f"{c:>12}" for c in cols), file=file)
    for r in rows:
        print("  ".join(f"{r[c]:>12.3f}" if isinstance(r[c], float) else f"{r[c]:>12}" for c in cols), file=file)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="score a dataset in this process (embedded: no Redis, no S3)")
    _add_spec_flags(p)
    p.add_argument("--out", required=True, help="directory for scores.parquet, influence.parquet, summary.json")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--top", type=int, default=10, help="print this many most-memorized examples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from tqdm import tqdm

        from .engine.datasets import DatasetError, load_dataset
        from .engine.scoring import run_scoring

        spec = _spec_from_args(args)
        problems = spec.validate()
        if problems:
            for field, msg in problems:
                print(f"error: --{field.replace('_', '-')}: {msg}", file=sys.stderr)
            return 2
        try:
            ds = load_dataset(spec.dataset, seed=spec.seed)
        except DatasetError as e:
            print(f"error: dataset {spec.dataset!r}: {e}", file=sys.stderr)
            return 2
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=spec.models, unit="model", disable=args.quiet, dynamic_ncols=True)

        def progress(done: float, total: int) -> None:
            bar.n = round(done, 2)
            bar.refresh()

        result = run_scoring(ds, spec, device=args.device, progress=progress)
        bar.close()
        for name, data in result.to_files().items():
            (out / name).write_bytes(data)
        s = result.summary
        print(
            f"{ds.name}: {ds.n_train} train / {ds.n_test} test, {s['arch']}, {spec.models} models: "
            f"mean test accuracy {s['mean_test_accuracy']:.3f}, in-sample {s['mean_in_sample_accuracy']:.3f}, "
            f"held-out {s['mean_heldout_accuracy']:.3f}; "
            f"mem>=0.25: {s['fraction_memorization_ge']['0.25']:.1%} of examples"
        )
        print(f"most memorized (of {ds.n_train}):")
        _print_ranked(result.most_memorized(args.top))
        print(f"wrote {out / 'scores.parquet'}, {out / 'influence.parquet'}, {out / 'summary.json'}")
        return 0

    p.set_defaults(func=run)


# Order here is the order in `memscore --help`.
COMMANDS = [_add_run, _add_health]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memscore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
