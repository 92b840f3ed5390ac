"""A real `memscore-worker` with MEMSCORE_LOG_FORMAT=json writes JSON lines, and the records
its tasks emit carry the job id and shard."""

from __future__ import annotations

import json

import pytest

from memscore.api.v1 import job_pb2
from memscore.client import Client

from .conftest import write_blobs_npz

pytestmark = pytest.mark.integration


@pytest.mark.slow  # > 10 s on 2 cores
def test_worker_writes_json_lines_tagged_with_the_job(stack, tmp_path):
    stack.env["MEMSCORE_LOG_FORMAT"] = "json"
    worker = stack.start_worker("json")
    with Client(stack.gateway, stack.results, timeout=30) as client:
        ref = client.upload(write_blobs_npz(tmp_path / "blobs.npz")).dataset_ref
        job = client.submit_scoring(dataset=ref, model="mlp", models=4, epochs=2, seed=1, shard_size=2)
        assert client.wait(job.job_id, timeout=180).state == job_pb2.JOB_STATE_SUCCEEDED, stack.worker_logs()
    stack.stop_workers()  # flushes and closes its log
    log_file = stack.log_dir / f"worker-json-{stack.workers.index(worker)}.log"
    # Celery's SIGTERM handler prints "worker: Warm shutdown (MainProcess)" itself, not as a log record.
    lines = [line for line in log_file.read_text().splitlines() if line.strip() and not line.startswith("worker: ")]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n{log_file.read_text()[-3000:]}")
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    tagged = [r for r in records if r.get("job_id") == job.job_id]
    assert {r.get("shard") for r in tagged if "shard" in r} == {0, 1}, records
    assert any(r["logger"].startswith("memscore.worker") for r in tagged)
    assert any("ready" in r["message"] and "job_id" not in r for r in records)  # outside any task: no job
