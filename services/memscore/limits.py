"""How many long calls a server holds at once, so short ones always find a thread.

The servers are gRPC's thread-pool servers: each call holds one thread while it runs, and a
streaming call (WatchJob, StreamRanked, StreamInfluence, GetArtifact, UploadDataset) may run for
minutes. `StreamBudget` caps those streams, in all and per tenant, below the pool's size; a
stream over budget is refused at once with RESOURCE_EXHAUSTED instead of queueing. What is left
of the pool always serves unary calls (GetJob, SubmitJob, ...) and Health. Beyond the pool,
gRPC's `maximum_concurrent_rpcs` refuses a flood of calls of any kind instead of queueing it
without bound.
"""

from __future__ import annotations

import threading
from collections import Counter

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
