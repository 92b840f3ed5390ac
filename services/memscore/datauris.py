"""Object-store datasets: `s3://BUCKET/KEY.parquet` (one table) or `s3://BUCKET/PREFIX/` (shards,
or train/test tables: `engine.parquet.table_layout`), read by the workers with the server's own
S3 endpoint and credentials (MEMSCORE_S3_*), so a large table never passes through the gateway.

A job may name only URIs under the prefixes its tenant is allowed (MEMSCORE_DATA_URIS: entries
`s3://BUCKET/PREFIX`, or `TENANT=s3://BUCKET/PREFIX` for that tenant alone; none by default).
The URI syntax is strict (no '..', '.', empty parts or odd characters), so a prefix check on
the text is a check on what is read. `datarefs` turns these answers into its messages: one not
allowed and one that does not exist read the same.

Workers copy the table's objects to a temporary directory in streamed chunks (never a whole
object in memory), within a byte budget, and read the copy with pyarrow.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from .engine.datasets import DatasetError
from .engine.parquet import SUFFIX, table_layout
from .store.jobs import TENANT
from .store.objects import ObjectNotFound, ObjectStore, S3ObjectStore

SCHEME = "s3://"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket names
_KEY = re.compile(r"[A-Za-z0-9._\-=+@,/]*")  # S3's "safe" characters, and '=' for Hive-style partitions
_HIDDEN_CODES = ("NoSuchBucket", "AccessDenied", "AllAccessDisabled")  # read as "nothing there"


def is_uri(ref: str) -> bool:
    return ref.startswith(SCHEME)


def split_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of `s3://BUCKET/KEY` (the key may end with '/', a prefix, or be empty, the
    whole bucket); ValueError saying what is wrong."""
    if not is_uri(uri):
        raise ValueError(f"expected {SCHEME}BUCKET/KEY")
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError("the bucket name must be 3 to 63 lowercase letters, digits, '.' or '-'")
    if not _KEY.fullmatch(key):
        raise ValueError("a key may hold only letters, digits, '/' and . _ - = + @ ,")
    parts = key.removesuffix("/").split("/") if key else []
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError("a key has no empty ('//'), '.' or '..' parts")
    return bucket, key


def _under(key: str, prefix: str) -> bool:
    """`key` is `prefix` or inside it, at a '/' boundary ("team-a" does not allow "team-ab/x")."""
    key, prefix = key.removesuffix("/"), prefix.removesuffix("/")
    return not prefix or key == prefix or key.startswith(prefix + "/")


def uris_for(entries: Iterable[str], tenant: str | None) -> list[tuple[str, str]]:
    """(bucket, prefix) pairs `tenant` may read: every plain entry of MEMSCORE_DATA_URIS and its
    own `TENANT=s3://...` entries (as `datarefs.roots_for`). A malformed entry allows nothing."""
    out = []
    for entry in entries:
        owner, sep, uri = entry.partition("=")
        if sep and TENANT.fullmatch(owner) and is_uri(uri):
            if owner != tenant:
                continue
        else:
            uri = entry
        try:
            out.append(split_uri(uri))
        except ValueError:
            continue
    return out


def allowed(bucket: str, key: str, entries: Iterable[str], tenant: str | None) -> bool:
    return any(b == bucket and _under(key, p) for b, p in uris_for(entries, tenant))


def reader(objects: ObjectStore, bucket: str) -> S3ObjectStore | None:
    """The bucket read with the store's endpoint and credentials; None for a local store."""
    return objects.bucket_reader(bucket) if isinstance(objects, S3ObjectStore) else None


def _hidden(exc: Exception) -> bool:
    return getattr(exc, "code", None) in _HIDDEN_CODES


def _exists(store: S3ObjectStore, key: str) -> bool:
    from minio.error import S3Error

    try:
        return store.exists(key)
    except S3Error as e:
        if _hidden(e):
            return False
        raise


def _keys(store: S3ObjectStore, prefix: str) -> list[str]:
    from minio.error import S3Error

    try:
        return store.list(prefix)
    except S3Error as e:
        if _hidden(e):
            return []
        raise


def table_objects(store: S3ObjectStore, key: str) -> dict[str, str] | None:
    """{name relative to the table: object key} of the table `key` names (one object, or a
    prefix holding a layout: Spark's `t.parquet/part-*.parquet` too); None when nothing is there.
    A prefix whose objects hold no table raises DatasetError."""
    if key.lower().endswith(SUFFIX) and _exists(store, key):
        return {key.rsplit("/", 1)[-1]: key}
    prefix = key.removesuffix("/") + "/" if key.removesuffix("/") else ""
    keys = _keys(store, prefix)
    if not keys:
        return None
    layout = table_layout([k[len(prefix) :] for k in keys], f"{SCHEME}{store.bucket}/{prefix}")
    return {name: prefix + name for names in layout.values() for name in names}


def ranged_layout(store: S3ObjectStore, objects: dict[str, str], key: str) -> dict[str, list[tuple[str, object]]]:
    """{split: [(name, seekable file read by ranged GETs)]} of a table's objects, for
    `engine.parquet.parquet_facts`: the gateway reads footers and label columns, not features."""
    if list(objects.values()) == [key]:  # one object named: a table whatever its name
        layout = {"all": list(objects)}
    else:
        layout = table_layout(list(objects), f"{SCHEME}{store.bucket}/{key}")
    return {split: [(name, store.open_ranges(objects[name])) for name in names] for split, names in layout.items()}


def download(store: S3ObjectStore, objects: dict[str, str], dest: Path, max_bytes: int | None) -> int:
    """Copy each object to `dest / name` in streamed chunks; bytes copied. Over `max_bytes` in
    all (their listed sizes, then the bytes as they arrive) raises DatasetError."""
    limit = "this server's limit of {} bytes (MEMSCORE_MAX_DECOMPRESSED_BYTES)"
    try:
        listed = sum(store.size(k) for k in objects.values())
    except ObjectNotFound as e:
        raise DatasetError(f"{SCHEME}{store.bucket}/{e.args[0]} disappeared while it was being read") from None
    if max_bytes is not None and listed > max_bytes:
        raise DatasetError(f"the table's objects hold {listed} bytes, over {limit.format(max_bytes)}")
    copied = 0
    for name, key in objects.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for chunk in store.iter_chunks(key):
                copied += len(chunk)
                if max_bytes is not None and copied > max_bytes:
                    raise DatasetError(f"the table's objects grew past {limit.format(max_bytes)} while read")
                f.write(chunk)
    return copied


def table_name(bucket: str, key: str) -> str:
    """What a dataset from `s3://bucket/key` is called: its last part, without `.parquet`."""
    last = key.removesuffix("/").rsplit("/", 1)[-1]
    return last.removesuffix(SUFFIX) or bucket
