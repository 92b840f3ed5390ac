"""Job state: what the gateway, workers and results server share about each job.

A job is a `JobRecord`. Every change goes through one atomic read-modify-write that bumps the
record's `version`, so watchers can poll `get_many(job_ids)` cheaply (`dataplane.watch`).
Rules every backend keeps:

- `create` is idempotent per request id (AIP-155): the same request id returns the job it
  created first, `created=False`, even when many callers race.
- Terminal states (SUCCEEDED, FAILED, CANCELLED) stick: `update` on a terminal job changes
  nothing and returns the record. Only `reopen` moves a SUCCEEDED job back to QUEUED, on
  purpose (ExtendJob); `reopen_once` does it once per ExtendJob request id, which the record
  keeps (`extend_requests`).
- `grow` changes a running job only while it still has the model count the caller saw, so a
  self-stopping job that a redelivered reduce grows again grows once.
- Every job belongs to a tenant (`JobRecord.tenant`, set at create, never changed). Request
  ids are per tenant (two tenants may both send "retry-1"), `list(tenant=...)` shows one
  tenant's jobs and `count_active(tenant)` counts its QUEUED and RUNNING ones (for quotas).
- `mark_shard_done` counts each shard once, however often a redelivered task reports it.
- Cancellation waits for the shards in flight: workers bracket each shard with `shard_started`
  / `shard_stopped` (a set, `shards_running`). `request_cancel` raises the flag and, with no
  shard in flight, marks the job CANCELLED at once; otherwise the last `shard_stopped` does, so
  a CANCELLED job has no worker still training or writing for it. A shard whose worker was
  killed stays in flight until its redelivery passes through the bracket again.

Backends: `RedisJobStore` (services) and `SqliteJobStore` (embedded; a file under
MEMSCORE_HOME, safe across threads and processes). `open_job_store(settings)` picks one.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import json
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from memscore.settings import Settings

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
KINDS = ("scoring", "exposure")
MAX_PAGE_SIZE = 1000
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # safe inside object keys jobs/<id>/
# Fields only the store itself sets; `update` refuses them.
_STORE_FIELDS = frozenset(
    {
        "job_id",
        "kind",
        "request_id",
        "created_at",
        "updated_at",
        "version",
        "cancel_requested",
        "shards_done",
        "models_done",
        "shards_running",
        "extend_requests",
        "tenant",
    }
)
DEFAULT_TENANT = "default"  # what records written before tenants existed belong to
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a tenant name: safe in keys and paths
ACTIVE_STATES = ("QUEUED", "RUNNING")
CANCELLED_ERROR = "cancelled by request"


class JobNotFound(KeyError):
    """No job has this id."""


class InvalidPageToken(ValueError):
    """The page token is malformed or belongs to a different query."""


class RequestIdReused(ValueError):
    """An ExtendJob request id this job has already seen, sent with a different model count."""


@dataclass
class JobRecord:
    job_id: str
    kind: str = "scoring"  # one of KINDS
    state: str = "QUEUED"  # one of STATES
    spec: dict = field(default_factory=dict)  # ScoringSpec.to_dict() or the exposure spec
    request_id: str = ""  # the client's idempotency key; "" = none
    created_at: float = 0.0  # unix seconds; 0 = set by create
    updated_at: float = 0.0  # unix seconds of the last change
    shards_total: int = 0
    shards_done: int = 0  # distinct shards reported by mark_shard_done
    models_total: int = 0
    models_done: int = 0  # models in the shards counted in shards_done
    error: str = ""  # why the job FAILED (or was CANCELLED)
    results: dict = field(default_factory=dict)  # artifact name -> object key
    eta_s: float | None = None  # estimated seconds to completion; None = unknown
    summary: dict = field(default_factory=dict)  # anytime summary, e.g. {"mean_memorization": 0.1}
    message: str = ""  # latest human-readable progress note
    cancel_requested: bool = False
    shards_running: list[int] = field(default_factory=list)  # shards in flight (shard_started), sorted
    extend_requests: dict = field(default_factory=dict)  # ExtendJob request id -> its additional_models
    version: int = 0  # +1 on every change
    tenant: str = DEFAULT_TENANT  # who created the job; nothing of it is visible to another tenant

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "JobRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # tolerate fields from newer versions

    @classmethod
    def from_json(cls, s: str | bytes) -> "JobRecord":
        return cls.from_dict(json.loads(s))


def _check_new_record(record: JobRecord) -> None:
    if not isinstance(record.job_id, str) or not _JOB_ID.fullmatch(record.job_id):
        raise ValueError(f"job_id {record.job_id!r} must match {_JOB_ID.pattern}")
    if record.kind not in KINDS:
        raise ValueError(f"kind {record.kind!r} must be one of {', '.join(KINDS)}")
    if record.state not in STATES:
        raise ValueError(f"state {record.state!r} must be one of {', '.join(STATES)}")
    if not isinstance(record.tenant, str) or not TENANT.fullmatch(record.tenant):
        raise ValueError(f"tenant {record.tenant!r} must match {TENANT.pattern}")


def _new_record(record: JobRecord, request_id: str | None) -> JobRecord:
    """The record as first stored: checked, version 1, counters and flags reset."""
    _check_new_record(record)
    now = time.time()
    return dataclasses.replace(
        record,
        request_id=record.request_id if request_id is None else request_id,
        created_at=record.created_at or now,
        updated_at=now,
        version=1,
        shards_done=0,
        models_done=0,
        cancel_requested=False,
        shards_running=[],
    )


def _apply_update(rec: JobRecord, fields: dict[str, Any]) -> JobRecord | None:
    """The record after `update(**fields)`, or None when nothing may change (terminal)."""
    bad = sorted(set(fields) - ({f.name for f in dataclasses.fields(JobRecord)} - _STORE_FIELDS))
    if bad:
        raise ValueError(f"update cannot set {', '.join(bad)}")
    if "state" in fields and fields["state"] not in STATES:
        raise ValueError(f"state {fields['state']!r} must be one of {', '.join(STATES)}")
    if rec.terminal:
        return None
    return dataclasses.replace(rec, **fields)


def _cancelled(rec: JobRecord) -> JobRecord:
    """`rec` as a cancel leaves it once nothing of the job runs any more."""
    return dataclasses.replace(
        rec, state="CANCELLED", cancel_requested=True, error=CANCELLED_ERROR, message="cancelled", eta_s=None
    )


def _request_cancel(rec: JobRecord) -> JobRecord | None:
    if rec.terminal:
        return None
    if not rec.shards_running:
        return _cancelled(rec)
    return None if rec.cancel_requested else dataclasses.replace(rec, cancel_requested=True)


def _shard_started(rec: JobRecord, shard: int) -> JobRecord | None:
    if rec.terminal or rec.cancel_requested:  # the caller sees why in the record and does not start
        return None
    if shard in rec.shards_running and rec.state == "RUNNING":  # a redelivery of a shard in flight
        return None
    return dataclasses.replace(rec, state="RUNNING", shards_running=sorted({*rec.shards_running, shard}))


def _shard_stopped(rec: JobRecord, shard: int) -> JobRecord | None:
    if rec.terminal:
        return None
    running = [s for s in rec.shards_running if s != shard]
    if rec.cancel_requested and not running:
        return _cancelled(dataclasses.replace(rec, shards_running=running))
    return None if running == rec.shards_running else dataclasses.replace(rec, shards_running=running)


def _reopened(rec: JobRecord, fields: dict[str, Any]) -> JobRecord:
    """`rec`, a SUCCEEDED job, QUEUED again with `fields` set; any other state raises ValueError."""
    if rec.state != "SUCCEEDED":
        raise ValueError(f"only a SUCCEEDED job can be reopened; job {rec.job_id} is {rec.state}")
    new = _apply_update(dataclasses.replace(rec, state="QUEUED"), {**fields, "state": "QUEUED"})
    assert new is not None
    # Shards that reported no stop before the job SUCCEEDED are not in flight any more.
    return dataclasses.replace(new, error="", eta_s=None, cancel_requested=False, shards_running=[])


def _encode_token(created_at: float, job_id: str, state: str | None) -> str:
    raw = json.dumps([created_at, job_id, state or ""], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, state: str | None) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created_at, job_id, token_state = json.loads(raw)
        created_at = float(created_at)
        if not isinstance(job_id, str):
            raise TypeError
    except (ValueError, TypeError):
        raise InvalidPageToken("page_token is not one this server issued") from None
    if token_state != (state or ""):
        raise InvalidPageToken("page_token was issued for a different state filter")
    return created_at, job_id


def _check_list_args(state: str | None, page_size: int) -> int:
    if state is not None and state not in STATES:
        raise ValueError(f"state filter {state!r} must be one of {', '.join(STATES)}")
    if page_size < 0:
        raise ValueError("page_size must be >= 0")
    return min(page_size or 50, MAX_PAGE_SIZE)


class JobStore(abc.ABC):
    """Job records with atomic, idempotent updates."""

    @abc.abstractmethod
    def create(self, record: JobRecord, request_id: str | None = None) -> tuple[JobRecord, bool]:
        """Store a new job. With a request id (default: record.request_id) already used,
        return that job and False instead. A job id already taken raises ValueError."""

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """The record. Raises JobNotFound."""

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        """The records of those of `job_ids` that exist, in one read where the backend can."""
        out = {}
        for job_id in job_ids:
            try:
                out[job_id] = self.get(job_id)
            except JobNotFound:
                pass
        return out

    @abc.abstractmethod
    def _mutate(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord:
        """Atomically apply `change` (None = leave as is); bump version and updated_at."""

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Set fields (state, spec, shards_total, models_total, error, results, eta_s, summary,
        message). A terminal job is returned unchanged."""
        return self._mutate(job_id, lambda rec: _apply_update(rec, fields))

    def mark_shard_done(self, job_id: str, shard: int, models: int) -> JobRecord:
        """Count shard `shard` (holding `models` models) as done, once. Ignored on terminal jobs."""
        return self.count_shard(job_id, shard, models)[0]

    @abc.abstractmethod
    def count_shard(self, job_id: str, shard: int, models: int) -> tuple[JobRecord, bool]:
        """As mark_shard_done, also saying whether this call counted the shard (False for a
        repeat or a terminal job): exactly one caller sees the count reach shards_total."""

    @abc.abstractmethod
    def list(
        self, state: str | None = None, page_size: int = 50, page_token: str = "", tenant: str | None = None
    ) -> tuple[list[JobRecord], str]:
        """Jobs newest first (by created_at, then job id), optionally in one state and of one
        tenant (None = every tenant's). Returns the page and the token of the next page ("" at
        the end). page_size 0 = 50, at most 1000."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot be reached (for Health); return quickly otherwise."""

    @abc.abstractmethod
    def count_active(self, tenant: str) -> int:
        """How many of the tenant's jobs are QUEUED or RUNNING."""

    @abc.abstractmethod
    def count_by_state(self) -> dict[str, int]:
        """How many jobs (of every tenant) are in each of STATES, 0 included (for metrics)."""

    @abc.abstractmethod
    def find_request(self, tenant: str, request_id: str) -> JobRecord | None:
        """The job the tenant's `request_id` created, or None."""

    def request_cancel(self, job_id: str) -> JobRecord:
        """Raise the cancel flag. A job with no shard in flight is CANCELLED at once (error
        CANCELLED_ERROR, message "cancelled", no ETA); one with shards in flight keeps its state
        until the last of them stops (`shard_stopped`). No effect on terminal jobs."""
        return self._mutate(job_id, _request_cancel)

    def shard_started(self, job_id: str, shard: int) -> JobRecord:
        """Count `shard` in flight (once, however often a redelivered task reports it) and move
        a QUEUED job to RUNNING. A terminal job, or one whose cancel flag is up, is returned
        unchanged: the caller must not start it, and calls `shard_stopped` all the same (that
        clears the shard if a killed worker left it in flight)."""
        return self._mutate(job_id, lambda rec: _shard_started(rec, int(shard)))

    def shard_stopped(self, job_id: str, shard: int) -> JobRecord:
        """`shard` is no longer in flight (one that was not is no error). With the cancel flag up
        and nothing left in flight, the job turns CANCELLED. No effect on terminal jobs."""
        return self._mutate(job_id, lambda rec: _shard_stopped(rec, int(shard)))

    def mark_cancelled(self, job_id: str) -> JobRecord:
        """Mark the job CANCELLED now, as `request_cancel` does with nothing in flight (reduce
        does this when the flag is up). No effect on terminal jobs."""
        return self._mutate(job_id, lambda rec: None if rec.terminal else _cancelled(rec))

    def cancel_requested(self, job_id: str) -> bool:
        return self.get(job_id).cancel_requested

    def reopen(self, job_id: str, **fields: Any) -> JobRecord:
        """Move a SUCCEEDED job back to QUEUED (to train more models), setting `fields`.
        Any other state raises ValueError."""

        return self._mutate(job_id, lambda rec: _reopened(rec, fields))

    def reopen_once(
        self, job_id: str, request_id: str, additional_models: int, **fields: Any
    ) -> tuple[JobRecord, bool]:
        """`reopen` once per request id (AIP-155): the id and `additional_models` are stored with
        the job. A request id the job has seen with the same count returns the job as it is now
        and False; with another count raises RequestIdReused. An empty id is a plain reopen."""
        reopened = [False]

        def change(rec: JobRecord) -> JobRecord | None:
            reopened[0] = False
            if request_id and request_id in rec.extend_requests:
                if rec.extend_requests[request_id] != additional_models:
                    raise RequestIdReused(
                        f"request id {request_id!r} already extended job {job_id} by "
                        f"{rec.extend_requests[request_id]} models, not {additional_models}"
                    )
                return None
            new = _reopened(rec, fields)
            reopened[0] = True
            if not request_id:
                return new
            return dataclasses.replace(new, extend_requests={**rec.extend_requests, request_id: additional_models})

        rec = self._mutate(job_id, change)
        return rec, reopened[0]

    def grow(self, job_id: str, from_models: int, **fields: Any) -> tuple[JobRecord, bool]:
        """Set `fields` (as `update` does) on a job that has not ended and still has
        `models_total == from_models`: a self-stopping job adding shards. Returns (record, whether
        this call changed it); a repeat finds the job grown already and changes nothing."""
        grown = [False]

        def change(rec: JobRecord) -> JobRecord | None:
            grown[0] = not rec.terminal and rec.models_total == from_models
            return _apply_update(rec, fields) if grown[0] else None

        rec = self._mutate(job_id, change)
        return rec, grown[0]

    @abc.abstractmethod
    def incr_attempts(self, job_id: str, shard: int, by: int = 1) -> int:
        """Count one more delivery of a shard; returns the count (1 on the first). `by=-1` takes
        one back (a delivery that ended on an outage, to be retried: no crash loop)."""

    # Heartbeats (the watchdog's view of work in flight). A task is a shard number as a string,
    # or "reduce". They are kept beside the record, never in it: a beat bumps no version, so
    # WatchJob does not wake for them.

    @abc.abstractmethod
    def beat(self, job_id: str, task: str, at: float | None = None) -> None:
        """Record that `task` of the job was alive (or was queued again) at `at` (default now)."""

    @abc.abstractmethod
    def beats(self, job_id: str) -> dict[str, float]:
        """The last beat of each task of the job that has one (task -> unix seconds)."""

    @abc.abstractmethod
    def done_shards(self, job_id: str) -> set[int]:
        """The shards `mark_shard_done` has counted."""

    @abc.abstractmethod
    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease `name` for `holder` for `ttl_s` seconds; False while another
        holder's lease has not expired (one watchdog sweeps at a time, however many gateways)."""

    @abc.abstractmethod
    def delete(self, job_id: str) -> None:
        """Forget the job, its request id, shard set and attempt counts. Missing is no error."""

    def close(self) -> None:
        pass

    @abc.abstractmethod
    def describe(self) -> str: ...


