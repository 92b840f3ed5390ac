"""Commands that compute in this process: `run` (memorization and influence scores) and `exposure`
(the Secret Sharer test; `--submit` hands it to the service instead)."""

from __future__ import annotations

import argparse
import sys

from . import service
from .spec_flags import add_spec_flags, report_problems, spec_from_args
from .tables import RANKED_COLUMNS, print_table

EXPOSURE_COLUMNS = ("t", "exposure", "rank", "exact?", "extracted?")
# (extracted by greedy decoding, extracted by beam search) -> the table's word
EXTRACTED = {(True, True): "both", (True, False): "greedy", (False, True): "beam", (False, False): "no"}


def _write_files(out, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (out / name).write_bytes(data)


# -- run ---------------------------------------------------------------------------------------


def _load_dataset(spec):
    """The run's dataset: any local path, or an s3:// Parquet table read with this user's own
    MEMSCORE_S3_* endpoint and credentials (no MEMSCORE_DATA_URIS: that guards a shared service)."""
    from ..datarefs import load_uri_dataset
    from ..datauris import is_uri, split_uri
    from ..engine.datasets import DatasetError, load_dataset
    from ..engine.parquet import ParquetColumns
    from ..settings import Settings
    from ..store.objects import S3ObjectStore

    columns = ParquetColumns.of(spec)
    if not is_uri(spec.dataset):
        return load_dataset(spec.dataset, columns=columns)
    s = Settings()
    if not s.s3_endpoint:
        raise DatasetError("an s3:// dataset needs MEMSCORE_S3_ENDPOINT (and MEMSCORE_S3_ACCESS_KEY, _SECRET_KEY)")
    try:
        bucket, _ = split_uri(spec.dataset)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    store = S3ObjectStore(s.s3_endpoint, s.s3_access_key, s.s3_secret_key, bucket, s.s3_secure, s.s3_region)
    return load_uri_dataset(spec.dataset, store.bucket_reader(bucket), [f"s3://{bucket}"], None, columns)


def checked_dataset(spec):
    """The dataset of a valid `spec` that its model takes (as the gateway would check), or None
    after printing why not: `run` and `plan` start here."""
    from ..engine.datasets import DatasetError
    from ..engine.registry import model_problem

    if report_problems(spec.validate()):
        return None
    try:
        ds = _load_dataset(spec)
    except DatasetError as e:
        print(f"error: dataset {spec.dataset!r}: {e}", file=sys.stderr)
        return None
    why = model_problem(spec.model, ds.feature_shape, ds.num_classes)
    if why:  # the model does not take this data (registry.model_problem), as the gateway would say
        report_problems([("model", why)])
        return None
    return ds


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="score a dataset in this process (embedded: no Redis, no S3)")
    add_spec_flags(p)
    p.add_argument(
        "--out", required=True, help="directory for scores.parquet, influence.parquet, summary.json, heldout_probs.npy"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--top", type=int, default=10, help="print this many most-memorized examples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ..engine.scoring import run_scoring

    spec = spec_from_args(args)
    ds = checked_dataset(spec)
    if ds is None:
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=spec.models, unit="model", disable=args.quiet, dynamic_ncols=True)

    def progress(done: float, total: int) -> None:
        bar.total = total  # a self-stopping run grows
        bar.n = round(done, 2)
        bar.refresh()

    result = run_scoring(ds, spec, device=args.device, progress=progress)
    bar.close()
    files = result.to_files()
    _write_files(out, files)
    s = result.summary
    print(
        f"{ds.name}: {ds.n_train} train / {ds.n_test} test, {s['arch']}, {s['models_done']} models: "
        f"mean test accuracy {s['mean_test_accuracy']:.3f}, in-sample {s['mean_in_sample_accuracy']:.3f}, "
        f"held-out {s['mean_heldout_accuracy']:.3f}"
    )
    print(population_line(s))
    print(influence_line(s))
    print(reliability_line(s))
    print(f"most memorized (of {ds.n_train}):")
    print_table(result.most_memorized(args.top), RANKED_COLUMNS)
    print("wrote " + ", ".join(str(out / name) for name in files))
    return 0


def population_line(summary: dict) -> str:
    """The memorized fraction as measured (raw, inflated by noise at small K) beside its
    noise-corrected estimate with interval and the count memorized beyond doubt."""
    raw = summary["fraction_memorization_ge"]["0.25"]
    if raw is None:
        return "mem>=0.25: no example has an estimate yet"
    line = f"mem>=0.25: {raw:.1%} of examples as measured"
    c = (summary.get("fraction_memorization_ge_corrected") or {}).get("0.25")
    if c and c.get("estimate") is not None:
        line += f", {c['estimate']:.1%} corrected for sampling noise"
        if c.get("lower") is not None:
            line += f" (95% interval {c['lower']:.1%} to {c['upper']:.1%})"
    return line + f"; {summary['count_memorization_lower_ge_0_25']} with a 95% interval wholly >= 0.25"


def influence_line(summary: dict) -> str:
    spec = summary.get("spec", {})
    return (
        f"influence: {summary['influence_pairs_above_threshold']} pairs >= {spec.get('influence_threshold')} "
        f"(raw), {summary['influence_pairs_significant']} significant at false discovery rate "
        f"{summary.get('influence_fdr')}"
    )


