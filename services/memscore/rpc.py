"""What both gRPC servers share: the error interceptor, server assembly (health, reflection,
message limits) and protobuf <-> domain conversions."""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from concurrent import futures
from typing import Callable

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from .api.v1 import job_pb2
from .errors import FailedPrecondition, InvalidArgument, MemscoreError, NotFound, ResourceExhausted, Unavailable

log = logging.getLogger("memscore.rpc")

MAX_MESSAGE_BYTES = 8 << 20  # requests and responses; uploads and results are streamed in chunks

_CODES = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    NotFound: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
}


# Longest message and field description an error carries: a request's own bytes quoted back
# (a 1 MB model name) must not turn the answer into RESOURCE_EXHAUSTED or a log flood.
MAX_MESSAGE_CHARS = 2000
MAX_DESCRIPTION_CHARS = 500


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _abort(context: grpc.ServicerContext, e: MemscoreError) -> None:
    code, rpc_code = _CODES.get(type(e), (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL))
    status = status_pb2.Status(code=rpc_code, message=_bounded(str(e), MAX_MESSAGE_CHARS))
    if isinstance(e, InvalidArgument):
        br = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_bounded(f, MAX_DESCRIPTION_CHARS), description=_bounded(d, MAX_DESCRIPTION_CHARS)
                )
                for f, d in e.violations[:100]
            ]
        )
        status.details.add().Pack(br)
    context.abort_with_status(rpc_status.to_status(status))


def _internal(context: grpc.ServicerContext, method: str, e: Exception) -> None:
    """An unexpected exception: logged with its traceback under an incident id, answered
    INTERNAL with that id (and nothing of the server's internals)."""
    if getattr(context, "code", lambda: None)() is not None:  # the handler aborted the call itself
        raise e
    incident = uuid.uuid4().hex[:12]
    log.exception("%s failed unexpectedly (incident %s)", method, incident)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (incident {incident} in the server log)"
    )
    context.abort_with_status(rpc_status.to_status(status))


class DomainErrorInterceptor(grpc.ServerInterceptor):
    """Turns memscore.errors into status codes (INVALID_ARGUMENT carries a BadRequest with
    every field violation), for unary and streaming handlers alike; any other exception is
    logged with its traceback and answered INTERNAL."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap_unary(fn):
            def inner(request, context):
                try:
                    return fn(request, context)
                except MemscoreError as e:
                    _abort(context, e)
                except Exception as e:
                    _internal(context, method, e)

            return inner

        def wrap_stream(fn):
            def inner(request, context):
                try:
                    yield from fn(request, context)
                except MemscoreError as e:
                    _abort(context, e)
                except Exception as e:
                    _internal(context, method, e)

            return inner

        if handler.unary_unary:
            return handler._replace(unary_unary=wrap_unary(handler.unary_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=wrap_stream(handler.unary_stream))
        if handler.stream_unary:
            return handler._replace(stream_unary=wrap_unary(handler.stream_unary))
        if handler.stream_stream:
            return handler._replace(stream_stream=wrap_stream(handler.stream_stream))
        return handler


def build_server(
    add_servicers: list[Callable[[grpc.Server], None]],
    service_names: list[str],
    address: str,
    max_workers: int = 16,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A server with our services, gRPC health (each service and "" SERVING) and reflection.
    Returns (server, bound port, health servicer)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[DomainErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    for add in add_servicers:
        add(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    return server, port, health_servicer


def run_until_signalled(servers) -> None:
    """Block until SIGTERM or SIGINT, then stop `servers`, letting calls in flight finish
    (10 s grace): how every memscore server process ends."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    for s in servers:
        s.stop(grace=10).wait()


# -- conversions -------------------------------------------------------------------------------

