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
from .auth import Authenticator, authenticator_from_settings
from .errors import (
    FailedPrecondition,
    InvalidArgument,
    MemscoreError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    outage,
)
from .limits import StallReaper, StreamBudget
from .metrics import RpcMetricsInterceptor
from .tls import server_credentials

log = logging.getLogger("memscore.rpc")

MAX_MESSAGE_BYTES = 8 << 20  # requests and responses; uploads and results are streamed in chunks

_CODES = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    NotFound: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
}


# Longest message and field description an error carries: a request's own bytes quoted back
# (a 1 MB model name) must not turn the answer into RESOURCE_EXHAUSTED or a log flood.
MAX_MESSAGE_CHARS = 2000
MAX_DESCRIPTION_CHARS = 500
# The status travels in the trailers, which clients refuse beyond 8 KiB (gRPC's default
# max_metadata_size; the answer then turns into RESOURCE_EXHAUSTED): the message twice (in
# grpc-message, percent-encoded: 3 bytes per UTF-8 byte outside printable ASCII, and in
# grpc-status-details-bin, base64) and the violations once. So both are bounded in those bytes
# too, about 5 KiB of trailers at most, whatever the characters quoted back.
MAX_MESSAGE_WIRE_BYTES = 1500
MAX_VIOLATIONS_BYTES = 1500


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _percent_encoded_bytes(c: str) -> int:
    return 1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode("utf-8", "replace"))


def _utf8_bytes(c: str) -> int:
    return len(c.encode("utf-8", "replace"))


def _fit(text: str, budget: int, cost) -> str:
    """`text` cut, with "…", to at most `budget` by `cost` per character."""
    used = 0
    for i, c in enumerate(text):
        used += cost(c)
        if used > budget:
            cut, used = text[:i], used - cost(c) + cost("…")
            while cut and used > budget:
                used -= cost(cut[-1])
                cut = cut[:-1]
            return cut + "…"
    return text


def _violations(pairs: list[tuple[str, str]]) -> list:
    """The first violations that fit MAX_VIOLATIONS_BYTES (the first one always, its description
    cut to fit)."""
    out, left = [], MAX_VIOLATIONS_BYTES
    for f, d in pairs[:100]:
        f = _bounded(f, MAX_DESCRIPTION_CHARS)
        d = _fit(_bounded(d, MAX_DESCRIPTION_CHARS), max(left - len(f.encode("utf-8", "replace")), 40), _utf8_bytes)
        left -= len(f.encode("utf-8", "replace")) + len(d.encode("utf-8", "replace"))
        if out and left < 0:
            break
        out.append(error_details_pb2.BadRequest.FieldViolation(field=f, description=d))
    return out


def _abort(context: grpc.ServicerContext, e: MemscoreError) -> None:
    code, rpc_code = _CODES.get(type(e), (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL))
    message = _fit(_bounded(str(e), MAX_MESSAGE_CHARS), MAX_MESSAGE_WIRE_BYTES, _percent_encoded_bytes)
    status = status_pb2.Status(code=rpc_code, message=message)
    if isinstance(e, InvalidArgument):
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=_violations(e.violations)))
    context.abort_with_status(rpc_status.to_status(status))


def _unavailable(context: grpc.ServicerContext, method: str, what: str, e: Exception) -> None:
    """A backing store is unreachable: UNAVAILABLE (retry with backoff), its details logged here."""
    log.warning("%s: the %s is unreachable: %s: %s", method, what, type(e).__name__, e)
    status = status_pb2.Status(
        code=code_pb2.UNAVAILABLE, message=f"the {what} is unreachable ({type(e).__name__}); retry with backoff"
    )
    context.abort_with_status(rpc_status.to_status(status))


def _internal(context: grpc.ServicerContext, method: str, e: Exception) -> None:
    """An unexpected exception: logged with its traceback under an incident id, answered
    INTERNAL with that id (and nothing of the server's internals)."""
    if getattr(context, "code", lambda: None)() is not None:  # the handler aborted the call itself
        raise e
    what = outage(e)
    if what:
        _unavailable(context, method, what, e)
    incident = uuid.uuid4().hex[:12]
    log.exception("%s failed unexpectedly (incident %s)", method, incident)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (incident {incident} in the server log)"
    )
    context.abort_with_status(rpc_status.to_status(status))


