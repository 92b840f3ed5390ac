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
    p.add_argument(
        "--dataset",
        required=True,
        help="mnist1d | digits | longtail | PATH.npz | ImageFolder DIR "
        "(submit: also datasets/<sha256>.npz from `memscore upload`)",
    )
    p.add_argument("--model", default="auto", help="auto | mlp | cnn1d | resnet (auto: by data kind)")
    p.add_argument("--models", type=int, default=64, help="K, number of subset models (default 64)")
    p.add_argument("--ratio", type=float, default=0.7, help="subset ratio r (default 0.7, as in Feldman & Zhang)")
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
        "--label-noise", type=float, default=0.0, help="flip this fraction of training labels (validation experiments)"
    )
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


def _print_ranked(rows: list[dict], file=None) -> None:
    file = file or sys.stdout  # looked up at call time, so redirections apply
    cols = (
        "index",
        "label",
        "memorization",
        "memorization_stderr",
        "memorization_soft",
        "heldout_accuracy",
        "n_in",
        "n_out",
    )
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
            ds = load_dataset(spec.dataset)
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


def _add_exposure(sub: argparse._SubParsersAction) -> None:
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
    _add_service_flags(p)
    # Advanced (quick experiments and tests): training steps and model size.
    p.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=2, help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        import math
        from pathlib import Path

        from .engine.spec import ExposureSpec

        try:
            insertions = [int(t) for t in args.insertions.split(",")]
        except ValueError:
            print(
                f"error: --insertions: expected comma-separated whole numbers like 0,1,4,16, got {args.insertions!r}",
                file=sys.stderr,
            )
            return 2
        spec = ExposureSpec(
            canaries=args.canary or ExposureSpec().canaries,
            insertions=insertions,
            corpus=args.corpus,
            model=args.model,
            epochs=args.epochs,
            seed=args.seed,
            enumeration_budget=args.enumeration_budget,
            num_samples=args.num_samples,
        )
        problems = spec.validate()
        for name, value, low in (("steps", args.steps, 0), ("hidden", args.hidden, 1), ("layers", args.layers, 1)):
            if value < low:
                problems.append((name, f"must be >= {low}, got {value}"))
        if problems:
            for field, msg in problems:
                flag = "canary" if field.startswith("canaries") else field.replace("_", "-")
                where = f" #{int(field[9:-1]) + 1}" if field.startswith("canaries[") else ""
                print(f"error: --{flag}{where}: {msg}", file=sys.stderr)
            return 2
        if args.submit:
            return _submit_exposure(args, spec)
        if not args.out:
            print("error: --out DIR is required (or --submit to run on the service)", file=sys.stderr)
            return 2

        from tqdm import tqdm

        from .engine.corpus import CorpusError, load_corpus
        from .engine.exposure_job import run_exposure_job

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
        for name, data in result.files.items():
            (out / name).write_bytes(data)
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
            print(f"{'t':>7}  {'exposure':>8}  {'rank':>12}  {'exact?':>6}  {'extracted?':>10}")
            for r in rows:
                rank = f"{r['rank']:.0f}" if r["rank_exact"] else f"~{r['rank']:.3g}"
                extracted = {(True, True): "both", (True, False): "greedy", (False, True): "beam"}.get(
                    (bool(r["extracted_greedy"]), bool(r["extracted_beam"])), "no"
                )
                print(
                    f"{r['insertions']:>7}  {r['exposure']:>8.2f}  {rank:>12}  "
                    f"{'yes' if r['rank_exact'] else 'no':>6}  {extracted:>10}"
                )
        print(f"\nwrote {out / 'exposure.parquet'}, {out / 'summary.json'}")
        return 0

    p.set_defaults(func=run)


def _submit_exposure(args: argparse.Namespace, spec) -> int:
    @_rpc_errors
    def submit(args: argparse.Namespace) -> int:
        with _client(args) as c:
            job = c.submit_exposure(**spec.to_dict())
            print(job.job_id)
            if not args.wait:
                return 0
            code = _watch(c, job.job_id, quiet=args.quiet)
            if code == 0:
                print(f"{'format':40}  {'t':>5}  {'exposure':>8}  {'rank':>10}  extracted")
                for r in c.exposure(job.job_id).canaries:
                    print(
                        f"{r.format[:40]:40}  {r.insertions:>5}  {r.exposure:>8.2f}  {r.rank:>10.3g}  "
                        f"{'yes' if r.extracted else 'no'}"
                    )
            return code

    return submit(args)


def _add_service_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", default="localhost:50051", help="Scoring service HOST:PORT")
    p.add_argument("--results", default="localhost:50052", help="Results service HOST:PORT")


def _client(args):
    from .client import Client

    return Client(args.gateway, args.results)


def _rpc_errors(fn):
    """Print a gRPC error as one line (with every field violation) and exit 1."""

    def run(args: argparse.Namespace) -> int:
        import grpc

        from .client import field_violations

        try:
            return fn(args)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            for field, desc in field_violations(e):
                print(f"  {field}: {desc}", file=sys.stderr)
            return 1

    return run


