"""Datasets named by a job spec, resolved to engine `Dataset`s. Used by the workers (to train)
and the gateway (to validate before anything is queued)."""

from __future__ import annotations

import os

from ..engine.datasets import Dataset, DatasetError, dataset_from_npz_bytes, load_dataset
from ..store import layout
from ..store.objects import ObjectNotFound, ObjectStore

BUILTINS = ("mnist1d", "digits", "longtail")


def load_job_dataset(ref: str, objects: ObjectStore) -> Dataset:
    """A built-in name, `datasets/<sha256>.npz` in the object store, or a path on this machine."""
    if layout.is_dataset_key(ref):
        try:
            data = objects.get_bytes(ref)
        except ObjectNotFound:
            raise DatasetError(
                f"{ref} is not in the object store; upload it first (memscore upload FILE.npz)"
            ) from None
        return dataset_from_npz_bytes(data)
    return load_dataset(ref)


def check_dataset_ref(ref: str, objects: ObjectStore) -> str | None:
    """A cheap reachability check for the gateway: None if `ref` looks loadable, else why not.
    Uploaded datasets were validated in full when uploaded."""
    if ref in BUILTINS:
        return None
    if layout.is_dataset_key(ref):
        return (
            None
            if objects.exists(ref)
            else f"{ref} is not in the object store; upload it first (memscore upload FILE.npz)"
        )
    if os.path.exists(ref):
        return None
    return (
        f"{ref!r} is neither a built-in dataset ({', '.join(BUILTINS)}), an uploaded datasets/<sha256>.npz, "
        "nor a path that exists on the server"
    )
