"""The client commands of a running memscore service (gateway and results servers): submit,
watch, status, results, influence, cancel, extend, upload, health, and `exposure --submit`."""

from __future__ import annotations

import argparse
import functools
import sys

from ..engine.catalog import RANK_METRICS, SCORE_COLUMNS
from ..store.jobs import STATES
from .spec_flags import add_spec_flags, spec_from_args
from .tables import RANKED_COLUMNS, print_table

RESULT_COLUMNS = ("rank", *SCORE_COLUMNS)  # `results --csv`
INFLUENCE_COLUMNS = (
    "train_index", "test_index", "influence", "influence_stderr", "influence_pvalue", "significant", "train_label",
    "test_label",
)  # fmt: skip


def add_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-ca", default=None, help="PEM CA to verify the servers with: connect with TLS (MEMSCORE_TLS_CA)"
    )
    p.add_argument(
        "--tls-server-name",
        default=None,
        help="name the server certificate carries, when it differs from the address (MEMSCORE_TLS_SERVER_NAME)",
    )
    p.add_argument("--tls-client-cert", default=None, help="PEM client certificate for mTLS (MEMSCORE_TLS_CLIENT_CERT)")
    p.add_argument("--tls-client-key", default=None, help="PEM key of --tls-client-cert (MEMSCORE_TLS_CLIENT_KEY)")


def add_service_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", default="localhost:50051", help="Scoring service HOST:PORT")
    p.add_argument("--results", default="localhost:50052", help="Results service HOST:PORT")
    p.add_argument(
        "--token", default=None, help="bearer token (default MEMSCORE_TOKEN; prefer the variable: flags show in ps)"
    )
    add_tls_flags(p)


def _tls(args: argparse.Namespace) -> dict:
    return dict(
        tls_ca=args.tls_ca,
        tls_client_cert=args.tls_client_cert,
        tls_client_key=args.tls_client_key,
        tls_server_name=args.tls_server_name,
    )


def connect(args: argparse.Namespace):
    from ..client import Client

    return Client(args.gateway, args.results, token=args.token, **_tls(args))


def _rpc_errors(fn):
    """Print a gRPC error as one line (with every field violation) and exit 1."""

    @functools.wraps(fn)
    def run(*args, **kwargs) -> int:
        import grpc

        from ..client import field_violations

        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            for field, desc in field_violations(e):
                print(f"  {field}: {desc}", file=sys.stderr)
            return 1

    return run


def _watch(client, job_id: str, quiet: bool = False) -> int:
    """Follow a job with a progress bar until it ends; print its final state; 0 if it SUCCEEDED."""
    from tqdm import tqdm

    from ..client import state_name

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
        bar.total = ev.progress.models_total or None  # a self-stopping job grows
        shards = f"{ev.progress.shards_done}/{ev.progress.shards_total} shards"
        bar.set_description(f"{state_name(ev.state)} {shards}{eta}{reliability_note(ev.anytime)}")
        bar.refresh()
    if bar is not None:
        bar.close()
    state = state_name(last.state) if last is not None else "UNKNOWN"
    note = f": {last.message}" if last is not None and state == "FAILED" else ""
    print(f"{job_id}: {state}{note}" + (reliability_note(last.anytime, soft=True) if last is not None else ""))
    return 0 if state == "SUCCEEDED" else 1


def reliability_note(anytime, soft: bool = False) -> str:
    """', memorization reliability 0.91 (0.95 at ~120 models)' from an AnytimeSummary, or ''
    before the job has one (two models in each half)."""
    if not anytime.HasField("memorization_reliability"):
        return ""
    out = f", memorization reliability {anytime.memorization_reliability:.3f}"
    if anytime.HasField("memorization_models_for_0_95"):
        out += f" (0.95 at ~{anytime.memorization_models_for_0_95} models)"
    if soft and anytime.HasField("memorization_soft_reliability"):
        out += f", soft {anytime.memorization_soft_reliability:.3f}"
    return out


# -- submit ------------------------------------------------------------------------------------


def add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a scoring job to the gateway; prints the job id")
    add_spec_flags(p)
    add_service_flags(p)
    p.add_argument("--request-id", default="", help="idempotency key: resubmitting with it returns the same job")
    p.add_argument("--wait", action="store_true", help="watch the job until it ends")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and size the job on the gateway and print its estimate; nothing is queued "
        "(a local .npz is still uploaded, for the gateway to read its shape)",
    )
    p.set_defaults(func=submit)


