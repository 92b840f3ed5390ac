"""What a job spec's `dataset` and `corpus` names mean: a built-in, an uploaded object
(`datasets/<sha256>.npz|.txt` in the object store) or a path on the server under one of the
directories an administrator allows (`MEMSCORE_DATA_ROOTS`; none by default). An entry
`TENANT=DIR` is that tenant's alone: to every other tenant its files do not exist.

Below the gateway, the results server and the workers, which all resolve names here: the
gateway checks a name cheaply before anything is queued, the worker and the results server
load it. Loading uses the engine's numpy readers; nothing here imports torch.

A server path is resolved (symlinks followed) and must lie inside a resolved data root, and so
must every file of an ImageFolder directory: a link cannot lead out of a root. A path that does
not exist and one that is not allowed get the same answer, so a client learns nothing about the
server's files. `memscore run` (this machine, this user) reads any path: it does not come here.
"""

from __future__ import annotations

import os
from typing import Iterable

from .engine.catalog import BUILTINS
from .engine.corpus import BUILTIN as BUILTIN_CORPUS
from .engine.corpus import CorpusError, corpus_from_bytes, load_corpus
from .engine.datasets import Dataset, DatasetError, dataset_from_npz_bytes, load_dataset
from .store import layout
from .store.jobs import TENANT
from .store.objects import ObjectNotFound, ObjectStore


def _not_uploaded(ref: str, example: str) -> str:
    return f"{ref} is not in the object store; upload it first (memscore upload {example})"


def _not_a_dataset(ref: str) -> str:
    return (
        f"{_shown(ref)} is not a built-in dataset ({', '.join(BUILTINS)}), an uploaded datasets/<sha256>.npz, "
        "nor a dataset under the server's data roots (MEMSCORE_DATA_ROOTS); upload it (memscore upload FILE.npz)"
    )


def _not_a_corpus(ref: str) -> str:
    return (
        f"{_shown(ref)} is not 'builtin', an uploaded datasets/<sha256>.txt, nor a file under the server's "
        "data roots (MEMSCORE_DATA_ROOTS); upload it (memscore upload FILE.txt)"
    )


def _shown(ref: str, limit: int = 200) -> str:
    """`ref` as an error message quotes it: bounded, so a huge field cannot bloat the answer."""
    return repr(ref if len(ref) <= limit else ref[:limit] + "…")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def roots_for(roots: Iterable[str], tenant: str | None) -> list[str]:
    """The directories `tenant` may name files under: every plain entry of MEMSCORE_DATA_ROOTS
    and its own `TENANT=DIR` entries (DIR absolute). Without a tenant, the plain entries only."""
    out = []
    for entry in roots:
        owner, sep, path = entry.partition("=")
        if sep and TENANT.fullmatch(owner) and path.startswith("/"):
            if owner == tenant:
                out.append(path)
        else:
            out.append(entry)
    return out


def allowed_path(ref: str, roots: Iterable[str], directory_ok: bool = True) -> str | None:
    """The resolved path `ref` names if it exists inside a data root (after following every
    link) and, for a directory, all the files under it do too; else None."""
    if not ref or "\0" in ref:
        return None
    real_roots = [os.path.realpath(r) for r in roots]
    path = os.path.realpath(ref)
    root = next((r for r in real_roots if _inside(path, r)), None)
    if root is None or not os.path.exists(path):
        return None
    if os.path.isdir(path):
        if not directory_ok:
            return None
        for top, dirs, files in os.walk(path):
            for name in dirs + files:
                if not _inside(os.path.realpath(os.path.join(top, name)), root):
                    return None
    return path


def load_job_dataset(ref: str, objects: ObjectStore, roots: Iterable[str] = (), tenant: str | None = None) -> Dataset:
    """A built-in name, `datasets/<sha256>.npz` in the object store, or a path under `roots`
    that `tenant` (the job's) may read."""
    if ref in BUILTINS:
        return load_dataset(ref)
    if layout.is_dataset_key(ref):
        try:
            data = objects.get_bytes(ref)
        except ObjectNotFound:
            raise DatasetError(_not_uploaded(ref, "FILE.npz")) from None
        return dataset_from_npz_bytes(data)
    path = allowed_path(ref, roots_for(roots, tenant))
    if path is None:
        raise DatasetError(_not_a_dataset(ref))
    return load_dataset(path)


def _uploaded(ref: str, objects: ObjectStore, tenant: str | None) -> bool:
    """The object exists and, with `tenant`, that tenant uploaded it (holds its receipt): a
    tenant cannot use another's upload, and is told the same as for one that does not exist."""
    if tenant is not None:
        return objects.exists(layout.upload_receipt_key(tenant, ref)) and objects.exists(ref)
    return objects.exists(ref)


def check_dataset_ref(
    ref: str, objects: ObjectStore, roots: Iterable[str] = (), tenant: str | None = None
) -> str | None:
    """A cheap reachability check for the gateway: None if `ref` looks loadable, else why not.
    Uploaded datasets were validated in full when uploaded; with `tenant`, only the tenant's own."""
    if ref in BUILTINS:
        return None
    if layout.is_dataset_key(ref):
        return None if _uploaded(ref, objects, tenant) else _not_uploaded(ref, "FILE.npz")
    return None if allowed_path(ref, roots_for(roots, tenant)) else _not_a_dataset(ref)


def load_job_corpus(ref: str, objects: ObjectStore, roots: Iterable[str] = (), tenant: str | None = None) -> str:
    """ "builtin" (or ""), `datasets/<sha256>.txt` in the object store, or a file under `roots`."""
    if ref in ("", BUILTIN_CORPUS):
        return load_corpus(BUILTIN_CORPUS)
    if layout.is_dataset_key(ref):
        try:
            data = objects.get_bytes(ref)
        except ObjectNotFound:
            raise CorpusError(_not_uploaded(ref, "FILE.txt")) from None
        return corpus_from_bytes(data, source=ref)
    path = allowed_path(ref, roots_for(roots, tenant), directory_ok=False)
    if path is None:
        raise CorpusError(_not_a_corpus(ref))
    return load_corpus(path)


def check_corpus_ref(
    ref: str, objects: ObjectStore, roots: Iterable[str] = (), tenant: str | None = None
) -> str | None:
    """As `check_dataset_ref`, for an exposure job's corpus."""
    if ref in ("", BUILTIN_CORPUS):
        return None
    if layout.is_dataset_key(ref):
        return None if _uploaded(ref, objects, tenant) else _not_uploaded(ref, "FILE.txt")
    return None if allowed_path(ref, roots_for(roots, tenant), directory_ok=False) else _not_a_corpus(ref)
