"""What the scoring and exposure tasks share about running one shard of a job: the log context,
the in-flight bracket CancelJob relies on, throttled progress and cancel checks, and failing.

    with JobRun(job_id, shard) as run:          # log records carry job_id and shard
        with run.in_flight() as rec:            # shard_started ... shard_stopped, however it ends
            if run.stopping(rec):
                return "cancelled"
            engine_train(..., progress=run.progress, should_stop=run.should_stop)

A job is CANCELLED only once no shard is in flight (the job store does it in shard_stopped), so
a cancelled job's workers have all stopped writing by the time its state says so.

Heartbeats: while a shard is in flight (or reduce runs, `beating`), a daemon thread beats in the
job store every MEMSCORE_HEARTBEAT_INTERVAL_S; the gateway's watchdog (dataplane/watchdog.py)
queues again a task whose beats stopped. A job store that is unreachable for a while does not
stop the training: progress reports and cancel checks are skipped (logged once per outage) and
the shard's trace is still stored; only the final counting needs the store, and it is retried.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

from ..errors import outage
from ..logs import task_context
from ..runtime import Runtime, runtime
from ..store.jobs import JobNotFound, JobRecord

log = logging.getLogger("memscore.worker")

PROGRESS_EVERY_S = 1.0  # job-store writes (progress) and reads (cancel flag) at most this often


class JobRun:
    """One task's run on one shard of a job (shard None: a task for the whole job, as reduce)."""

    def __init__(self, job_id: str, shard: int | None = None, rt: Runtime | None = None):
        self.job_id, self.shard = job_id, shard
        self.rt = rt or runtime()
        self.started = time.monotonic()
        self._last_progress = self._last_check = float("-inf")
        self._stop = False
        self._context = ExitStack()
        self._store_down = False

    def __enter__(self) -> "JobRun":
        self._context.enter_context(task_context(self.job_id, self.shard))
        return self

    def __exit__(self, *exc) -> None:
        self._context.close()

    @contextmanager
    def in_flight(self) -> Iterator[JobRecord]:
        """Count this shard in flight for the block; yields the record as the store saw it at the
        start (check it with `stopping`). A shard left in flight by a killed worker is cleared
        by its redelivery, which passes through here again."""
        rec = self.rt.jobs.shard_started(self.job_id, self._shard)
        with self.beating(str(self._shard)):
            try:
                yield rec
            except BaseException:
                self._stopped_quietly()
                raise
            self._stopped_quietly()

    def _stopped_quietly(self) -> None:
        # The block's own exception matters more (Celery retries by its type): log ours instead.
        # A shard left in flight by a failed call here is released by the watchdog.
        try:
            self.rt.jobs.shard_stopped(self.job_id, self._shard)
        except Exception as e:
            log.warning("could not mark shard %s of job %s stopped: %s", self._shard, self.job_id, e)

    @contextmanager
    def beating(self, task: str) -> Iterator[None]:
        """Beat for `task` ("0", "1", ... or "reduce") now and every heartbeat interval until the
        block ends, from a daemon thread. A beat that cannot reach the store is skipped: the
        silence is what the watchdog looks for."""
        done = threading.Event()
        every = self.rt.settings.heartbeat_interval_s

        def beat() -> None:
            try:
                self.rt.jobs.beat(self.job_id, task)
            except Exception as e:
                self._store_unreachable("heartbeat", e)

        def loop() -> None:
            while not done.wait(every):
                beat()

        beat()
        thread = threading.Thread(target=loop, name=f"memscore-beat-{task}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=5)

    def _store_unreachable(self, what: str, e: Exception) -> None:
        """Log an outage of the job store once (until a call succeeds again); anything else raises."""
        if not outage(e):
            raise e
        if not self._store_down:
            log.warning("job store unreachable (%s: %s); %s skipped, training goes on", type(e).__name__, e, what)
        self._store_down = True

    @property
    def _shard(self) -> int:
        if self.shard is None:
            raise ValueError("JobRun.in_flight needs a shard")
        return self.shard

    @staticmethod
    def stopping(rec: JobRecord) -> bool:
        """Whether work on a job in this state must stop: it ended, or CancelJob was called."""
        return rec.terminal or rec.cancel_requested

    def start_clock(self) -> None:
        """Measure the pace for ETAs from now (call right before training, after loading)."""
        self.started = time.monotonic()

    def fail(self, message: str) -> str:
        """Mark the job FAILED with `message` (a job deleted meanwhile is no error)."""
        log.error("job %s failed: %s", self.job_id, message)
        try:
            self.rt.jobs.update(self.job_id, state="FAILED", error=message, eta_s=None, message="failed")
        except JobNotFound:
            pass
        return "failed"

    def progress(self, done: float, total: float, message: str) -> None:
        """Report `done` of `total` units of this task's work, with the job's ETA: this task's
        pace applied to the shards not yet done. At most every PROGRESS_EVERY_S, and always
        at the end."""
        now = time.monotonic()
        if done < total and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        try:
            self.rt.jobs.update(self.job_id, message=message, eta_s=self._eta(done / total if total else 1.0))
        except Exception as e:
            self._store_unreachable("progress report", e)
            return
        self._store_down = False

    def _eta(self, fraction: float) -> float | None:
        if fraction <= 0:
            return None
        rec = self.rt.jobs.get(self.job_id)
        per_shard = (time.monotonic() - self.started) / fraction
        return max(0.0, (rec.shards_total - rec.shards_done - fraction) * per_shard)

    def should_stop(self) -> bool:
        """True once the job was cancelled or ended; reads the store at most every
        PROGRESS_EVERY_S (the engine calls this every few steps)."""
        now = time.monotonic()
        if not self._stop and now - self._last_check >= PROGRESS_EVERY_S:
            self._last_check = now
            try:
                self._stop = self.stopping(self.rt.jobs.get(self.job_id))
            except JobNotFound:  # deleted: nobody wants the results
                self._stop = True
            except Exception as e:
                self._store_unreachable("cancel check", e)
        return self._stop


def run_in_flight(job_id: str, shard: int, body: Callable[[JobRun, JobRecord], str]) -> str:
    """How every shard task starts: drop a deleted or ended job, count the shard in flight,
    stop if CancelJob came first, else run `body(run, record)`; returns the task's note."""
    with JobRun(job_id, shard) as run:
        try:
            rec = run.rt.jobs.get(job_id)
        except JobNotFound:
            log.warning("job %s is gone; dropping shard %s", job_id, shard)
            return "unknown job"
        if rec.terminal:
            return f"skipped: job is {rec.state}"
        with run.in_flight() as now:
            if run.stopping(now):
                return "cancelled before it started" if now.cancel_requested else f"skipped: job is {now.state}"
            return body(run, rec)
