"""How many long calls a server holds at once, so short ones always find a thread.

The servers are gRPC's thread-pool servers: each call holds one thread while it runs, and a
streaming call (WatchJob, StreamRanked, StreamInfluence, GetArtifact, UploadDataset) may run for
minutes. `StreamBudget` caps those streams, in all and per tenant, below the pool's size; a
stream over budget is refused at once with RESOURCE_EXHAUSTED instead of queueing. What is left
of the pool always serves unary calls (GetJob, SubmitJob, ...) and Health. Beyond the pool,
gRPC's `maximum_concurrent_rpcs` refuses a flood of calls of any kind instead of queueing it
without bound. `StallReaper` cancels a stream whose client stopped reading (or sending), so a
client cannot hold a slot and its thread by going quiet.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Callable

from .errors import ResourceExhausted


class StreamBudget:
    def __init__(self, total: int, per_tenant: int):
        self.total, self.per_tenant = total, per_tenant
        self._open: Counter = Counter()
        self._lock = threading.Lock()

    def acquire(self, tenant: str) -> "Slot":
        """A slot for one stream of `tenant`, or ResourceExhausted naming the limit reached."""
        with self._lock:
            if self._open[tenant] >= self.per_tenant:
                raise ResourceExhausted(
                    f"tenant {tenant!r} already has {self.per_tenant} streams open on this server "
                    "(MEMSCORE_TENANT_MAX_STREAMS); close one or retry later"
                )
            if sum(self._open.values()) >= self.total:
                raise ResourceExhausted(
                    f"this server has {self.total} streams open (MEMSCORE_MAX_STREAMS); retry later"
                )
            self._open[tenant] += 1
        return Slot(self, tenant)

    def _release(self, tenant: str) -> None:
        with self._lock:
            self._open[tenant] -= 1
            if self._open[tenant] <= 0:
                del self._open[tenant]

    def open_streams(self, tenant: str | None = None) -> int:
        with self._lock:
            return sum(self._open.values()) if tenant is None else self._open[tenant]


class Slot:
    """One stream's place in the budget; `release` is idempotent (it is called both when the
    handler ends and when gRPC reports the call over)."""

    def __init__(self, budget: StreamBudget, tenant: str):
        self._budget, self._tenant = budget, tenant
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._budget._release(self._tenant)


class StallReaper:
    """Ends streams whose client stopped taking part: a stream that has waited on its client for
    longer than `timeout_s` (a reply gRPC cannot send because the client reads nothing and flow
    control is full, or the next chunk of an upload that does not come) is cancelled, which
    frees its thread and its budget slot. Time a handler spends producing its next message (a
    WatchJob waiting for the job to change) is not waiting on the client and never counts. One
    daemon thread checks about every second; `timeout_s` 0 switches it off."""

    def __init__(self, timeout_s: float, log: Callable[[str], None] | None = None):
        self.timeout_s = timeout_s
        self._log = log or (lambda message: None)
        self._waits: dict[int, list] = {}  # key -> [waiting since (monotonic) or None, cancel, what]
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self.timeout_s <= 0:
                return
            self._thread = threading.Thread(target=self._run, name="memscore-stall-reaper", daemon=True)
        self._thread.start()

    def track(self, cancel: Callable[[], None], what: str) -> "ClientWait":
        """Watch one stream; `cancel` ends it, `what` names it in the log."""
        self.start()
        key = next(self._keys)
        with self._lock:
            self._waits[key] = [None, cancel, what]
        return ClientWait(self, key)

    def _set(self, key: int, since: float | None) -> None:
        with self._lock:
            if key in self._waits:
                self._waits[key][0] = since

    def _forget(self, key: int) -> None:
        with self._lock:
            self._waits.pop(key, None)

    def reap(self, now: float | None = None) -> int:
        """Cancel every stream waiting on its client past the timeout; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            keys = [k for k, w in self._waits.items() if w[0] is not None and now - w[0] > self.timeout_s]
            stalled = [self._waits.pop(k) for k in keys]
        for since, cancel, what in stalled:
            self._log(
                f"{what}: its client took nothing for {now - since:.1f} s (MEMSCORE_STREAM_STALL_TIMEOUT_S "
                f"{self.timeout_s:g}); stream cancelled"
            )
            cancel()
        return len(stalled)

    def _run(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout_s / 4))
            try:
                self.reap()
            except Exception:  # a failing cancel must not stop the reaper for every other stream
                pass


class ClientWait:
    """One stream's bracket around the moments it waits on its client."""

    def __init__(self, reaper: StallReaper, key: int):
        self._reaper, self._key = reaper, key

    def waiting(self) -> None:
        self._reaper._set(self._key, time.monotonic())

    def done_waiting(self) -> None:
        self._reaper._set(self._key, None)

    def close(self) -> None:
        self._reaper._forget(self._key)
