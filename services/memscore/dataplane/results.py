"""Results: ranked examples, influence pairs, artifacts and exposure of a job: final (from
results/) or, for a running scoring job, anytime estimates from the traces stored so far."""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from ..datarefs import load_job_dataset
from ..engine.catalog import RANK_METRICS, SCORE_COLUMNS
from ..engine.datasets import flip_labels
from ..engine.estimators import label_quality
from ..engine.parquet import ParquetColumns
from ..engine.spec import ScoringSpec
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..runtime import Runtime
from ..store import layout
from ..store.jobs import JobRecord
from ..store.objects import StoreUnavailable
from .anytime import AnytimeEstimates
from .jobs import MAX_PAGE, owned_job
from .queries import query_points

log = logging.getLogger("memscore.dataplane")

DEFAULT_PAGE = 100


@dataclass(frozen=True)
class Scores:
    """One consistent view of a job's per-example scores."""

    columns: dict[str, np.ndarray]
    final: bool  # the job's final results, or an anytime estimate
    models: int  # models the scores are based on


@dataclass(frozen=True)
class RankedPage:
    rows: list[dict]
    next_page_token: str  # "" after the last page
    final: bool
    models: int


def _encode_token(payload: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, sort_keys=True).encode()).decode()


def _decode_token(token: str, query: dict) -> int:
    """The offset a page token resumes at; INVALID_ARGUMENT for anything we did not issue."""
    try:
        tok = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeError):
        raise InvalidArgument([("page_token", "malformed page token")]) from None
    offset = tok.get("offset") if isinstance(tok, dict) else None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidArgument([("page_token", "malformed page token")])
    if tok.get("q") != query:
        raise InvalidArgument([("page_token", "belongs to a different query")])
    return offset


