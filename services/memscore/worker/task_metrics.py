"""The worker's metrics: how long each task ran and how it ended.

Tasks run in prefork children that are replaced every MEMSCORE_WORKER_TASKS_PER_CHILD tasks,
so a metric counted in a child would die with it. Each child times its task between Celery's
`task_prerun` and `task_postrun` signals and writes the observation to a `metrics.Spool`
directory; the parent, which serves /metrics, folds the spool into its registry at each
scrape. The receivers are connected in the parent before the pool forks, so every child has
them.

Models trained are counted by the task that trained them (`count_models`, through the same
spool): `rate(memscore_models_trained_total[5m])` is the workers' models/s.
"""

from __future__ import annotations

import tempfile
import time

from ..metrics import REGISTRY, Registry, Spool, serve_metrics
from ..settings import Settings

TASK_DURATION = "memscore_task_duration_seconds"
MODELS_TRAINED = "memscore_models_trained_total"
# Seconds: a reduce takes seconds, a shard minutes to hours (MEMSCORE_SHARD_TIMEOUT_S is 6 h).
TASK_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600)

_started: dict[str, float] = {}  # task id -> monotonic start, in the child running it
_spool: Spool | None = None  # set by `install` in the parent; the pool's children inherit it


def declare(registry: Registry) -> None:
    registry.histogram(
        TASK_DURATION,
        "Duration of Celery tasks by task name and outcome (Celery's final state, lower case).",
        ("task", "outcome"),
        TASK_BUCKETS,
    )
    registry.counter(MODELS_TRAINED, "Subset models trained, by architecture; rate() of it is models/s.", ("model",))


def count_models(models: int, arch: str) -> None:
    """Count `models` models of `arch` trained (by the task that trained them); nothing without
    a metrics port."""
    if _spool is not None and models > 0:
        _spool.write([{"op": "inc", "name": MODELS_TRAINED, "labels": {"model": arch}, "value": models}])


def receivers(spool: Spool):
    """(task_prerun, task_postrun) receivers that spool each task's duration and outcome."""

    def prerun(task_id=None, **_) -> None:
        _started[task_id] = time.monotonic()

    def postrun(sender=None, task_id=None, state=None, **_) -> None:
        start = _started.pop(task_id, None)
        if start is None:
            return
        labels = {"task": getattr(sender, "name", "unknown"), "outcome": (state or "unknown").lower()}
        spool.write([{"op": "observe", "name": TASK_DURATION, "labels": labels, "value": time.monotonic() - start}])

    return prerun, postrun


def install(settings: Settings, registry: Registry = REGISTRY, directory: str | None = None):
    """In the worker parent, before Celery starts: declare the metrics, connect the signal
    receivers, fold the spool at each scrape and serve /metrics when MEMSCORE_METRICS_PORT is
    set. Returns the HTTP server (None without a port)."""
    if not settings.metrics_port:
        return None
    from celery.signals import task_postrun, task_prerun

    global _spool
    spool = _spool = Spool(directory or tempfile.mkdtemp(prefix="memscore-metrics-"))
    declare(registry)
    prerun, postrun = receivers(spool)
    task_prerun.connect(prerun, weak=False)
    task_postrun.connect(postrun, weak=False)
    registry.on_scrape(lambda: spool.fold(registry))
    return serve_metrics(settings, registry)
