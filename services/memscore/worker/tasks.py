"""Celery tasks: thin wrappers that load inputs from store/, call engine/, write to store/.

Fan-out/fan-in without a result backend: the gateway enqueues one `train_shard` per shard; each
shard, when its trace is stored, counts itself done in the job store (a set, so a redelivered
shard is never counted twice), and the shard that completes the set enqueues `reduce`.

Idempotency: a shard whose trace object exists is done (its key is deterministic and written
in one put), so a redelivered or resubmitted shard trains nothing. A shard that keeps killing
its worker is failed after MEMSCORE_MAX_ATTEMPTS deliveries instead of looping forever.

Self-stopping jobs (`until_reliability`): reduce asks `engine.reliability.next_growth` whether
to stop; if not, it stores the results so far, gives the job more shards (`JobStore.grow`, once
per model count, so a redelivered reduce never grows it twice) and enqueues them.

Cancellation: each shard runs inside `JobRun.in_flight` (the job store's set of shards in
flight). CancelJob raises the job's flag; a shard sees it at its next check and stops, a queued
one never starts, and the last one to stop turns the job CANCELLED.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from ..broker import TASK_EXPOSURE, TASK_REDUCE, TASK_TRAIN_SHARD, send
from ..datarefs import dataset_identity, load_job_dataset
from ..engine.catalog import MEMORIZED_AT
from ..engine.datasets import Dataset, DatasetError
from ..engine.parquet import ParquetColumns
from ..engine.spec import ScoringSpec
from ..errors import outage, store_outage_errors
from ..runtime import Runtime, runtime
from ..store import layout
from ..store.jobs import JobRecord
from . import task_metrics
from .app import app
from .jobrun import JobRun, run_in_flight

log = logging.getLogger("memscore.worker")

# summary.json figures the job record carries (GetJob's anytime summary of a finished job)
SUMMARY_KEYS = (
    "mean_test_accuracy",
    "mean_memorization",
    "mean_in_sample_accuracy",
    "mean_heldout_accuracy",
    "models_done",
)


class JobTask(Task):
    """Marks the job FAILED when a task fails for good (not on retries or redelivery). An
    unreachable object store or job store is retried with backoff; if sending the retry fails
    too (the broker is down with Redis), the message is dropped and the watchdog queues the
    task again once its heartbeats have stopped. An outage never fails a job."""

    autoretry_for = store_outage_errors()
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 8

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        job_id = args[0] if args else kwargs.get("job_id")
        if outage(exc):
            log.warning(
                "%s of job %s gave up on an outage (%s); the watchdog will queue it again", self.name, job_id, exc
            )
            return
        if job_id:
            shard = args[1] if len(args) > 1 else kwargs.get("shard")
            with JobRun(job_id, shard) as run:
                run.fail(f"{self.name} failed: {type(exc).__name__}: {exc}")


def _enqueue(name: str, *args) -> None:
    send(app, runtime().settings, name, list(args))


@app.task(name=TASK_TRAIN_SHARD, base=JobTask, bind=True)
def train_shard(self, job_id: str, shard: int) -> str:
    return run_in_flight(job_id, shard, _run_shard)


def _run_shard(run: JobRun, rec: JobRecord) -> str:
    """A shard in flight: done already if its trace exists, else count the attempt and train."""
    rt, job_id, shard = run.rt, run.job_id, run.shard
    spec = ScoringSpec.from_dict(rec.spec)
    if rt.objects.exists(layout.trace_key(job_id, shard)):
        _shard_finished(job_id, shard, spec.shard_models(shard))
        return "already done"
    attempts = rt.jobs.incr_attempts(job_id, shard)
    if attempts > rt.settings.max_attempts:
        run.fail(f"shard {shard} was started {attempts - 1} times and never finished (worker crashes?)")
        return "gave up"
    try:
        if rec.state == "QUEUED":  # as it was before this shard started: the job's first shard
            rt.jobs.update(job_id, message=f"shard {shard} started")
        try:
            ds = _job_dataset(rt, spec, rec.tenant)
        except DatasetError as e:
            run.fail(f"dataset: {e}")
            return "bad dataset"
        return _train(run, ds, spec)
    except Exception as e:
        if outage(e):  # retried (JobTask): an outage is no crash, so this delivery does not count
            _forgive_attempt(rt, job_id, shard)
        raise


# The last dataset this worker process loaded, by (identity, tenant, columns): a job's shards and
# reduce, and repeated jobs on the same data, download and decode it once per process.
_LAST_DATASET: dict[tuple, Dataset] = {}


def _job_dataset(rt: Runtime, spec: ScoringSpec, tenant: str | None) -> Dataset:
    """The job's dataset: the copy this process loaded last while its identity holds
    (datarefs.dataset_identity: content address, ETags, size and mtime; the tenant's right to
    read it checked again), else read afresh (an s3:// table downloaded within
    MEMSCORE_MAX_DECOMPRESSED_BYTES)."""
    settings, columns = rt.settings, ParquetColumns.of(spec)
    identity = dataset_identity(spec.dataset, rt.objects, settings.data_roots, tenant, uris=settings.data_uris)
    key = (identity, tenant, columns)
    if identity is not None and key in _LAST_DATASET:
        return _LAST_DATASET[key]
    ds = load_job_dataset(
        spec.dataset,
        rt.objects,
        settings.data_roots,
        tenant,
        uris=settings.data_uris,
        columns=columns,
        max_bytes=settings.max_decompressed_bytes,
    )
    _LAST_DATASET.clear()
    if identity is not None:
        _LAST_DATASET[key] = ds
    return ds


def _forgive_attempt(rt: Runtime, job_id: str, shard: int) -> None:
    try:
        rt.jobs.incr_attempts(job_id, shard, by=-1)
    except Exception as e:  # the job store is what is down: this delivery stays counted
        log.warning("shard %s: could not take back its attempt (%s)", shard, e)


def _train(run: JobRun, ds: Dataset, spec: ScoringSpec) -> str:
    from ..engine.ensemble import Cancelled
    from ..engine.scoring import make_plan, prepare_dataset
    from ..engine.scoring import train_shard as engine_train_shard

    rt, job_id, shard = run.rt, run.job_id, run.shard
    ds, _ = prepare_dataset(ds, spec)
    plan = make_plan(ds, spec)
    ids = plan.model_ids(shard, spec.models)

    def progress(step: int, steps: int) -> None:
        run.progress(step, steps, f"shard {shard}: step {step}/{steps}")

    log.info("training shard %s: %d models on %s", shard, len(ids), rt.settings.device)
    run.start_clock()
    try:
        out = engine_train_shard(
            ds, spec, plan, shard, device=rt.settings.device, progress=progress, should_stop=run.should_stop
        )
    except Cancelled:
        log.info("shard %s stopped early: the job was cancelled or has ended", shard)
        return "cancelled"
    except SoftTimeLimitExceeded:
        run.fail(f"shard {shard} exceeded MEMSCORE_SHARD_TIMEOUT_S={rt.settings.shard_timeout_s}s")
        return "timed out"
    if out.weights is not None:
        from ..engine.query import checkpoint_to_bytes

        rt.objects.put_bytes(layout.checkpoint_key(job_id, shard), checkpoint_to_bytes(ids, plan.arch, out.weights))
    rt.objects.put_bytes(layout.trace_key(job_id, shard), out.trace.to_bytes())  # one put: the shard is done
    task_metrics.count_models(len(ids), plan.arch)
    _shard_finished(job_id, shard, spec.shard_models(shard))
    return "trained"


def _shard_finished(job_id: str, shard: int, models: int) -> None:
    rec = runtime().jobs.mark_shard_done(job_id, shard, models)
    # Exactly one shard's count completes the set. A repeat of a shard (redelivery) on a job
    # that is complete but not yet reduced re-enqueues reduce, in case the first was lost;
    # reduce is idempotent.
    if rec.shards_done >= rec.shards_total and not rec.terminal:
        _enqueue(TASK_REDUCE, job_id)


@app.task(name=TASK_REDUCE, base=JobTask, bind=True)
def reduce(self, job_id: str) -> str:
    with JobRun(job_id) as run, run.beating("reduce"):
        rt = run.rt
        rec = rt.jobs.get(job_id)
        if rec.terminal:
            return f"skipped: job is {rec.state}"
        if rec.cancel_requested:  # every shard has finished, but the user no longer wants the results
            rt.jobs.mark_cancelled(job_id)
            return "cancelled"
        spec = ScoringSpec.from_dict(rec.spec)
        missing = [s for s in spec.shards() if not rt.objects.exists(layout.trace_key(job_id, s))]
        if missing:  # a redelivered reduce of a job that grew meanwhile (or lost traces): heal, never publish
            log.warning("reduce %s: shards %s have no trace; re-enqueuing them", job_id, missing)
            for s in missing:
                _enqueue(TASK_TRAIN_SHARD, job_id, s)
            return "waiting for shards"
        rt.jobs.update(job_id, message="reducing")
        log.info("reducing %d shards", len(spec.shards()))
        _reduce(rt, job_id, spec, rec.tenant)
        return "reduced"


def _reduce(rt: Runtime, job_id: str, spec: ScoringSpec, tenant: str) -> None:
    """Merge every shard's trace and store the results. Then the job is SUCCEEDED, unless it is
    self-stopping and `next_growth` adds models: the results so far stay stored (valid for the
    models done) and the new shards are enqueued; their last one enqueues reduce again."""
    from ..engine.dynamics import anytime_fields as csr_fields
    from ..engine.membership import anytime_fields as membership_fields
    from ..engine.reliability import anytime_fields, next_growth
    from ..engine.scoring import Reducer, make_plan, prepare_dataset
    from ..engine.traces import Trace

    ds = _job_dataset(rt, spec, tenant)
    ds, flipped = prepare_dataset(ds, spec)
    reducer = Reducer(ds, spec, make_plan(ds, spec), flipped)
    for s in spec.shards():
        reducer.add(Trace.from_bytes(rt.objects.get_bytes(layout.trace_key(job_id, s))))
    result = reducer.result()
    growth = next_growth(spec, result.summary["reliability"])
    grown = replace(spec, models=spec.models + growth.add_models)
    result.summary.update(stopped_because=growth.stopped_because, final=not growth.add_models)
    result.summary["models_total"] = grown.models
    keys = {}
    for name, data in result.to_files().items():
        keys[name] = layout.result_key(job_id, name)
        rt.objects.put_bytes(keys[name], data)
    s = result.summary
    summary = {
        **{k: s[k] for k in SUMMARY_KEYS},
        "fraction_memorized": s["fraction_memorization_ge"][str(MEMORIZED_AT)],
        **_corrected_fields(s),
        **{k: s["dataset"][k] for k in ("n_train", "n_test")},  # bounds of GetExample / StreamInfluence
        **anytime_fields(s["reliability"]),
        **membership_fields(s["membership_inference"]),
        **csr_fields(s.get("critical_sample_ratio")),
    }
    if not growth.add_models:
        rt.jobs.update(job_id, state="SUCCEEDED", results=keys, eta_s=0.0, message=growth.message, summary=summary)
        return
    _grow(rt, job_id, spec, grown, growth.message, results=keys, summary=summary)


def _corrected_fields(s: dict) -> dict:
    """The honest versions of the headline figures, for the job record (AnytimeSummary)."""
    c = (s.get("fraction_memorization_ge_corrected") or {}).get(str(MEMORIZED_AT)) or {}
    return {
        "fraction_memorized_corrected": c.get("estimate"),
        "fraction_memorized_lower": c.get("lower"),
        "fraction_memorized_upper": c.get("upper"),
        "count_memorization_lower_ge_0_25": s["count_memorization_lower_ge_0_25"],
        "influence_pairs_above_threshold": s["influence_pairs_above_threshold"],
        "influence_pairs_significant": s["influence_pairs_significant"],
    }


def _grow(rt: Runtime, job_id: str, spec: ScoringSpec, grown: ScoringSpec, message: str, **fields) -> None:
    """Give the job `grown`'s models and enqueue the new shards, once: a redelivered reduce of
    the same models finds the job grown already (the job store compares model counts)."""
    rec, changed = rt.jobs.grow(
        job_id,
        spec.models,
        spec=grown.to_dict(),
        shards_total=len(grown.shards()),
        models_total=grown.models,
        eta_s=None,
        message=message,
        **fields,
    )
    if not changed:
        log.info("reduce %s: the job has grown already (%d models); nothing to add", job_id, rec.models_total)
        return
    log.info("%s", message)
    for shard in range(spec.num_shards, grown.num_shards):
        _enqueue(TASK_TRAIN_SHARD, job_id, shard)


@app.task(name=TASK_EXPOSURE, base=JobTask, bind=True)
def exposure(self, job_id: str) -> str:
    from .exposure_task import run_exposure_job

    return run_exposure_job(job_id)
