"""Job changes for every WatchJob of a process from one polling thread.

A watcher subscribes with the version it has seen and a callback; every `poll_s` the feed
reads each watched job once (`JobStore.get_many`: one Redis MGET, however many watchers) and
calls back, once, each watcher whose job moved past its version or ended. Watchers hold no
thread while they wait: a gRPC stream open for hours costs a dictionary entry.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Callable

from ..errors import NotFound
from ..store.jobs import JobRecord, JobStore

log = logging.getLogger("memscore.dataplane")

Callback = Callable[[JobRecord | None, BaseException | None], None]


class ChangeFeed:
    def __init__(self, jobs: JobStore, poll_s: float = 0.25):
        self.jobs, self.poll_s = jobs, poll_s
        self._subs: dict[int, tuple[str, int, Callback]] = {}
        self._keys = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def subscribe(self, job_id: str, after_version: int, callback: Callback) -> Callable[[], None]:
        """Call `callback(record, None)` once the job's version exceeds `after_version` or it is
        terminal; `callback(None, error)` if it disappears (NotFound) or the job store cannot be
        read (the store's exception). Called once, from the feed's thread. Returns a function
        that unsubscribes (harmless after the call)."""
        key = next(self._keys)
        with self._wake:
            self._subs[key] = (job_id, after_version, callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="memscore-watch", daemon=True)
                self._thread.start()
            self._wake.notify()

        def unsubscribe() -> None:
            with self._wake:
                self._subs.pop(key, None)

        return unsubscribe

    def watchers(self) -> int:
        with self._wake:
            return len(self._subs)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._subs:
                    self._wake.wait()
                subs = dict(self._subs)
            self.poll(subs)
            with self._wake:
                self._wake.wait(self.poll_s)

    def poll(self, subs: dict[int, tuple[str, int, Callback]] | None = None) -> int:
        """Read the watched jobs once and call back those that changed; returns how many."""
        if subs is None:
            with self._wake:
                subs = dict(self._subs)
        try:
            records = self.jobs.get_many({job_id for job_id, _, _ in subs.values()})
            error = None
        except Exception as e:  # an outage: every watcher ends with it (UNAVAILABLE)
            records, error = {}, e
        due = []
        for key, (job_id, after, callback) in subs.items():
            rec = records.get(job_id)
            if error is not None:
                due.append((key, callback, None, error))
            elif rec is None:
                due.append((key, callback, None, NotFound(f"job {job_id[:200]!r} no longer exists")))
            elif rec.version > after or rec.terminal:
                due.append((key, callback, rec, None))
        with self._wake:
            due = [d for d in due if self._subs.pop(d[0], None) is not None]  # not unsubscribed meanwhile
        for _, callback, rec, err in due:
            try:
                callback(rec, err)
            except Exception:  # one watcher's failure must not stop the others'
                log.exception("a job watcher's callback failed")
        return len(due)
