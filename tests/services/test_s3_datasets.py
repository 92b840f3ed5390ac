"""A job whose dataset is an s3:// Parquet table: the gateway checks it is allowed and there,
a worker process downloads it with the store's credentials and the job succeeds; a URI outside
MEMSCORE_DATA_URIS is INVALID_ARGUMENT before anything is queued. `memscore submit` of a local
table uploads its arrays."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memscore.api.v1 import job_pb2
from memscore.client import Client, field_violations
from memscore.store.objects import S3ObjectStore

from .conftest import build_stack, write_blobs_npz

pytestmark = pytest.mark.integration


@pytest.fixture
def data_stack(tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch):
    """The stack, allowed to read s3://<data bucket>/tables on its own S3 server."""
    data_bucket = f"{s3_bucket}-data"
    allowed = {"MEMSCORE_DATA_URIS": f"s3://{data_bucket}/tables"}
    with build_stack(
        tmp_path, s3_endpoint, s3_credentials, s3_bucket, redis_url, monkeypatch, env_overrides=allowed
    ) as st:
        yield st, S3ObjectStore(s3_endpoint, *s3_credentials, bucket=data_bucket)


def blobs_table(tmp_path) -> tuple[pa.Table, int]:
    """The blobs as a Parquet table with string labels in column "target"; (table, n_train)."""
    blobs = np.load(write_blobs_npz(tmp_path / "blobs.npz", n=48, m=16, d=8, classes=3))
    x = np.concatenate([blobs["x_train"], blobs["x_test"]])
    y = np.array(["a", "b", "c"])[np.concatenate([blobs["y_train"], blobs["y_test"]])]
    split = ["train"] * 48 + ["test"] * 16
    return pa.table({"embedding": pa.array(list(x), pa.list_(pa.float32())), "target": y, "split": split}), 48


def test_a_job_on_an_s3_parquet_table_succeeds_and_a_forbidden_uri_is_refused(data_stack, tmp_path):
    stack, data = data_stack
    table, n_train = blobs_table(tmp_path)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data.put_bytes("tables/blobs.parquet", buf.getvalue())
    data.put_bytes("private/blobs.parquet", buf.getvalue())
    ref = f"s3://{data.bucket}/tables/blobs.parquet"
    with Client(stack.gateway, stack.results, timeout=30) as client:
        with pytest.raises(grpc.RpcError) as e:
            client.submit_scoring(dataset=f"s3://{data.bucket}/private/blobs.parquet", models=4, label_column="target")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(e.value)] == ["spec.scoring.dataset"]

        stack.start_worker()
        job = client.submit_scoring(dataset=ref, model="mlp", models=4, epochs=1, shard_size=4, label_column="target")
        final = client.wait(job.job_id, timeout=180)
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED, final.message + stack.worker_logs()
        scores = pq.read_table(io.BytesIO(client.artifact(job.job_id, "scores.parquet")))
    assert scores.num_rows == n_train
    expected = np.searchsorted(["a", "b", "c"], table.column("target").to_numpy(zero_copy_only=False)[:n_train])
    np.testing.assert_array_equal(scores.column("label").to_numpy(), expected)


def test_submit_uploads_a_local_parquet_table_read_with_its_column_flags(stack, tmp_path, capsys):
    from memscore.cli import main

    table, _ = blobs_table(tmp_path)
    pq.write_table(table, tmp_path / "blobs.parquet")
    service = ["--gateway", stack.gateway, "--results", stack.results]
    args = ["submit", "--dataset", str(tmp_path / "blobs.parquet"), "--models", "2", *service]
    assert main(args) == 2  # read here: the missing label column is named before anything is sent
    assert "column 'label'" in capsys.readouterr().err
    assert main([*args, "--label-column", "target"]) == 0
    out, err = capsys.readouterr()
    assert "uploaded" in err and "datasets/" in err
    with Client(stack.gateway, stack.results, timeout=30) as client:
        job = client.get(out.strip())
    assert job.spec.scoring.dataset.startswith("datasets/") and job.spec.scoring.label_column == ""
    assert job.progress.models_total == 2