def reliability_line(summary: dict) -> str:
    """The run's split-half reliability per score, with the models projected for 0.95, and why
    a self-stopping run stopped."""
    parts = []
    for metric, r in summary.get("reliability", {}).items():
        rho, k = r.get("spearman_brown"), r.get("models_for_0_95")
        parts.append(f"{metric} " + ("n/a" if rho is None else f"{rho:.3f}" + (f" (0.95 at ~{k} models)" if k else "")))
    line = "reliability (split-half, Spearman-Brown): " + (", ".join(parts) or "n/a")
    spec = summary.get("spec", {})
    if spec.get("until_reliability"):
        line += (
            f"; self-stopping at {spec['until_reliability']:g} of {spec.get('reliability_metric')}: "
            f"stopped at {summary.get('models_done')} models ({summary.get('stopped_because')})"
        )
    return line


# -- exposure ----------------------------------------------------------------------------------


def add_exposure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "exposure",
        help="Secret Sharer test in this process: plant canaries in a corpus, train a character LM, measure exposure",
    )
    p.add_argument(
        "--corpus", default="builtin", metavar="PATH", help="UTF-8 text file to train on (default: the built-in corpus)"
    )
    p.add_argument(
        "--canary",
        action="append",
        default=[],
        metavar="FORMAT",
        help="canary format, secret in braces: 'the pin is {dddd}' (d digit, a letter; repeatable; "
        "default 'my social security number is {ddd-dd-dddd}')",
    )
    p.add_argument(
        "--insertions", default="0,1,4,16", metavar="LIST", help="comma-separated insertion counts t (default 0,1,4,16)"
    )
    p.add_argument("--model", default="lstm", help="lstm | transformer")
    p.add_argument("--epochs", type=int, default=0, help="passes over the corpus; 0 = the LM recipe's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--enumeration-budget", type=int, default=100_000, help="largest |R| scored exactly (default 100000)"
    )
    p.add_argument(
        "--num-samples", type=int, default=10_000, help="candidates sampled for extrapolation (default 10000)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", metavar="DIR", help="directory for exposure.parquet and summary.json (in-process runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--submit", action="store_true", help="send the job to the gateway instead of running it here")
    p.add_argument("--wait", action="store_true", help="with --submit: watch the job and print its exposures")
    service.add_service_flags(p)
    # Advanced (quick experiments and tests): training steps and model size.
    p.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=2, help=argparse.SUPPRESS)
    p.set_defaults(func=exposure)


def exposure(args: argparse.Namespace) -> int:
    spec = _exposure_spec(args)
    if spec is None:
        return 2
    problems = spec.validate()
    for name, value, low in (("steps", args.steps, 0), ("hidden", args.hidden, 1), ("layers", args.layers, 1)):
        if value < low:
            problems.append((name, f"must be >= {low}, got {value}"))
    if report_problems(problems):
        return 2
    if args.submit:
        return service.submit_exposure(args, spec)
    if not args.out:
        print("error: --out DIR is required (or --submit to run on the service)", file=sys.stderr)
        return 2
    return _exposure_here(args, spec)


def _exposure_spec(args: argparse.Namespace):
    """The ExposureSpec of the flags, or None (after saying why) if --insertions does not parse."""
    from ..engine.spec import ExposureSpec

    try:
        insertions = [int(t) for t in args.insertions.split(",")]
    except ValueError:
        print(
            f"error: --insertions: expected comma-separated whole numbers like 0,1,4,16, got {args.insertions!r}",
            file=sys.stderr,
        )
        return None
    return ExposureSpec(
        canaries=args.canary or ExposureSpec().canaries,
        insertions=insertions,
        corpus=args.corpus,
        model=args.model,
        epochs=args.epochs,
        seed=args.seed,
        enumeration_budget=args.enumeration_budget,
        num_samples=args.num_samples,
    )


def _exposure_here(args: argparse.Namespace, spec) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ..engine.corpus import CorpusError, load_corpus
    from ..engine.exposure_job import run_exposure_job

    try:
        corpus_text = load_corpus(spec.corpus)
    except CorpusError as e:
        print(f"error: --corpus: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=None, unit="step", disable=args.quiet, dynamic_ncols=True)

    def progress(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_description(message, refresh=False)
        bar.refresh()

    result = run_exposure_job(
        spec,
        corpus_text,
        device=args.device,
        progress=progress,
        corpus_source=spec.corpus,
        steps=args.steps,
        hidden=args.hidden,
        layers=args.layers,
    )
    bar.close()
    _write_files(out, result.files)
    _print_exposures(spec, result)
    print(f"\nwrote {out / 'exposure.parquet'}, {out / 'summary.json'}")
    return 0


def _print_exposures(spec, result) -> None:
    """The trained model in one line, then one table per canary format: a row per insertion count."""
    import math

    m = result.summary["model"]
    print(
        f"{m['arch']} ({m['parameters']:,} parameters), {m['steps']} steps on "
        f"{result.summary['corpus']['training_chars']:,} characters: "
        f"{m['final_loss_bits_per_char']:.2f} bits/char at the end of training"
    )
    for fmt in spec.canaries:
        rows = [r for r in result.rows if r["format"] == fmt]
        size = rows[0]["space_size"]
        print(f"\n{fmt}  (|R| = {size:,}, at most {math.log2(size):.2f} bits)")
        table = [
            {
                "t": r["insertions"],
                "exposure": r["exposure"],
                "rank": f"{r['rank']:.0f}" if r["rank_exact"] else f"~{r['rank']:.3g}",
                "exact?": "yes" if r["rank_exact"] else "no",
                "extracted?": EXTRACTED[bool(r["extracted_greedy"]), bool(r["extracted_beam"])],
            }
            for r in rows
        ]
        print_table(table, EXPOSURE_COLUMNS, formats={"exposure": ".2f"})
