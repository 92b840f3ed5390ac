"""Tenants and tokens over TLS, against a real embedded deployment (gRPC on loopback sockets,
worker thread, local store): tenant A's jobs, datasets and artifacts are invisible to tenant B
(NOT_FOUND, word for word what a job that does not exist gets), calls without a valid token
are UNAUTHENTICATED, request ids are per tenant, and the CLI works end to end with
--tls-ca and MEMSCORE_TOKEN."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memscore import embedded
from memscore.api.v1 import job_pb2
from memscore.api.v1 import results_service_pb2 as rpb
from memscore.api.v1 import scoring_service_pb2 as spb
from memscore.api.v1 import scoring_service_pb2_grpc as spb_grpc
from memscore.client import Client, open_channel
from memscore.runtime import set_runtime
from memscore.settings import ENV_VARS, Settings
from memscore.store import layout

from .conftest import write_blobs_npz, write_pki, write_tokens

pytestmark = pytest.mark.integration

SPEC = dict(model="mlp", models=4, epochs=2, seed=3, shard_size=2)
TOKENS = {"token-of-team-a-0123456789": "team-a", "token-of-team-b-9876543210": "team-b"}
TOKEN_A, TOKEN_B = list(TOKENS)


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    """(deployment, PKI paths, client of A, client of B, A's finished job, A's dataset ref)."""
    tmp = tmp_path_factory.mktemp("tenancy")
    pki = write_pki(tmp / "pki")
    tokens = write_tokens(tmp / "tokens", TOKENS)
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV_VARS:
            mp.delenv(name, raising=False)
        settings = Settings(
            home=tmp / "home",
            auth_tokens=str(tokens),
            tls_cert=str(pki["server_cert"]),
            tls_key=str(pki["server_key"]),
        )
        e = embedded.start(settings, 0, 0, "127.0.0.1")
        addr = (f"127.0.0.1:{e.gateway_port}", f"127.0.0.1:{e.results_port}")
        try:
            with (
                Client(*addr, timeout=30, token=TOKEN_A, tls_ca=str(pki["ca"])) as a,
                Client(*addr, timeout=30, token=TOKEN_B, tls_ca=str(pki["ca"])) as b,
            ):
                ref = a.upload(write_blobs_npz(tmp / "a.npz", n=120, m=40)).dataset_ref
                job = a.submit_scoring(dataset=ref, keep_checkpoints=True, **SPEC)
                done = a.wait(job.job_id, timeout=300)
                assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
                yield e, pki, a, b, done, ref, tmp
        finally:
            e.stop()
            set_runtime(None)


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_calls_without_a_valid_token_are_unauthenticated_and_health_needs_none(tenants):
    e, pki, *_ = tenants
    target = f"127.0.0.1:{e.gateway_port}"
    for token in ("", "not-a-token", TOKEN_A + "x"):
        with Client(target, target, timeout=10, token=token, tls_ca=str(pki["ca"])) as c:
            err = _error(lambda: c.list())
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, token
            assert TOKEN_A not in (err.details() or "") and (not token or token not in err.details())
    with open_channel(target, token="", tls_ca=str(pki["ca"])) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        header = [("authorization", "Basic dXNlcjpwYXNz")]
        stub = spb_grpc.ScoringServiceStub(ch)
        err = _error(lambda: stub.ListJobs(spb.ListJobsRequest(), metadata=header, timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in err.details()


def test_a_plaintext_client_cannot_talk_to_the_tls_servers(tenants):
    e, *_ = tenants
    target = f"127.0.0.1:{e.gateway_port}"
    with Client(target, target, timeout=5, token=TOKEN_A, tls_ca="") as c:
        assert _error(lambda: c.list()).code() == grpc.StatusCode.UNAVAILABLE


def test_another_tenants_job_is_not_found_exactly_as_a_missing_one(tenants):
    _, _, a, b, job, _, _ = tenants
    jid, missing = job.job_id, "job-0000000000000000"
    scoring = {
        "GetJob": lambda j: b.get(j),
        "CancelJob": lambda j: b.cancel(j),
        "WatchJob": lambda j: list(b.watch(j, timeout=10)),
        "ExtendJob": lambda j: b.extend(j, 2),
        "StreamRanked": lambda j: b.ranked(j, limit=5),
        "GetExample": lambda j: b.example(j, 0),
        "StreamInfluence": lambda j: b.influence(j),
        "GetArtifact": lambda j: b.artifact(j, "scores.parquet"),
        "GetExposure": lambda j: b.exposure(j),
        "QueryInfluence": lambda j: b.results.QueryInfluence(
            rpb.QueryInfluenceRequest(job_id=j, examples_npz=b"x", top_k=3), timeout=10
        ),
    }
    for rpc, call in scoring.items():
        theirs, nobodys = _error(lambda: call(jid)), _error(lambda: call(missing))
        assert theirs.code() == nobodys.code() == grpc.StatusCode.NOT_FOUND, rpc
        assert theirs.details().replace(jid, "ID") == nobodys.details().replace(missing, "ID"), rpc
    # nothing B did touched A's job
    mine = a.get(jid)
    assert mine.state == job_pb2.JOB_STATE_SUCCEEDED and not mine.cancel_requested and mine.version == job.version
    assert len(a.artifact(jid, "scores.parquet")) > 0


def test_list_jobs_shows_only_the_callers_jobs(tenants):
    _, _, a, b, job, _, _ = tenants
    b_job = b.submit_scoring(dataset="mnist1d", models=2, epochs=1, shard_size=2, request_id="b-list")
    a_ids = {j.job_id for j in a.list(page_size=1000)[0]}
    b_ids = {j.job_id for j in b.list(page_size=1000)[0]}
    assert job.job_id in a_ids and job.job_id not in b_ids
    assert b_job.job_id in b_ids and b_job.job_id not in a_ids
    b.cancel(b_job.job_id)


def test_another_tenants_upload_cannot_be_named_and_gets_the_not_uploaded_answer(tenants):
    _, _, a, b, _, ref, tmp = tenants
    absent = layout.dataset_key(hashlib.sha256(b"nobody uploaded this").hexdigest())
    theirs = _error(lambda: b.submit_scoring(dataset=ref, **SPEC))
    nobodys = _error(lambda: b.submit_scoring(dataset=absent, **SPEC))
    assert theirs.code() == nobodys.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert theirs.details().replace(ref, "REF") == nobodys.details().replace(absent, "REF")
    # B uploading the very same bytes earns B its own receipt: then B may use it
    assert b.upload(write_blobs_npz(tmp / "b-same.npz", n=120, m=40)).dataset_ref == ref
    job = b.submit_scoring(dataset=ref, models=2, epochs=1, shard_size=2)
    assert job.spec.scoring.dataset == ref
    b.cancel(job.job_id)


def test_request_ids_are_per_tenant(tenants):
    _, _, a, b, _, _, _ = tenants
    spec = dict(dataset="mnist1d", models=2, epochs=1, shard_size=2)
    ja, jb = a.submit_scoring(request_id="nightly", **spec), b.submit_scoring(request_id="nightly", **spec)
    assert ja.job_id != jb.job_id
    assert a.submit_scoring(request_id="nightly", **spec).job_id == ja.job_id
    assert b.submit_scoring(request_id="nightly", **spec).job_id == jb.job_id
    for c, j in ((a, ja), (b, jb)):
        c.cancel(j.job_id)
    err = _error(lambda: a.submit_scoring(request_id="bad\x00id", **spec))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in err.details()


def test_the_cli_submits_watches_and_reads_results_over_tls_with_a_token(tenants):
    e, pki, _, _, _, ref, tmp = tenants
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(MEMSCORE_TOKEN=TOKEN_A, PYTHONPATH=os.pathsep.join(sys.path))
    service = ["--gateway", f"127.0.0.1:{e.gateway_port}", "--results", f"127.0.0.1:{e.results_port}"]
    tls = ["--tls-ca", str(pki["ca"])]

    def cli(*args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "memscore.cli", *args],
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )

    run = cli("submit", "--dataset", ref, "--model", "mlp", "--models", "2", "--epochs", "1", "--wait", *service, *tls)
    assert run.returncode == 0, run.stderr
    job_id = next(w for w in run.stdout.split() if w.startswith("job-"))
    csv = tmp / "cli.csv"
    res = cli("results", job_id, "--top", "5", "--csv", str(csv), *service, *tls)
    assert res.returncode == 0, res.stderr
    assert len(csv.read_text().splitlines()) == 6
    # the same command as tenant B: the job is not there
    other = cli("results", job_id, *service, *tls, extra_env={"MEMSCORE_TOKEN": TOKEN_B})
    assert other.returncode == 1 and "NOT_FOUND" in other.stderr
    # no CA: the TLS server is unreachable in plaintext, and says so in one line
    plain = cli("status", *service)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
    health = cli("health", f"127.0.0.1:{e.results_port}", *tls)
    assert health.returncode == 0 and "SERVING" in health.stdout


def test_the_results_of_a_job_are_the_same_bytes_for_their_owner(tenants):
    """Tenancy changes who may read, not what is read: the owner's scores are the stored ones."""
    e, _, a, _, job, _, _ = tenants
    stored = e.runtime.objects.get_bytes(layout.result_key(job.job_id, "scores.parquet"))
    assert a.artifact(job.job_id, "scores.parquet") == stored
    assert e.runtime.jobs.get(job.job_id).tenant == "team-a"
    assert np.isfinite([r.memorization for r in a.ranked(job.job_id, limit=3)]).all()
