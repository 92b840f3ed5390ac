"""Persistence: the object store (S3/MinIO or a local directory) and the job-state store
(Redis or SQLite). Workers and servers use only these interfaces; engine/ never imports them."""

from .jobs import (
    KINDS,
    STATES,
    TERMINAL_STATES,
    InvalidPageToken,
    JobNotFound,
    JobRecord,
    JobStore,
    RedisJobStore,
    SqliteJobStore,
    open_job_store,
)
from .objects import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    StoreUnavailable,
    open_object_store,
)

__all__ = [
    "KINDS",
    "STATES",
    "TERMINAL_STATES",
    "InvalidPageToken",
    "JobNotFound",
    "JobRecord",
    "JobStore",
    "RedisJobStore",
    "SqliteJobStore",
    "open_job_store",
    "LocalObjectStore",
    "ObjectNotFound",
    "ObjectStore",
    "S3ObjectStore",
    "StoreUnavailable",
    "open_object_store",
]