@_rpc_errors
def submit(args: argparse.Namespace) -> int:
    import os

    spec = spec_from_args(args)
    with connect(args) as c:
        if os.path.isfile(spec.dataset) and spec.dataset.endswith(".npz"):
            spec.dataset = c.upload(spec.dataset).dataset_ref  # the server may not see this path
            print(f"uploaded {args.dataset} as {spec.dataset}", file=sys.stderr)
        elif os.path.exists(spec.dataset) and _is_parquet(spec.dataset):
            from ..engine.datasets import DatasetError

            try:
                spec = _upload_parquet(c, spec)
            except DatasetError as e:
                print(f"error: dataset {args.dataset!r}: {e}", file=sys.stderr)
                return 2
            print(f"uploaded {args.dataset} (read here, as .npz) as {spec.dataset}", file=sys.stderr)
        if args.dry_run:
            from .plan import print_estimate

            print_estimate(c.submit_scoring(request_id=args.request_id, dry_run=True, **spec.to_dict()))
            return 0
        job = c.submit_scoring(request_id=args.request_id, **spec.to_dict())
        print(job.job_id)
        if args.wait:
            return _watch(c, job.job_id)
    return 0


def _is_parquet(path: str) -> bool:
    from ..engine.parquet import is_parquet

    return is_parquet(path)


def _upload_parquet(c, spec):
    """A local Parquet table, read here with the spec's columns and uploaded as the `.npz` of
    its arrays (the server may not see this path); the spec then names the upload."""
    import dataclasses
    import tempfile

    from ..engine.datasets import dataset_to_npz_bytes, load_dataset
    from ..engine.parquet import ParquetColumns

    ds = load_dataset(spec.dataset, columns=ParquetColumns.of(spec))
    with tempfile.NamedTemporaryFile(suffix=".npz") as f:
        f.write(dataset_to_npz_bytes(ds))
        f.flush()
        ref = c.upload(f.name).dataset_ref
    return dataclasses.replace(spec, dataset=ref, feature_column="", label_column="", split_column="")


@_rpc_errors
def submit_exposure(args: argparse.Namespace, spec) -> int:
    """`memscore exposure --submit [--wait]`, with the ExposureSpec its flags made."""
    import os

    with connect(args) as c:
        if spec.corpus not in ("", "builtin") and os.path.isfile(spec.corpus):
            spec.corpus = c.upload(spec.corpus).dataset_ref  # the server may not see this path
            print(f"uploaded {args.corpus} as {spec.corpus}", file=sys.stderr)
        job = c.submit_exposure(**spec.to_dict())
        print(job.job_id)
        if not args.wait:
            return 0
        code = _watch(c, job.job_id, quiet=args.quiet)
        if code == 0:
            rows = [
                {
                    "format": r.format[:40],
                    "t": r.insertions,
                    "exposure": r.exposure,
                    "rank": r.rank,
                    "extracted": "yes" if r.extracted else "no",
                }
                for r in c.exposure(job.job_id).canaries
            ]
            columns = ("format", "t", "exposure", "rank", "extracted")
            print_table(rows, columns, formats={"exposure": ".2f", "rank": ".3g"}, left=("format", "extracted"))
        return code


# -- watch, status, cancel, upload -------------------------------------------------------------


def add_watch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="follow a job's progress until it ends (exit 0 if it SUCCEEDED)")
    p.add_argument("job")
    add_service_flags(p)
    p.set_defaults(func=watch)


@_rpc_errors
def watch(args: argparse.Namespace) -> int:
    with connect(args) as c:
        return _watch(c, args.job)


def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show one job, or list jobs")
    p.add_argument("job", nargs="?", help="job id; omit to list recent jobs")
    p.add_argument("--state", default="", help=f"list only jobs in this state ({', '.join(STATES)})")
    add_service_flags(p)
    p.set_defaults(func=status)


@_rpc_errors
def status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from ..api.v1 import job_pb2
    from ..client import state_name

    with connect(args) as c:
        if args.job:
            print(json_format.MessageToJson(c.get(args.job)))
            return 0
        state = job_pb2.JobState.Value("JOB_STATE_" + args.state.upper()) if args.state else 0
        jobs, _ = c.list(state=state)
    rows = [
        {
            "job": j.job_id,
            "state": state_name(j.state),
            "models": f"{j.progress.models_done}/{j.progress.models_total} models",
            "message": j.message,
        }
        for j in jobs
    ]
    columns = ("job", "state", "models", "message")
    print_table(rows, columns, left=columns, header=False)
    return 0


