"""memscore.logs: the JSON-lines formatter, the text suffix and the task context filter."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from memscore.logs import JsonFormatter, TextFormatter, configure_logging, task_context


def test_records_inside_a_task_context_carry_its_job_and_shard(captured):
    logger, records = captured
    logger.info("before")
    with task_context("job-1", 3):
        logger.info("inside")
        with task_context("job-2"):  # nested (e.g. a helper for another job): the inner one wins
            logger.info("nested")
        logger.info("inside again")
    logger.info("after")
    tags = [(r.getMessage(), getattr(r, "job_id", None), getattr(r, "shard", None)) for r in records]
    assert tags == [
        ("before", None, None),
        ("inside", "job-1", 3),
        ("nested", "job-2", None),
        ("inside again", "job-1", 3),
        ("after", None, None),
    ]


def test_the_context_belongs_to_one_thread(captured):
    logger, records = captured
    with task_context("job-1", 0):
        t = threading.Thread(target=lambda: logger.info("other thread"))
        t.start()
        t.join()
    assert not hasattr(records[0], "job_id")


def _record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("memscore.worker", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_time_level_logger_message_and_context():
    line = JsonFormatter().format(_record("shard %d: %s", 3, "two\nlines", job_id="job-1", shard=3))
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "shard 3: two\nlines" and out["level"] == "WARNING" and out["logger"] == "memscore.worker"
    assert out["time"].endswith("+00:00") and "T" in out["time"]
    assert (out["job_id"], out["shard"]) == ("job-1", 3) and "exception" not in out
    assert "job_id" not in json.loads(JsonFormatter().format(_record("no task")))


def test_json_lines_carry_the_exception_text():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        rec = _record("failed", exc_info=sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert out["message"] == "failed" and "RuntimeError: boom" in out["exception"] and "Traceback" in out["exception"]


def test_text_lines_append_the_task_context():
    fmt = TextFormatter()
    assert fmt.format(_record("hello", job_id="job-1", shard=3)).endswith(
        "memscore.worker WARNING hello [job=job-1 shard=3]"
    )
    assert fmt.format(_record("hello", job_id="job-1")).endswith("hello [job=job-1]")
    assert fmt.format(_record("hello")).endswith("memscore.worker WARNING hello")


def test_configure_logging_installs_one_root_handler(make_settings):
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        stream = io.StringIO()
        configure_logging(make_settings(log_format="text"), stream=io.StringIO())
        configure_logging(make_settings(log_format="json", log_level="DEBUG"), stream=stream)  # replaces the first
        assert len(root.handlers) == len(before) + 1 and root.level == logging.DEBUG
        with task_context("job-9", 1):
            logging.getLogger("celery.worker").debug("from %s", "celery")
        out = json.loads(stream.getvalue().splitlines()[-1])
        assert (out["logger"], out["message"], out["job_id"], out["shard"]) == (
            "celery.worker",
            "from celery",
            "job-9",
            1,
        )
        with pytest.raises(ValueError, match="MEMSCORE_LOG_FORMAT"):
            configure_logging(make_settings(log_format="xml"))
    finally:
        root.handlers[:] = before
        root.setLevel(level)
        logging.captureWarnings(False)
