"""The body of the `memscore.exposure` task: load the job's spec and corpus from the stores, run
`engine.exposure_job.run_exposure_job`, write its files and mark the job SUCCEEDED.

One task is the whole job (one language model), so the job counts as one shard (shard 0) of one
model, in flight and cancelled like a scoring shard (`JobRun`). A redelivered task whose result
files both exist publishes them instead of training again. Torch is imported only when the task
runs, never at module import (CUDA must not start in a prefork parent).
"""

from __future__ import annotations

import json
import logging

from ..datarefs import load_job_corpus
from ..engine.corpus import BUILTIN, CorpusError
from ..engine.exposure_job import RESULT_FILES, small_summary
from ..engine.spec import ExposureSpec
from ..store import layout
from ..store.jobs import JobRecord
from .jobrun import JobRun, run_in_flight

log = logging.getLogger("memscore.worker.exposure")


def _publish(run: JobRun, keys: dict[str, str], summary: dict) -> None:
    jobs = run.rt.jobs
    jobs.mark_shard_done(run.job_id, 0, 1)
    jobs.update(run.job_id, state="SUCCEEDED", results=keys, summary=small_summary(summary), eta_s=0.0, message="done")


def run_exposure_job(job_id: str) -> str:
    """Run exposure job `job_id` end to end; returns a short note for the task result."""
    return run_in_flight(job_id, 0, _run)  # the whole job is shard 0


def _run(run: JobRun, rec: JobRecord) -> str:
    """The job in flight: publish files a previous delivery wrote, or check the inputs and measure."""
    rt = run.rt
    keys = {name: layout.result_key(run.job_id, name) for name in RESULT_FILES}
    if all(rt.objects.exists(k) for k in keys.values()):  # a redelivery after the files were written
        _publish(run, keys, json.loads(rt.objects.get_bytes(keys["summary.json"])))
        return "already done"
    attempts = rt.jobs.incr_attempts(run.job_id, 0)
    if attempts > rt.settings.max_attempts:
        return run.fail(f"the exposure task was started {attempts - 1} times and never finished (worker crashes?)")
    try:
        spec = ExposureSpec.from_dict(rec.spec)
    except (TypeError, ValueError) as e:
        return run.fail(f"spec: {e}")
    problems = spec.validate()
    if problems:
        return run.fail("spec: " + "; ".join(f"{f}: {m}" for f, m in problems))
    try:
        corpus_text = load_job_corpus(spec.corpus, rt.objects, rt.settings.data_roots, rec.tenant)
    except CorpusError as e:
        return run.fail(f"corpus: {e}")
    rt.jobs.update(run.job_id, state="RUNNING", message="training the language model")
    return _measure(run, spec, corpus_text, keys)


def _measure(run: JobRun, spec: ExposureSpec, corpus_text: str, keys: dict[str, str]) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    from ..engine.ensemble import Cancelled
    from ..engine.exposure_job import run_exposure_job as engine_run

    rt = run.rt
    log.info("training the language model on %s", rt.settings.device)
    run.start_clock()
    try:
        result = engine_run(
            spec,
            corpus_text,
            device=rt.settings.device,
            progress=run.progress,
            should_stop=run.should_stop,
            corpus_source=spec.corpus or BUILTIN,
        )
    except Cancelled:
        log.info("stopped early: the job was cancelled or has ended")
        return "cancelled"
    except SoftTimeLimitExceeded:
        return run.fail(f"the exposure job exceeded MEMSCORE_SHARD_TIMEOUT_S={rt.settings.shard_timeout_s}s")
    except (CorpusError, ValueError) as e:  # a corpus the engine cannot use (e.g. shorter than a window)
        return run.fail(f"{type(e).__name__}: {e}")
    # summary.json last: both files existing means the job's results are complete.
    for name in ("exposure.parquet", "summary.json"):
        rt.objects.put_bytes(keys[name], result.files[name])
    _publish(run, keys, result.summary)
    return "measured"