def _watch(client, job_id: str, quiet: bool = False) -> int:
    from tqdm import tqdm

    from .client import state_name

    bar = None
    last = None
    for ev in client.watch(job_id):
        last = ev
        if quiet:
            continue
        if bar is None:
            bar = tqdm(total=ev.progress.models_total or None, unit="model", dynamic_ncols=True)
        bar.n = ev.progress.models_done
        eta = f", eta {ev.progress.eta_seconds:.0f}s" if ev.progress.HasField("eta_seconds") else ""
        bar.set_description(f"{state_name(ev.state)} {ev.progress.shards_done}/{ev.progress.shards_total} shards{eta}")
        bar.refresh()
    if bar is not None:
        bar.close()
    state = state_name(last.state) if last is not None else "UNKNOWN"
    print(f"{job_id}: {state}" + (f": {last.message}" if last is not None and state == "FAILED" else ""))
    return 0 if state == "SUCCEEDED" else 1


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a scoring job to the gateway; prints the job id")
    _add_spec_flags(p)
    _add_service_flags(p)
    p.add_argument("--request-id", default="", help="idempotency key: resubmitting with it returns the same job")
    p.add_argument("--wait", action="store_true", help="watch the job until it ends")

    @_rpc_errors
    def run(args: argparse.Namespace) -> int:
        import os

        spec = _spec_from_args(args)
        with _client(args) as c:
            if os.path.isfile(spec.dataset) and spec.dataset.endswith(".npz"):
                spec.dataset = c.upload(spec.dataset).dataset_ref  # the server may not see this path
                print(f"uploaded {args.dataset} as {spec.dataset}", file=sys.stderr)
            job = c.submit_scoring(request_id=args.request_id, **spec.to_dict())
            print(job.job_id)
            if args.wait:
                return _watch(c, job.job_id)
        return 0

    p.set_defaults(func=run)


def _add_watch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="follow a job's progress until it ends (exit 0 if it SUCCEEDED)")
    p.add_argument("job")
    _add_service_flags(p)
    p.set_defaults(func=_rpc_errors(lambda args: _watch(_client(args), args.job)))


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show one job, or list jobs")
    p.add_argument("job", nargs="?", help="job id; omit to list recent jobs")
    p.add_argument(
        "--state", default="", help="list only jobs in this state (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)"
    )
    _add_service_flags(p)

    @_rpc_errors
    def run(args: argparse.Namespace) -> int:
        from google.protobuf import json_format

        from .api.v1 import job_pb2
        from .client import state_name

        with _client(args) as c:
            if args.job:
                print(json_format.MessageToJson(c.get(args.job)))
                return 0
            state = job_pb2.JobState.Value("JOB_STATE_" + args.state.upper()) if args.state else 0
            jobs, _ = c.list(state=state)
            for j in jobs:
                p = j.progress
                print(f"{j.job_id}  {state_name(j.state):10}  {p.models_done}/{p.models_total} models  {j.message}")
        return 0

    p.set_defaults(func=run)


def _add_results(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="examples of a job ranked by a score")
    p.add_argument("job")
    p.add_argument(
        "--metric",
        default="memorization",
        help="memorization | memorization_soft | heldout_accuracy | in_sample_accuracy | *_stderr",
    )
    p.add_argument("--top", type=int, default=20, help="how many (0 = all)")
    p.add_argument("--ascending", action="store_true", help="lowest first")
    p.add_argument(
        "--class", dest="classes", type=int, action="append", default=[], help="only this label (repeatable)"
    )
    p.add_argument("--csv", default="", help="write the rows to this CSV file")
    _add_service_flags(p)

    @_rpc_errors
    def run(args: argparse.Namespace) -> int:
        import csv

        cols = (
            "rank",
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
        )
        with _client(args) as c:
            rows, final, models = [], True, 0
            for page in c.ranked_pages(
                args.job, args.metric, ascending=args.ascending, classes=args.classes, limit=args.top
            ):
                rows += [{k: getattr(e, k) for k in cols} for e in page.examples]
                final, models = page.final, page.models
        if not final:
            print(f"(anytime estimate from {models} models so far; the job is still running)", file=sys.stderr)
        if args.csv:
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                w.writerows(rows)
            print(f"wrote {len(rows)} rows to {args.csv}", file=sys.stderr)
        else:
            _print_ranked(rows)
        return 0

    p.set_defaults(func=run)


def _add_influence(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "influence", help="most influential training examples of a test example (or the global top pairs)"
    )
    p.add_argument("job")
    p.add_argument("--test-index", type=int, default=None, help="omit for the global top pairs")
    p.add_argument("--top", type=int, default=20)
    _add_service_flags(p)

    @_rpc_errors
    def run(args: argparse.Namespace) -> int:
        with _client(args) as c:
            pairs = c.influence(args.job, args.test_index, args.top)
        print(f"{'train_index':>12}  {'test_index':>10}  {'influence':>9}  {'train_label':>11}  {'test_label':>10}")
        for p in pairs:
            print(
                f"{p.train_index:>12}  {p.test_index:>10}  {p.influence:>9.3f}  {p.train_label:>11}  {p.test_label:>10}"
            )
        return 0

    p.set_defaults(func=run)


