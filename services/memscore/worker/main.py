"""`memscore-worker`: one Celery worker process for the `gpu` queue (MEMSCORE_QUEUE).

Settings per INFRA-NOTES: prefork with one child that is replaced after every task (frees GPU
memory; CUDA is only ever initialised in the child), prefetch 1, so `celery inspect ping`
answers while a shard trains and soft time limits fire. Extra arguments go to `celery worker`.
"""

from __future__ import annotations

import sys

from ..settings import Settings


def worker_argv(settings: Settings, extra: list[str]) -> list[str]:
    return [
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        "--max-tasks-per-child=1",
        "--prefetch-multiplier=1",
        f"--queues={settings.queue}",
        f"--loglevel={settings.log_level}",
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    import torch  # noqa: F401  imported once in the parent so each forked child starts fast; CUDA is not initialised here

    from .app import app

    app.worker_main(worker_argv(Settings(), sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
