"""Prometheus metrics of one process: counters, gauges (set, or computed at scrape time by a
callback) and histograms, with labels, rendered in the text exposition format 0.0.4 and served
on GET /metrics by `start_http_server`. Hand-written, so no process gains a dependency.

`RpcMetricsInterceptor` times every gRPC call; `Spool` carries observations from Celery's
one-task child processes to the worker parent that serves them (worker/task_metrics.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable

import grpc

log = logging.getLogger("memscore.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "memscore_"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# Seconds. RPCs: a GetJob is milliseconds, a WatchJob stream may last hours.
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()):
        if not _NAME.fullmatch(name) or not name.startswith(PREFIX):
            raise ValueError(f"metric name {name!r} must match {_NAME.pattern} and start with {PREFIX}")
        self.labelnames = tuple(labelnames)
        for n in self.labelnames:
            if not _LABEL.fullmatch(n) or n.startswith("__") or n == "le":
                raise ValueError(f"bad label name {n!r} of {name}")
        self.name, self.help = name, help
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], object] = {}

    def _key(self, labels: dict) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def samples(self) -> list[tuple[str, str, float]]:
        """(name suffix, label string, value) of every series now."""
        with self._lock:
            return [("", _labels(self.labelnames, k), float(v)) for k, v in sorted(self._values.items())]


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class CallbackGauge(_Metric):
    """A gauge whose values `fn` computes at each scrape: a number (no labels) or a dict from
    label values (a tuple, or a str for one label) to numbers. When `fn` raises, the scrape
    leaves this metric out."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Iterable[str], fn: Callable[[], object]):
        super().__init__(name, help, labelnames)
        self.fn = fn
        self._failing = False

    def evaluate(self) -> list[tuple[str, str, float]] | None:
        try:
            got = self.fn()
            values = {(): got} if not isinstance(got, dict) else got
            out = []
            for key, v in values.items():
                key = (key,) if isinstance(key, str) else tuple(key)
                if len(key) != len(self.labelnames):
                    raise ValueError(f"{self.name}: {key} does not match labels {self.labelnames}")
                out.append(("", _labels(self.labelnames, tuple(map(str, key))), float(v)))
        except Exception as e:  # a backend that is down must not fail the scrape
            if not self._failing:
                log.warning(
                    "metric %s left out of scrapes until it can be computed: %s: %s", self.name, type(e).__name__, e
                )
            self._failing = True
            return None
        if self._failing:
            log.info("metric %s computed again", self.name)
        self._failing = False
        return sorted(out)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (), buckets: Iterable[float] = RPC_BUCKETS):
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not self.buckets:
            raise ValueError(f"{self.name} needs at least one finite bucket")

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._values.get(key, ([0] * (len(self.buckets) + 1), 0.0))
            i = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
            counts[i] += 1
            self._values[key] = (counts, total + value)

    def samples(self) -> list[tuple[str, str, float]]:
        out = []
        with self._lock:
            items = sorted((k, (list(c), s)) for k, (c, s) in self._values.items())
        for key, (counts, total) in items:
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts):
                cumulative += n
                out.append(("_bucket", _labels(self.labelnames, key, f'le="{_fmt(bound)}"'), float(cumulative)))
            out.append(("_sum", _labels(self.labelnames, key), total))
            out.append(("_count", _labels(self.labelnames, key), float(cumulative)))
        return out


