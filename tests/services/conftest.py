"""A real deployment in miniature: Redis (broker and job store), a moto S3 server (object
store), gateway and results gRPC servers on loopback sockets, and `memscore-worker` processes
started and killed like containers."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from memscore.settings import ENV_VARS, Settings

from ..conftest import xdist_index

INTEGRATION_REDIS_DB = int(os.environ.get("MEMSCORE_TEST_SERVICES_REDIS_DB", "14")) - 2 * xdist_index()


def write_blobs_npz(path: Path, n: int = 240, m: int = 80, d: int = 16, classes: int = 4, seed: int = 0) -> Path:
    """Small, well-separated Gaussian blobs as a user's .npz of flat vectors."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, d))
    y = rng.integers(0, classes, n + m)
    y[:classes] = np.arange(classes)
    y[n : n + classes] = np.arange(classes)
    x = centers[y] + rng.normal(0, 1.0, (n + m, d))
    np.savez(path, x_train=x[:n].astype(np.float32), y_train=y[:n], x_test=x[n:].astype(np.float32), y_test=y[n:])
    return path


@dataclass
class Stack:
    env: dict
    settings: Settings
    gateway: str
    results: str
    runtime: object
    workers: list = field(default_factory=list)
    log_dir: Path = None

    def start_worker(self, name: str = "w") -> subprocess.Popen:
        log = open(self.log_dir / f"worker-{name}-{len(self.workers)}.log", "w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memscore.worker.main",
                f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker and its children, as when a node dies."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_workers(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()

    def worker_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("worker-*.log")))


@pytest.fixture
def stack(tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch):
    with build_stack(tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch) as st:
        yield st


@contextmanager
def build_stack(
    tmp_path,
    s3_endpoint,
    s3_credentials,
    s3_bucket,
    redis_url,
    monkeypatch,
    redis_address: str | None = None,
    broker_too: bool = True,
    s3_address: str | None = None,
    env_overrides: dict | None = None,
) -> Iterator[Stack]:
    """The stack: Redis and S3 reached at `redis_address` / `s3_address` (host:port, e.g. a
    TcpProxy's) instead of directly, by the gateway, results server and workers alike; with
    `broker_too=False` only the job store goes through `redis_address`."""
    import redis

    from memscore.broker import make_app
    from memscore.gateway.server import serve as serve_gateway
    from memscore.results.server import serve as serve_results
    from memscore.runtime import Runtime, set_runtime

    base = redis_url.rsplit("/", 1)[0]
    r = redis.Redis.from_url(f"{base}/{INTEGRATION_REDIS_DB}")
    r.flushdb()
    direct = f"{base}/{INTEGRATION_REDIS_DB}"
    proxied = f"redis://{redis_address}/{INTEGRATION_REDIS_DB}" if redis_address else direct
    env_vars = {
        "MEMSCORE_HOME": str(tmp_path / "home"),
        "MEMSCORE_BROKER_URL": proxied if broker_too else direct,
        "MEMSCORE_REDIS_URL": proxied,
        "MEMSCORE_STORE": f"s3://{s3_bucket}",
        "MEMSCORE_S3_ENDPOINT": s3_address or s3_endpoint,
        "MEMSCORE_S3_ACCESS_KEY": s3_credentials[0],
        "MEMSCORE_S3_SECRET_KEY": s3_credentials[1],
        "MEMSCORE_S3_SECURE": "false",
        "MEMSCORE_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
        "MEMSCORE_DEVICE": "cpu",
        "MEMSCORE_VISIBILITY_TIMEOUT_S": "6",  # a killed worker's shard is redelivered after 6 s
        "MEMSCORE_MAX_MODELS": "5000",
        "MEMSCORE_LOG_LEVEL": "INFO",
        **(env_overrides or {}),
    }
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    env = {k: v for k, v in os.environ.items()}
    env["OMP_NUM_THREADS"] = "1"  # the worker shares 2 cores with this test process
    settings = Settings()
    rt = Runtime.from_settings(settings)
    rt._celery = make_app(settings)
    set_runtime(rt)
    gw, gw_port = serve_gateway(rt, "127.0.0.1:0")
    res, res_port = serve_results(rt, "127.0.0.1:0")
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    st = Stack(env, settings, f"127.0.0.1:{gw_port}", f"127.0.0.1:{res_port}", rt, log_dir=log_dir)
    try:
        yield st
    finally:
        st.stop_workers()
        gw.stop(grace=1).wait()
        res.stop(grace=1).wait()
        set_runtime(None)
        r.flushdb()
        r.close()


def wait_for(predicate, timeout: float, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def write_zip_bomb(path, inflated_bytes: int) -> None:
    """An .npz whose x_train inflates to `inflated_bytes` of zeros from a few hundred KB,
    written in 1 MiB pieces (the test itself never holds it)."""
    import zipfile

    rows = inflated_bytes // (4 * 16)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for key, arr in (("y_train", np.zeros(rows, np.int64)[:10]), ("x_test", np.zeros((4, 16), np.float32))):
            buf = io.BytesIO()
            np.save(buf, arr)
            z.writestr(f"{key}.npy", buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, np.zeros(4, np.int64))
        z.writestr("y_test.npy", buf.getvalue())
        with z.open("x_train.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, 16)})
            zeros = bytes(1 << 20)
            for _ in range(inflated_bytes >> 20):
                f.write(zeros)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def write_pki(directory: Path, clients: tuple[str, ...] = (), ca_name: str = "memscore-test-ca") -> dict[str, Path]:
    """A test CA (openssl), a server certificate for localhost and 127.0.0.1 signed by it, and a
    client certificate per common name in `clients` (for mTLS). Returns the PEM paths by name:
    ca, server_cert, server_key, and <cn>_cert / <cn>_key per client."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={ca_name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    out = {"ca": directory / "ca.pem"}
    for name, cn, ext in [("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1")] + [
        (c, c, "extendedKeyUsage=clientAuth") for c in clients
    ]:
        (directory / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=directory)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=directory,
        )  # fmt: skip
        out[f"{name}_cert"], out[f"{name}_key"] = directory / f"{name}.pem", directory / f"{name}.key"
    return out


def write_tokens(path: Path, tokens: dict[str, str]) -> Path:
    """A MEMSCORE_AUTH_TOKENS file: token -> tenant, stored as 'TENANT SHA256_HEX'."""
    from memscore.auth import token_digest

    path.write_text("# test tokens\n" + "".join(f"{t} {token_digest(k)}\n" for k, t in tokens.items()))
    return path


class TcpProxy:
    """A loopback TCP proxy to `upstream` (host, port) that a test can cut (`down`: the listener
    and every connection close, so clients see refused and reset connections) and restore
    (`up`: listening again on the same port), as a network outage of a backing store would."""

    def __init__(self, upstream: tuple[str, int]):
        import socket

        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._conns: list = []
        self._listener = None
        self._lock = __import__("threading").Lock()
        self.up()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> None:
        import socket
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def down(self) -> None:
        import socket

        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (Linux)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.down()


@pytest.fixture
def start(make_settings):
    """start(**settings) -> (runtime, port) of a gateway whose work is never run (enqueue does nothing)."""
    from memscore.dataplane import ScoringPlane
    from memscore.gateway.server import serve
    from memscore.runtime import Runtime

    servers = []

    def run(**overrides):
        rt = Runtime.from_settings(make_settings(**overrides))
        server, port = serve(rt, "127.0.0.1:0", ScoringPlane(rt, enqueue=lambda name, args: None))
        servers.append(server)
        return rt, f"127.0.0.1:{port}"

    yield run
    for s in servers:
        s.stop(grace=0).wait()
