"""Uploaded datasets and corpora: spooled to disk as they stream in (never more than
MEMSCORE_MAX_UPLOAD_BYTES), validated in full, stored by content address
`datasets/<sha256>.npz|.txt` with what the gateway needs later (sizes, shape) beside them."""

from __future__ import annotations

import hashlib
import json
import tempfile
from typing import Iterable

from ..engine.datasets import DatasetError, load_npz
from ..errors import InvalidArgument, ResourceExhausted, Unavailable
from ..runtime import Runtime
from ..settings import Settings
from ..store import layout
from ..store.objects import StoreUnavailable


def store_upload(rt: Runtime, chunks: Iterable[bytes], filename: str = "") -> dict:
    """Store one upload; returns {dataset_ref, sha256, size_bytes, filename, ...facts}."""
    limit = rt.settings.max_upload_bytes
    h, size = hashlib.sha256(), 0
    with tempfile.NamedTemporaryFile(prefix="memscore-upload-", dir=rt.settings.home) as tmp:
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
        meta: dict = {"filename": filename, "size_bytes": size, "sha256": sha}
        tmp.seek(0)
        if filename.endswith(".txt"):
            _check_corpus(tmp.read())
            key = layout.dataset_key(sha, "txt")
        else:
            meta.update(_dataset_facts(tmp.name, rt.settings))
            key = layout.dataset_key(sha)
        try:
            if not rt.objects.exists(key):
                rt.objects.put_file(key, tmp.name)
            rt.objects.put_bytes(layout.dataset_meta_key(key), json.dumps(meta).encode())
        except StoreUnavailable as e:
            raise Unavailable(f"object store unavailable: {e}") from e
    return {"dataset_ref": key, **meta}


def _check_corpus(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument([("chunk", f"a .txt corpus must be UTF-8: {e}")]) from None
    if not text.strip():
        raise InvalidArgument([("chunk", "the corpus is empty")])


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
        raise InvalidArgument(
            [(f"dataset.{f}" if f else "chunk", f"not a valid dataset: {m}") for f, m in problems]
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
