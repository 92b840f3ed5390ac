"""Server assembly both gRPC servers share: a grpc.aio server on an event loop of its own,
driven from synchronous code (`Server`), with health, reflection, message limits, the
interceptors of `interceptors`, and a monitor that turns Health NOT_SERVING while a backing
store is unreachable. Protobuf conversions live in `convert`."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from concurrent import futures
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .auth import authenticator_from_settings
from .interceptors import (
    MAX_MESSAGE_BYTES,
    AuthInterceptor,
    DomainErrorInterceptor,
    StreamLimitInterceptor,
    SyncHandlers,
    _bounded,
)
from .limits import StallReaper, StreamBudget
from .metrics import RpcMetricsInterceptor
from .tls import server_credentials

log = logging.getLogger("memscore.rpc")

# Calls beyond the stream budget that MEMSCORE_MAX_CONCURRENT_RPCS must still admit, so unary
# calls and Health are answered when every stream slot is taken.
MIN_UNARY_CALLS = 16


def bind_host(address: str) -> str:
    """The host part of HOST:PORT (brackets of an IPv6 host kept off)."""
    return address.rsplit(":", 1)[0].strip("[]") if ":" in address else address


def _event_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop running in a daemon thread of its own."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    threading.Thread(target=run, name=name, daemon=True).start()
    started.wait()
    return loop


class Server:
    """A grpc.aio server on its own event loop (a daemon thread), with the thread pool that runs
    the servicers' synchronous code: start and stop it like gRPC's synchronous server (`stop`
    returns an event to `wait` on)."""

    def __init__(self, server: grpc.aio.Server, loop: asyncio.AbstractEventLoop, pool: futures.ThreadPoolExecutor):
        self._server, self.loop, self.pool = server, loop, pool
        self._stopped: threading.Event | None = None
        self._lock = threading.Lock()

    def run(self, coro, timeout: float | None = None):
        """Run `coro` on the server's loop and return its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.run(self._server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop accepting calls; calls in flight get `grace` seconds (None: none) before they are
        cancelled. The returned event is set once the server, its pool and its loop are down."""
        with self._lock:
            if self._stopped is not None:
                return self._stopped
            self._stopped = done = threading.Event()

        def finished(_future) -> None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            done.set()

        if self.loop.is_closed():
            done.set()
        else:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace), self.loop).add_done_callback(finished)
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """True if `timeout` passed first."""
        return self.run(self._server.wait_for_termination(timeout))


class Health:
    """The server's gRPC health service (asyncio), set from any thread."""

    def __init__(self, servicer, server: Server):
        self._servicer, self._server = servicer, server

    def set(self, service: str, status) -> None:
        self._server.run(self._servicer.set(service, status), timeout=10)


def build_server(
    add_servicers: list[Callable[[grpc.aio.Server], None]],
    service_names: list[str],
    address: str,
    settings=None,
) -> tuple[Server, int, Health]:
    """A server with our services, gRPC health (each service and "" SERVING) and reflection,
    authenticating every other call (`AuthInterceptor`), holding streams to a budget
    (`StreamLimitInterceptor`) below MEMSCORE_MAX_CONCURRENT_RPCS, running synchronous servicer
    code on MEMSCORE_RPC_THREADS threads, and serving TLS when `settings` name a certificate.
    Returns (server, bound port, health)."""
    from .settings import Settings

    settings = settings or Settings()
    auth = authenticator_from_settings(settings, bind_host(address))
    credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    streams, calls = settings.max_streams, settings.max_concurrent_rpcs
    if streams > calls - MIN_UNARY_CALLS:
        raise RuntimeError(
            f"MEMSCORE_MAX_STREAMS={streams} must leave at least {MIN_UNARY_CALLS} of the "
            f"MEMSCORE_MAX_CONCURRENT_RPCS={calls} calls to unary calls and Health"
        )
    budget = StreamBudget(streams, settings.tenant_max_streams)
    reaper = StallReaper(settings.stream_stall_timeout_s, log.warning)
    pool = futures.ThreadPoolExecutor(max_workers=settings.rpc_threads, thread_name_prefix="memscore-rpc")
    loop = _event_loop("memscore-rpc-loop")

    async def build():
        asyncio.get_running_loop().set_default_executor(pool)
        server = grpc.aio.server(
            migration_thread_pool=pool,
            interceptors=[
                RpcMetricsInterceptor(),  # outermost: sees every call's final status code
                DomainErrorInterceptor(),
                AuthInterceptor(auth),
                StreamLimitInterceptor(budget, reaper),
                SyncHandlers(pool),
            ],
            maximum_concurrent_rpcs=calls,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        for add in add_servicers:
            add(server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ["", *service_names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        return server, port, health_servicer

    aio_server, port, health_servicer = asyncio.run_coroutine_threadsafe(build(), loop).result()
    server = Server(aio_server, loop, pool)
    if port == 0:
        server.stop(None).wait(10)
        raise RuntimeError(f"could not bind {address}")
    return server, port, Health(health_servicer, server)


def monitor_backends(
    health_servicer: Health,
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
                try:
                    for name in ["", *service_names]:
                        health_servicer.set(name, status)
                except Exception:  # the server stopped meanwhile
                    return
                if serving:
                    log.info("backing stores reachable again: SERVING")
                else:
                    log.warning("NOT_SERVING: unreachable %s", "; ".join(down))
            stop.wait(interval_s)

    threading.Thread(target=loop, name="memscore-health", daemon=True).start()
    return stop


def start_service(add_servicer: Callable[[grpc.aio.Server], None], service_name: str, address: str, rt):
    """Build (`build_server`) and start the server of one service for runtime `rt`, with a
    backing-store monitor that stops with it. Returns (server, bound port)."""
    server, port, health_servicer = build_server([add_servicer], [service_name], address, settings=rt.settings)
    start_server(server, health_servicer, [service_name], rt)
    return server, port


def start_server(server: Server, health_servicer: Health, service_names: list[str], rt) -> Server:
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