def _add_cancel(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cancel", help="cancel a job (pending shards are dropped, running ones stop at the next check)")
    p.add_argument("job")
    _add_service_flags(p)

    @_rpc_errors
    def run(args: argparse.Namespace) -> int:
        from .client import state_name

        with _client(args) as c:
            job = c.cancel(args.job)
        print(f"{job.job_id}: {state_name(job.state)}")
        return 0

    p.set_defaults(func=run)


def _add_upload(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upload", help="upload a dataset .npz (or a .txt corpus); prints its dataset reference")
    p.add_argument("file")
    _add_service_flags(p)

    @_rpc_errors
    def run(args: argparse.Namespace) -> int:
        with _client(args) as c:
            r = c.upload(args.file)
        print(r.dataset_ref)
        return 0

    p.set_defaults(func=run)


def _add_up(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run gateway, results and a worker in this process (embedded: no Redis, no S3)")
    p.add_argument("--gateway-port", type=int, default=None, help="default 50051 (MEMSCORE_GATEWAY_PORT)")
    p.add_argument("--results-port", type=int, default=None, help="default 50052 (MEMSCORE_RESULTS_PORT)")
    p.add_argument("--bind", default=None, help="listen address (default MEMSCORE_BIND, 0.0.0.0)")
    p.add_argument("--broker", default=None, help="redis://HOST:PORT/DB: use Redis as broker and job store")
    p.add_argument("--store", default=None, help="s3://BUCKET (with MEMSCORE_S3_*) or a directory")
    p.add_argument("--home", default=None, help="state directory (default $MEMSCORE_HOME or ~/.memscore)")

    def run(args: argparse.Namespace) -> int:
        import logging
        import os

        if args.home:
            os.environ["MEMSCORE_HOME"] = args.home
        if args.broker:
            os.environ["MEMSCORE_BROKER_URL"] = args.broker
            os.environ.setdefault("MEMSCORE_REDIS_URL", args.broker)
        if args.store:
            os.environ["MEMSCORE_STORE"] = args.store
        from . import embedded
        from .rpc import run_until_signalled
        from .settings import Settings

        s = Settings()
        logging.basicConfig(level=s.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        e = embedded.start(s, args.gateway_port, args.results_port, args.bind)
        print(
            f"memscore up: gateway :{e.gateway_port}, results :{e.results_port}, store {e.runtime.objects.describe()}, "
            f"jobs {e.runtime.jobs.describe()}, broker {s.broker_url or 'memory:// (embedded)'}",
            flush=True,
        )
        try:
            run_until_signalled([])
        finally:
            e.stop()
        return 0

    p.set_defaults(func=run)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML report of a run (a `memscore run --out` DIR, or a JOB id)"
    )
    p.add_argument(
        "source", metavar="JOB|DIR", help="a directory written by `memscore run`, or a job id on the Results service"
    )
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
    _add_service_flags(p)

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from .report import RESULT_FILES, load_dataset_for_report, read_result_files, render_report

        source = Path(args.source)
        notes, objects = [], None
        if source.is_dir():
            missing = [name for name in RESULT_FILES if not (source / name).is_file()]
            if missing:
                print(
                    f"error: {source} lacks {', '.join(missing)} (expected the --out directory of `memscore run`)",
                    file=sys.stderr,
                )
                return 2
            files = {name: (source / name).read_bytes() for name in RESULT_FILES}
            title = f"memscore report: {source.resolve().name}"
        else:
            import grpc

            try:
                with _client(args) as c:
                    files = {name: c.artifact(args.source, name) for name in RESULT_FILES}
            except grpc.RpcError as e:
                print(
                    f"error: {args.source!r} is not a directory, and the Results service at {args.results} answered "
                    f"{e.code().name}: {e.details()}",
                    file=sys.stderr,
                )
                return 1
            title = f"memscore report: job {args.source}"
        scores, influence, summary = read_result_files(files)
        ref = args.dataset or summary.get("spec", {}).get("dataset", "")
        if ref.startswith("datasets/"):
            try:  # uploaded data lives in the service's object store: reachable when this machine shares it
                from .store.objects import open_object_store

                objects = open_object_store()
            except Exception as e:
                notes.append(f"the object store holding {ref} could not be opened: {e}")
        ds, why = load_dataset_for_report(summary, args.dataset, objects)
        if ds is None:
            notes.append(f"Examples are listed, not drawn: {why}.")
            print(f"warning: {why}; the report lists examples without pictures", file=sys.stderr)
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

    p.set_defaults(func=run)


# Order here is the order in `memscore --help`.
COMMANDS = [
    _add_run,
    _add_exposure,
    _add_up,
    _add_submit,
    _add_watch,
    _add_status,
    _add_results,
    _add_influence,
    _add_cancel,
    _add_upload,
    _add_health,
    _add_report,
]


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
