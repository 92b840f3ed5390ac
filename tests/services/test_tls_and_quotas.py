"""TLS details and per-tenant quotas over real gRPC sockets: a renewed certificate is served
without a restart, mTLS names the tenant by the client certificate, and a tenant at its quota
of active jobs or stored bytes gets RESOURCE_EXHAUSTED while another tenant does not."""

from __future__ import annotations

import os
import shutil

import grpc
import pytest

from memscore.client import Client

from .conftest import write_blobs_npz, write_pki, write_tokens

pytestmark = pytest.mark.integration

MNIST = dict(dataset="mnist1d", models=2, epochs=1, shard_size=2)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def test_a_renewed_certificate_is_served_at_the_next_handshake_without_a_restart(start, tmp_path):
    old, new = write_pki(tmp_path / "old", ca_name="old-ca"), write_pki(tmp_path / "new", ca_name="new-ca")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(old["server_cert"], cert)
    shutil.copy(old["server_key"], key)
    _, target = start(tls_cert=str(cert), tls_key=str(key))
    with Client(target, target, timeout=10, tls_ca=str(old["ca"])) as c:
        assert c.list()[0] == []
    shutil.copy(new["server_key"], key)
    shutil.copy(new["server_cert"], cert)
    os.utime(cert, ns=(0, os.stat(cert).st_mtime_ns + 10**9))
    with Client(target, target, timeout=10, tls_ca=str(new["ca"])) as c:
        assert c.list()[0] == []
    with Client(target, target, timeout=5, tls_ca=str(old["ca"])) as c:
        assert _code(lambda: c.list()) == grpc.StatusCode.UNAVAILABLE  # the old certificate is gone


def test_a_half_written_certificate_keeps_the_previous_one(start, tmp_path):
    pki = write_pki(tmp_path / "pki")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki["server_cert"], cert)
    shutil.copy(pki["server_key"], key)
    _, target = start(tls_cert=str(cert), tls_key=str(key))
    cert.write_text(cert.read_text()[:200])  # truncated mid-rotation
    with Client(target, target, timeout=10, tls_ca=str(pki["ca"])) as c:
        assert c.list()[0] == []


def test_mtls_names_the_tenant_by_the_client_certificate(start, tmp_path):
    pki = write_pki(tmp_path / "pki", clients=("team-c",))
    rt, target = start(tls_cert=str(pki["server_cert"]), tls_key=str(pki["server_key"]), tls_client_ca=str(pki["ca"]))
    creds = dict(tls_ca=str(pki["ca"]), tls_client_cert=str(pki["team-c_cert"]), tls_client_key=str(pki["team-c_key"]))
    with Client(target, target, timeout=10, **creds) as c:
        job = c.submit_scoring(**MNIST)
        assert [j.job_id for j in c.list()[0]] == [job.job_id]
    assert rt.jobs.get(job.job_id).tenant == "team-c"
    with Client(target, target, timeout=5, tls_ca=str(pki["ca"])) as anonymous:
        assert _code(lambda: anonymous.list()) == grpc.StatusCode.UNAVAILABLE  # no certificate: no handshake


def test_a_tenant_at_its_active_job_quota_is_refused_and_others_are_not(start, tmp_path):
    tokens = write_tokens(tmp_path / "tokens", {"ta": "team-a", "tb": "team-b"})
    rt, target = start(auth_tokens=str(tokens), tenant_max_active_jobs=2)
    with Client(target, target, timeout=10, token="ta") as a, Client(target, target, timeout=10, token="tb") as b:
        first = a.submit_scoring(request_id="one", **MNIST)
        a.submit_scoring(**MNIST)
        with pytest.raises(grpc.RpcError) as e:
            a.submit_scoring(**MNIST)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "MEMSCORE_TENANT_MAX_ACTIVE_JOBS" in (
            e.value.details()
        )
        assert a.submit_scoring(request_id="one", **MNIST).job_id == first.job_id  # a retry is no new job
        assert b.submit_scoring(**MNIST).job_id  # team-b has its own quota
        a.cancel(first.job_id)  # nothing in flight: CANCELLED at once, the slot is free
        assert a.submit_scoring(**MNIST).job_id
    assert rt.jobs.count_active("team-a") == 2


def test_a_tenant_at_its_stored_bytes_quota_is_refused_and_the_same_bytes_again_are_not(start, tmp_path):
    tokens = write_tokens(tmp_path / "tokens", {"ta": "team-a", "tb": "team-b"})
    one, two = write_blobs_npz(tmp_path / "one.npz", seed=1), write_blobs_npz(tmp_path / "two.npz", seed=2)
    rt, target = start(auth_tokens=str(tokens), tenant_max_stored_bytes=int(one.stat().st_size * 1.5))
    with Client(target, target, timeout=10, token="ta") as a, Client(target, target, timeout=10, token="tb") as b:
        ref = a.upload(one).dataset_ref
        assert a.upload(one).dataset_ref == ref  # stored once: no more bytes
        with pytest.raises(grpc.RpcError) as e:
            a.upload(two)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "MEMSCORE_TENANT_MAX_STORED_BYTES" in (
            e.value.details()
        )
        assert b.upload(two).dataset_ref  # team-b's bytes are its own
        assert a.submit_scoring(dataset=ref, models=2, epochs=1, shard_size=2).job_id  # what was stored still works
