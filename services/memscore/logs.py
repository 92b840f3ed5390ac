"""Log setup of every memscore service: one handler on the root logger, text or JSON lines.

MEMSCORE_LOG_FORMAT=text (default) writes `time logger LEVEL message`; `json` writes one JSON
object a line (time, level, logger, message, exception when there is one), for log shippers.
While a worker task runs (`task_context`), every record, from any logger (engine, store,
celery), also carries the job id and shard: fields `job_id` and `shard` in JSON, a suffix
`[job=... shard=...]` in text. A contextvar holds them, so threads and tasks never mix them up.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .settings import Settings

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_task: ContextVar[tuple[str, int | None] | None] = ContextVar("memscore_task", default=None)


@contextmanager
def task_context(job_id: str, shard: int | None = None) -> Iterator[None]:
    """Tag every log record emitted inside the block with `job_id` (and `shard`)."""
    token = _task.set((job_id, shard))
    try:
        yield
    finally:
        _task.reset(token)


class TaskContextFilter(logging.Filter):
    """Copies the current task's job id and shard onto each record (on a handler, so records
    of every logger that reach it get them); records outside a task get neither."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _task.get()
        if current is not None:
            record.job_id, record.shard = current
        return True


class TextFormatter(logging.Formatter):
    """The classic line, plus ` [job=... shard=...]` for records from inside a task."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            return line
        shard = getattr(record, "shard", None)
        return f"{line} [job={job_id}{'' if shard is None else f' shard={shard}'}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside strings are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        for name in ("job_id", "shard"):
            if getattr(record, name, None) is not None:
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def make_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) with the context filter and the chosen format."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"MEMSCORE_LOG_FORMAT={log_format!r} must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler._memscore = True  # type: ignore[attr-defined]  # marks ours, so a second call replaces it
    return handler


def configure_logging(settings: "Settings", stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records (and warnings) at MEMSCORE_LOG_LEVEL and above through one
    root handler in MEMSCORE_LOG_FORMAT. Calling it again replaces the handler it installed."""
    handler = make_handler(settings.log_format, stream)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_memscore", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.captureWarnings(True)  # warnings become records in the same format
    return handler
