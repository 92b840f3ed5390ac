"""`memscore up` serves the whole flow with no Redis and no S3: one process, memory broker,
local store and SQLite job state under MEMSCORE_HOME."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest

from memscore.api.v1 import job_pb2
from memscore.client import Client
from memscore.engine.datasets import load_dataset
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec
from memscore.settings import ENV_VARS

from ..conftest import free_port
from .conftest import wait_for, write_blobs_npz

pytestmark = pytest.mark.integration


def _healthy(target: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as ch:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1
    except grpc.RpcError:
        return False


def start_up(tmp_path, gw: int, res: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["MEMSCORE_HOME"] = str(tmp_path / "home")
    env["MEMSCORE_DATA_ROOTS"] = str(tmp_path)  # jobs may name files under tmp_path by server path
    env["OMP_NUM_THREADS"] = "1"
    log = open(tmp_path / "up.log", "a")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memscore.cli",
            "up",
            "--gateway-port",
            str(gw),
            "--results-port",
            str(res),
            "--bind",
            "127.0.0.1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for(lambda: _healthy(f"127.0.0.1:{gw}") and _healthy(f"127.0.0.1:{res}"), 60, what="memscore up")
    return proc


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@pytest.mark.slow  # > 10 s on 2 cores
def test_embedded_up_serves_submit_watch_results(tmp_path):
    gw, res = free_port(), free_port()
    proc = start_up(tmp_path, gw, res)
    try:
        blobs = write_blobs_npz(tmp_path / "blobs.npz")
        spec = dict(model="mlp", models=6, epochs=3, seed=1, shard_size=3)
        with Client(f"127.0.0.1:{gw}", f"127.0.0.1:{res}") as c:
            job = c.submit_scoring(dataset=str(blobs), **spec)  # a server path under MEMSCORE_DATA_ROOTS
            done = c.wait(job.job_id, timeout=120)
            assert done.state == job_pb2.JOB_STATE_SUCCEEDED, (tmp_path / "up.log").read_text()[-3000:]
            ranked = c.ranked(job.job_id, limit=0)
        local = run_scoring(load_dataset(str(blobs)), ScoringSpec(dataset=str(blobs), **spec), device="cpu")
        mem = local.scores["memorization"]
        want = np.lexsort((np.arange(len(mem)), np.where(np.isnan(mem), np.inf, -mem)))
        assert [e.index for e in ranked] == want.tolist()
        assert (tmp_path / "home" / "jobs.sqlite3").exists()
        assert list((tmp_path / "home" / "store" / "jobs").glob(f"{job.job_id}/results/scores.parquet"))
        check_cli_commands(f"127.0.0.1:{gw}", f"127.0.0.1:{res}", job.job_id, blobs, tmp_path, ranked)
    finally:
        stop(proc)


@pytest.mark.slow  # > 10 s on 2 cores
def test_embedded_up_killed_mid_job_resumes_it_on_restart(tmp_path):
    """The in-memory queue dies with the process; the job store and the traces do not."""
    from memscore.store.jobs import SqliteJobStore

    gw, res = free_port(), free_port()
    blobs = write_blobs_npz(tmp_path / "blobs.npz")
    spec = dict(model="mlp", models=12, epochs=300, seed=1, shard_size=2)
    proc = start_up(tmp_path, gw, res)
    try:
        with Client(f"127.0.0.1:{gw}", f"127.0.0.1:{res}") as c:
            job = c.submit_scoring(dataset=str(blobs), **spec)
            wait_for(lambda: c.get(job.job_id).progress.shards_done >= 2, 120, what="two shards done")
        stop(proc, signal.SIGKILL)
        jobs = SqliteJobStore(tmp_path / "home" / "jobs.sqlite3")
        rec = jobs.get(job.job_id)
        assert rec.state == "RUNNING" and 2 <= rec.shards_done < 6
        done_before = rec.shards_done
        proc = start_up(tmp_path, gw, res)
        with Client(f"127.0.0.1:{gw}", f"127.0.0.1:{res}") as c:
            final = c.wait(job.job_id, timeout=180)
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED, (tmp_path / "up.log").read_text()[-3000:]
        delivered_once = sum(jobs.incr_attempts(job.job_id, s) == 2 for s in range(6))
        assert delivered_once >= done_before  # finished shards were not trained again
        local = run_scoring(load_dataset(str(blobs)), ScoringSpec(dataset=str(blobs), **spec), device="cpu")
        with Client(f"127.0.0.1:{gw}", f"127.0.0.1:{res}") as c:
            got = [e.memorization for e in sorted(c.ranked(job.job_id, limit=0), key=lambda e: e.index)]
        np.testing.assert_array_equal(np.array(got), local.scores["memorization"])
    finally:
        stop(proc)


def check_cli_commands(gateway: str, results: str, job_id: str, blobs, tmp_path, ranked) -> None:
    """The client commands users script against, on a live server."""
    import csv
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from memscore.cli import main

    svc = ["--gateway", gateway, "--results", results]

    def run(*args):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
        return code, out.getvalue(), err.getvalue()

    code, out, _ = run("results", job_id, "--top", "5", *svc)
    assert code == 0 and len(out.strip().splitlines()) == 6  # header + 5 rows
    assert out.splitlines()[1].split()[0] == str(ranked[0].index)
    code, _, _ = run("results", job_id, "--top", "0", "--class", "2", "--csv", str(tmp_path / "c2.csv"), *svc)
    rows = list(csv.DictReader(open(tmp_path / "c2.csv")))
    assert code == 0 and rows and all(r["label"] == "2" for r in rows)
    code, out, _ = run("influence", job_id, "--test-index", "3", "--top", "4", *svc)
    assert code == 0 and len(out.strip().splitlines()) == 5
    code, out, _ = run("status", job_id, *svc)
    assert code == 0 and "JOB_STATE_SUCCEEDED" in out
    code, out, _ = run("status", *svc)
    assert code == 0 and job_id in out
    code, out, _ = run("watch", job_id, *svc)
    assert code == 0 and "SUCCEEDED" in out
    code, out, _ = run("upload", str(blobs), *svc)
    assert code == 0 and out.strip().startswith("datasets/") and out.strip().endswith(".npz")
    code, out, _ = run(
        "submit",
        "--dataset",
        out.strip(),
        "--model",
        "mlp",
        "--models",
        "4",
        "--epochs",
        "2",
        "--shard-size",
        "2",
        "--request-id",
        "cli-1",
        "--wait",
        *svc,
    )
    assert code == 0 and out.splitlines()[0].startswith("job-") and "SUCCEEDED" in out
    code, _, err = run("cancel", "job-nope", *svc)
    assert code == 1 and "NOT_FOUND" in err
    code, _, err = run("submit", "--dataset", "mnist1d", "--models", "1", "--ratio", "2", *svc)
    assert code == 1 and "INVALID_ARGUMENT" in err and "spec.scoring.ratio" in err and "spec.scoring.models" in err
    code, _, _ = run("report", job_id, "--out", str(tmp_path / "r.html"), "--results", results)
    assert code == 0 and "data:image/png;base64" in (tmp_path / "r.html").read_text()
