"""The interceptors of both gRPC servers, outermost first as `rpc.build_server` installs them:
metrics (`metrics.RpcMetricsInterceptor`), domain errors to status codes, authentication, the
stream budget with its stall reaper, and innermost `SyncHandlers`, which runs the servicers'
synchronous methods on the server's thread pool.

The servers are grpc.aio servers: a call holds a thread only while its own code runs. A unary
call's handler runs on a pool thread; a server stream takes a thread for each message it
produces and none while gRPC waits for the client to read; an `async` handler (WatchJob,
UploadDataset) waits on the event loop and takes none. So streams that stay open for hours
(a WatchJob on a long job) or a client that stops reading cost a stream slot, never a thread.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import uuid
from typing import Callable

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

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


async def _send_status(context, status: status_pb2.Status) -> None:
    """End the call with `status` (raises grpc.aio.AbortError, as gRPC's abort does), unless the
    call has already ended (the stall reaper ended it): then there is nothing left to send."""
    if context.done():
        return
    await context.abort_with_status(rpc_status.to_status(status))


async def _abort(context, e: MemscoreError) -> None:
    code, rpc_code = _CODES.get(type(e), (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL))
    message = _fit(_bounded(str(e), MAX_MESSAGE_CHARS), MAX_MESSAGE_WIRE_BYTES, _percent_encoded_bytes)
    status = status_pb2.Status(code=rpc_code, message=message)
    if isinstance(e, InvalidArgument):
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=_violations(e.violations)))
    await _send_status(context, status)


async def _internal(context, method: str, e: Exception) -> None:
    """An unexpected exception: a backing store that cannot be reached is UNAVAILABLE (retry
    with backoff, details logged); anything else is logged with its traceback under an incident
    id and answered INTERNAL with that id (and nothing of the server's internals)."""
    what = outage(e)
    if what:
        log.warning("%s: the %s is unreachable: %s: %s", method, what, type(e).__name__, e)
        message = f"the {what} is unreachable ({type(e).__name__}); retry with backoff"
        await _send_status(context, status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message))
        return
    incident = uuid.uuid4().hex[:12]
    log.error("%s failed unexpectedly (incident %s)", method, incident, exc_info=e)
    message = f"internal error (incident {incident} in the server log)"
    await _send_status(context, status_pb2.Status(code=code_pb2.INTERNAL, message=message))


async def _answer(context, method: str, e: Exception) -> None:
    """The status an exception from a handler ends its call with: a domain error's code, else
    UNAVAILABLE or INTERNAL (`_internal`)."""
    if isinstance(e, MemscoreError):
        await _abort(context, e)
    else:
        await _internal(context, method, e)


def rewrap(handler, wrap_unary, wrap_stream, wrap_client_stream=None, wrap_bidi=None):
    """`handler` with its behaviour wrapped: `wrap_unary` for calls that answer once (unary, and
    client streams unless `wrap_client_stream` is given), `wrap_stream` for calls that stream
    answers (bidirectional ones too unless `wrap_bidi` is given). A wrapper of None leaves that
    kind as it is. Wrappers take and return the async forms: a coroutine function, or an async
    generator function for streamed answers. A streaming handler written as a coroutine that
    writes its answers itself (gRPC health's Watch) is wrapped as a call that answers once."""
    wrap_client_stream = wrap_client_stream or wrap_unary
    wrap_bidi = wrap_bidi or wrap_stream
    for kind, wrap in (
        ("unary_unary", wrap_unary),
        ("unary_stream", wrap_stream),
        ("stream_unary", wrap_client_stream),
        ("stream_stream", wrap_bidi),
    ):
        fn = getattr(handler, kind)
        if fn:
            if kind in ("unary_stream", "stream_stream") and inspect.iscoroutinefunction(fn):
                wrap = wrap_unary if kind == "unary_stream" else wrap_client_stream
            return handler._replace(**{kind: wrap(fn)}) if wrap else handler
    return handler


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns memscore.errors into status codes (INVALID_ARGUMENT carries a BadRequest with
    every field violation), for unary and streaming handlers alike; any other exception is
    logged with its traceback and answered INTERNAL (UNAVAILABLE when a store is unreachable).
    gRPC's own exceptions (an abort, a call that ended) pass through untouched."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap_unary(fn):
            async def inner(request, context):
                try:
                    return await fn(request, context)
                except grpc.aio.BaseError:
                    raise
                except Exception as e:
                    await _answer(context, method, e)

            return inner

        def wrap_stream(fn):
            async def inner(request, context):
                try:
                    async for reply in fn(request, context):
                        yield reply
                except grpc.aio.BaseError:
                    raise
                except Exception as e:
                    await _answer(context, method, e)

            return inner

        return rewrap(handler, wrap_unary, wrap_stream)


# Methods any caller may use without credentials: the health protocol (probes, load balancers).
PUBLIC_METHODS = ("/grpc.health.v1.Health/",)


class CallerContext:
    """A servicer's `context` with the caller's tenant beside it (`context.tenant`); everything
    else is gRPC's own context. Servicers read the tenant only from here."""

    def __init__(self, context, tenant: str):
        self._context = context
        self.tenant = tenant

    def __getattr__(self, name):
        return getattr(self._context, name)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Every call but `PUBLIC_METHODS` is authenticated before its handler runs (UNAUTHENTICATED
    otherwise) and the handler gets a `CallerContext` naming the tenant."""

    def __init__(self, auth):
        self.auth = auth

    def _caller(self, context) -> CallerContext:
        return CallerContext(context, self.auth.tenant(context.invocation_metadata(), context.auth_context()))

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(PUBLIC_METHODS):
            return handler

        def wrap_unary(fn):
            async def inner(request, context):
                return await fn(request, self._caller(context))

            return inner

        def wrap_stream(fn):
            async def inner(request, context):
                caller = self._caller(context)  # before the first message: a refusal sends none
                async for reply in fn(request, caller):
                    yield reply

            return inner

        return rewrap(handler, wrap_unary, wrap_stream)


def _end_stalled(context, loop: asyncio.AbstractEventLoop, why: str) -> Callable[[], None]:
    """A callable, safe from any thread, that ends the call CANCELLED with `why`. Its handler
    is not asked for more; the status reaches the client behind what it has not read yet."""

    async def end() -> None:
        if context.done():
            return
        try:
            await context.abort(grpc.StatusCode.CANCELLED, why)
        except BaseException:  # the abort's own AbortError, or a call that ended meanwhile
            pass

    def stop() -> None:
        if loop.is_closed():  # the server has stopped: the call is over
            return
        coro = end()
        try:
            asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()

    return stop


class StreamLimitInterceptor(grpc.aio.ServerInterceptor):
    """Streaming calls take a slot of the server's `StreamBudget` for the caller's tenant before
    they run (RESOURCE_EXHAUSTED when none is left) and give it back when the call has ended,
    however it ends. While a stream waits on its client (a reply not yet taken, an upload chunk
    not yet come) the `StallReaper` times it, and past MEMSCORE_STREAM_STALL_TIMEOUT_S ends it
    CANCELLED: its handler produces nothing more (nothing more is read from the stores for it),
    and an upload's slot is free at once. A client that reads nothing at all still holds its
    HTTP/2 stream (one unsent message), and with it the slot, until it reads or goes away: a
    stalled client uses its own tenant's slots, nobody else's. Runs inside `AuthInterceptor`,
    so the tenant is known; Health is not counted."""

    def __init__(self, budget: StreamBudget, reaper: StallReaper | None = None):
        self.budget = budget
        self.reaper = reaper or StallReaper(0)

    def _start(self, context, method: str):
        taken = self.budget.acquire(context.tenant)
        context.add_done_callback(lambda _context: taken.release())  # the call ended (done, cancelled, aborted)
        what = f"{method} of tenant {context.tenant!r}"
        why = f"the client took nothing for {self.reaper.timeout_s:g} s (MEMSCORE_STREAM_STALL_TIMEOUT_S)"
        return self.reaper.track(_end_stalled(context, asyncio.get_running_loop(), why), what)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(PUBLIC_METHODS):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]

        def streaming(fn):
            async def inner(request, context):
                wait = self._start(context, method)
                try:
                    async for reply in fn(request, context):
                        wait.waiting()  # gRPC asks for the next reply once this one is sent
                        yield reply
                        wait.done_waiting()
                finally:
                    wait.close()

            return inner

        def uploading(fn):  # a client stream: one reply at the end
            async def inner(request_iterator, context):
                wait = self._start(context, method)

                async def timed():
                    chunks = request_iterator.__aiter__()
                    while True:
                        wait.waiting()
                        try:
                            chunk = await chunks.__anext__()
                        except StopAsyncIteration:
                            return
                        finally:
                            wait.done_waiting()
                        yield chunk

                try:
                    return await fn(timed(), context)
                finally:
                    wait.close()

            return inner

        return rewrap(handler, None, streaming, uploading)


class SyncView:
    """What a synchronous servicer method sees of its call from a pool thread: the tenant,
    whether the call is still on (`is_active`), its metadata and peer."""

    def __init__(self, context):
        self._context = context
        self.tenant = getattr(context, "tenant", None)
        self._ended = threading.Event()

    def is_active(self) -> bool:
        return not self._ended.is_set()

    def end(self) -> None:
        self._ended.set()

    def invocation_metadata(self):
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()


_END = object()


def _submit(pool, fn) -> None:
    try:
        pool.submit(fn)
    except RuntimeError:  # the server has stopped and its pool with it
        pass


async def in_pool(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` on the server's thread pool (the event loop's default executor),
    awaited: how async handlers call the (blocking) data plane."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


class SyncHandlers(grpc.aio.ServerInterceptor):
    """Innermost: a servicer method written as a plain function runs on the thread pool, with a
    `SyncView` of its call; one written as a generator runs there one message at a time, so
    between messages (gRPC sending one, a client slow to read) it holds no thread, and it is
    closed on its thread when the call ends early. `async` methods run as they are. A
    client-streaming method must be `async`: a plain one would hold a thread while its client
    sends."""

    def __init__(self, pool):
        self.pool = pool  # the server's pool, also its event loop's default executor

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return rewrap(handler, self._unary, self._stream, self._client_stream, self._client_stream)

    @staticmethod
    def _unary(fn):
        if inspect.iscoroutinefunction(fn):
            return fn

        async def inner(request, context):
            view = SyncView(context)
            try:
                return await in_pool(fn, request, view)
            finally:
                view.end()

        return inner

    def _stream(self, fn):
        if inspect.isasyncgenfunction(fn):
            return fn
        pool = self.pool

        async def inner(request, context):
            view = SyncView(context)
            replies = fn(request, view)  # a generator: nothing of it runs yet
            step = None  # the step in flight: a concurrent future, done only once the thread is
            try:
                while True:
                    step = pool.submit(next, replies, _END)
                    reply = await asyncio.wrap_future(step)
                    if reply is _END:
                        return
                    yield reply
            finally:
                view.end()
                close = getattr(replies, "close", None)
                if close is not None:  # the generator's own cleanup, on a thread, after its last step
                    if step is None:
                        _submit(pool, close)
                    else:
                        step.add_done_callback(lambda _step: _submit(pool, close))

        return inner

    @staticmethod
    def _client_stream(fn):
        if inspect.iscoroutinefunction(fn):
            return fn
        if inspect.isasyncgenfunction(fn):
            return fn
        raise TypeError(f"{fn.__qualname__}: a client-streaming method must be async")