def rewrap(handler, wrap_unary, wrap_stream, wrap_client_stream=None):
    """`handler` with its behaviour wrapped: `wrap_unary` for calls that answer once (unary, and
    client streams unless `wrap_client_stream` is given), `wrap_stream` for calls that stream
    answers. A wrapper of None leaves that kind as it is."""
    wrap_client_stream = wrap_client_stream or wrap_unary
    for kind, wrap in (
        ("unary_unary", wrap_unary),
        ("unary_stream", wrap_stream),
        ("stream_unary", wrap_client_stream),
        ("stream_stream", wrap_stream),
    ):
        fn = getattr(handler, kind)
        if fn:
            return handler._replace(**{kind: wrap(fn)}) if wrap else handler
    return handler


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

        return rewrap(handler, wrap_unary, wrap_stream)


# Methods any caller may use without credentials: the health protocol (probes, load balancers).
PUBLIC_METHODS = ("/grpc.health.v1.Health/",)


class CallerContext:
    """A servicer's `context` with the caller's tenant beside it (`context.tenant`); everything
    else is gRPC's own context. Servicers read the tenant only from here."""

    def __init__(self, context: grpc.ServicerContext, tenant: str):
        self._context = context
        self.tenant = tenant

    def __getattr__(self, name):
        return getattr(self._context, name)


class AuthInterceptor(grpc.ServerInterceptor):
    """Every call but `PUBLIC_METHODS` is authenticated before its handler runs (UNAUTHENTICATED
    otherwise) and the handler gets a `CallerContext` naming the tenant."""

    def __init__(self, auth: Authenticator):
        self.auth = auth

    def _caller(self, context) -> CallerContext:
        return CallerContext(context, self.auth.tenant(context.invocation_metadata(), context.auth_context()))

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(PUBLIC_METHODS):
            return handler

        def wrap_unary(fn):
            return lambda request, context: fn(request, self._caller(context))

        def wrap_stream(fn):
            def inner(request, context):
                caller = self._caller(context)  # before the first message: a refusal sends none
                yield from fn(request, caller)

            return inner

        return rewrap(handler, wrap_unary, wrap_stream)


class StreamLimitInterceptor(grpc.ServerInterceptor):
    """Streaming calls take a slot of the server's `StreamBudget` for the caller's tenant before
    they run (RESOURCE_EXHAUSTED when none is left) and give it back when the call ends, however
    it ends. While a stream waits on its client (a reply not yet taken, an upload chunk not yet
    come) the `StallReaper` times it, and cancels it past MEMSCORE_STREAM_STALL_TIMEOUT_S. Runs
    inside `AuthInterceptor`, so the tenant is known; Health is not counted."""

    def __init__(self, budget: StreamBudget, reaper: StallReaper | None = None):
        self.budget = budget
        self.reaper = reaper or StallReaper(0)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(PUBLIC_METHODS):
            return handler

        def slot(context):
            taken = self.budget.acquire(context.tenant)
            context.add_callback(taken.release)  # the call ended (done, cancelled, timed out)
            return taken

        method = handler_call_details.method.rsplit("/", 1)[-1]

        def streaming(fn):
            def inner(request, context):
                taken = slot(context)
                wait = self.reaper.track(context.cancel, f"{method} of tenant {context.tenant!r}")
                replies = fn(request, context)
                try:
                    for reply in replies:
                        wait.waiting()  # gRPC asks for the next reply once this one is sent
                        yield reply
                        wait.done_waiting()
                finally:
                    if hasattr(replies, "close"):  # a cancelled call ends the handler's own cleanup too
                        replies.close()
                    wait.close()
                    taken.release()

            return inner

        def uploading(fn):  # a client stream: one reply at the end
            def inner(request_iterator, context):
                taken = slot(context)
                wait = self.reaper.track(context.cancel, f"{method} of tenant {context.tenant!r}")

                def timed():
                    chunks = iter(request_iterator)
                    while True:
                        wait.waiting()
                        try:
                            chunk = next(chunks)
                        except StopIteration:
                            return
                        finally:
                            wait.done_waiting()
                        yield chunk

                try:
                    return fn(timed(), context)
                finally:
                    wait.close()
                    taken.release()

            return inner

        return rewrap(handler, None, streaming, uploading)


