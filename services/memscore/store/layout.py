"""Object keys: `datasets/<sha256>.npz`, `jobs/<job>/spec.json`, `jobs/<job>/shards/<s>/trace.npz`
(and checkpoint.pt), `jobs/<job>/results/<name>`. Every writer and reader names objects through
these functions, so the layout lives in one place. Keys are deterministic, which is what makes
a redelivered shard idempotent: it overwrites the same object with the same bytes."""

from __future__ import annotations

import re

DATASETS = "datasets/"


def dataset_key(sha256: str, suffix: str = "npz") -> str:
    return f"{DATASETS}{sha256}.{suffix}"


def dataset_meta_key(key: str) -> str:
    """What the gateway recorded of an uploaded dataset (sizes, shape), beside its bytes."""
    return key + ".meta.json"


_DATASET_KEY = re.compile(r"datasets/[0-9a-f]{64}\.(npz|txt)")


def is_dataset_key(ref: str) -> bool:
    """Exactly `datasets/<sha256 hex>.npz|.txt`, as `dataset_key` makes them (no other key, and
    nothing like `datasets/../x`, passes as an uploaded dataset)."""
    return _DATASET_KEY.fullmatch(ref) is not None


def tenant_uploads_prefix(tenant: str) -> str:
    """Where a tenant's upload receipts live: one per dataset it uploaded. The bytes under
    datasets/ are shared by content (the same bytes are stored once); a tenant may name a
    dataset only if it holds a receipt for it."""
    return f"tenants/{tenant}/uploads/"


def upload_receipt_key(tenant: str, key: str) -> str:
    """The receipt of uploaded dataset `key` (datasets/<sha256>.<ext>) for `tenant`."""
    return tenant_uploads_prefix(tenant) + key.removeprefix(DATASETS) + ".json"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def spec_key(job_id: str) -> str:
    return f"jobs/{job_id}/spec.json"


def shard_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/shards/"


def trace_key(job_id: str, shard: int) -> str:
    return f"jobs/{job_id}/shards/{shard:06d}/trace.npz"


def checkpoint_key(job_id: str, shard: int) -> str:
    return f"jobs/{job_id}/shards/{shard:06d}/checkpoint.pt"


def result_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/results/{name}"


def shard_of_trace_key(key: str) -> int | None:
    """The shard number of a trace key, None for any other key."""
    parts = key.split("/")
    if len(parts) == 5 and parts[2] == "shards" and parts[4] == "trace.npz" and parts[3].isdigit():
        return int(parts[3])
    return None
