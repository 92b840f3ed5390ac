"""The process's handles on its backing services, built once from `Settings`.

Gateway, results and worker processes all call `runtime()`; tests and `memscore up` build
their own `Runtime` from explicit settings.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .settings import Settings
from .store.jobs import JobStore, open_job_store
from .store.objects import ObjectStore, open_object_store


@dataclass
class Runtime:
    settings: Settings
    objects: ObjectStore
    jobs: JobStore
    _celery: object = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "Runtime":
        s = settings or Settings()
        s.home.mkdir(parents=True, exist_ok=True)
        return cls(settings=s, objects=open_object_store(s), jobs=open_job_store(s))

    @property
    def celery(self):
        """The Celery app used to enqueue tasks (by name: the gateway never imports torch)."""
        if self._celery is None:
            from .broker import make_app

            self._celery = make_app(self.settings)
        return self._celery


_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime.from_settings()
        return _runtime


def set_runtime(rt: Runtime | None) -> None:
    """Install `rt` as this process's runtime (embedded mode and tests)."""
    global _runtime
    with _lock:
        _runtime = rt