# --- Redis -------------------------------------------------------------------------------


class RedisJobStore(JobStore):
    """Records as JSON strings; optimistic transactions (WATCH/MULTI) for every change.

    Keys (P = prefix): P:job:<id> record; P:req:<request id> (the default tenant's, as before
    tenants) and P:treq:<tenant>:<request id> job id; P:jobs and P:jobs:<STATE>, and per tenant
    P:tenant:<tenant>:jobs[:<STATE>], sorted sets scored by created_at; P:job:<id>:shards set,
    P:job:<id>:attempts and P:job:<id>:beats hashes; P:lease:<name> leases; P:index:tenants set
    once jobs from before tenants are in their tenant's sets. Tenant names hold no ':'
    (auth.TENANT), so no two keys collide."""

    def __init__(self, url: str, prefix: str = "memscore"):
        import redis

        self.url = url
        self.prefix = prefix
        # Bounded waits: an unreachable Redis is an error in seconds, not a call hung for minutes.
        # A pooled connection that died in an outage fails its first use after Redis returns:
        # retried twice on a fresh one (0.1 s, 0.2 s), so the heal costs no caller an error.
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self._r = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2),
            retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        )

        self._tenants_indexed = False  # see index_untenanted_jobs

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _req(self, tenant: str, request_id: str) -> str:
        return self._k("req", request_id) if tenant == DEFAULT_TENANT else self._k("treq", tenant, request_id)

    def _zsets(self, rec: JobRecord, state: str | None = None) -> list[str]:
        """The sorted sets that list `rec` (in `state`, default its own)."""
        state = state or rec.state
        return [self._k("jobs", state), self._k("tenant", rec.tenant, "jobs", state)]

    def describe(self) -> str:
        kw = self._r.connection_pool.connection_kwargs  # no password in the description
        return f"redis://{kw.get('host', '')}:{kw.get('port', '')}/{kw.get('db', 0)} prefix {self.prefix}"

    def close(self) -> None:
        self._r.close()

    def create(self, record: JobRecord, request_id: str | None = None) -> tuple[JobRecord, bool]:
        new = _new_record(record, request_id)
        request_id = new.request_id
        job_key = self._k("job", new.job_id)
        req_key = self._req(new.tenant, request_id) if request_id else None
        out: list[tuple[JobRecord, bool]] = []

        def tx(pipe) -> None:
            out.clear()
            if req_key:
                existing = pipe.get(req_key)
                if existing:
                    raw = pipe.get(self._k("job", existing))
                    if raw is not None:
                        out.append((JobRecord.from_json(raw), False))
                        return
            if pipe.exists(job_key):
                raise ValueError(f"job id {new.job_id} already exists")
            pipe.multi()
            if req_key:
                pipe.set(req_key, new.job_id)
            pipe.set(job_key, new.to_json())
            for z in (self._k("jobs"), self._k("tenant", new.tenant, "jobs"), *self._zsets(new)):
                pipe.zadd(z, {new.job_id: new.created_at})
            out.append((new, True))

        watches = [job_key] + ([req_key] if req_key else [])
        self._r.transaction(tx, *watches)
        return out[0]

    def get(self, job_id: str) -> JobRecord:
        raw = self._r.get(self._k("job", job_id))
        if raw is None:
            raise JobNotFound(job_id)
        return JobRecord.from_json(raw)

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        ids = list(job_ids)
        if not ids:
            return {}
        raws = self._r.mget([self._k("job", j) for j in ids])
        return {j: JobRecord.from_json(raw) for j, raw in zip(ids, raws) if raw is not None}

    def _write(self, pipe, old: JobRecord, new: JobRecord) -> JobRecord:
        new = dataclasses.replace(new, version=old.version + 1, updated_at=time.time())
        pipe.set(self._k("job", new.job_id), new.to_json())
        if new.state != old.state:
            for z in self._zsets(old):
                pipe.zrem(z, new.job_id)
            for z in self._zsets(new):
                pipe.zadd(z, {new.job_id: new.created_at})
        return new

    def _mutate(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord:
        job_key = self._k("job", job_id)
        out: list[JobRecord] = []

        def tx(pipe) -> None:
            out.clear()
            raw = pipe.get(job_key)
            if raw is None:
                raise JobNotFound(job_id)
            old = JobRecord.from_json(raw)
            new = change(old)
            if new is None:
                out.append(old)
                return
            pipe.multi()
            out.append(self._write(pipe, old, new))

        self._r.transaction(tx, job_key)
        return out[0]

    def count_shard(self, job_id: str, shard: int, models: int) -> tuple[JobRecord, bool]:
        job_key, shards_key = self._k("job", job_id), self._k("job", job_id, "shards")
        out: list[tuple[JobRecord, bool]] = []

        def tx(pipe) -> None:
            out.clear()
            raw = pipe.get(job_key)
            if raw is None:
                raise JobNotFound(job_id)
            old = JobRecord.from_json(raw)
            if old.terminal or pipe.sismember(shards_key, str(int(shard))):
                out.append((old, False))
                return
            pipe.multi()
            pipe.sadd(shards_key, str(int(shard)))
            new = dataclasses.replace(old, shards_done=old.shards_done + 1, models_done=old.models_done + int(models))
            out.append((self._write(pipe, old, new), True))

        self._r.transaction(tx, job_key, shards_key)
        return out[0]

    def index_untenanted_jobs(self) -> int:
        """Jobs written before tenants existed are listed only in P:jobs[:STATE]: add each job
        missing from its tenant's sets (DEFAULT_TENANT for those old records) there. Runs once
        per database (marker P:index:tenants, set after a full pass) and once per process;
        returns how many jobs it indexed."""
        marker = self._k("index", "tenants")
        if self._tenants_indexed or self._r.exists(marker):
            self._tenants_indexed = True
            return 0
        added, ids = 0, [j for j, _ in self._r.zscan_iter(self._k("jobs"))]
        for a in range(0, len(ids), 500):
            chunk = ids[a : a + 500]
            raws = self._r.mget([self._k("job", j) for j in chunk])
            recs = [JobRecord.from_json(r) for r in raws if r is not None]
            pipe = self._r.pipeline(transaction=False)
            for rec in recs:
                pipe.zscore(self._k("tenant", rec.tenant, "jobs"), rec.job_id)
            missing = [rec for rec, score in zip(recs, pipe.execute()) if score is None]
            pipe = self._r.pipeline(transaction=False)
            for rec in missing:
                pipe.zadd(self._k("tenant", rec.tenant, "jobs"), {rec.job_id: rec.created_at})
                pipe.zadd(self._k("tenant", rec.tenant, "jobs", rec.state), {rec.job_id: rec.created_at})
            pipe.execute()
            added += len(missing)
        self._r.set(marker, "1")
        self._tenants_indexed = True
        return added

    def list(
        self, state: str | None = None, page_size: int = 50, page_token: str = "", tenant: str | None = None
    ) -> tuple[list[JobRecord], str]:
        page_size = _check_list_args(state, page_size)
        after = _decode_token(page_token, state)
        if tenant is not None:
            self.index_untenanted_jobs()
        base = ("jobs",) if tenant is None else ("tenant", tenant, "jobs")
        zkey = self._k(*base, state) if state else self._k(*base)
        ids: list[tuple[str, float]] = []
        offset, batch = 0, page_size + 1
        top: float | str = after[0] if after else "+inf"
        while len(ids) <= page_size:
            rows = self._r.zrevrangebyscore(zkey, top, "-inf", start=offset, num=batch, withscores=True)
            for job_id, score in rows:
                # Ties on created_at come in descending job id order; skip those already served.
                if after and score == after[0] and job_id >= after[1]:
                    continue
                ids.append((job_id, score))
            if len(rows) < batch:
                break
            offset += batch
        ids = ids[: page_size + 1]
        page, more = ids[:page_size], len(ids) > page_size
        raws = self._r.mget([self._k("job", j) for j, _ in page]) if page else []
        records = [JobRecord.from_json(r) for r in raws if r is not None]
        token = _encode_token(page[-1][1], page[-1][0], state) if more else ""
        return records, token

    def ping(self) -> None:
        self._r.ping()

    def find_request(self, tenant: str, request_id: str) -> JobRecord | None:
        job_id = self._r.get(self._req(tenant, request_id))
        raw = self._r.get(self._k("job", job_id)) if job_id else None
        return JobRecord.from_json(raw) if raw is not None else None

    def count_active(self, tenant: str) -> int:
        self.index_untenanted_jobs()
        pipe = self._r.pipeline(transaction=False)
        for state in ACTIVE_STATES:
            pipe.zcard(self._k("tenant", tenant, "jobs", state))
        return int(sum(pipe.execute()))

    def count_by_state(self) -> dict[str, int]:
        pipe = self._r.pipeline(transaction=False)
        for state in STATES:
            pipe.zcard(self._k("jobs", state))
        return {state: int(n) for state, n in zip(STATES, pipe.execute())}

    def incr_attempts(self, job_id: str, shard: int, by: int = 1) -> int:
        if not self._r.exists(self._k("job", job_id)):
            raise JobNotFound(job_id)
        return int(self._r.hincrby(self._k("job", job_id, "attempts"), str(int(shard)), int(by)))

    def beat(self, job_id: str, task: str, at: float | None = None) -> None:
        self._r.hset(self._k("job", job_id, "beats"), str(task), repr(time.time() if at is None else float(at)))

    def beats(self, job_id: str) -> dict[str, float]:
        return {k: float(v) for k, v in self._r.hgetall(self._k("job", job_id, "beats")).items()}

    def done_shards(self, job_id: str) -> set[int]:
        return {int(s) for s in self._r.smembers(self._k("job", job_id, "shards"))}

    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        key, ms = self._k("lease", name), max(1, int(ttl_s * 1000))
        if self._r.set(key, holder, nx=True, px=ms):
            return True
        # Renew only our own lease: compare and extend in one step.
        renew = (
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
        )
        return bool(self._r.eval(renew, 1, key, holder, ms))

    def delete(self, job_id: str) -> None:
        raw = self._r.get(self._k("job", job_id))
        if raw is None:
            return
        rec = JobRecord.from_json(raw)
        pipe = self._r.pipeline(transaction=True)
        if rec.request_id:
            pipe.delete(self._req(rec.tenant, rec.request_id))
        pipe.delete(
            self._k("job", job_id),
            self._k("job", job_id, "shards"),
            self._k("job", job_id, "attempts"),
            self._k("job", job_id, "beats"),
        )
        pipe.zrem(self._k("jobs"), job_id)
        pipe.zrem(self._k("tenant", rec.tenant, "jobs"), job_id)
        for s in STATES:
            for z in self._zsets(rec, s):
                pipe.zrem(z, job_id)
        pipe.execute()


# --- SQLite ------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,            -- NULL when the client sent none; see _request_key
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    record TEXT NOT NULL               -- JobRecord as JSON
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_by_state_time ON jobs (state, created_at, job_id);
CREATE TABLE IF NOT EXISTS shards (job_id TEXT NOT NULL, shard INTEGER NOT NULL, PRIMARY KEY (job_id, shard));
CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL, shard INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (job_id, shard)
);
CREATE TABLE IF NOT EXISTS beats (
    job_id TEXT NOT NULL, task TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (job_id, task)
);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL);
"""


def _request_key(tenant: str, request_id: str) -> str:
    """The `request_id` column: the id itself for the default tenant (as before tenants),
    else NUL tenant NUL id. Request ids hold no control characters (the gateway refuses them),
    so no two tenants' ids meet."""
    return request_id if tenant == DEFAULT_TENANT else f"\0{tenant}\0{request_id}"


