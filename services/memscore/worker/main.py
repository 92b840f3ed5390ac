"""`memscore-worker`: one Celery worker process for the `gpu` queue (MEMSCORE_QUEUE) and the
reduce queue (MEMSCORE_REDUCE_QUEUE); `--queues=...` after it picks others (a CPU-only reduce
worker: `memscore-worker --queues=gpu-reduce`).

Prefork with one child (CUDA is only ever initialised in the child, as CUDA does not survive
fork), replaced after MEMSCORE_WORKER_TASKS_PER_CHILD tasks; after each task the child gives
back the GPU memory torch cached (`free_device_memory`). Prefetch 1: unlike the solo pool,
`celery inspect ping` then answers while a shard trains, and soft time limits fire.

Not one child per task: with a Redis broker, a child forked after the worker reconnected
(a Redis outage) breaks the parent's broker connection, so the task's acknowledgement fails
and the consumer stalls about 40 s before it reconnects and takes the task again; with a fresh
child per task that repeats for every task after an outage (measured, docs/security.md).
Extra arguments go to `celery worker`.

Logging is memscore's (`memscore.logs`, MEMSCORE_LOG_FORMAT), set up in the parent before
Celery starts; a receiver of Celery's `setup_logging` signal tells Celery to install nothing of
its own. Each forked child inherits the root handler as it is (Celery's set-up in a child is a
no-op once the parent's ran), and every record a task emits carries its job id and shard.
"""

from __future__ import annotations

import sys

from ..settings import Settings


def worker_argv(settings: Settings, extra: list[str]) -> list[str]:
    # JSON logs stay pure JSON lines: no start-up banner on stdout (`celery --quiet`).
    quiet = ["--quiet"] if settings.log_format == "json" else []
    return [
        *quiet,
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        f"--max-tasks-per-child={settings.worker_tasks_per_child}",
        "--prefetch-multiplier=1",
        f"--queues={settings.queue},{settings.reduce_queue}",
        f"--loglevel={settings.log_level}",
        *extra,
    ]


def leave_logging_to_memscore(app) -> None:
    """Keep Celery's hands off logging: with a `setup_logging` receiver Celery installs no
    handlers of its own, in the parent or (inherited by fork) in a child."""
    from celery.signals import setup_logging

    def setup(**_) -> None:
        if app.conf.worker_redirect_stdouts:  # as Celery does by default: print() becomes a log record
            app.log.redirect_stdouts(app.conf.worker_redirect_stdouts_level)

    setup_logging.connect(setup, weak=False)


def free_device_memory(**_) -> None:
    """After each task, in the child: drop what the task left behind and give the GPU memory
    torch's allocator cached back to the device."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    from ..logs import configure_logging

    settings = Settings()
    # First, so warnings from imports and from Celery's start are log records too. The real
    # stderr: Celery may replace sys.stderr by a proxy that logs.
    configure_logging(settings, stream=sys.__stderr__)

    import torch  # noqa: F401  imported once in the parent so each forked child starts fast; CUDA is not initialised here
    from celery.signals import task_postrun

    from .app import app
    from .task_metrics import install as install_metrics

    leave_logging_to_memscore(app)
    install_metrics(settings)  # before the pool forks: every child inherits the receivers
    task_postrun.connect(free_device_memory, weak=False)
    app.worker_main(worker_argv(settings, sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
