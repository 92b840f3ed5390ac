"""A model plugin through the real service: the test plugin package (tests/model_plugins.py)
installed for the gateway (this process) and the worker processes (their PYTHONPATH), as a
platform would install it into its images."""

from __future__ import annotations

import io
import os

import grpc
import pyarrow.parquet as pq
import pytest

from memscore.api.v1 import job_pb2
from memscore.client import Client, field_violations
from memscore.engine.traces import Trace
from memscore.store import layout
from tests.model_plugins import write_plugin_package

from .conftest import build_stack

pytestmark = pytest.mark.integration


@pytest.fixture
def plugin_stack(tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch):
    site = write_plugin_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))  # the gateway, in this process
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    with build_stack(tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch) as st:
        yield st


@pytest.mark.slow  # ~13 s on 2 cores: a worker process starts and trains 4 models
def test_a_plugin_model_job_succeeds_and_one_that_does_not_take_the_data_is_refused(plugin_stack):
    with Client(plugin_stack.gateway, plugin_stack.results, timeout=60) as client:
        # digits' examples are 1x8x8: test-takes-16 takes 16-d vectors only; the gateway's dry run says so
        with pytest.raises(grpc.RpcError) as e:
            client.submit_scoring(dataset="digits", model="test-takes-16", models=4)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [(field, why)] = field_violations(e.value)
        assert field == "spec.scoring.model" and "does not take examples of shape (1, 8, 8)" in why

        plugin_stack.start_worker()
        job = client.submit_scoring(dataset="digits", model="test-tiny", models=4, shard_size=2, seed=1)
        final = client.wait(job.job_id, timeout=240)
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED, plugin_stack.worker_logs()
        scores = pq.read_table(io.BytesIO(client.artifact(job.job_id, "scores.parquet")))
        assert scores.num_rows == 1347
        # the workers trained the plugin's model with its recipe attribute (lr 5e-3, 60 steps)
        trace = Trace.from_bytes(plugin_stack.runtime.objects.get_bytes(layout.trace_key(job.job_id, 0)))
        assert trace.meta["arch"] == "test-tiny" and trace.meta["steps"] == 60 and trace.meta["recipe"]["lr"] == 5e-3