class SqliteJobStore(JobStore):
    """One SQLite file (or ":memory:"). Threads share one connection behind a lock; processes
    coordinate through SQLite's file locks (every change is a BEGIN IMMEDIATE transaction)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.path = str(Path(self.path).expanduser())
        self._lock = threading.RLock()
        self._connect()

    def _connect(self) -> None:
        self._pid = os.getpid()
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "tenant" not in columns:  # a file from before tenants: its jobs are the default tenant's
            try:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}'")
            except sqlite3.OperationalError as e:  # another process added it first
                if "duplicate column" not in str(e):
                    raise
        conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_tenant_time ON jobs (tenant, created_at, job_id)")
        self._conn = conn

    def _db(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:  # a connection must not cross fork (Celery prefork)
            if self.path == ":memory:":
                raise RuntimeError("an in-memory job store cannot be shared with a forked process")
            self._connect()
        return self._conn

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _transaction(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = body(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

    @staticmethod
    def _read(db: sqlite3.Connection, job_id: str) -> JobRecord:
        row = db.execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord.from_json(row[0])

    @staticmethod
    def _write(db: sqlite3.Connection, old: JobRecord, new: JobRecord) -> JobRecord:
        new = dataclasses.replace(new, version=old.version + 1, updated_at=time.time())
        db.execute("UPDATE jobs SET state = ?, record = ? WHERE job_id = ?", (new.state, new.to_json(), new.job_id))
        return new

    def create(self, record: JobRecord, request_id: str | None = None) -> tuple[JobRecord, bool]:
        new = _new_record(record, request_id)
        request_id = new.request_id

        def body(db: sqlite3.Connection) -> tuple[JobRecord, bool]:
            req = _request_key(new.tenant, request_id) if request_id else None
            if req:
                row = db.execute("SELECT record FROM jobs WHERE request_id = ?", (req,)).fetchone()
                if row is not None:
                    return JobRecord.from_json(row[0]), False
            if db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (new.job_id,)).fetchone():
                raise ValueError(f"job id {new.job_id} already exists")
            db.execute(
                "INSERT INTO jobs (job_id, request_id, state, created_at, record, tenant) VALUES (?, ?, ?, ?, ?, ?)",
                (new.job_id, req, new.state, new.created_at, new.to_json(), new.tenant),
            )
            return new, True

        return self._transaction(body)

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            return self._read(self._db(), job_id)

    def _mutate(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord:
        def body(db: sqlite3.Connection) -> JobRecord:
            old = self._read(db, job_id)
            new = change(old)
            return old if new is None else self._write(db, old, new)

        return self._transaction(body)

    def count_shard(self, job_id: str, shard: int, models: int) -> tuple[JobRecord, bool]:
        def body(db: sqlite3.Connection) -> tuple[JobRecord, bool]:
            old = self._read(db, job_id)
            if old.terminal:
                return old, False
            cur = db.execute("INSERT OR IGNORE INTO shards (job_id, shard) VALUES (?, ?)", (job_id, int(shard)))
            if cur.rowcount == 0:
                return old, False
            new = dataclasses.replace(old, shards_done=old.shards_done + 1, models_done=old.models_done + int(models))
            return self._write(db, old, new), True

        return self._transaction(body)

    def list(
        self, state: str | None = None, page_size: int = 50, page_token: str = "", tenant: str | None = None
    ) -> tuple[list[JobRecord], str]:
        page_size = _check_list_args(state, page_size)
        after = _decode_token(page_token, state)
        where, args = [], []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if state:
            where.append("state = ?")
            args.append(state)
        if after:
            where.append("(created_at < ? OR (created_at = ? AND job_id < ?))")
            args += [after[0], after[0], after[1]]
        sql = "SELECT record FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, job_id DESC LIMIT ?"
        with self._lock:
            rows = self._db().execute(sql, (*args, page_size + 1)).fetchall()
        records = [JobRecord.from_json(r[0]) for r in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            token = _encode_token(records[-1].created_at, records[-1].job_id, state)
        return records, token

    def ping(self) -> None:
        with self._lock:
            self._db().execute("SELECT 1").fetchone()

    def find_request(self, tenant: str, request_id: str) -> JobRecord | None:
        with self._lock:
            row = (
                self._db()
                .execute("SELECT record FROM jobs WHERE request_id = ?", (_request_key(tenant, request_id),))
                .fetchone()
            )
        return JobRecord.from_json(row[0]) if row else None

    def count_active(self, tenant: str) -> int:
        marks = ", ".join("?" * len(ACTIVE_STATES))
        sql = f"SELECT COUNT(*) FROM jobs WHERE tenant = ? AND state IN ({marks})"
        with self._lock:
            return int(self._db().execute(sql, (tenant, *ACTIVE_STATES)).fetchone()[0])

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._db().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {**dict.fromkeys(STATES, 0), **{state: int(n) for state, n in rows}}

    def incr_attempts(self, job_id: str, shard: int, by: int = 1) -> int:
        def body(db: sqlite3.Connection) -> int:
            self._read(db, job_id)
            db.execute(
                "INSERT INTO attempts (job_id, shard, n) VALUES (?, ?, ?) "
                "ON CONFLICT (job_id, shard) DO UPDATE SET n = n + excluded.n",
                (job_id, int(shard), int(by)),
            )
            return int(
                db.execute("SELECT n FROM attempts WHERE job_id = ? AND shard = ?", (job_id, int(shard))).fetchone()[0]
            )

        return self._transaction(body)

    def beat(self, job_id: str, task: str, at: float | None = None) -> None:
        sql = (
            "INSERT INTO beats (job_id, task, at) VALUES (?, ?, ?) "
            "ON CONFLICT (job_id, task) DO UPDATE SET at = excluded.at"
        )
        self._transaction(lambda db: db.execute(sql, (job_id, str(task), time.time() if at is None else float(at))))

    def beats(self, job_id: str) -> dict[str, float]:
        with self._lock:
            return dict(self._db().execute("SELECT task, at FROM beats WHERE job_id = ?", (job_id,)).fetchall())

    def done_shards(self, job_id: str) -> set[int]:
        with self._lock:
            return {r[0] for r in self._db().execute("SELECT shard FROM shards WHERE job_id = ?", (job_id,))}

    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            now = time.time()
            row = db.execute("SELECT holder, until FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            db.execute(
                "INSERT OR REPLACE INTO leases (name, holder, until) VALUES (?, ?, ?)", (name, holder, now + ttl_s)
            )
            return True

        return self._transaction(body)

    def delete(self, job_id: str) -> None:
        def body(db: sqlite3.Connection) -> None:
            for table in ("jobs", "shards", "attempts", "beats"):
                db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))

        self._transaction(body)


def open_job_store(settings: "Settings | None" = None) -> JobStore:
    """Redis when MEMSCORE_REDIS_URL is set, else SQLite at $MEMSCORE_HOME/jobs.sqlite3."""
    if settings is None:
        from memscore.settings import Settings

        settings = Settings()
    if settings.redis_url:
        return RedisJobStore(settings.redis_url)
    return SqliteJobStore(Path(settings.home).expanduser() / "jobs.sqlite3")
