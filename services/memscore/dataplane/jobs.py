"""Jobs: submit (validate everything, store, enqueue), get, list, watch, cancel, extend, and
resume after a restart. Tasks are enqueued by name (`broker.TASK_*`): no worker code here."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from typing import Callable, Iterable

from kombu.exceptions import OperationalError

from ..broker import TASK_EXPOSURE, TASK_TRAIN_SHARD, send
from ..engine.parquet import ParquetColumns
from ..engine.spec import ScoringSpec
from ..errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from ..runtime import Runtime
from ..store import layout
from ..store.jobs import DEFAULT_TENANT, JobNotFound, JobRecord, RequestIdReused
from ..store.objects import ObjectNotFound, StoreUnavailable
from .anytime import AnytimeEstimates
from .estimates import JobEstimate
from .specs import admit_spec, check_exposure, check_scoring, dataset_meta, job_shards
from .uploads import Upload, sweep_spool
from .watch import ChangeFeed

log = logging.getLogger("memscore.dataplane")

KINDS = ("scoring", "exposure")
MAX_PAGE = 1000


def _new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:16]


def owned_job(rt: Runtime, job_id: str, tenant: str | None) -> JobRecord:
    """The job; with `tenant`, another tenant's job is NOT_FOUND exactly as a job that does not
    exist (both planes look jobs up here)."""
    try:
        rec = rt.jobs.get(job_id)
    except JobNotFound:
        rec = None
    if rec is None or (tenant is not None and rec.tenant != tenant):
        raise NotFound(f"no job {job_id[:200]!r}")
    return rec


@dataclasses.dataclass(frozen=True)
class Submission:
    """What SubmitJob answers: the job (None for a dry run), whether this call created it, and
    its cost estimate."""

    job: JobRecord | None
    created: bool
    estimate: JobEstimate


def _same_request(earlier: JobRecord, kind: str, spec: dict) -> None:
    """A request_id names one job: reused with another spec, INVALID_ARGUMENT."""
    if earlier.kind != kind or earlier.spec != spec:
        raise InvalidArgument([("request_id", f"already used for job {earlier.job_id} with a different spec")])


def check_request_id(request_id: str) -> None:
    """At most 128 printable characters (no control characters: they separate tenants' ids in
    the job store)."""
    if len(request_id) > 128:
        raise InvalidArgument([("request_id", "at most 128 characters")])
    if any(ord(c) < 32 or ord(c) == 127 for c in request_id):
        raise InvalidArgument([("request_id", "must not contain control characters")])


class ScoringPlane:
    def __init__(self, rt: Runtime, enqueue: Callable[[str, list], None] | None = None):
        self.rt = rt
        self.anytime = AnytimeEstimates(rt)
        self.changes = ChangeFeed(rt.jobs)  # what WatchJob waits on
        removed = sweep_spool(rt.settings.home)
        if removed:
            log.info("removed %d upload spool file(s) left by an earlier crash", removed)
        self._enqueue = enqueue or (lambda name, args: send(rt.celery, rt.settings, name, args))

    def start_watchdog(self):
        """Sweep for lost work every MEMSCORE_WATCHDOG_INTERVAL_S in a daemon thread, queuing
        what it finds as this plane does (see watchdog.py). Returns the event that stops it, or
        None with the watchdog switched off (interval 0)."""
        from .watchdog import Watchdog

        if self.rt.settings.watchdog_interval_s <= 0:
            return None
        return Watchdog(self.rt, self._enqueue).run()

    def submit(
        self, kind: str, spec: dict, request_id: str = "", tenant: str = DEFAULT_TENANT
    ) -> tuple[JobRecord, bool]:
        """Validate everything, store the job QUEUED for `tenant`, enqueue its tasks. Returns
        (job, created); the same request_id from the same tenant returns the same job. A tenant
        at its MEMSCORE_TENANT_MAX_ACTIVE_JOBS gets RESOURCE_EXHAUSTED."""
        done = self.submit_job(kind, spec, request_id, tenant)
        return done.job, done.created

    def submit_job(
        self, kind: str, spec: dict, request_id: str = "", tenant: str = DEFAULT_TENANT, dry_run: bool = False
    ) -> Submission:
        """`submit`, with the job's cost estimate (estimates.py). With `dry_run` every check is
        made and every error raised as for a real submit (the spec, admission, a request_id used
        for another spec, the tenant's quota), then the estimate returned: nothing is stored or
        queued, and neither the quota nor the request_id is used up."""
        if kind not in KINDS:
            raise InvalidArgument([("spec", f"must set one of: {', '.join(KINDS)}")])
        check_request_id(request_id)
        check = check_scoring if kind == "scoring" else check_exposure
        spec, shards, models, estimate = check(spec, self.rt.settings, self.rt.objects, tenant)
        earlier = self.rt.jobs.find_request(tenant, request_id) if request_id else None
        if earlier is None:
            self._check_quota(tenant)
        if dry_run:
            if earlier is not None:
                _same_request(earlier, kind, spec)
            return Submission(None, False, estimate)
        record = JobRecord(
            job_id=_new_job_id(),
            kind=kind,
            spec=spec,
            shards_total=shards,
            models_total=models,
            message="queued",
            tenant=tenant,
        )
        record, created = self.rt.jobs.create(record, request_id or None)
        if not created:
            _same_request(record, kind, spec)
            return Submission(record, False, estimate)
        self._store_and_enqueue(record)
        return Submission(record, True, estimate)

    def _check_quota(self, tenant: str) -> None:
        limit = self.rt.settings.tenant_max_active_jobs
        if self.rt.jobs.count_active(tenant) >= limit:
            raise ResourceExhausted(
                f"tenant {tenant!r} already has {limit} jobs queued or running (MEMSCORE_TENANT_MAX_ACTIVE_JOBS); "
                "wait for one to finish or cancel one"
            )

    def _store_and_enqueue(self, record: JobRecord) -> None:
        try:
            spec = {"kind": record.kind, "spec": record.spec}
            self.rt.objects.put_bytes(layout.spec_key(record.job_id), json.dumps(spec).encode())
            self._enqueue_work(record)
        except (StoreUnavailable, OSError, OperationalError) as e:  # broker or store down: leave nothing half-made
            self._forget(record.job_id)
            raise Unavailable(f"could not queue the job ({type(e).__name__}: {e}); nothing was stored, retry") from e

    def _forget(self, job_id: str) -> None:
        self.rt.jobs.delete(job_id)
        try:
            self.rt.objects.delete_prefix(layout.job_prefix(job_id))
        except (StoreUnavailable, OSError) as e:  # the store is what failed: there is nothing in it to remove
            log.warning("job %s: could not remove its objects after a failed submit: %s", job_id, e)

    def _enqueue_work(self, record: JobRecord, shards: Iterable[int] | None = None) -> None:
        if record.kind == "exposure":
            self._enqueue(TASK_EXPOSURE, [record.job_id])
            return
        for s in job_shards(record) if shards is None else shards:
            self._enqueue(TASK_TRAIN_SHARD, [record.job_id, s])

    def get(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """The job; a running scoring job carries its anytime summary from the shards so far.
        With `tenant`, another tenant's job is NOT_FOUND exactly as a job that does not exist."""
        return self._with_anytime(owned_job(self.rt, job_id, tenant))

    def _with_anytime(self, rec: JobRecord) -> JobRecord:
        if rec.kind == "scoring" and not rec.terminal and rec.shards_done > 0:
            try:
                rec.summary = {**rec.summary, **self.anytime.summary(rec)}
            except (
                StoreUnavailable,
                ObjectNotFound,
            ) as e:  # progress still answers; the estimate returns with the store
                log.warning("job %s: no anytime estimate (%s: %s)", rec.job_id, type(e).__name__, e)
        return rec

    def list(
        self, state: str | None, page_size: int, page_token: str, tenant: str | None = None
    ) -> tuple[list[JobRecord], str]:
        """One page of the tenant's jobs (every tenant's with None), newest first."""
        if page_size < 0:
            raise InvalidArgument([("page_size", f"must be >= 0 (0 = 50; above {MAX_PAGE} counts as {MAX_PAGE})")])
        try:  # AIP-158: a page size above the maximum is clamped, not refused
            return self.rt.jobs.list(
                state=state or None, page_size=min(page_size or 50, MAX_PAGE), page_token=page_token, tenant=tenant
            )
        except ValueError as e:
            raise InvalidArgument([("page_token" if "token" in str(e) else "state", str(e))]) from None

    def cancel(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """CANCELLED at once with no shard in flight; else RUNNING with cancel_requested until the
        workers stop (the job store's shard_stopped turns it CANCELLED). Terminal: unchanged."""
        owned_job(self.rt, job_id, tenant)
        return self.rt.jobs.request_cancel(job_id)

    def watch_step(self, seen: JobRecord, changed: JobRecord) -> JobRecord:
        """What a watcher shows next after `seen`, given the job's `changed` record (from
        `changes`): the anytime summary computed again when shards finished, else carried over."""
        changed = dataclasses.replace(changed)  # the feed's record may be shared by other watchers
        if changed.shards_done != seen.shards_done:
            return self._with_anytime(changed)
        changed.summary = {**changed.summary, **{k: v for k, v in seen.summary.items() if k not in changed.summary}}
        return changed

    def extend(self, job_id: str, additional_models: int, request_id: str = "", tenant: str | None = None) -> JobRecord:
        """Add models to a finished scoring job: new shards only, the old ones stay valid because
        masks are rebuilt from (seed, k). The same request id (AIP-155) on the same job returns
        the job without extending it again; reused with another count, INVALID_ARGUMENT."""
        check_request_id(request_id)
        rec = self.get(job_id, tenant)
        seen = rec.extend_requests.get(request_id) if request_id else None
        if seen is not None:
            if seen != additional_models:
                why = f"already used to extend job {job_id} by {seen} models, not {additional_models}"
                raise InvalidArgument([("request_id", why)])
            return rec
        if rec.kind != "scoring":
            raise FailedPrecondition("only scoring jobs can be extended")
        if rec.state != "SUCCEEDED":
            raise FailedPrecondition(f"job {job_id} is {rec.state}; only a SUCCEEDED job can be extended")
        spec = ScoringSpec.from_dict(rec.spec)
        g = spec.effective_shard_size
        if additional_models <= 0 or additional_models % g or spec.models % g:
            why = f"must be a positive multiple of the job's shard size {g} (and the job's models a multiple too)"
            raise InvalidArgument([("additional_models", why)])
        limit = self.rt.settings.max_models
        if spec.models + additional_models > limit:
            raise ResourceExhausted(f"{spec.models + additional_models} models exceeds the limit {limit}")
        old_shards = spec.num_shards
        spec.models += additional_models
        spec.max_models = max(spec.max_models, spec.models) if spec.max_models else 0  # a self-stopping job's cap
        try:  # the grown job must still fit the workers' time and the reduce step's memory
            meta = dataset_meta(spec.dataset, self.rt.objects, self.rt.settings, tenant, ParquetColumns.of(spec))
            admit_spec(spec, self.rt.settings, meta)
        except StoreUnavailable as e:
            raise Unavailable(f"object store unavailable: {e}") from e
        try:
            rec, extended = self.rt.jobs.reopen_once(
                job_id,
                request_id,
                additional_models,
                spec=spec.to_dict(),
                shards_total=len(spec.shards()),
                models_total=spec.models,
                message="extended",
            )
        except RequestIdReused as e:  # a concurrent call with the same id and another count won
            raise InvalidArgument([("request_id", str(e))]) from None
        except ValueError as e:  # it left SUCCEEDED meanwhile (a concurrent extend without an id)
            raise FailedPrecondition(str(e)) from None
        if extended:
            self._enqueue_work(rec, range(old_shards, spec.num_shards))
        return rec

    def resume_unfinished(self) -> int:
        """Re-enqueue the work of jobs left QUEUED/RUNNING (embedded mode after a restart: its
        in-memory queue is gone, the job store and traces are not). Returns jobs resumed."""
        resumed, token = 0, ""
        while True:
            page, token = self.rt.jobs.list(page_size=200, page_token=token)
            for rec in page:
                if rec.state in ("QUEUED", "RUNNING"):
                    self._enqueue_work(rec)  # shards with traces return at once
                    resumed += 1
            if not token:
                return resumed

    def start_upload(self, tenant: str = DEFAULT_TENANT) -> Upload:
        """An upload for `tenant` to push chunks into (see `uploads.Upload`)."""
        return Upload(self.rt, tenant)