class ResultsPlane:
    def __init__(self, rt: Runtime, cache_size: int = 8):
        self.rt = rt
        self.anytime = AnytimeEstimates(rt)
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.cache_size = cache_size

    def _job(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """The job; with `tenant`, another tenant's job is NOT_FOUND as one that does not exist."""
        return owned_job(self.rt, job_id, tenant)

    def _cached(self, key, build):
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = build()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value

    def scores(self, job_id: str, tenant: str | None = None) -> Scores:
        """The per-example score columns: final, or an anytime snapshot of the shards so far."""
        rec = self._job(job_id, tenant)
        if rec.kind != "scoring":
            raise FailedPrecondition(f"job {job_id} is an {rec.kind} job; use its exposure results")
        if rec.state == "SUCCEEDED":
            key = layout.result_key(job_id, "scores.parquet")
            cols = self._cached(
                ("final", job_id, rec.version), lambda: _complete(read_parquet(self.rt.objects.get_bytes(key)))
            )
            return Scores(cols, True, _models(cols))
        if rec.state == "FAILED":
            raise FailedPrecondition(f"job {job_id} FAILED: {rec.error}")
        snap = self.anytime.snapshot(rec)
        if snap is None:
            raise FailedPrecondition(f"job {job_id} is {rec.state} and no shard has finished yet; try again later")

        def build():
            n = len(snap.scores["n_in"])
            labels = self._labels(rec)
            quality = label_quality(snap.heldout_probs, labels, n)
            # the membership attack runs at the reduce only: its columns are "no estimate" here
            return _complete({"index": np.arange(n, dtype=np.int64), "label": labels, **snap.scores, **quality})

        return Scores(self._cached(("anytime", job_id, snap.shards), build), False, snap.models)

    def _labels(self, rec: JobRecord) -> np.ndarray:
        """The training labels the job trains on (label noise applied), as in scores.parquet."""
        spec = ScoringSpec.from_dict(rec.spec)

        def build():
            settings = self.rt.settings
            ds = load_job_dataset(
                spec.dataset,
                self.rt.objects,
                settings.data_roots,
                rec.tenant,
                uris=settings.data_uris,
                columns=ParquetColumns.of(spec),
                max_bytes=settings.max_decompressed_bytes,
            )
            if spec.label_noise > 0:
                ds, _ = flip_labels(ds, spec.label_noise, spec.seed)
            return ds.y_train.astype(np.int64)

        return self._cached(("labels", rec.job_id), build)

    def ranked(
        self,
        job_id: str,
        metric: str = "memorization",
        descending: bool = True,
        classes: Iterable[int] = (),
        min_score: float | None = None,
        max_score: float | None = None,
        limit: int = 0,
        page_size: int = DEFAULT_PAGE,
        page_token: str = "",
        tenant: str | None = None,
    ) -> Iterator[RankedPage]:
        """Pages of `page_size` examples ranked by `metric`, from one snapshot of the scores,
        until `limit` examples or the end; NaN scores (no estimate) rank last. Arguments are
        checked before the first page is produced."""
        problems = []
        if metric not in RANK_METRICS:
            problems.append(("metric", f"unknown metric {metric!r}; choose one of {', '.join(RANK_METRICS)}"))
        if page_size < 0 or page_size > MAX_PAGE:
            problems.append(("page_size", f"must be between 0 and {MAX_PAGE}"))
        if limit < 0:
            problems.append(("limit", "must be >= 0"))
        for name, bound in (("min_score", min_score), ("max_score", max_score)):
            if bound is not None and math.isnan(bound):  # no score compares with NaN: nothing would match
                problems.append((name, "must be a number (unset = no bound), got NaN"))
        if problems:
            raise InvalidArgument(problems)
        classes = sorted(set(int(c) for c in classes))
        query = {
            "job": job_id,
            "metric": metric,
            "desc": descending,
            "classes": classes,
            "min": min_score,
            "max": max_score,
            "limit": limit,
        }
        offset = _decode_token(page_token, query) if page_token else 0
        snap = self.scores(job_id, tenant)
        cols = snap.columns
        order = self._cached(
            ("order", job_id, id(cols), json.dumps(query)),
            lambda: _rank(cols, metric, descending, classes, min_score, max_score),
        )
        return self._pages(snap, order[:limit] if limit else order, offset, page_size or DEFAULT_PAGE, query)

    def _pages(self, snap: Scores, order: np.ndarray, offset: int, size: int, query: dict) -> Iterator[RankedPage]:
        while True:
            page = order[offset : offset + size]
            nxt = _encode_token({"q": query, "offset": offset + size}) if offset + size < len(order) else ""
            rows = [_row(snap.columns, int(i), offset + r + 1) for r, i in enumerate(page)]
            yield RankedPage(rows, nxt, snap.final, snap.models)
            if not nxt:
                return
            offset += size

    def example(self, job_id: str, index: int, tenant: str | None = None) -> tuple[dict, bool]:
        snap = self.scores(job_id, tenant)
        n = len(snap.columns["index"])
        if not 0 <= index < n:
            raise InvalidArgument([("index", f"must be in 0..{n - 1}, got {index}")])
        return _row(snap.columns, index, 0), snap.final

    def _influence_table(self, job_id: str, tenant: str | None) -> tuple[JobRecord, dict[str, np.ndarray]]:
        rec = self._job(job_id, tenant)
        if rec.kind != "scoring":  # an exposure job has no influence.parquet
            raise FailedPrecondition(f"job {job_id} is an {rec.kind} job; influence is computed by scoring jobs")
        if rec.state != "SUCCEEDED":
            raise FailedPrecondition(f"job {job_id} is {rec.state}; influence is computed when the job SUCCEEDED")
        key = layout.result_key(job_id, "influence.parquet")
        return rec, self._cached(
            ("influence", job_id, rec.version), lambda: _with_significance(read_parquet(self.rt.objects.get_bytes(key)))
        )

    def _summary(self, rec: JobRecord) -> dict:
        key = layout.result_key(rec.job_id, "summary.json")
        return self._cached(("summary", rec.job_id, rec.version), lambda: json.loads(self.rt.objects.get_bytes(key)))

    def influence_of_train(self, job_id: str, index: int, limit: int = 10, tenant: str | None = None) -> list[dict]:
        """The stored pairs in which training example `index` is the influencer, strongest first."""
        _, cols = self._influence_table(job_id, tenant)
        sel = np.nonzero(cols["train_index"] == index)[0]
        sel = sel[np.argsort(-cols["influence"][sel], kind="stable")][:limit]
        return [{c: cols[c][i].item() for c in cols} for i in sel]

    def influence(
        self,
        job_id: str,
        test_index: int | None = None,
        limit: int = 100,
        significant_only: bool = False,
        tenant: str | None = None,
    ) -> list[dict]:
        """Global pairs above the threshold (or, significant_only, the significant pairs),
        strongest first; or test example `test_index`'s top-k training examples (significant_only:
        those of them that are significant)."""
        if limit < 0:
            raise InvalidArgument([("limit", f"must be >= 0 (0 = the default), got {limit}")])
        rec, cols = self._influence_table(job_id, tenant)
        if test_index is None:
            sel = np.nonzero(cols["significant"] if significant_only else cols["above_threshold"])[0]
            sel = sel[np.argsort(-cols["influence"][sel], kind="stable")]
        else:
            m = rec.summary.get("n_test") or self._summary(rec)["dataset"]["n_test"]  # older jobs: summary.json
            if not 0 <= test_index < m:
                raise InvalidArgument([("test_index", f"must be in 0..{m - 1}, got {test_index}")])
            keep = (cols["test_index"] == test_index) & (cols["topk_rank"] > 0)
            sel = np.nonzero(keep & cols["significant"] if significant_only else keep)[0]
            sel = sel[np.argsort(cols["topk_rank"][sel], kind="stable")]
        if limit:
            sel = sel[:limit]
        return [{c: cols[c][i].item() for c in cols} for i in sel]

    def query_influence(
        self, job_id: str, examples_npz: bytes, top_k: int = 10, tenant: str | None = None
    ) -> list[dict]:
        """Most influential training examples of new points `x` (labels `y`) in an .npz, from
        the job's stored checkpoints (jobs run with keep_checkpoints). Loads the engine's model
        code (torch) on first use: the only call of this server that needs it."""
        rec = self._job(job_id, tenant)
        if rec.kind != "scoring" or rec.state != "SUCCEEDED":
            raise FailedPrecondition(
                f"job {job_id} is a {rec.state} {rec.kind} job; influence queries need a SUCCEEDED scoring job"
            )
        spec = ScoringSpec.from_dict(rec.spec)
        if not spec.keep_checkpoints:
            raise FailedPrecondition(f"job {job_id} did not keep its checkpoints; submit it with keep_checkpoints=true")
        if not 1 <= top_k <= 1000:
            raise InvalidArgument([("top_k", "must be between 1 and 1000")])
        summary = self._summary(rec)
        info = summary["dataset"]
        x, y = query_points(examples_npz, tuple(info["feature_shape"]), info["num_classes"])
        from ..engine.query import query_influence  # torch: only here

        blobs = (self.rt.objects.get_bytes(layout.checkpoint_key(job_id, s)) for s in range(spec.num_shards))
        res = query_influence(
            summary["arch"], tuple(info["feature_shape"]), info["num_classes"], info["n_train"],
            spec.ratio, spec.seed, blobs, x, y, top_k, spec.plan,
        )  # fmt: skip
        labels = self._labels(rec)
        return [
            {"train_index": int(i), "test_index": q, "influence": float(v), "train_label": int(labels[i]),
             "test_label": int(y[q])}
            for q in range(len(x))
            for i, v in zip(res.topk_train[q], res.topk_value[q])
            if i >= 0
        ]  # fmt: skip

    def artifact(self, job_id: str, name: str, tenant: str | None = None) -> tuple[str, Iterator[bytes], int]:
        rec = self._job(job_id, tenant)
        key = rec.results.get(name)
        if key is None:
            if rec.state != "SUCCEEDED":
                raise FailedPrecondition(f"job {job_id} is {rec.state}; artifacts exist once it SUCCEEDED")
            raise NotFound(f"job {job_id} has no artifact {name!r}; it has: {', '.join(sorted(rec.results))}")
        try:
            url = self.rt.objects.presigned_get_url(key) if self.rt.objects.presigns_for_clients else ""
        except StoreUnavailable as e:  # the bytes still stream; only the shortcut is missing
            log.warning("job %s: no presigned URL for %s: %s", job_id, name, e)
            url = ""
        return url, self.rt.objects.iter_chunks(key), self.rt.objects.size(key)

    def exposure(self, job_id: str, tenant: str | None = None) -> tuple[list[dict], dict]:
        rec = self._job(job_id, tenant)
        if rec.kind != "exposure":
            raise FailedPrecondition(f"job {job_id} is a {rec.kind} job")
        if rec.state != "SUCCEEDED":
            raise FailedPrecondition(f"job {job_id} is {rec.state}; exposure results exist once it SUCCEEDED")
        cols = read_parquet(self.rt.objects.get_bytes(layout.result_key(job_id, "exposure.parquet")))
        n = len(next(iter(cols.values()))) if cols else 0
        rows = [{c: _py(cols[c][i]) for c in cols} for i in range(n)]
        return rows, self._summary(rec)


def read_parquet(data: bytes) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(io.BytesIO(data))
    return {name: t.column(name).to_numpy(zero_copy_only=False) for name in t.column_names}


def _with_significance(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """influence.parquet as now: files written before significance have no `significant`
    (read as False), `influence_pvalue` (NaN) or, older still, `influence_stderr` (NaN)."""
    n = len(cols["train_index"])
    cols.setdefault("significant", np.zeros(n, bool))
    cols.setdefault("influence_pvalue", np.full(n, np.nan))
    cols.setdefault("influence_stderr", np.full(n, np.nan, np.float32))
    return cols


def _models(cols: dict[str, np.ndarray]) -> int:
    return int(cols["n_in"][0] + cols["n_out"][0]) if len(cols["n_in"]) else 0


def _rank(cols, metric, descending, classes, lo, hi) -> np.ndarray:
    v = cols[metric].astype(np.float64)
    keep = np.ones(len(v), bool)
    if classes:
        keep &= np.isin(cols["label"], classes)
    if lo is not None:
        keep &= v >= lo
    if hi is not None:
        keep &= v <= hi
    idx = np.nonzero(keep)[0]
    vals = v[idx]
    nan = np.isnan(vals)
    key = np.where(nan, 0.0, -vals if descending else vals)
    return idx[np.lexsort((idx, key, nan))]  # NaN last (+inf is a value), ties by index: pages are stable


def _py(v):
    return v.item() if hasattr(v, "item") else v


def _complete(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Score columns a source lacks (a job reduced by an older memscore, an anytime snapshot's
    membership columns), as "no estimate" (NaN; -1 for a class; False for `critical`)."""
    n = len(cols["index"])
    for c in SCORE_COLUMNS:
        if c not in cols:
            cols[c] = np.full(n, *_NO_ESTIMATE.get(c, (np.nan, np.float64)))
    return cols


# The "no estimate" value of the columns that are not floats (NaN for the rest).
_NO_ESTIMATE = {"predicted_label_heldout": (-1, np.int64), "critical": (False, bool)}


def _row(cols, i: int, rank: int) -> dict:
    row = {c: _py(cols[c][i]) for c in cols}
    row["rank"] = rank
    return row
