"""The body of the `memscore.exposure` task: load the job's spec and corpus from the stores, run
`engine.exposure_job.run_exposure_job`, write its files and mark the job SUCCEEDED.

One task is the whole job (one language model), so the job counts as one shard of one model.
A redelivered task whose result files both exist publishes them instead of training again.
Torch is imported only when the task runs, never at module import (CUDA must not start in a
prefork parent).
"""

from __future__ import annotations

import json
import logging
import time

from ..datarefs import load_job_corpus
from ..engine.corpus import BUILTIN, CorpusError
from ..engine.exposure_job import RESULT_FILES, small_summary
from ..engine.spec import ExposureSpec
from ..runtime import runtime
from ..store import layout
from ..store.jobs import JobNotFound

log = logging.getLogger("memscore.worker.exposure")

UPDATE_EVERY_S = 1.0  # job-store writes (progress) and reads (cancel flag) at most this often


def _fail(job_id: str, message: str) -> str:
    log.error("exposure job %s failed: %s", job_id, message)
    runtime().jobs.update(job_id, state="FAILED", error=message, eta_s=None, message="failed")
    return "failed"


def _publish(job_id: str, keys: dict[str, str], summary: dict) -> None:
    jobs = runtime().jobs
    jobs.mark_shard_done(job_id, 0, 1)
    jobs.update(job_id, state="SUCCEEDED", results=keys, summary=small_summary(summary), eta_s=0.0, message="done")


def run_exposure_job(job_id: str) -> str:
    """Run exposure job `job_id` end to end; returns a short note for the task result."""
    from celery.exceptions import SoftTimeLimitExceeded

    from ..engine.ensemble import Cancelled
    from ..engine.exposure_job import run_exposure_job as engine_run

    rt = runtime()
    try:
        rec = rt.jobs.get(job_id)
    except JobNotFound:
        log.warning("exposure: job %s is gone; dropping it", job_id)
        return "unknown job"
    if rec.terminal or rec.cancel_requested:
        return f"skipped: job is {rec.state}"
    keys = {name: layout.result_key(job_id, name) for name in RESULT_FILES}
    if all(rt.objects.exists(k) for k in keys.values()):  # a redelivery after the files were written
        _publish(job_id, keys, json.loads(rt.objects.get_bytes(keys["summary.json"])))
        return "already done"
    attempts = rt.jobs.incr_attempts(job_id, 0)
    if attempts > rt.settings.max_attempts:
        return _fail(job_id, f"the exposure task was started {attempts - 1} times and never finished (worker crashes?)")
    try:
        spec = ExposureSpec.from_dict(rec.spec)
    except (TypeError, ValueError) as e:
        return _fail(job_id, f"spec: {e}")
    problems = spec.validate()
    if problems:
        return _fail(job_id, "spec: " + "; ".join(f"{f}: {m}" for f, m in problems))
    try:
        corpus_text = load_job_corpus(spec.corpus, rt.objects)
    except CorpusError as e:
        return _fail(job_id, f"corpus: {e}")
    rt.jobs.update(job_id, state="RUNNING", message="training the language model")

    started = time.monotonic()
    last_update = last_check = float("-inf")
    cancelled = False

    def progress(done: int, total: int, message: str) -> None:
        nonlocal last_update
        now = time.monotonic()
        if now - last_update < UPDATE_EVERY_S and done < total:
            return
        last_update = now
        eta = (now - started) * (total - done) / done if done > 0 else None
        rt.jobs.update(job_id, message=message, eta_s=eta)

    def should_stop() -> bool:
        nonlocal last_check, cancelled
        now = time.monotonic()
        if not cancelled and now - last_check >= UPDATE_EVERY_S:
            last_check = now
            cancelled = rt.jobs.cancel_requested(job_id)
        return cancelled

    try:
        result = engine_run(
            spec,
            corpus_text,
            device=rt.settings.device,
            progress=progress,
            should_stop=should_stop,
            corpus_source=spec.corpus or BUILTIN,
        )
    except Cancelled:
        log.info("exposure job %s cancelled", job_id)
        return "cancelled"
    except SoftTimeLimitExceeded:
        return _fail(job_id, f"the exposure job exceeded MEMSCORE_SHARD_TIMEOUT_S={rt.settings.shard_timeout_s}s")
    except (CorpusError, ValueError) as e:  # a corpus the engine cannot use (e.g. shorter than a window)
        return _fail(job_id, f"{type(e).__name__}: {e}")
    # summary.json last: both files existing means the job's results are complete.
    for name in ("exposure.parquet", "summary.json"):
        rt.objects.put_bytes(keys[name], result.files[name])
    _publish(job_id, keys, result.summary)
    return "measured"
