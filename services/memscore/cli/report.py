"""Commands that read a run's result files, from a `memscore run --out` DIR or a JOB on the
Results service: `report` (one HTML page) and `audit` (the membership-inference audit)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import service
from .tables import print_table

# -- report ------------------------------------------------------------------------------------


def _add_source(sub: argparse._SubParsersAction, name: str, what: str) -> argparse.ArgumentParser:
    """A command reading one run's result files, with its JOB|DIR argument and the service flags."""
    p = sub.add_parser(name, help=f"{what} (a `memscore run --out` DIR, or a JOB id)")
    p.add_argument(
        "source", metavar="JOB|DIR", help="a directory written by `memscore run`, or a job id on the Results service"
    )
    service.add_service_flags(p)
    return p


def add_report(sub: argparse._SubParsersAction) -> None:
    p = _add_source(sub, "report", "write a self-contained HTML report of a run")
    p.add_argument("--out", required=True, metavar="FILE.html")
    p.add_argument(
        "--dataset",
        default="",
        help="load the examples from here instead of the spec's dataset reference "
        "(e.g. a local copy of an uploaded .npz)",
    )
    p.add_argument("--per-class", type=int, default=8, help="most memorized examples shown per class (default 8)")
    p.add_argument(
        "--influence-examples", type=int, default=12, help="test examples shown with their influencers (default 12)"
    )
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    from ..report import read_result_files, render_report

    files, name, rc = _result_files(args)
    if files is None:
        return rc
    title = f"memscore report: {name}"
    scores, influence, summary = read_result_files(files)
    notes = []
    ds = _report_dataset(args, summary, notes)
    page = render_report(
        scores,
        influence,
        summary,
        ds,
        notes=notes,
        title=title,
        per_class=args.per_class,
        influence_examples=args.influence_examples,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(page.encode()) / 1024:.0f} KiB)")
    return 0


def _result_files(args: argparse.Namespace) -> tuple[dict[str, bytes] | None, str, int]:
    """(the result files of `args.source`, a name for it, the exit code when there are none)."""
    source = Path(args.source)
    if source.is_dir():
        return result_files_in(source), source.resolve().name, 2
    return result_files_of_job(args), f"job {args.source}", 1


def result_files_in(source) -> dict[str, bytes] | None:
    """The result files in a `memscore run --out` directory, or None (after saying which lack)."""
    from ..report import RESULT_FILES

    missing = [name for name in RESULT_FILES if not (source / name).is_file()]
    if missing:
        print(
            f"error: {source} lacks {', '.join(missing)} (expected the --out directory of `memscore run`)",
            file=sys.stderr,
        )
        return None
    return {name: (source / name).read_bytes() for name in RESULT_FILES}


def result_files_of_job(args: argparse.Namespace) -> dict[str, bytes] | None:
    """The result files of job `args.source` from the Results service, or None (after saying why)."""
    import grpc

    from ..report import RESULT_FILES

    try:
        with service.connect(args) as c:
            return {name: c.artifact(args.source, name) for name in RESULT_FILES}
    except grpc.RpcError as e:
        print(
            f"error: {args.source!r} is not a directory, and the Results service at {args.results} answered "
            f"{e.code().name}: {e.details()}",
            file=sys.stderr,
        )
        return None


def _report_dataset(args: argparse.Namespace, summary: dict, notes: list[str]):
    """The dataset whose examples the report draws, or None; appends to `notes` why not."""
    from ..report import load_dataset_for_report

    objects = None
    ref = args.dataset or summary.get("spec", {}).get("dataset", "")
    if ref.startswith("datasets/"):
        try:  # uploaded data lives in the service's object store: reachable when this machine shares it
            from ..store.objects import open_object_store

            objects = open_object_store()
        except Exception as e:
            notes.append(f"the object store holding {ref} could not be opened: {e}")
    ds, why = load_dataset_for_report(summary, args.dataset, objects)
    if ds is None:
        notes.append(f"Examples are listed, not drawn: {why}.")
        print(f"warning: {why}; the report lists examples without pictures", file=sys.stderr)
    return ds


# -- audit --------------------------------------------------------------------------------------


def add_audit(sub: argparse._SubParsersAction) -> None:
    p = _add_source(
        sub, "audit", "print a run's membership-inference audit: LiRA's ROC summary and the most exposed examples"
    )
    p.add_argument("--top", type=int, default=10, help="most exposed examples listed (default 10; 0 = none)")
    p.add_argument("--roc", action="store_true", help="also print the ROC curve's points (FPR, TPR, chance TPR)")
    p.set_defaults(func=audit)


def audit(args: argparse.Namespace) -> int:
    from ..report import read_result_files

    files, _, rc = _result_files(args)
    if files is None:
        return rc
    scores, _, summary = read_result_files(files)
    mi = summary.get("membership_inference")
    if not mi:
        print("error: this run was reduced before memscore measured membership inference", file=sys.stderr)
        return 1
    if mi.get("skipped"):
        print(f"membership inference not measured: {mi['skipped']} (the run has {mi.get('models')})")
        return 0
    leaks = "above chance (significant)" if mi.get("significant") else "not distinguishable from chance"
    print(f"membership inference: LiRA (online) on the run's own {mi['models']} models, {mi['variance']} variance")
    head = ["", "this run [95%]", "membership shuffled"]
    rows = [
        ("AUC", _with_interval(mi, "auc"), _with_interval(mi, "chance_auc")),
        ("TPR at 0.1% FPR", _with_interval(mi, "tpr_at_fpr_0_001"), f"{mi['chance_tpr_at_fpr_0_001']:.4f}"),
        ("TPR at 1% FPR", _with_interval(mi, "tpr_at_fpr_0_01"), f"{mi['chance_tpr_at_fpr_0_01']:.4f}"),
    ]
    print_table([dict(zip(head, r)) for r in rows], head, left=("",))
    print(f"membership leaks {leaks}; examples leaking at FDR 5%: {mi.get('privacy_risk_significant')}")
    roc = mi.get("roc")
    if args.roc and roc:
        print("\nROC (the report draws it on log-log axes):")
        rows = zip(roc["fpr"], roc["tpr"], roc["chance_tpr"])
        print_table([{"fpr": f, "tpr": t, "chance_tpr": c} for f, t, c in rows], ["fpr", "tpr", "chance_tpr"],
                    formats={"fpr": ".4g", "tpr": ".4f", "chance_tpr": ".4f"})  # fmt: skip
    if args.top > 0:
        _print_exposed(scores, args.top)
    return 0


def _with_interval(mi: dict, key: str) -> str:
    v, (lo, hi) = mi.get(key), (mi.get(key + "_interval") or [None, None])
    if v is None:
        return "–"
    return f"{v:.4f} [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else f"{v:.4f}"


def _print_exposed(scores: dict, top: int) -> None:
    from ..report.metrics import most_exposed

    order = most_exposed(scores, top)
    print(
        f"\nthe {len(order)} most exposed training examples (privacy_risk: 0.5 = nothing leaks, 1 = always told apart):"
    )
    columns = ["index", "label", "privacy_risk", "privacy_risk_stderr", "memorization"]
    if "label_flipped" in scores:
        columns.append("label_flipped")
    print_table([{c: scores[c][i] for c in columns} for i in order], columns)
