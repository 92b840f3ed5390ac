"""Uploaded datasets and corpora: spooled to disk as they stream in (never more than
MEMSCORE_MAX_UPLOAD_BYTES), validated in full, stored by content address
`datasets/<sha256>.npz|.txt` with what the gateway needs later (sizes, shape) beside them, and
a receipt for the uploading tenant (`layout.upload_receipt_key`): only tenants holding one may
name the dataset, and the receipts' sizes count against MEMSCORE_TENANT_MAX_STORED_BYTES."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from ..engine.datasets import DatasetError, load_npz
from ..errors import InvalidArgument, ResourceExhausted, Unavailable
from ..runtime import Runtime
from ..settings import Settings
from ..store import layout
from ..store.jobs import DEFAULT_TENANT
from ..store.objects import ObjectNotFound, StoreUnavailable


def stored_bytes(rt: Runtime, tenant: str) -> tuple[int, set[str]]:
    """(bytes the tenant's receipts count, their receipt keys)."""
    total, keys = 0, set()
    for key in rt.objects.list(layout.tenant_uploads_prefix(tenant)):
        try:
            total += int(json.loads(rt.objects.get_bytes(key)).get("size_bytes", 0))
            keys.add(key)
        except (ObjectNotFound, ValueError, TypeError, AttributeError):
            continue
    return total, keys


SPOOL_PREFIX = "memscore-upload-"
STALE_SPOOL_S = 3600


def sweep_spool(home: str | os.PathLike, older_than_s: float = STALE_SPOOL_S) -> int:
    """Remove upload spool files older than `older_than_s` from `home`: what a gateway killed
    mid-upload leaves (a live upload's spool file is written to as it streams). Returns how many."""
    cutoff, removed = time.time() - older_than_s, 0
    for path in Path(home).glob(SPOOL_PREFIX + "*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


class Upload:
    """One upload for `tenant`, pushed chunk by chunk (`write`) into a spool file, never more
    than MEMSCORE_MAX_UPLOAD_BYTES; `finish` validates it in full and stores it. Close it in
    any case: the spool file goes with it. Each step is short, so a server can run them on any
    thread between the chunks its client sends."""

    def __init__(self, rt: Runtime, tenant: str = DEFAULT_TENANT):
        try:
            self._used, self._receipts = stored_bytes(rt, tenant)
        except StoreUnavailable as e:
            raise Unavailable(f"object store unavailable: {e}") from e
        self.rt, self.tenant = rt, tenant
        self._hash, self.size = hashlib.sha256(), 0
        self._tmp = tempfile.NamedTemporaryFile(prefix=SPOOL_PREFIX, dir=rt.settings.home)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        limit = self.rt.settings.max_upload_bytes
        if self.size > limit:
            raise ResourceExhausted(f"upload exceeds {limit} bytes (MEMSCORE_MAX_UPLOAD_BYTES)")
        self._hash.update(chunk)
        self._tmp.write(chunk)

    def finish(self, filename: str = "") -> dict:
        """Validate and store; returns {dataset_ref, sha256, size_bytes, filename, ...facts}."""
        rt, tmp, size = self.rt, self._tmp, self.size
        tmp.flush()
        if size == 0:
            raise InvalidArgument([("chunk", "the upload is empty")])
        sha = self._hash.hexdigest()
        meta: dict = {"filename": filename, "size_bytes": size, "sha256": sha}
        key = layout.dataset_key(sha, "txt" if filename.endswith(".txt") else "npz")
        receipt = layout.upload_receipt_key(self.tenant, key)
        quota = rt.settings.tenant_max_stored_bytes
        if receipt not in self._receipts and self._used + size > quota:
            raise ResourceExhausted(
                f"tenant {self.tenant!r} stores {self._used} bytes of uploads; {size} more exceeds its quota of "
                f"{quota} (MEMSCORE_TENANT_MAX_STORED_BYTES)"
            )
        tmp.seek(0)
        if filename.endswith(".txt"):
            meta.update(_check_corpus(tmp.read()))
        else:
            meta.update(_dataset_facts(tmp.name, rt.settings))
        try:
            if not rt.objects.exists(key):
                rt.objects.put_file(key, tmp.name)
            rt.objects.put_bytes(layout.dataset_meta_key(key), json.dumps(meta).encode())
            rt.objects.put_bytes(receipt, json.dumps({"size_bytes": size, "filename": filename}).encode())
        except StoreUnavailable as e:
            raise Unavailable(f"object store unavailable: {e}") from e
        return {"dataset_ref": key, **meta}

    def close(self) -> None:
        self._tmp.close()


def _check_corpus(data: bytes) -> dict:
    """Validate a corpus; what the gateway records of it (characters, distinct characters)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument([("chunk", f"a .txt corpus must be UTF-8: {e}")]) from None
    if not text.strip():
        raise InvalidArgument([("chunk", "the corpus is empty")])
    return {"chars": len(text), "vocab": len(set(text))}


def _dataset_facts(path: str, settings: Settings) -> dict:
    """Validate an .npz dataset fully (read from the spool file, bounded by its members' stated
    sizes before anything is inflated); what the gateway records of it."""
    max_train_examples = settings.max_train_examples
    try:
        ds = load_npz(  # any parse failure is a DatasetError
            path,
            name="upload",
            max_decompressed_bytes=settings.max_decompressed_bytes,
            max_compression_ratio=settings.max_compression_ratio,
        )
    except DatasetError as e:
        problems = getattr(e, "problems", None) or [("", str(e))]
        # the arrays are inside the uploaded bytes: each problem is the request field `chunk`'s,
        # naming the array (x_train, ...) it is about
        raise InvalidArgument(
            [("chunk", f"not a valid dataset: {f + ': ' if f not in ('', 'dataset') else ''}{m}") for f, m in problems]
        ) from None
    if ds.n_train > max_train_examples:
        raise ResourceExhausted(f"{ds.n_train} training examples exceeds the limit {max_train_examples}")
    return {
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "num_classes": ds.num_classes,
        "kind": ds.kind,
        "feature_shape": list(ds.feature_shape),
    }
