"""What a job spec's `dataset` and `corpus` names mean: a built-in, an uploaded object
(`datasets/<sha256>.npz|.txt` in the object store) or a path on the server.

Below the gateway, the results server and the workers, which all resolve names here: the
gateway checks a name cheaply before anything is queued, the worker and the results server
load it. Loading uses the engine's numpy readers; nothing here imports torch.
"""

from __future__ import annotations

import os

from .engine.catalog import BUILTINS
from .engine.corpus import BUILTIN as BUILTIN_CORPUS
from .engine.corpus import CorpusError, corpus_from_bytes, load_corpus
from .engine.datasets import Dataset, DatasetError, dataset_from_npz_bytes, load_dataset
from .store import layout
from .store.objects import ObjectNotFound, ObjectStore


def _not_uploaded(ref: str, example: str) -> str:
    return f"{ref} is not in the object store; upload it first (memscore upload {example})"


def load_job_dataset(ref: str, objects: ObjectStore) -> Dataset:
    """A built-in name, `datasets/<sha256>.npz` in the object store, or a path on this machine."""
    if layout.is_dataset_key(ref):
        try:
            data = objects.get_bytes(ref)
        except ObjectNotFound:
            raise DatasetError(_not_uploaded(ref, "FILE.npz")) from None
        return dataset_from_npz_bytes(data)
    return load_dataset(ref)


def check_dataset_ref(ref: str, objects: ObjectStore) -> str | None:
    """A cheap reachability check for the gateway: None if `ref` looks loadable, else why not.
    Uploaded datasets were validated in full when uploaded."""
    if ref in BUILTINS:
        return None
    if layout.is_dataset_key(ref):
        return None if objects.exists(ref) else _not_uploaded(ref, "FILE.npz")
    if os.path.exists(ref):
        return None
    return (
        f"{ref!r} is neither a built-in dataset ({', '.join(BUILTINS)}), an uploaded datasets/<sha256>.npz, "
        "nor a path that exists on the server"
    )


def load_job_corpus(ref: str, objects: ObjectStore) -> str:
    """ "builtin" (or ""), `datasets/<sha256>.txt` in the object store, or a path on this machine."""
    if ref in ("", BUILTIN_CORPUS):
        return load_corpus(BUILTIN_CORPUS)
    if layout.is_dataset_key(ref):
        try:
            data = objects.get_bytes(ref)
        except ObjectNotFound:
            raise CorpusError(_not_uploaded(ref, "FILE.txt")) from None
        return corpus_from_bytes(data, source=ref)
    return load_corpus(ref)


def check_corpus_ref(ref: str, objects: ObjectStore) -> str | None:
    """As `check_dataset_ref`, for an exposure job's corpus."""
    if ref in ("", BUILTIN_CORPUS):
        return None
    if layout.is_dataset_key(ref):
        return None if objects.exists(ref) else _not_uploaded(ref, "FILE.txt")
    if os.path.isfile(ref):
        return None
    return f"{ref!r} is neither 'builtin', an uploaded datasets/<sha256>.txt, nor a path on the server"
