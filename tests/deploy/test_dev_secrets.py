"""scripts/dev-secrets.sh, run for real: a CA, a server certificate it signed for the names
compose and k8s dial, a token and its MEMSCORE_AUTH_TOKENS line; a second run changes nothing;
and a server started with them serves TLS to a client holding the CA and the token, and
answers the health checks exactly as compose and the k8s probes run them."""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "dev-secrets.sh"
FILES = {"ca.pem", "ca.key", "server.pem", "server.key", "token", "tokens"}
# compose dials the service names and 127.0.0.1 (healthchecks), the host localhost; the k8s
# probes name the Services (memscore-gateway.memscore.svc), port-forwards localhost.
SANS = (
    "DNS:localhost", "DNS:gateway", "DNS:results", "DNS:memscore-gateway", "DNS:memscore-results",
    "DNS:*.memscore.svc", "DNS:*.memscore.svc.cluster.local", "IP Address:127.0.0.1",
)  # fmt: skip

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _run(out: Path) -> str:
    return subprocess.run(["sh", str(SCRIPT), str(out)], check=True, capture_output=True, text=True).stdout


def _openssl(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)


def _snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}


def test_dev_secrets_are_consistent_and_idempotent(tmp_path):
    out = tmp_path / "dev"
    first = _run(out)
    assert {p.name for p in out.iterdir()} == FILES, "no temporary files left behind"
    for name in ("ca.pem", "server.pem", "token", "tokens"):
        assert f"wrote {out}/{name}" in first, first
    assert f"export MEMSCORE_TLS_CA={out}/ca.pem MEMSCORE_TOKEN=$(cat {out}/token)" in first
    ok = _openssl("verify", "-CAfile", out / "ca.pem", out / "server.pem")
    assert ok.returncode == 0, ok.stderr
    text = _openssl("x509", "-in", out / "server.pem", "-noout", "-ext", "subjectAltName").stdout
    sans = {name.strip() for name in text.splitlines()[-1].split(",")}
    assert sans == set(SANS), sans
    purpose = _openssl("x509", "-in", out / "server.pem", "-noout", "-ext", "extendedKeyUsage").stdout
    assert "TLS Web Server Authentication" in purpose
    token = (out / "token").read_text().strip()
    assert len(token) >= 32
    assert (out / "tokens").read_text() == f"dev {hashlib.sha256(token.encode()).hexdigest()}\n"
    assert stat.S_IMODE((out / "token").stat().st_mode) == 0o600
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) & 0o007 == 0, f"{key} is world-readable"

    before = _snapshot(out)
    second = _run(out)
    assert "wrote" not in second
    assert _snapshot(out) == before, "a second run rewrote a file"


def test_dev_secrets_repair_only_what_is_missing(tmp_path):
    out = tmp_path / "dev"
    _run(out)
    # A team added by hand survives a new dev token; the old dev token's line goes.
    with (out / "tokens").open("a") as f:
        f.write("team-a " + "0" * 64 + "\n")
    old = (out / "tokens").read_text().splitlines()[0]
    (out / "token").unlink()
    _run(out)
    token = (out / "token").read_text().strip()
    lines = (out / "tokens").read_text().splitlines()
    assert old not in lines
    assert sorted(lines) == sorted(["team-a " + "0" * 64, f"dev {hashlib.sha256(token.encode()).hexdigest()}"])
    # A new CA means a new server certificate, which it verifies.
    server = (out / "server.pem").read_bytes()
    (out / "ca.pem").unlink()
    _run(out)
    assert (out / "server.pem").read_bytes() != server
    assert _openssl("verify", "-CAfile", out / "ca.pem", out / "server.pem").returncode == 0


def test_a_server_with_the_dev_secrets_serves_the_dev_token_and_health_over_tls(tmp_path, make_settings):
    from memscore.cli import main
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
    ca = str(out / "ca.pem")
    try:
        token = (out / "token").read_text().strip()
        with Client(f"localhost:{port}", f"localhost:{port}", timeout=10, token=token, tls_ca=ca) as c:
            job = c.submit_scoring(dataset="mnist1d", models=2, epochs=1, shard_size=2)
        assert rt.jobs.get(job.job_id).tenant == "dev"
        # compose's healthcheck: the address itself, by the certificate's IP SAN
        assert main(["health", "--tls-ca", ca, f"127.0.0.1:{port}"]) == 0
        # the k8s probes: 127.0.0.1, verified as the Service's name
        for name in ("memscore-gateway.memscore.svc", "memscore-results.memscore.svc"):
            assert main(["health", "--tls-ca", ca, "--tls-server-name", name, f"127.0.0.1:{port}"]) == 0
        # the name is checked: another namespace's Service is not in the certificate
        assert main(["health", "--tls-ca", ca, "--tls-server-name", "memscore-gateway.other.svc", f"127.0.0.1:{port}"])
        # and the server speaks TLS only
        assert main(["health", "--timeout", "2", f"127.0.0.1:{port}"]) != 0
    finally:
        server.stop(grace=0).wait()
