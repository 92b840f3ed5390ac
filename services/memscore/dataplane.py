"""What the gateway and results servers do, without gRPC (KServe's "data plane").

The servicers in gateway/ and results/ only translate protobuf to these calls and back; domain
errors (memscore.errors) become status codes in one interceptor. Nothing here imports torch:
scores come from parquet files, or, for running jobs, from traces merged with numpy.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from typing import Callable, Iterable, Iterator

import numpy as np
from kombu.exceptions import OperationalError

from .engine.spec import ScoringSpec
from .errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from .runtime import Runtime
from .store import layout
from .store.jobs import JobNotFound, JobRecord
from .store.objects import ObjectNotFound, StoreUnavailable

KINDS = ("scoring", "exposure")
METRICS = (
    "memorization",
    "memorization_soft",
    "in_sample_accuracy",
    "heldout_accuracy",
    "memorization_stderr",
    "memorization_soft_stderr",
)
MAX_PAGE = 1000
BUILTIN_SHAPES = {"mnist1d": (40,), "digits": (1, 8, 8), "longtail": (1, 16, 16)}  # engine/datasets.py


class AnytimeEstimates:
    """Scores of a running job from the shards done so far. One streaming accumulator per job,
    to which each newly finished shard is added once, so asking again costs only the new
    shards' traces."""

    def __init__(self, rt: Runtime, max_jobs: int = 16):
        self.rt = rt
        self.max_jobs = max_jobs
        self._jobs: OrderedDict = OrderedDict()  # job_id -> (ScoreAccumulator, set of shards)
        self._lock = threading.Lock()

    def shards_available(self, rec: JobRecord) -> list[int]:
        keys = self.rt.objects.list(layout.shard_prefix(rec.job_id))
        return sorted(s for s in (layout.shard_of_trace_key(k) for k in keys) if s is not None and s < rec.shards_total)

    def snapshot(self, rec: JobRecord) -> tuple[dict[str, np.ndarray], float, frozenset] | None:
        """(per-example scores, mean member test accuracy, shards merged) over every stored
        trace of the job, or None before the first shard finishes."""
        from .engine.estimators import ScoreAccumulator
        from .engine.traces import Trace

        shards = self.shards_available(rec)
        with self._lock:  # one reader per process folds in new shards; the others wait for it
            acc, seen = self._jobs.pop(rec.job_id, (None, set()))
            try:
                for s in shards:
                    if s in seen:
                        continue
                    t = Trace.from_bytes(self.rt.objects.get_bytes(layout.trace_key(rec.job_id, s)))
                    if acc is None:
                        acc = ScoreAccumulator(t.masks.shape[1], t.test_correct.shape[1])
                    acc.add(t)
                    seen.add(s)
            finally:
                if acc is not None:
                    self._jobs[rec.job_id] = (acc, seen)
                    while len(self._jobs) > self.max_jobs:
                        self._jobs.popitem(last=False)
            if acc is None:
                return None
            return acc.scores(), float(np.mean(list(acc.test_accuracy.values()))), frozenset(seen)

    def summary(self, rec: JobRecord) -> dict:
        """The job's anytime summary: models so far, mean memorization, fraction memorized
        (mem >= 0.25), mean member test accuracy."""
        snap = self.snapshot(rec)
        if snap is None:
            return {}
        scores, test_acc, _ = snap
        mem = scores["memorization"]
        finite = mem[np.isfinite(mem)]
        return {
            "models_done": int(scores["n_in"][0] + scores["n_out"][0]),
            "mean_memorization": float(finite.mean()) if len(finite) else 0.0,
            "fraction_memorized": float((finite >= 0.25).mean()) if len(finite) else 0.0,
            "mean_test_accuracy": test_acc,
        }


def _new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:16]


