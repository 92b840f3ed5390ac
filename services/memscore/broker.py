"""The Celery application and the names of its tasks: what the producer (the gateway, which
enqueues by name and never imports torch) and the consumer (`worker/tasks.py`, which defines
the tasks) share, as Celery's own `proj/celery.py` + `proj/tasks.py` layout.

With MEMSCORE_BROKER_URL empty the broker is kombu's in-process `memory://` transport: the
embedded mode of `memscore up`, where gateway, results and a worker thread share one process.
Fan-in needs no result backend: the last shard to finish enqueues `reduce` (see worker/tasks.py).

Two queues: shards and exposure jobs on MEMSCORE_QUEUE, reduce on its own (MEMSCORE_REDUCE_QUEUE,
default `<queue>-reduce`). A worker consuming both takes from them in turn (kombu's Redis
transport rotates the queues it polls after each message), so a finished job's reduce waits
for at most the shard each worker is on, never for every shard queued by other jobs.
"""

from __future__ import annotations

from celery import Celery

from .settings import Settings

TASK_TRAIN_SHARD = "memscore.train_shard"
TASK_REDUCE = "memscore.reduce"
TASK_EXPOSURE = "memscore.exposure"


def queue_for(settings: Settings, task_name: str) -> str:
    """The queue a task (one of TASK_*) is sent to."""
    return settings.reduce_queue if task_name == TASK_REDUCE else settings.queue


def send(app: Celery, settings: Settings, task_name: str, args: list) -> None:
    """Enqueue `task_name(*args)` on its queue (by name: the sender never imports the task)."""
    app.send_task(task_name, args=list(args), queue=queue_for(settings, task_name))


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting in `queue` (not those a worker has taken). Any kombu transport: the
    Redis one counts the list (all priorities), the in-process one its deque. Raises kombu's
    OperationalError when the broker cannot be reached."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        _, count, _ = conn.default_channel.queue_declare(queue=queue, passive=False, durable=True, auto_delete=False)
        return int(count)


def make_app(settings: Settings | None = None) -> Celery:
    s = settings or Settings()
    broker = s.broker_url or "memory://"
    app = Celery("memscore", broker=broker, include=["memscore.worker.tasks"])
    # A shard may run for hours: Redis must not redeliver it to a second worker meanwhile
    # With acks late, Redis redelivers a task that runs longer than its visibility timeout,
    # and the copy runs concurrently: so the timeout is set above the longest shard, in all
    # three places Celery and kombu read it.
    # It is also how long a shard whose whole worker died waits before another worker gets it.
    visibility = s.visibility_timeout_s
    app.conf.update(
        task_acks_late=True,  # a worker that dies loses at most its shard in flight
        task_reject_on_worker_lost=True,  # ... and that shard is redelivered
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=s.result_backend or None,
        task_default_queue=s.queue,
        task_routes={TASK_REDUCE: {"queue": s.reduce_queue}, "memscore.*": {"queue": s.queue}},
        task_soft_time_limit=s.shard_timeout_s,
        task_time_limit=s.shard_timeout_s + 300,
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        visibility_timeout=visibility,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app
