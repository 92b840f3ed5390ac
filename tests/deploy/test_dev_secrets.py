"""scripts/dev-secrets.sh, run for real: a CA, a server certificate it signed for the names
compose and k8s dial, a token and its MEMSCORE_AUTH_TOKENS line; a second run changes nothing;
and a server started with them serves TLS to a client holding the CA and the token."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "dev-secrets.sh"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _run(out: Path) -> str:
    return subprocess.run(["sh", str(SCRIPT), str(out)], check=True, capture_output=True, text=True).stdout


def test_dev_secrets_are_consistent_and_idempotent(tmp_path):
    out = tmp_path / "dev"
    first = _run(out)
    assert "wrote" in first
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", out / "ca.pem", out / "server.pem"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", out / "server.pem", "-noout", "-ext", "subjectAltName"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for name in ("DNS:localhost", "DNS:gateway", "DNS:results", "DNS:memscore-gateway", "IP Address:127.0.0.1"):
        assert name in text, name
    token = (out / "token").read_text().strip()
    assert len(token) >= 32
    assert (out / "tokens").read_text() == f"dev {hashlib.sha256(token.encode()).hexdigest()}\n"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "wrote" not in _run(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_server_with_the_dev_secrets_serves_the_dev_token_over_tls(tmp_path, make_settings):
    from memscore.client import Client
    from memscore.dataplane import ScoringPlane
    from memscore.gateway.server import serve
    from memscore.runtime import Runtime

    out = tmp_path / "dev"
    _run(out)
    settings = make_settings(
        auth_tokens=str(out / "tokens"), tls_cert=str(out / "server.pem"), tls_key=str(out / "server.key")
    )
    rt = Runtime.from_settings(settings)
    server, port = serve(rt, "127.0.0.1:0", ScoringPlane(rt, enqueue=lambda name, args: None))
    try:
        token = (out / "token").read_text().strip()
        with Client(f"localhost:{port}", f"localhost:{port}", timeout=10, token=token, tls_ca=str(out / "ca.pem")) as c:
            job = c.submit_scoring(dataset="mnist1d", models=2, epochs=1, shard_size=2)
        assert rt.jobs.get(job.job_id).tenant == "dev"
    finally:
        server.stop(grace=0).wait()