class ScoringPlane:
    def __init__(self, rt: Runtime, enqueue: Callable[[str, list], None] | None = None):
        self.rt = rt
        self.anytime = AnytimeEstimates(rt)
        self._enqueue = enqueue or (lambda name, args: rt.celery.send_task(name, args=args, queue=rt.settings.queue))

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, kind: str, spec: dict, request_id: str = "") -> tuple[JobRecord, bool]:
        """Validate everything, store the job QUEUED, enqueue its tasks. Returns (job, created);
        the same request_id returns the same job."""
        if kind not in KINDS:
            raise InvalidArgument([("spec", f"must set one of: {', '.join(KINDS)}")])
        if len(request_id) > 128:
            raise InvalidArgument([("request_id", "at most 128 characters")])
        if kind == "scoring":
            spec, shards, models = self._check_scoring(spec)
        else:
            spec, shards, models = self._check_exposure(spec)
        record = JobRecord(
            job_id=_new_job_id(), kind=kind, spec=spec, shards_total=shards, models_total=models, message="queued"
        )
        record, created = self.rt.jobs.create(record, request_id or None)
        if not created:
            if record.kind != kind or record.spec != spec:
                raise InvalidArgument([("request_id", f"already used for job {record.job_id} with a different spec")])
            return record, False
        try:
            self.rt.objects.put_bytes(layout.spec_key(record.job_id), json.dumps({"kind": kind, "spec": spec}).encode())
            self._enqueue_work(record)
        except (StoreUnavailable, OSError, OperationalError) as e:  # broker or store down: leave nothing half-made
            self.rt.jobs.delete(record.job_id)
            try:
                self.rt.objects.delete_prefix(layout.job_prefix(record.job_id))
            except (StoreUnavailable, OSError):
                pass  # the store is what failed: there is nothing in it to remove
            raise Unavailable(f"could not queue the job ({type(e).__name__}: {e}); nothing was stored, retry") from e
        return record, True

    def _enqueue_work(self, record: JobRecord, shards: Iterable[int] | None = None) -> None:
        from .worker.app import TASK_EXPOSURE, TASK_TRAIN_SHARD

        if record.kind == "exposure":
            self._enqueue(TASK_EXPOSURE, [record.job_id])
            return
        for s in range(record.shards_total) if shards is None else shards:
            self._enqueue(TASK_TRAIN_SHARD, [record.job_id, s])

    def _check_scoring(self, spec: dict) -> tuple[dict, int, int]:
        from .worker.inputs import check_dataset_ref

        try:
            s = ScoringSpec.from_dict(spec)
        except (TypeError, ValueError) as e:
            raise InvalidArgument([("spec.scoring", str(e))]) from None
        limit = self.rt.settings.max_models
        if s.models > limit:
            raise ResourceExhausted(
                f"spec.scoring.models: {s.models} models exceeds this server's limit of {limit} (MEMSCORE_MAX_MODELS)"
            )
        problems = [(f"spec.scoring.{f}", m) for f, m in s.validate(max_models=limit)]
        if s.dataset:
            try:
                why = check_dataset_ref(s.dataset, self.rt.objects)
            except StoreUnavailable as e:
                raise Unavailable(f"object store unavailable: {e}") from e
            if why:
                problems.append(("spec.scoring.dataset", why))
            else:
                problems += self._check_dataset_fits(s)
        if problems:
            raise InvalidArgument(problems)
        s.shard_size = s.effective_shard_size  # fixed at submit: model k's shard never changes
        return s.to_dict(), s.num_shards, s.models

    def _dataset_meta(self, ref: str) -> dict | None:
        """What the gateway knows of a dataset without loading it: built-ins' shapes, and the
        facts recorded at upload. None for a path on the server (checked by the worker)."""
        if ref in BUILTIN_SHAPES:
            return {"feature_shape": BUILTIN_SHAPES[ref], "n_train": 0}
        if not layout.is_dataset_key(ref):
            return None
        try:
            return json.loads(self.rt.objects.get_bytes(ref + ".meta.json"))
        except ObjectNotFound:
            return None

    def _check_dataset_fits(self, s: ScoringSpec) -> list[tuple[str, str]]:
        """The dataset's size is within limits and the model takes its shape."""
        meta = self._dataset_meta(s.dataset)
        if meta is None:
            return []
        if meta.get("n_train", 0) > self.rt.settings.max_train_examples:
            raise ResourceExhausted(
                f"spec.scoring.dataset: {meta['n_train']} training examples exceeds this server's limit of "
                f"{self.rt.settings.max_train_examples} (MEMSCORE_MAX_TRAIN_EXAMPLES)"
            )
        shape = tuple(meta.get("feature_shape") or ())
        takes = {"cnn1d": (1, 2), "resnet": (3,)}.get(s.model)
        if shape and takes and len(shape) not in takes:
            need = "(L,) or (c, L) sequences" if s.model == "cnn1d" else "(c, h, w) images"
            return [("spec.scoring.model", f"{s.model} takes {need}; this dataset's examples have shape {shape}")]
        return []

    def _check_exposure(self, spec: dict) -> tuple[dict, int, int]:
        from .engine.spec import ExposureSpec

        try:
            s = ExposureSpec.from_dict(spec)
        except (TypeError, ValueError) as e:
            raise InvalidArgument([("spec.exposure", str(e))]) from None
        problems = [(f"spec.exposure.{f}", m) for f, m in s.validate()]
        if s.corpus not in ("", "builtin") and not (
            (layout.is_dataset_key(s.corpus) and self.rt.objects.exists(s.corpus)) or os.path.exists(s.corpus)
        ):
            problems.append(
                (
                    "spec.exposure.corpus",
                    f"{s.corpus!r} is neither 'builtin', an uploaded datasets/<sha256>.txt, nor a path on the server",
                )
            )
        if problems:
            raise InvalidArgument(problems)
        return s.to_dict(), 1, 1

    def get(self, job_id: str) -> JobRecord:
        """The job; a running scoring job carries its anytime summary from the shards so far."""
        try:
            rec = self.rt.jobs.get(job_id)
        except JobNotFound:
            raise NotFound(f"no job {job_id!r}") from None
        return self._with_anytime(rec)

    def _with_anytime(self, rec: JobRecord) -> JobRecord:
        if rec.kind == "scoring" and not rec.terminal and rec.shards_done > 0:
            try:
                rec.summary = {**rec.summary, **self.anytime.summary(rec)}
            except (StoreUnavailable, ObjectNotFound):
                pass  # progress still answers; the estimate returns with the store
        return rec

    def list(self, state: str | None, page_size: int, page_token: str) -> tuple[list[JobRecord], str]:
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidArgument([("page_size", f"must be between 0 and {MAX_PAGE}")])
        try:
            return self.rt.jobs.list(state=state or None, page_size=page_size or 50, page_token=page_token)
        except ValueError as e:
            raise InvalidArgument([("page_token" if "token" in str(e) else "state", str(e))]) from None

    def cancel(self, job_id: str) -> JobRecord:
        self.get(job_id)
        rec = self.rt.jobs.request_cancel(job_id)
        if not rec.terminal:
            rec = self.rt.jobs.update(
                job_id, state="CANCELLED", error="cancelled by request", eta_s=None, message="cancelled"
            )
        return rec

    def watch(
        self, job_id: str, poll_timeout_s: float = 5.0, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[JobRecord]:
        """Yield the job now, then on every change, until it reaches a terminal state."""
        rec = self.get(job_id)
        yield rec
        while not rec.terminal and is_active():
            nxt = self.rt.jobs.wait_for_change(job_id, rec.version, poll_timeout_s)
            if nxt.version != rec.version:
                if nxt.shards_done != rec.shards_done:
                    nxt = self._with_anytime(nxt)
                else:
                    nxt.summary = {**nxt.summary, **{k: v for k, v in rec.summary.items() if k not in nxt.summary}}
                rec = nxt
                yield rec

    def extend(self, job_id: str, additional_models: int) -> JobRecord:
        """Add models to a finished scoring job: new shards only, the old ones stay valid because
        masks are rebuilt from (seed, k)."""
        rec = self.get(job_id)
        if rec.kind != "scoring":
            raise FailedPrecondition("only scoring jobs can be extended")
        if rec.state != "SUCCEEDED":
            raise FailedPrecondition(f"job {job_id} is {rec.state}; only a SUCCEEDED job can be extended")
        spec = ScoringSpec.from_dict(rec.spec)
        g = spec.effective_shard_size
        if additional_models <= 0 or additional_models % g or spec.models % g:
            raise InvalidArgument(
                [
                    (
                        "additional_models",
                        f"must be a positive multiple of the job's shard size {g} (and the job's models a "
                        "multiple too)",
                    )
                ]
            )
        if spec.models + additional_models > self.rt.settings.max_models:
            raise ResourceExhausted(
                f"{spec.models + additional_models} models exceeds the limit {self.rt.settings.max_models}"
            )
        old_shards = spec.num_shards
        spec.models += additional_models
        rec = self.rt.jobs.reopen(
            job_id, spec=spec.to_dict(), shards_total=spec.num_shards, models_total=spec.models, message="extended"
        )
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

    # -- datasets ---------------------------------------------------------------------------
    def upload(self, chunks: Iterable[bytes], filename: str = "") -> dict:
        """Spool an uploaded .npz (or .txt corpus) to disk, validate it fully, store it by
        sha256. Returns {dataset_ref, sha256, size_bytes, ...}."""
        from .engine.datasets import DatasetError, dataset_from_npz_bytes

        limit = self.rt.settings.max_upload_bytes
        h, size = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(prefix="memscore-upload-", dir=self.rt.settings.home) as tmp:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise ResourceExhausted(f"upload exceeds {limit} bytes (MEMSCORE_MAX_UPLOAD_BYTES)")
                h.update(chunk)
                tmp.write(chunk)
            tmp.flush()
            if size == 0:
                raise InvalidArgument([("chunk", "the upload is empty")])
            sha = h.hexdigest()
            is_text = filename.endswith(".txt")
            meta: dict = {"filename": filename, "size_bytes": size, "sha256": sha}
            tmp.seek(0)
            data = tmp.read()
            if is_text:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InvalidArgument([("chunk", f"a .txt corpus must be UTF-8: {e}")]) from None
                if not text.strip():
                    raise InvalidArgument([("chunk", "the corpus is empty")])
                key = layout.dataset_key(sha, "txt")
            else:
                try:
                    ds = dataset_from_npz_bytes(data)
                except DatasetError as e:
                    problems = getattr(e, "problems", None) or [("", str(e))]
                    raise InvalidArgument(
                        [(f"dataset.{f}" if f else "chunk", f"not a valid dataset: {m}") for f, m in problems]
                    ) from None
                except Exception as e:  # not an npz at all
                    raise InvalidArgument([("chunk", f"not a readable .npz ({type(e).__name__}: {e})")]) from None
                if ds.n_train > self.rt.settings.max_train_examples:
                    raise ResourceExhausted(
                        f"{ds.n_train} training examples exceeds the limit {self.rt.settings.max_train_examples}"
                    )
                meta.update(
                    n_train=ds.n_train,
                    n_test=ds.n_test,
                    num_classes=ds.num_classes,
                    kind=ds.kind,
                    feature_shape=list(ds.feature_shape),
                )
                key = layout.dataset_key(sha)
            del data
            try:
                if not self.rt.objects.exists(key):
                    self.rt.objects.put_file(key, tmp.name)
                self.rt.objects.put_bytes(key + ".meta.json", json.dumps(meta).encode())
            except StoreUnavailable as e:
                raise Unavailable(f"object store unavailable: {e}") from e
        return {"dataset_ref": key, **meta}


# -- results ---------------------------------------------------------------------------------


def _encode_token(payload: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, sort_keys=True).encode()).decode()


