"""Fixtures of the worker tests."""

from __future__ import annotations

import logging

import pytest

from memscore.logs import TaskContextFilter


@pytest.fixture
def captured():
    """Records of logger `memscore.test`, through a handler with the context filter."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.addFilter(TaskContextFilter())
    logger = logging.getLogger("memscore.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, records
    logger.removeHandler(handler)
