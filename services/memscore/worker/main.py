"""`memscore-worker`: one Celery worker process for the `gpu` queue (MEMSCORE_QUEUE) and the
reduce queue (MEMSCORE_REDUCE_QUEUE); `--queues=...` after it picks others (a CPU-only reduce
worker: `memscore-worker --queues=gpu-reduce`).

Prefork with one child that is replaced after every task (frees GPU memory; CUDA is only ever
initialised in the child, as CUDA does not survive fork), prefetch 1: unlike the solo pool,
`celery inspect ping` then answers while a shard trains, and soft time limits fire.
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
        "--max-tasks-per-child=1",
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


def main(argv: list[str] | None = None) -> int:
    from ..logs import configure_logging

    settings = Settings()
    # First, so warnings from imports and from Celery's start are log records too. The real
    # stderr: Celery may replace sys.stderr by a proxy that logs.
    configure_logging(settings, stream=sys.__stderr__)

    import torch  # noqa: F401  imported once in the parent so each forked child starts fast; CUDA is not initialised here

    from .app import app
    from .task_metrics import install as install_metrics

    leave_logging_to_memscore(app)
    install_metrics(settings)  # before the pool forks: every child inherits the receivers
    app.worker_main(worker_argv(settings, sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
