"""Shared fixtures: a real S3 server (moto, in a thread), a Redis database, and Settings built
from a clean environment. Production code is pointed at these exactly as at MinIO/Redis.

Environment knobs: MEMSCORE_TEST_REDIS_URL (default redis://127.0.0.1:6379) and
MEMSCORE_TEST_REDIS_DB (default 13; flushed by the fixtures, so never point it at real data).
Under pytest-xdist (scripts/test.sh runs 2 processes) process gwN uses databases 2N lower.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from memscore.settings import ENV_VARS, Settings

S3_ACCESS_KEY = "memscore-test"
S3_SECRET_KEY = "memscore-test-secret"


@pytest.fixture(scope="module")
def torch_one_thread():
    """Run a module's small trainings on one torch thread: on 2 shared cores faster than two
    contended ones, and deterministic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """host:port of a moto S3 server on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_credentials() -> tuple[str, str]:
    """(access key, secret key) the moto server accepts (it accepts any)."""
    return S3_ACCESS_KEY, S3_SECRET_KEY


@pytest.fixture
def s3_bucket() -> str:
    """A fresh bucket name per test, so tests never see each other's objects."""
    return f"memscore-test-{uuid.uuid4().hex[:12]}"


def xdist_index() -> int:
    """This pytest-xdist worker's number (gw0 -> 0, gw1 -> 1; 0 without xdist). Worker N uses
    the Redis databases 2N below the defaults (13 and the services' 14): each flushes its own."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker[2:].isdigit() else 0


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis database; the session fails loudly if Redis is not running."""
    import redis

    base = os.environ.get("MEMSCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
    if base.rsplit("/", 1)[-1].isdigit() and base.count("/") > 2:
        base = base.rsplit("/", 1)[0]  # a db number in the URL is replaced by ours
    url = f"{base}/{int(os.environ.get('MEMSCORE_TEST_REDIS_DB', '13')) - 2 * xdist_index()}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is needed at {url} (set MEMSCORE_TEST_REDIS_URL): {exc}", pytrace=False)
    finally:
        client.close()
    return url


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[str]:
    """The test Redis database, flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    client.flushdb()
    client.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MEMSCORE_* variable from the developer's shell leaks into a test."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def make_settings(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Settings]:
    """Settings(**overrides) from a clean environment with MEMSCORE_HOME under tmp_path."""

    def make(**overrides) -> Settings:
        overrides.setdefault("home", tmp_path / "home")
        return Settings(**overrides)

    return make


@pytest.fixture
def s3_settings(make_settings, s3_endpoint: str, s3_bucket: str) -> Settings:
    """Settings that select the S3 store on the moto server, as MEMSCORE_STORE=s3://BUCKET would."""
    return make_settings(
        store=f"s3://{s3_bucket}",
        s3_endpoint=s3_endpoint,
        s3_access_key=S3_ACCESS_KEY,
        s3_secret_key=S3_SECRET_KEY,
        s3_secure=False,
        s3_region="",  # as with MinIO by default: the client looks the region up
    )


def free_port() -> int:
    """A loopback port nothing listens on (closed right after it was found free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    return free_port()


# Fixtures that reach a real backing service: a test that uses one is an integration test,
# whether or not its module says so (so `-m "not integration"` never needs Redis or S3).
INTEGRATION_FIXTURES = frozenset({"redis_url", "redis_db", "s3_endpoint", "s3_settings", "stack"})


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