def _decode_token(token: str) -> dict:
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except Exception:
        raise InvalidArgument([("page_token", "malformed page token")]) from None


class ResultsPlane:
    """Ranked examples and influence pairs, final (from results/) or anytime (from traces)."""

    def __init__(self, rt: Runtime, cache_size: int = 8):
        self.rt = rt
        self.anytime = AnytimeEstimates(rt)
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.cache_size = cache_size

    def _job(self, job_id: str) -> JobRecord:
        try:
            rec = self.rt.jobs.get(job_id)
        except JobNotFound:
            raise NotFound(f"no job {job_id!r}") from None
        return rec

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

    def scores(self, job_id: str) -> tuple[dict[str, np.ndarray], bool, JobRecord]:
        """The per-example score columns, and whether they are final."""
        rec = self._job(job_id)
        if rec.kind != "scoring":
            raise FailedPrecondition(f"job {job_id} is an {rec.kind} job; use its exposure results")
        if rec.state == "SUCCEEDED":
            key = layout.result_key(job_id, "scores.parquet")
            cols = self._cached(("final", job_id, rec.version), lambda: _read_parquet(self.rt.objects.get_bytes(key)))
            return cols, True, rec
        if rec.state == "FAILED":
            raise FailedPrecondition(f"job {job_id} FAILED: {rec.error}")
        snap = self.anytime.snapshot(rec)
        if snap is None:
            raise FailedPrecondition(f"job {job_id} is {rec.state} and no shard has finished yet; try again later")
        scores, _, shards = snap

        def build():
            return {"index": np.arange(len(scores["n_in"]), dtype=np.int64), "label": self._labels(rec), **scores}

        return self._cached(("anytime", job_id, shards), build), False, rec

    def _labels(self, rec: JobRecord) -> np.ndarray:
        """The training labels the job trains on (label noise applied), as in scores.parquet."""
        from .engine.datasets import flip_labels
        from .worker.inputs import load_job_dataset

        spec = ScoringSpec.from_dict(rec.spec)

        def build():
            ds = load_job_dataset(spec.dataset, self.rt.objects)
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
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[dict], str, bool]:
        """One page of examples ranked by `metric`; NaN scores (no estimate) rank last."""
        if metric not in METRICS:
            raise InvalidArgument([("metric", f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")])
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidArgument([("page_size", f"must be between 0 and {MAX_PAGE}")])
        if limit < 0:
            raise InvalidArgument([("limit", "must be >= 0")])
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
        offset = 0
        if page_token:
            tok = _decode_token(page_token)
            if tok.get("q") != query:
                raise InvalidArgument([("page_token", "belongs to a different query")])
            offset = int(tok["offset"])
        cols, final, _ = self.scores(job_id)
        order = self._cached(
            ("order", job_id, id(cols), json.dumps(query)),
            lambda: _rank(cols, metric, descending, classes, min_score, max_score),
        )
        if limit:
            order = order[:limit]
        size = page_size or 100
        page = order[offset : offset + size]
        nxt = _encode_token({"q": query, "offset": offset + size}) if offset + size < len(order) else ""
        rows = [_row(cols, int(i), offset + r + 1) for r, i in enumerate(page)]
        return rows, nxt, final

    def example(self, job_id: str, index: int) -> tuple[dict, bool]:
        cols, final, _ = self.scores(job_id)
        n = len(cols["index"])
        if not 0 <= index < n:
            raise InvalidArgument([("index", f"must be in 0..{n - 1}, got {index}")])
        return _row(cols, index, 0), final

    def _influence_table(self, job_id: str) -> tuple[JobRecord, dict[str, np.ndarray]]:
        rec = self._job(job_id)
        if rec.state != "SUCCEEDED":
            raise FailedPrecondition(f"job {job_id} is {rec.state}; influence is computed when the job SUCCEEDED")
        key = layout.result_key(job_id, "influence.parquet")
        return rec, self._cached(
            ("influence", job_id, rec.version), lambda: _read_parquet(self.rt.objects.get_bytes(key))
        )

    def influence_of_train(self, job_id: str, index: int, limit: int = 10) -> list[dict]:
        """The stored pairs in which training example `index` is the influencer, strongest first."""
        _, cols = self._influence_table(job_id)
        sel = np.nonzero(cols["train_index"] == index)[0]
        sel = sel[np.argsort(-cols["influence"][sel], kind="stable")][:limit]
        return [{c: cols[c][i].item() for c in cols} for i in sel]

    def influence(self, job_id: str, test_index: int | None = None, limit: int = 100) -> list[dict]:
        rec, cols = self._influence_table(job_id)
        if test_index is None:
            sel = np.nonzero(cols["above_threshold"])[0]
            sel = sel[np.argsort(-cols["influence"][sel], kind="stable")]
        else:
            m = int(rec.summary.get("n_test", 0)) or None
            sel = np.nonzero((cols["test_index"] == test_index) & (cols["topk_rank"] > 0))[0]
            if len(sel) == 0 and (test_index < 0 or (m is not None and test_index >= m)):
                raise InvalidArgument([("test_index", f"no test example {test_index}")])
            sel = sel[np.argsort(cols["topk_rank"][sel], kind="stable")]
        if limit:
            sel = sel[:limit]
        return [{c: cols[c][i].item() for c in cols} for i in sel]

    def query_influence(self, job_id: str, examples_npz: bytes, top_k: int = 10) -> list[dict]:
        """Most influential training examples of new points `x` (labels `y`) in an .npz, from
        the job's stored checkpoints (jobs run with keep_checkpoints)."""
        import torch

        from .engine.query import query_influence

        rec = self._job(job_id)
        if rec.kind != "scoring" or rec.state != "SUCCEEDED":
            raise FailedPrecondition(
                f"job {job_id} is a {rec.state} {rec.kind} job; influence queries need a SUCCEEDED scoring job"
            )
        spec = ScoringSpec.from_dict(rec.spec)
        if not spec.keep_checkpoints:
            raise FailedPrecondition(f"job {job_id} did not keep its checkpoints; submit it with keep_checkpoints=true")
        if not 1 <= top_k <= 1000:
            raise InvalidArgument([("top_k", "must be between 1 and 1000")])
        summary = json.loads(self.rt.objects.get_bytes(layout.result_key(job_id, "summary.json")))
        info = summary["dataset"]
        x, y = _query_points(examples_npz, tuple(info["feature_shape"]), info["num_classes"])

        def checkpoints():
            for s in range(spec.num_shards):
                blob = self.rt.objects.get_bytes(layout.checkpoint_key(job_id, s))
                ck = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
                yield ck["model_ids"], ck["state"]

        res = query_influence(
            summary["arch"],
            tuple(info["feature_shape"]),
            info["num_classes"],
            info["n_train"],
            spec.ratio,
            spec.seed,
            checkpoints(),
            x,
            y,
            top_k,
        )
        labels = self._labels(rec)
        rows = []
        for q in range(len(x)):
            for i, v in zip(res.topk_train[q], res.topk_value[q]):
                if i >= 0:
                    rows.append(
                        {
                            "train_index": int(i),
                            "test_index": q,
                            "influence": float(v),
                            "train_label": int(labels[i]),
                            "test_label": int(y[q]),
                        }
                    )
        return rows

    def artifact(self, job_id: str, name: str) -> tuple[str, Iterator[bytes], int]:
        rec = self._job(job_id)
        key = rec.results.get(name)
        if key is None:
            if rec.state != "SUCCEEDED":
                raise FailedPrecondition(f"job {job_id} is {rec.state}; artifacts exist once it SUCCEEDED")
            raise NotFound(f"job {job_id} has no artifact {name!r}; it has: {', '.join(sorted(rec.results))}")
        try:
            url = self.rt.objects.presigned_get_url(key)
        except Exception:
            url = ""
        return url, self.rt.objects.iter_chunks(key), self.rt.objects.size(key)

    def exposure(self, job_id: str) -> tuple[list[dict], dict]:
        rec = self._job(job_id)
        if rec.kind != "exposure":
            raise FailedPrecondition(f"job {job_id} is a {rec.kind} job")
        if rec.state != "SUCCEEDED":
            raise FailedPrecondition(f"job {job_id} is {rec.state}; exposure results exist once it SUCCEEDED")
        cols = _read_parquet(self.rt.objects.get_bytes(layout.result_key(job_id, "exposure.parquet")))
        n = len(next(iter(cols.values()))) if cols else 0
        rows = [{c: cols[c][i].item() if hasattr(cols[c][i], "item") else cols[c][i] for c in cols} for i in range(n)]
        summary = json.loads(self.rt.objects.get_bytes(layout.result_key(job_id, "summary.json")))
        return rows, summary


MAX_QUERY_POINTS = 10_000


def _query_points(data: bytes, feature_shape: tuple, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """x (float32, uint8 scaled to [0, 1]) and y from a query .npz, checked against the job's data."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except KeyError:
        raise InvalidArgument([("examples_npz", "must hold arrays x (q, *feature_shape) and y (q,)")]) from None
    except Exception as e:
        raise InvalidArgument([("examples_npz", f"not a readable .npz ({type(e).__name__}: {e})")]) from None
    problems = []
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        problems.append(("examples_npz", f"x must be numeric and y integer, got {x.dtype} and {y.dtype}"))
    elif tuple(x.shape[1:]) != feature_shape or y.shape != (x.shape[0],):
        problems.append(
            (
                "examples_npz",
                f"x must be (q, {', '.join(map(str, feature_shape))}) and y (q,), got {x.shape} and {y.shape}",
            )
        )
    elif not 1 <= len(x) <= MAX_QUERY_POINTS:
        problems.append(("examples_npz", f"between 1 and {MAX_QUERY_POINTS} points per query, got {len(x)}"))
    elif y.min() < 0 or y.max() >= num_classes:
        problems.append(("examples_npz", f"labels must be in 0..{num_classes - 1}"))
    if problems:
        raise InvalidArgument(problems)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InvalidArgument([("examples_npz", "x has NaN or infinite values")])
    return x, y.astype(np.int64)


def _read_parquet(data: bytes) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(io.BytesIO(data))
    return {name: t.column(name).to_numpy(zero_copy_only=False) for name in t.column_names}


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
    key = np.where(np.isnan(vals), np.inf, -vals if descending else vals)
    return idx[np.lexsort((idx, key))]  # ties by index: pages are stable


def _row(cols, i: int, rank: int) -> dict:
    row = {c: cols[c][i].item() for c in cols}
    row["rank"] = rank
    return row
