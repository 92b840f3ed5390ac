"""The watchdog: finds the lost work of unfinished jobs and queues it again, so a job whose
shard died with its worker, or whose task message vanished in a broker outage, finishes within
minutes instead of waiting hours for Redis to redeliver it (the visibility timeout must exceed
the longest shard, so it cannot be short).

Running tasks beat (`JobStore.beat`, every MEMSCORE_HEARTBEAT_INTERVAL_S, see worker/jobrun.py).
Each sweep (every MEMSCORE_WATCHDOG_INTERVAL_S, in the gateway) looks at every QUEUED or RUNNING
job and queues again:

- a shard in flight (`shards_running`) whose last beat is older than MEMSCORE_HEARTBEAT_TIMEOUT_S:
  its worker died, hung or lost the broker. A shard that is done already, or belongs to a job
  being cancelled, is only taken out of flight (which lets a cancelled job turn CANCELLED);
- a shard neither done nor in flight, or the reduce of a job whose shards are all done, that
  has been missing for a heartbeat timeout while its queue was empty: its message is gone
  (a task that could not be sent during an outage). A non-empty queue may still hold it, so
  nothing is queued twice while work waits in line.

Queuing again is safe because every task is idempotent: a shard whose trace exists is counted
and not trained again, and reduce publishes once. A re-queued shard's beat is set to now, so it
is not re-queued again before another timeout. After the watchdog itself could not reach the
job store, it waits two heartbeat intervals before judging any silence: live workers beat again
first. One gateway sweeps at a time (a lease in the job store), however many run.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from ..broker import TASK_EXPOSURE, TASK_REDUCE, TASK_TRAIN_SHARD, queue_depth, queue_for
from ..errors import outage
from ..runtime import Runtime
from ..store.jobs import ACTIVE_STATES, JobNotFound, JobRecord
from .specs import job_shards

log = logging.getLogger("memscore.watchdog")

REDUCE = "reduce"  # the reduce task's name among a job's beats


@dataclass(frozen=True)
class Redrive:
    """One thing a sweep did: `action` "requeued" (task sent again) or "released" (a dead
    shard taken out of flight) for `task` (a shard number, or "reduce") of `job_id`."""

    job_id: str
    task: str
    action: str
    why: str


class Watchdog:
    def __init__(
        self,
        rt: Runtime,
        enqueue: Callable[[str, list], None],
        clock: Callable[[], float] = time.time,
        depth: Callable[[str], int] | None = None,
    ):
        self.rt = rt
        self.enqueue = enqueue
        self.clock = clock
        self.depth = depth or (lambda queue: queue_depth(rt.celery, queue))
        self.holder = uuid.uuid4().hex
        self.timeout = rt.settings.heartbeat_timeout_s
        self.grace = 2 * rt.settings.heartbeat_interval_s
        self._reachable_since: float | None = None  # None: the last sweep could not reach the store
        self._missing: dict[tuple[str, str], float] = {}  # (job, task) -> when first seen missing

    def sweep(self) -> list[Redrive]:
        """One pass over the unfinished jobs; returns what it did. An outage of the job store or
        broker ends the pass quietly (the next one retries)."""
        now = self.clock()
        try:
            if not self.rt.jobs.hold_lease("watchdog", self.holder, ttl_s=max(3 * self.interval, self.timeout)):
                return []
            if self._reachable_since is None:
                self._reachable_since = now
            if now - self._reachable_since < self.grace:
                return []
            done: list[Redrive] = []
            depths: dict[str, int] = {}
            seen: set[tuple[str, str]] = set()
            for rec in self._active_jobs():
                try:
                    done += self._check(rec, now, depths, seen)
                except JobNotFound:  # deleted meanwhile
                    continue
            self._missing = {k: v for k, v in self._missing.items() if k in seen}
            return done
        except Exception as e:
            if not outage(e):
                raise
            if self._reachable_since is not None:
                log.warning("watchdog: %s unreachable (%s); sweeping again once it returns", outage(e), e)
            self._reachable_since = None
            return []

    @property
    def interval(self) -> float:
        return self.rt.settings.watchdog_interval_s

    def _active_jobs(self):
        for state in ACTIVE_STATES:
            token = ""
            while True:
                page, token = self.rt.jobs.list(state=state, page_size=500, page_token=token)
                yield from page
                if not token:
                    break

    def _queue_empty(self, depths: dict[str, int], task_name: str) -> bool:
        queue = queue_for(self.rt.settings, task_name)
        if queue not in depths:
            depths[queue] = self.depth(queue)
        return depths[queue] == 0

    def _check(self, rec: JobRecord, now: float, depths: dict[str, int], seen: set) -> list[Redrive]:
        jobs, out = self.rt.jobs, []
        beats = jobs.beats(rec.job_id)
        done = jobs.done_shards(rec.job_id)
        shard_task = TASK_EXPOSURE if rec.kind == "exposure" else TASK_TRAIN_SHARD
        for shard in rec.shards_running:
            beat = beats.get(str(shard))
            silent = now - beat if beat is not None else self._silent_for(rec, str(shard), now, seen)
            if silent < self.timeout:
                continue
            why = f"no heartbeat for {silent:.0f} s"
            if shard in done or rec.cancel_requested:
                jobs.shard_stopped(rec.job_id, shard)
                out.append(Redrive(rec.job_id, str(shard), "released", why))
            else:
                out.append(self._requeue(rec, str(shard), shard_task, [rec.job_id, shard], why, now))
        if rec.cancel_requested:
            return out
        running = set(rec.shards_running)
        missing = [s for s in job_shards(rec) if s not in done and s not in running]
        if missing:
            if not self._queue_empty(depths, shard_task):
                return out
            for shard in missing:
                silent = self._silent_for(rec, str(shard), now, seen)
                if silent >= self.timeout:
                    why = f"neither done nor in flight, its queue empty for {silent:.0f} s"
                    args = [rec.job_id] if rec.kind == "exposure" else [rec.job_id, shard]
                    out.append(self._requeue(rec, str(shard), shard_task, args, why, now))
        elif rec.kind == "scoring" and rec.shards_total and len(done) >= rec.shards_total:
            beat = beats.get(REDUCE)
            if beat is not None and now - beat < self.timeout:
                return out  # reducing
            if not self._queue_empty(depths, TASK_REDUCE):
                return out
            silent = self._silent_for(rec, REDUCE, now, seen)
            if silent >= self.timeout:
                why = f"every shard done, no reduce running or queued for {silent:.0f} s"
                out.append(self._requeue(rec, REDUCE, TASK_REDUCE, [rec.job_id], why, now))
        return out

    def _silent_for(self, rec: JobRecord, task: str, now: float, seen: set) -> float:
        """How long `task` has been seen missing (0 the first time: the clock starts now)."""
        key = (rec.job_id, task)
        seen.add(key)
        return now - self._missing.setdefault(key, now)

    def _requeue(self, rec: JobRecord, task: str, task_name: str, args: list, why: str, now: float) -> Redrive:
        log.warning(
            "watchdog: job %s %s %s: %s; queued again", rec.job_id, "task" if task == REDUCE else "shard", task, why
        )
        self.enqueue(task_name, args)
        self.rt.jobs.beat(rec.job_id, task, now)  # not again before another timeout
        self._missing.pop((rec.job_id, task), None)
        return Redrive(rec.job_id, task, "requeued", why)

    def run(self) -> threading.Event:
        """Sweep every `interval` seconds in a daemon thread until the returned event is set."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval):
                try:
                    self.sweep()
                except Exception:  # a bug must not kill the thread silently forever
                    log.exception("watchdog sweep failed")

        threading.Thread(target=loop, name="memscore-watchdog", daemon=True).start()
        return stop