def bind_host(address: str) -> str:
    """The host part of HOST:PORT (brackets of an IPv6 host kept off)."""
    return address.rsplit(":", 1)[0].strip("[]") if ":" in address else address


MIN_UNARY_THREADS = 4  # threads no stream may take: unary calls and Health always find one


def build_server(
    add_servicers: list[Callable[[grpc.Server], None]],
    service_names: list[str],
    address: str,
    settings=None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A server with our services, gRPC health (each service and "" SERVING) and reflection,
    authenticating every other call (`AuthInterceptor`), holding streams to a budget below its
    thread count (`StreamLimitInterceptor`) and serving TLS when `settings` name a certificate.
    Returns (server, bound port, health servicer)."""
    from .settings import Settings

    settings = settings or Settings()
    auth = authenticator_from_settings(settings, bind_host(address))
    credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    threads, streams = settings.rpc_threads, settings.max_streams
    if streams > threads - MIN_UNARY_THREADS:
        raise RuntimeError(
            f"MEMSCORE_MAX_STREAMS={streams} must leave at least {MIN_UNARY_THREADS} of the "
            f"MEMSCORE_RPC_THREADS={threads} threads to unary calls and Health"
        )
    budget = StreamBudget(streams, settings.tenant_max_streams)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="memscore-rpc"),
        interceptors=[
            RpcMetricsInterceptor(),  # outermost: sees every call's final status code
            DomainErrorInterceptor(),
            AuthInterceptor(auth),
            StreamLimitInterceptor(budget, StallReaper(settings.stream_stall_timeout_s, log.warning)),
        ],
        maximum_concurrent_rpcs=max(settings.max_concurrent_rpcs, threads),
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
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    return server, port, health_servicer


def monitor_backends(
    health_servicer: health.HealthServicer,
    service_names: list[str],
    checks: dict[str, Callable[[], None]],
    interval_s: float,
) -> threading.Event:
    """Every `interval_s`, run each check (a store's `ping`); while one fails, Health reports
    NOT_SERVING for the server and its services, and SERVING again once all pass. Transitions
    are logged. Set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        serving = True
        while not stop.is_set():
            down = []
            for name, check in checks.items():
                try:
                    check()
                except Exception as e:  # any failure to reach it counts
                    down.append(f"{name} ({type(e).__name__}: {_bounded(str(e), 300)})")
            if bool(down) == serving:
                serving = not down
                status = (
                    health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ["", *service_names]:
                    health_servicer.set(name, status)
                if serving:
                    log.info("backing stores reachable again: SERVING")
                else:
                    log.warning("NOT_SERVING: unreachable %s", "; ".join(down))
            stop.wait(interval_s)

    threading.Thread(target=loop, name="memscore-health", daemon=True).start()
    return stop


def start_service(add_servicer: Callable[[grpc.Server], None], service_name: str, address: str, rt):
    """Build (`build_server`) and start the server of one service for runtime `rt`, with a
    backing-store monitor that stops with it. Returns (server, bound port)."""
    server, port, health_servicer = build_server([add_servicer], [service_name], address, settings=rt.settings)
    start_server(server, health_servicer, [service_name], rt)
    return server, port


def start_server(server: grpc.Server, health_servicer, service_names: list[str], rt) -> grpc.Server:
    """Start `server` with a backing-store monitor (`monitor_backends`) that stops with it."""
    stop = monitor_backends(
        health_servicer,
        service_names,
        {"job store": rt.jobs.ping, "object store": rt.objects.ping},
        rt.settings.health_interval_s,
    )
    server_stop = server.stop

    def stop_all(grace):
        stop.set()
        return server_stop(grace)

    server.stop = stop_all
    server.start()
    return server


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
