"""The worker's Celery application (`celery -A memscore.worker.app ...`), configured from
`memscore.settings` by `memscore.broker.make_app`; its tasks are in `worker/tasks.py`."""

from __future__ import annotations

from ..broker import make_app

app = make_app()
