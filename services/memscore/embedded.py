"""`memscore up`: gateway, results and a worker in one process, no external server needed.

The broker is kombu's in-process `memory://` transport, objects live under $MEMSCORE_HOME/store
and job state in $MEMSCORE_HOME/jobs.sqlite3 — the same Celery tasks as a deployment. With
--broker redis://... and --store s3://... the same process works against Redis and MinIO.
Jobs left QUEUED/RUNNING by an earlier run are resumed at start (their finished shards are
kept: a shard with a stored trace is not trained again).
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass

from .runtime import Runtime, set_runtime
from .settings import Settings

log = logging.getLogger("memscore.embedded")


@dataclass
class Embedded:
    runtime: Runtime
    gateway_port: int
    results_port: int
    servers: list
    worker: object
    worker_thread: threading.Thread

    def stop(self) -> None:
        for s in self.servers:
            s.stop(grace=2).wait()
        try:
            self.worker.stop(in_sighandler=False)
        except Exception:  # a worker that never started
            pass
        self.worker_thread.join(timeout=30)


def start(
    settings: Settings | None = None,
    gateway_port: int | None = None,
    results_port: int | None = None,
    bind: str | None = None,
    with_worker: bool = True,
) -> Embedded:
    from .auth import authenticator_from_settings
    from .dataplane import ScoringPlane
    from .gateway.server import serve as serve_gateway
    from .results.server import serve as serve_results
    from .tls import server_credentials
    from .worker.app import app

    s = settings or Settings()
    host = bind or s.bind
    authenticator_from_settings(s, host)  # refuse (RuntimeError) before anything starts: no tokens on
    server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)  # a public address, TLS files that do not load
    rt = Runtime.from_settings(s)
    set_runtime(rt)
    rt._celery = app
    worker = app.WorkController(
        pool_cls="solo",
        concurrency=1,
        queues=[s.queue, s.reduce_queue],
        hostname=f"embedded@{socket.gethostname()}",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel=s.log_level,
    )
    thread = threading.Thread(target=worker.start, name="memscore-worker", daemon=True)
    if with_worker:
        thread.start()
    plane = ScoringPlane(rt)
    resumed = plane.resume_unfinished()
    if resumed:
        log.info("resumed %d unfinished job(s)", resumed)
    gw, gw_port = serve_gateway(rt, f"{host}:{s.gateway_port if gateway_port is None else gateway_port}", plane)
    res, res_port = serve_results(rt, f"{host}:{s.results_port if results_port is None else results_port}")
    return Embedded(rt, gw_port, res_port, [gw, res], worker, thread)