def add_cancel(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cancel", help="cancel a job (pending shards are dropped, running ones stop at the next check)")
    p.add_argument("job")
    add_service_flags(p)
    p.set_defaults(func=cancel)


@_rpc_errors
def cancel(args: argparse.Namespace) -> int:
    from ..client import state_name

    with connect(args) as c:
        job = c.cancel(args.job)
    print(f"{job.job_id}: {state_name(job.state)}")
    return 0


def add_extend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extend", help="add models to a SUCCEEDED scoring job (its models so far are kept)")
    p.add_argument("job")
    p.add_argument("--models", type=int, required=True, help="models to add: a multiple of the job's shard size")
    p.add_argument(
        "--request-id",
        default="",
        help="idempotency key: a retry with it extends once (default: a fresh one, printed on stderr)",
    )
    p.add_argument("--wait", action="store_true", help="watch the job until it ends")
    add_service_flags(p)
    p.set_defaults(func=extend)


@_rpc_errors
def extend(args: argparse.Namespace) -> int:
    import uuid

    from ..client import state_name

    request_id = args.request_id or f"extend-{uuid.uuid4().hex}"
    if not args.request_id:
        print(f"request id {request_id} (pass it as --request-id to retry safely)", file=sys.stderr)
    with connect(args) as c:
        job = c.extend(args.job, args.models, request_id=request_id)
        print(f"{job.job_id}: {state_name(job.state)}, {job.progress.models_total} models")
        if args.wait:
            return _watch(c, job.job_id)
    return 0


def add_upload(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upload", help="upload a dataset .npz (or a .txt corpus); prints its dataset reference")
    p.add_argument("file")
    add_service_flags(p)
    p.set_defaults(func=upload)


@_rpc_errors
def upload(args: argparse.Namespace) -> int:
    with connect(args) as c:
        r = c.upload(args.file)
    print(r.dataset_ref)
    return 0


# -- results, influence ------------------------------------------------------------------------


def add_results(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="examples of a job ranked by a score")
    p.add_argument("job")
    p.add_argument("--metric", default="memorization", help=" | ".join(RANK_METRICS))
    p.add_argument("--top", type=int, default=20, help="how many (0 = all)")
    p.add_argument("--ascending", action="store_true", help="lowest first")
    p.add_argument(
        "--class", dest="classes", type=int, action="append", default=[], help="only this label (repeatable)"
    )
    p.add_argument("--csv", default="", help="write the rows to this CSV file")
    add_service_flags(p)
    p.set_defaults(func=results)


@_rpc_errors
def results(args: argparse.Namespace) -> int:
    with connect(args) as c:
        rows, final, models = [], True, 0
        for page in c.ranked_pages(
            args.job, args.metric, ascending=args.ascending, classes=args.classes, limit=args.top
        ):
            rows += page.examples
            final, models = page.final, page.models
    if not final:
        print(f"(anytime estimate from {models} models so far; the job is still running)", file=sys.stderr)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            print_table(rows, RESULT_COLUMNS, csv=True, file=f)
        print(f"wrote {len(rows)} rows to {args.csv}", file=sys.stderr)
    else:
        print_table(rows, RANKED_COLUMNS)
    return 0


def add_influence(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "influence", help="most influential training examples of a test example (or the global top pairs)"
    )
    p.add_argument("job")
    p.add_argument("--test-index", type=int, default=None, help="omit for the global top pairs")
    p.add_argument("--top", type=int, default=20)
    p.add_argument(
        "--significant-only",
        action="store_true",
        help="only pairs significant at the job's false discovery rate (--fdr of the job)",
    )
    add_service_flags(p)
    p.set_defaults(func=influence)


@_rpc_errors
def influence(args: argparse.Namespace) -> int:
    with connect(args) as c:
        pairs = c.influence(args.job, args.test_index, args.top, significant_only=args.significant_only)
    print_table(pairs, INFLUENCE_COLUMNS, formats={"influence_pvalue": ".2e"})
    return 0


# -- health ------------------------------------------------------------------------------------


def add_health(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="exit 0 if a memscore gRPC server reports SERVING (for container healthchecks)")
    p.add_argument("target", help="HOST:PORT of a gateway or results server")
    p.add_argument("--service", default="", help="service name to check; empty = whole server")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    add_tls_flags(p)
    p.set_defaults(func=health)


def health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ..client import open_channel

    try:
        with open_channel(args.target, token="", **_tls(args)) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as e:
        print(f"{args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(f"{args.target}: {status}")
    return 0 if status == "SERVING" else 1
