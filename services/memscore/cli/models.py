"""`memscore models`: the models a spec may name, with their parameter counts. Without
`--gateway` those this installation trains (`memscore run`); with it, those the deployment
offers (ScoringService.ListModels: its workers' image, plugins included)."""

from __future__ import annotations

import argparse
import sys

from .tables import print_table

COLUMNS = ("name", "source", "params", "feature_shape", "input", "problem")


def add_models(sub: argparse._SubParsersAction) -> None:
    from .service import add_tls_flags

    p = sub.add_parser("models", help="list the models a job may train (built-ins, torchvision, plugins)")
    p.add_argument(
        "--shape",
        default="",
        help="example shape for the parameter counts, e.g. 512 or 3,32,32 (default: each model's)",
    )
    p.add_argument("--classes", type=int, default=0, help="classes for the parameter counts (default 10)")
    p.add_argument("--gateway", default=None, help="ask this deployment's Scoring service HOST:PORT instead")
    p.add_argument("--token", default=None, help="bearer token (default MEMSCORE_TOKEN)")
    p.add_argument("--csv", action="store_true", help="print CSV")
    add_tls_flags(p)
    p.set_defaults(func=models)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise SystemExit(f"error: --shape takes integers such as 512 or 3,32,32, got {text!r}") from None


def models(args: argparse.Namespace) -> int:
    shape = _shape(args.shape)
    if args.gateway:
        rows = _remote(args, shape)
        if rows is None:
            return 1
    else:
        from ..dataplane.models import list_models
        from ..errors import InvalidArgument

        try:
            rows = list_models(shape, args.classes)
        except InvalidArgument as e:
            for field, message in e.violations:
                print(f"error: {field}: {message}", file=sys.stderr)
            return 1
    for r in rows:
        r["feature_shape"] = "x".join(str(d) for d in r["feature_shape"])
    print_table(rows, COLUMNS, formats={"params": ","}, left=("name", "source", "input", "problem"), csv=args.csv)
    return 0


def _remote(args: argparse.Namespace, shape: tuple[int, ...]) -> list[dict] | None:
    import grpc

    from ..client import Client, field_violations
    from .service import _tls

    try:
        with Client(args.gateway, args.gateway, token=args.token, **_tls(args)) as client:
            infos = client.list_models(shape, args.classes)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        for field, desc in field_violations(e):
            print(f"  {field}: {desc}", file=sys.stderr)
        return None
    return [{c: (list(getattr(m, c)) if c == "feature_shape" else getattr(m, c)) for c in COLUMNS} for m in infos]