class Registry:
    """A process's metrics by name. Declaring a metric again returns the one declared first
    (the same kind and labels are required); a callback gauge declared again takes the new
    callback. `on_scrape` hooks run before each render (e.g. folding a `Spool`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}
        self._hooks: list[Callable[[], None]] = []

    def _declare(self, cls, name: str, help: str, labelnames, **kw):
        with self._lock:
            old = self._metrics.get(name)
            if old is not None:
                if type(old) is not cls or old.labelnames != tuple(labelnames):
                    raise ValueError(f"{name} is already a {old.kind} with labels {old.labelnames}")
                if cls is CallbackGauge:
                    old.fn = kw["fn"]
                return old
            metric = self._metrics[name] = cls(name, help, labelnames, **kw)
            return metric

    def counter(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
        return self._declare(Counter, name, help, tuple(labelnames))

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Gauge:
        return self._declare(Gauge, name, help, tuple(labelnames))

    def gauge_callback(self, name: str, help: str, labelnames: Iterable[str], fn: Callable[[], object]):
        return self._declare(CallbackGauge, name, help, tuple(labelnames), fn=fn)

    def histogram(
        self, name: str, help: str, labelnames: Iterable[str] = (), buckets: Iterable[float] = RPC_BUCKETS
    ) -> Histogram:
        return self._declare(Histogram, name, help, tuple(labelnames), buckets=tuple(buckets))

    def get(self, name: str) -> _Metric | None:
        with self._lock:
            return self._metrics.get(name)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._metrics.pop(name, None)

    def on_scrape(self, hook: Callable[[], None]) -> None:
        with self._lock:
            self._hooks.append(hook)

    def render(self) -> str:
        """The exposition text. Hooks and callbacks run first, so gauges they set (e.g.
        memscore_backend_up) show this scrape's values."""
        with self._lock:
            hooks, metrics = list(self._hooks), list(self._metrics.values())
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("a metrics scrape hook failed")
        computed = {m.name: m.evaluate() for m in metrics if isinstance(m, CallbackGauge)}
        lines = []
        for m in metrics:
            samples = computed[m.name] if m.name in computed else m.samples()
            if samples is None:
                continue
            lines.append(f"# HELP {m.name} {_escape_help(m.help)}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            lines.extend(f"{m.name}{suffix}{labels} {_fmt(v)}" for suffix, labels, v in samples)
        return "\n".join(lines) + "\n" if lines else ""


REGISTRY = Registry()  # the process's own


def start_http_server(port: int, bind: str = "0.0.0.0", registry: Registry = REGISTRY) -> ThreadingHTTPServer:
    """Serve GET /metrics (404 for any other path) from a daemon thread; port 0 picks a free
    one (`server.server_port`). Stop with `server.shutdown()`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = registry.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # scrapes every few seconds: not worth a log line
            log.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="memscore-metrics", daemon=True).start()
    return server


def serve_metrics(settings, registry: Registry = REGISTRY) -> ThreadingHTTPServer | None:
    """The endpoint on MEMSCORE_METRICS_BIND:MEMSCORE_METRICS_PORT, or None when the port is 0."""
    if not settings.metrics_port:
        return None
    server = start_http_server(settings.metrics_port, settings.metrics_bind, registry)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_bind, server.server_port)
    return server


# -- gRPC -------------------------------------------------------------------------------------

RPC_DURATION = "memscore_rpc_duration_seconds"
RPC_TOTAL = "memscore_rpc_total"


def _status_name(context, default: grpc.StatusCode) -> str:
    code = getattr(context, "code", lambda: None)() or default
    return getattr(code, "name", str(code))


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call by service, method and final status code (streams from
    their start to their last message). Outermost, so it sees the code the error interceptor
    gave an exception (`context.code()` after an abort)."""

    def __init__(self, registry: Registry = REGISTRY):
        from .interceptors import rewrap  # the interceptors import this module: imported once built

        self._rewrap = rewrap
        labels = ("service", "method", "code")
        self.duration = registry.histogram(RPC_DURATION, "Duration of gRPC calls, seconds.", labels, RPC_BUCKETS)
        self.total = registry.counter(RPC_TOTAL, "gRPC calls handled, by final status code.", labels)

    def _record(self, service: str, method: str, code: str, start: float) -> None:
        self.duration.observe(time.perf_counter() - start, service=service, method=method, code=code)
        self.total.inc(service=service, method=method, code=code)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").partition("/")

        def wrap_unary(fn):
            async def inner(request, context):
                start, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
                try:
                    response = await fn(request, context)
                    code = grpc.StatusCode.OK
                    return response
                except (asyncio.CancelledError, GeneratorExit):  # the client went away
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    self._record(service, method, _status_name(context, code), start)

            return inner

        def wrap_stream(fn):
            async def inner(request, context):
                start, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
                try:
                    async for reply in fn(request, context):
                        yield reply
                    code = grpc.StatusCode.OK
                except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    self._record(service, method, _status_name(context, code), start)

            return inner

        return self._rewrap(handler, wrap_unary, wrap_stream)


# -- observations across processes ------------------------------------------------------------


class Spool:
    """Observations carried from short-lived child processes to the parent that serves them:
    a child `write`s a batch as one JSON file (temporary name, then renamed, so the parent
    never reads half of one); the parent `fold`s every file into its registry and deletes it.
    Each observation is {"op": "inc" | "set" | "observe", "name", "labels", "value"}."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, observations: list[dict]) -> None:
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_text(json.dumps(observations))
        os.replace(tmp, self.directory / f"{name}.json")

    def fold(self, registry: Registry) -> int:
        """Apply every file written so far, oldest first (the last `set` wins); returns how many."""
        with self._lock:  # two scrapes at once must not apply a file twice
            files = sorted(self.directory.glob("*.json"))
            for path in files:
                try:
                    observations = json.loads(path.read_text())
                    for o in observations:
                        self._apply(registry, o)
                except (OSError, ValueError, TypeError, KeyError) as e:
                    log.warning("metrics spool file %s skipped: %s: %s", path.name, type(e).__name__, e)
                path.unlink(missing_ok=True)
            return len(files)

    @staticmethod
    def _apply(registry: Registry, o: dict) -> None:
        metric = registry.get(o["name"])
        op = {Counter: "inc", Gauge: "set", Histogram: "observe"}.get(type(metric))
        if op is None or op != o["op"]:
            raise ValueError(f"{o['name']} is not a declared metric taking {o['op']}")
        getattr(metric, op)(float(o["value"]), **o["labels"])