STATE_TO_PB = {
    "QUEUED": job_pb2.JOB_STATE_QUEUED,
    "RUNNING": job_pb2.JOB_STATE_RUNNING,
    "SUCCEEDED": job_pb2.JOB_STATE_SUCCEEDED,
    "FAILED": job_pb2.JOB_STATE_FAILED,
    "CANCELLED": job_pb2.JOB_STATE_CANCELLED,
}
PB_TO_STATE = {v: k for k, v in STATE_TO_PB.items()}
KIND_TO_PB = {"scoring": job_pb2.JOB_KIND_SCORING, "exposure": job_pb2.JOB_KIND_EXPOSURE}


def _set_fields(msg, always: tuple[str, ...] = ()) -> dict:
    """The fields of a spec message that carry a value. In proto3 a zero or empty value means
    "the default", which the engine's spec dataclass supplies; `optional` fields say
    explicitly whether they were set (their 0 is a value)."""
    out = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.is_repeated:
            value = list(value)
        if (msg.HasField(f.name) if f.has_presence else bool(value)) or f.name in always:
            out[f.name] = value
    return out


def spec_from_pb(spec: job_pb2.JobSpec) -> tuple[str, dict]:
    """(kind, spec dict) from a JobSpec; unset fields take the engine dataclass's defaults."""
    which = spec.WhichOneof("kind")
    if which == "scoring":
        return "scoring", _set_fields(spec.scoring, always=("dataset",))  # "" is reported as missing
    if which == "exposure":
        return "exposure", _set_fields(spec.exposure)
    return "", {}


def spec_to_pb(kind: str, spec: dict) -> job_pb2.JobSpec:
    if kind == "scoring":
        return job_pb2.JobSpec(scoring=job_pb2.ScoringSpec(**spec))
    return job_pb2.JobSpec(exposure=job_pb2.ExposureSpec(**spec))


def _ts(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def progress_to_pb(rec) -> job_pb2.JobProgress:
    p = job_pb2.JobProgress(
        shards_done=rec.shards_done,
        shards_total=rec.shards_total,
        models_done=rec.models_done,
        models_total=rec.models_total,
    )
    if rec.eta_s is not None:
        p.eta_seconds = float(rec.eta_s)
    return p


def anytime_to_pb(rec) -> job_pb2.AnytimeSummary:
    """The figures the summary has; one without an estimate yet stays unset (absent)."""
    s = rec.summary or {}
    out = job_pb2.AnytimeSummary(models_done=int(s.get("models_done") or rec.models_done))
    for name in (
        "mean_memorization",
        "fraction_memorized",
        "mean_test_accuracy",
        "memorization_split_half",
        "memorization_reliability",
        "memorization_soft_reliability",
        "fraction_memorized_corrected",
        "fraction_memorized_lower",
        "fraction_memorized_upper",
    ):
        if s.get(name) is not None:
            setattr(out, name, float(s[name]))
    for name in (
        "memorization_models_for_0_95",
        "count_memorization_lower_ge_0_25",
        "influence_pairs_above_threshold",
        "influence_pairs_significant",
    ):
        if s.get(name) is not None:
            setattr(out, name, int(s[name]))
    return out


def job_to_pb(rec) -> job_pb2.Job:
    return job_pb2.Job(
        job_id=rec.job_id,
        kind=KIND_TO_PB.get(rec.kind, job_pb2.JOB_KIND_UNSPECIFIED),
        state=STATE_TO_PB[rec.state],
        spec=spec_to_pb(rec.kind, rec.spec),
        request_id=rec.request_id,
        create_time=_ts(rec.created_at),
        update_time=_ts(rec.updated_at),
        progress=progress_to_pb(rec),
        error=rec.error,
        anytime=anytime_to_pb(rec),
        artifacts=sorted(rec.results),
        message=rec.message,
        cancel_requested=rec.cancel_requested,
        version=rec.version,
    )


def event_to_pb(rec) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(
        state=STATE_TO_PB[rec.state],
        progress=progress_to_pb(rec),
        message=rec.error if rec.state == "FAILED" else rec.message,
        event_time=_ts(rec.updated_at),
        version=rec.version,
        anytime=anytime_to_pb(rec),
    )
