"""What a job spec's `dataset` and `corpus` names mean: a built-in, an uploaded object
(`datasets/<sha256>.npz|.txt` in the object store), a path on the server under one of the
directories an administrator allows (`MEMSCORE_DATA_ROOTS`; none by default), or a Parquet table
in the object store under an allowed prefix (`s3://BUCKET/KEY`, MEMSCORE_DATA_URIS: `datauris.py`).
An entry `TENANT=DIR` (`TENANT=s3://...`) is that tenant's alone: to every other tenant its
files do not exist.

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
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from . import datauris
from .engine.catalog import BUILTINS
from .engine.corpus import BUILTIN as BUILTIN_CORPUS
from .engine.corpus import CorpusError, corpus_from_bytes, load_corpus
from .engine.datasets import Dataset, DatasetError, dataset_from_npz_bytes, load_dataset
from .engine.parquet import ParquetColumns, load_parquet, parquet_facts
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


def _not_an_allowed_uri(ref: str) -> str:
    return (
        f"{_shown(ref)} is not a Parquet table under the object-store prefixes this server allows "
        "(MEMSCORE_DATA_URIS), or it does not exist"
    )


_LOCAL_STORE = (
    "s3:// datasets are read with the server's S3 store (MEMSCORE_STORE=s3://BUCKET); this server keeps its "
    "objects in a local directory: upload the data instead (memscore upload FILE.npz), or use `memscore run` "
    "on a local Parquet file"
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


def load_job_dataset(
    ref: str,
    objects: ObjectStore,
    roots: Iterable[str] = (),
    tenant: str | None = None,
    *,
    uris: Iterable[str] = (),
    columns: ParquetColumns | None = None,
    max_bytes: int | None = None,
) -> Dataset:
    """A built-in name, `datasets/<sha256>.npz` in the object store, a path under `roots` or an
    `s3://` table under `uris` that `tenant` (the job's) may read. `columns` name a Parquet
    table's columns; `max_bytes` bounds what an s3:// table downloads and a Parquet table decodes to."""
    if ref in BUILTINS:
        return load_dataset(ref)
    if layout.is_dataset_key(ref):
        try:
            data = objects.get_bytes(ref)
        except ObjectNotFound:
            raise DatasetError(_not_uploaded(ref, "FILE.npz")) from None
        return dataset_from_npz_bytes(data)
    if datauris.is_uri(ref):
        return load_uri_dataset(ref, objects, uris, tenant, columns, max_bytes)
    path = allowed_path(ref, roots_for(roots, tenant))
    if path is None:
        raise DatasetError(_not_a_dataset(ref))
    return load_dataset(path, columns=columns, max_decoded_bytes=max_bytes)


def dataset_identity(
    ref: str, objects: ObjectStore, roots: Iterable[str] = (), tenant: str | None = None, *, uris: Iterable[str] = ()
) -> str | None:
    """What a loaded copy of `ref` may be reused under (a worker keeps the last one it loaded):
    a built-in's name, an upload's content address, an s3:// table's objects with their ETags,
    a file's resolved path with its size and modification time. None when `tenant` may not read
    `ref`, or it has no cheap identity (a directory under the data roots): it is then read afresh."""
    if ref in BUILTINS or layout.is_dataset_key(ref):
        return ref
    if datauris.is_uri(ref):
        found = _table_objects(ref, objects, uris, tenant)
        if isinstance(found, str):
            return None
        store, names = found
        etags = store.etags(names.values())
        if len(etags) < len(names):  # removed since it was listed: read afresh (and fail clearly)
            return None
        return "|".join([ref, *(f"{k}@{etags[k]}" for k in sorted(etags))])
    path = allowed_path(ref, roots_for(roots, tenant), directory_ok=False)
    if path is None:
        return None
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def _table_objects(ref: str, objects: ObjectStore, uris: Iterable[str], tenant: str | None):
    """(bucket reader, {name: key}) of the s3:// table `ref`, or the reason it cannot be read:
    one not allowed and one that does not exist get the same reason."""
    try:
        bucket, key = datauris.split_uri(ref)
    except ValueError as e:
        return f"{_shown(ref)}: {e}"
    if not datauris.allowed(bucket, key, uris, tenant):
        return _not_an_allowed_uri(ref)
    store = datauris.reader(objects, bucket)
    if store is None:
        return _LOCAL_STORE
    try:
        found = datauris.table_objects(store, key)
    except DatasetError as e:
        return str(e)
    return (store, found) if found else _not_an_allowed_uri(ref)


def uri_dataset_facts(
    ref: str, objects: ObjectStore, uris: Iterable[str], tenant: str | None, columns: ParquetColumns | None = None
) -> dict:
    """`parquet_facts` of the s3:// table `ref`, read by ranges (footers, label and split
    columns, the first feature cell); DatasetError when it cannot be read."""
    found = _table_objects(ref, objects, uris, tenant)
    if isinstance(found, str):
        raise DatasetError(found)
    store, names = found
    try:
        return parquet_facts(datauris.ranged_layout(store, names, datauris.split_uri(ref)[1]), columns)
    except ObjectNotFound:
        raise DatasetError(_not_an_allowed_uri(ref)) from None  # removed since it was listed


def load_uri_dataset(
    ref: str,
    objects: ObjectStore,
    uris: Iterable[str],
    tenant: str | None,
    columns: ParquetColumns | None = None,
    max_bytes: int | None = None,
) -> Dataset:
    """The s3:// Parquet table `ref`, copied to a temporary directory and read from there."""
    found = _table_objects(ref, objects, uris, tenant)
    if isinstance(found, str):
        raise DatasetError(found)
    store, names = found
    bucket, key = datauris.split_uri(ref)
    with tempfile.TemporaryDirectory(prefix="memscore-s3-") as tmp:
        datauris.download(store, names, Path(tmp), max_bytes)
        single = list(names.values()) == [key]  # one object named: read it whatever its name
        ds = load_parquet(Path(tmp) / next(iter(names)) if single else tmp, columns, max_decoded_bytes=max_bytes)
    return replace(ds, name=datauris.table_name(bucket, key))


def _uploaded(ref: str, objects: ObjectStore, tenant: str | None) -> bool:
    """The object exists and, with `tenant`, that tenant uploaded it (holds its receipt): a
    tenant cannot use another's upload, and is told the same as for one that does not exist."""
    if tenant is not None:
        return objects.exists(layout.upload_receipt_key(tenant, ref)) and objects.exists(ref)
    return objects.exists(ref)


def check_dataset_ref(
    ref: str, objects: ObjectStore, roots: Iterable[str] = (), tenant: str | None = None, uris: Iterable[str] = ()
) -> str | None:
    """A cheap reachability check for the gateway: None if `ref` looks loadable, else why not.
    Uploaded datasets were validated in full when uploaded; with `tenant`, only the tenant's own.
    An s3:// table must be under `uris` and exist (its objects listed, not read)."""
    if ref in BUILTINS:
        return None
    if layout.is_dataset_key(ref):
        return None if _uploaded(ref, objects, tenant) else _not_uploaded(ref, "FILE.npz")
    if datauris.is_uri(ref):
        found = _table_objects(ref, objects, uris, tenant)
        return found if isinstance(found, str) else None
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
