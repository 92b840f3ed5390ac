"""Every setting memscore reads from the environment, in one place.

Services (gateway, results, worker) are configured only by these variables; the CLI's flags
override them. `docs/configuration.md` documents each one; a test checks that the deploy files
set only variables listed here (`ENV_VARS`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# name -> (default, meaning). The single source of truth for docs and deploy checks.
ENV_VARS: dict[str, tuple[str, str]] = {
    "MEMSCORE_HOME": ("~/.memscore", "root of the embedded local store and state"),
    "MEMSCORE_BROKER_URL": ("", "Celery broker, e.g. redis://redis:6379/0; empty = embedded"),
    "MEMSCORE_RESULT_BACKEND": ("", "Celery result backend; empty = same as the broker"),
    "MEMSCORE_REDIS_URL": ("", "job-state store, e.g. redis://redis:6379/1; empty = in-memory/local"),
    "MEMSCORE_STORE": (
        "",
        "object store: s3://BUCKET (uses MEMSCORE_S3_*) or a directory; empty = $MEMSCORE_HOME/store",
    ),
    "MEMSCORE_S3_ENDPOINT": ("", "S3/MinIO endpoint host:port, e.g. minio:9000"),
    "MEMSCORE_S3_ACCESS_KEY": ("", "S3 access key"),
    "MEMSCORE_S3_SECRET_KEY": ("", "S3 secret key"),
    "MEMSCORE_S3_SECURE": ("false", "use TLS to the S3 endpoint (true/false)"),
    "MEMSCORE_S3_REGION": ("", "S3 region (optional)"),
    "MEMSCORE_S3_PUBLIC_ENDPOINT": (
        "",
        "http(s)://host[:port] of the S3 endpoint as outside clients reach it, for presigned URLs; empty = "
        "MEMSCORE_S3_ENDPOINT",
    ),
    "MEMSCORE_GATEWAY_PORT": ("50051", "gRPC port of the Scoring service"),
    "MEMSCORE_RESULTS_PORT": ("50052", "gRPC port of the Results service"),
    "MEMSCORE_BIND": ("0.0.0.0", "address the gRPC servers listen on"),
    "MEMSCORE_DEVICE": ("auto", "torch device for workers: auto, cpu, cuda, cuda:N"),
    "MEMSCORE_QUEUE": ("gpu", "Celery queue of the train_shard and exposure tasks"),
    "MEMSCORE_REDUCE_QUEUE": (
        "",
        "Celery queue of the reduce task, so a job's reduce never waits behind other jobs' queued shards; "
        "empty = MEMSCORE_QUEUE + '-reduce'. Workers consume both unless told otherwise (--queues)",
    ),
    "MEMSCORE_HEARTBEAT_INTERVAL_S": ("10", "seconds between a running task's heartbeats in the job store"),
    "MEMSCORE_HEARTBEAT_TIMEOUT_S": (
        "120",
        "a task in flight whose heartbeat is older than this is lost (its worker died or lost the broker) "
        "and the watchdog queues it again; so is queued work missing from an empty queue for this long",
    ),
    "MEMSCORE_WATCHDOG_INTERVAL_S": (
        "30",
        "seconds between the gateway watchdog's sweeps of unfinished jobs for lost work; 0 = no watchdog",
    ),
    "MEMSCORE_MAX_TRAIN_EXAMPLES": ("2000000", "largest training set a job may use"),
    "MEMSCORE_MAX_MODELS": ("100000", "most models one job may train"),
    "MEMSCORE_WORKER_TASKS_PER_CHILD": (
        "50",
        "tasks a worker's child process runs before a fresh one replaces it (freeing what tasks left in memory); "
        "1 replaces it after every task, which with a Redis broker costs about 40 s a task after any broker "
        "outage (docs/security.md)",
    ),
    "MEMSCORE_WORKER_MEMORY_BYTES": (
        "17179869184",
        "memory one shard may use on a worker (GPU memory; RAM on CPU workers): the gateway refuses a job whose "
        "single model does not fit, and an automatic shard size trains at most as many models at once as fit",
    ),
    "MEMSCORE_WORKER_FLOPS": (
        "2e12",
        "sustained training FLOP/s of one worker, for the gateway's time estimates (shards must fit "
        "MEMSCORE_SHARD_TIMEOUT_S, jobs MEMSCORE_MAX_JOB_WORKER_HOURS, and SubmitJob's estimate); set it from "
        "bench/gpu_bench.py or the FLOP/s `memscore plan` measures on a worker",
    ),
    "MEMSCORE_MAX_JOB_WORKER_HOURS": (
        "24",
        "largest job the gateway accepts, in estimated hours of one worker's training at MEMSCORE_WORKER_FLOPS",
    ),
    "MEMSCORE_REDUCE_MEMORY_BYTES": (
        "34359738368",
        "host memory the reduce step may use; a job whose estimated reduce needs more is refused",
    ),
    "MEMSCORE_MAX_UPLOAD_BYTES": ("4294967296", "largest dataset upload in bytes"),
    "MEMSCORE_MAX_DECOMPRESSED_BYTES": (
        "17179869184",
        "largest size an uploaded .npz may decompress to (its members' stated sizes, checked before inflating); "
        "also the most bytes a worker downloads of an s3:// dataset and the most its Parquet features decode to",
    ),
    "MEMSCORE_MAX_COMPRESSION_RATIO": (
        "100",
        "refuse an upload that decompresses to over this many times its size (and over 256 MiB): a zip bomb",
    ),
    "MEMSCORE_DATA_ROOTS": (
        "",
        "directories (separated by ':') whose files jobs may name as datasets or corpora by server path; "
        "an entry TENANT=DIR is that tenant's alone; empty = none (only built-ins and uploads)",
    ),
    "MEMSCORE_DATA_URIS": (
        "",
        "object-store prefixes (separated by ',', each s3://BUCKET/PREFIX) under which jobs may name Parquet "
        "datasets as s3://BUCKET/KEY, read by the workers with the MEMSCORE_S3_* credentials; an entry "
        "TENANT=s3://BUCKET/PREFIX is that tenant's alone; empty = none",
    ),
    "MEMSCORE_AUTH_TOKENS": (
        "",
        "token file: one line per token, 'TENANT SHA256_HEX_OF_TOKEN' (# comments); re-read when it changes; "
        "empty = no authentication, refused unless the servers bind loopback (or MEMSCORE_ALLOW_UNAUTHENTICATED)",
    ),
    "MEMSCORE_ALLOW_UNAUTHENTICATED": (
        "false",
        "serve without tokens on a non-loopback address (only behind a proxy or mesh that authenticates); "
        "every caller is then the one tenant 'default'",
    ),
    "MEMSCORE_TLS_CERT": (
        "",
        "PEM certificate (chain) both gRPC servers present; re-read when it changes; empty = no TLS",
    ),
    "MEMSCORE_TLS_KEY": ("", "PEM private key of MEMSCORE_TLS_CERT"),
    "MEMSCORE_TLS_CLIENT_CA": (
        "",
        "PEM CA bundle: when set, clients must present a certificate it signed (mTLS), and a caller without a "
        "token is the tenant named by its certificate's common name",
    ),
    "MEMSCORE_TENANT_MAX_ACTIVE_JOBS": ("16", "most QUEUED or RUNNING jobs one tenant may have"),
    "MEMSCORE_TENANT_MAX_STORED_BYTES": ("68719476736", "most bytes of uploads one tenant may store"),
    "MEMSCORE_RPC_THREADS": (
        "16",
        "threads of each gRPC server that run unary calls and each stream's next message; a stream waiting "
        "on its job or its client holds none",
    ),
    "MEMSCORE_MAX_STREAMS": (
        "1024",
        "streaming calls (WatchJob, StreamRanked, uploads, ...) one server holds at once; more are "
        "RESOURCE_EXHAUSTED. At least 16 below MEMSCORE_MAX_CONCURRENT_RPCS, so unary calls and Health always "
        "get in",
    ),
    "MEMSCORE_TENANT_MAX_STREAMS": ("64", "streaming calls one tenant may hold open on one server"),
    "MEMSCORE_MAX_CONCURRENT_RPCS": (
        "2048",
        "calls one server accepts at once, streams included, running or waiting for a thread; more are "
        "RESOURCE_EXHAUSTED",
    ),
    "MEMSCORE_STREAM_STALL_TIMEOUT_S": (
        "60",
        "a stream whose client takes no message (or, uploading, sends none) for this many seconds is ended "
        "CANCELLED and its handler stopped; its slot is free once the client reads or goes away; 0 = never",
    ),
    "MEMSCORE_HEALTH_INTERVAL_S": (
        "5",
        "seconds between a server's checks of its job store and object store; Health is NOT_SERVING while one "
        "is unreachable",
    ),
    "MEMSCORE_TOKEN": ("", "client side (CLI, Client): the bearer token sent as 'authorization: Bearer ...'"),
    "MEMSCORE_TLS_CA": ("", "client side: PEM CA to verify the servers with; set = connect with TLS"),
    "MEMSCORE_TLS_CLIENT_CERT": ("", "client side: PEM certificate to present for mTLS"),
    "MEMSCORE_TLS_CLIENT_KEY": ("", "client side: PEM private key of MEMSCORE_TLS_CLIENT_CERT"),
    "MEMSCORE_TLS_SERVER_NAME": (
        "",
        "client side: the name the server certificate must carry when it differs from the address (e.g. 127.0.0.1)",
    ),
    "MEMSCORE_SHARD_TIMEOUT_S": ("21600", "longest a shard may run; Redis visibility timeout is set above it"),
    "MEMSCORE_VISIBILITY_TIMEOUT_S": (
        "",
        "seconds before Redis redelivers an unacknowledged task; empty = shard timeout + 900",
    ),
    "MEMSCORE_MAX_ATTEMPTS": ("3", "deliveries of one shard before its job fails"),
    "MEMSCORE_LOG_LEVEL": ("INFO", "log level of the services"),
    "MEMSCORE_LOG_FORMAT": (
        "text",
        "log line format of the services: text, or json (one JSON object a line, with job_id and shard in tasks)",
    ),
    "MEMSCORE_METRICS_PORT": (
        "0",
        "port of the Prometheus endpoint (GET /metrics) of each gateway, results and worker process; 0 = none",
    ),
    "MEMSCORE_METRICS_BIND": (
        "0.0.0.0",
        "address the metrics endpoint listens on; it has no authentication, so keep it on a private network",
    ),
}


def env(name: str) -> str:
    """The value of a memscore variable, or its documented default."""
    if name not in ENV_VARS:
        raise KeyError(f"{name} is not a memscore setting (see settings.ENV_VARS)")
    return os.environ.get(name, ENV_VARS[name][0])


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(os.path.expanduser(env("MEMSCORE_HOME"))))
    broker_url: str = field(default_factory=lambda: env("MEMSCORE_BROKER_URL"))
    result_backend: str = field(default_factory=lambda: env("MEMSCORE_RESULT_BACKEND"))
    redis_url: str = field(default_factory=lambda: env("MEMSCORE_REDIS_URL"))
    store: str = field(default_factory=lambda: env("MEMSCORE_STORE"))
    s3_endpoint: str = field(default_factory=lambda: env("MEMSCORE_S3_ENDPOINT"))
    s3_access_key: str = field(default_factory=lambda: env("MEMSCORE_S3_ACCESS_KEY"))
    s3_secret_key: str = field(default_factory=lambda: env("MEMSCORE_S3_SECRET_KEY"))
    s3_secure: bool = field(default_factory=lambda: env("MEMSCORE_S3_SECURE").lower() in ("1", "true", "yes"))
    s3_region: str = field(default_factory=lambda: env("MEMSCORE_S3_REGION"))
    s3_public_endpoint: str = field(default_factory=lambda: env("MEMSCORE_S3_PUBLIC_ENDPOINT"))
    gateway_port: int = field(default_factory=lambda: int(env("MEMSCORE_GATEWAY_PORT")))
    results_port: int = field(default_factory=lambda: int(env("MEMSCORE_RESULTS_PORT")))
    bind: str = field(default_factory=lambda: env("MEMSCORE_BIND"))
    device: str = field(default_factory=lambda: env("MEMSCORE_DEVICE"))
    queue: str = field(default_factory=lambda: env("MEMSCORE_QUEUE"))
    reduce_queue_setting: str = field(default_factory=lambda: env("MEMSCORE_REDUCE_QUEUE"))
    heartbeat_interval_s: float = field(default_factory=lambda: float(env("MEMSCORE_HEARTBEAT_INTERVAL_S")))
    heartbeat_timeout_s: float = field(default_factory=lambda: float(env("MEMSCORE_HEARTBEAT_TIMEOUT_S")))
    watchdog_interval_s: float = field(default_factory=lambda: float(env("MEMSCORE_WATCHDOG_INTERVAL_S")))
    max_train_examples: int = field(default_factory=lambda: int(env("MEMSCORE_MAX_TRAIN_EXAMPLES")))
    max_models: int = field(default_factory=lambda: int(env("MEMSCORE_MAX_MODELS")))
    worker_memory_bytes: int = field(default_factory=lambda: int(env("MEMSCORE_WORKER_MEMORY_BYTES")))
    worker_tasks_per_child: int = field(default_factory=lambda: int(env("MEMSCORE_WORKER_TASKS_PER_CHILD")))
    worker_flops: float = field(default_factory=lambda: float(env("MEMSCORE_WORKER_FLOPS")))
    max_job_worker_hours: float = field(default_factory=lambda: float(env("MEMSCORE_MAX_JOB_WORKER_HOURS")))
    reduce_memory_bytes: int = field(default_factory=lambda: int(env("MEMSCORE_REDUCE_MEMORY_BYTES")))
    max_upload_bytes: int = field(default_factory=lambda: int(env("MEMSCORE_MAX_UPLOAD_BYTES")))
    max_decompressed_bytes: int = field(default_factory=lambda: int(env("MEMSCORE_MAX_DECOMPRESSED_BYTES")))
    max_compression_ratio: float = field(default_factory=lambda: float(env("MEMSCORE_MAX_COMPRESSION_RATIO")))
    data_roots: tuple[str, ...] = field(
        default_factory=lambda: tuple(p for p in env("MEMSCORE_DATA_ROOTS").split(os.pathsep) if p)
    )
    data_uris: tuple[str, ...] = field(
        default_factory=lambda: tuple(u.strip() for u in env("MEMSCORE_DATA_URIS").split(",") if u.strip())
    )
    auth_tokens: str = field(default_factory=lambda: env("MEMSCORE_AUTH_TOKENS"))
    allow_unauthenticated: bool = field(
        default_factory=lambda: env("MEMSCORE_ALLOW_UNAUTHENTICATED").lower() in ("1", "true", "yes")
    )
    tls_cert: str = field(default_factory=lambda: env("MEMSCORE_TLS_CERT"))
    tls_key: str = field(default_factory=lambda: env("MEMSCORE_TLS_KEY"))
    tls_client_ca: str = field(default_factory=lambda: env("MEMSCORE_TLS_CLIENT_CA"))
    tenant_max_active_jobs: int = field(default_factory=lambda: int(env("MEMSCORE_TENANT_MAX_ACTIVE_JOBS")))
    tenant_max_stored_bytes: int = field(default_factory=lambda: int(env("MEMSCORE_TENANT_MAX_STORED_BYTES")))
    rpc_threads: int = field(default_factory=lambda: int(env("MEMSCORE_RPC_THREADS")))
    max_streams: int = field(default_factory=lambda: int(env("MEMSCORE_MAX_STREAMS")))
    tenant_max_streams: int = field(default_factory=lambda: int(env("MEMSCORE_TENANT_MAX_STREAMS")))
    max_concurrent_rpcs: int = field(default_factory=lambda: int(env("MEMSCORE_MAX_CONCURRENT_RPCS")))
    health_interval_s: float = field(default_factory=lambda: float(env("MEMSCORE_HEALTH_INTERVAL_S")))
    shard_timeout_s: int = field(default_factory=lambda: int(env("MEMSCORE_SHARD_TIMEOUT_S")))
    visibility_timeout_s: int = field(
        default_factory=lambda: int(env("MEMSCORE_VISIBILITY_TIMEOUT_S") or int(env("MEMSCORE_SHARD_TIMEOUT_S")) + 900)
    )
    max_attempts: int = field(default_factory=lambda: int(env("MEMSCORE_MAX_ATTEMPTS")))
    log_level: str = field(default_factory=lambda: env("MEMSCORE_LOG_LEVEL"))
    log_format: str = field(default_factory=lambda: env("MEMSCORE_LOG_FORMAT"))
    stream_stall_timeout_s: float = field(default_factory=lambda: float(env("MEMSCORE_STREAM_STALL_TIMEOUT_S")))
    metrics_port: int = field(default_factory=lambda: int(env("MEMSCORE_METRICS_PORT")))
    metrics_bind: str = field(default_factory=lambda: env("MEMSCORE_METRICS_BIND"))

    @property
    def reduce_queue(self) -> str:
        """The reduce task's queue: MEMSCORE_REDUCE_QUEUE, else the shard queue's name + '-reduce'."""
        return self.reduce_queue_setting or f"{self.queue}-reduce"
