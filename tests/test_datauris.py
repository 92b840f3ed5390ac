"""s3:// Parquet datasets: only under the prefixes MEMSCORE_DATA_URIS allows (a tenant's own
entries for that tenant alone), the same answer for "not allowed" and "absent", strict URI
syntax, shards and train/test tables under a prefix, a download budget; read from a real S3
server (moto) with the store's own endpoint and credentials."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memscore.datarefs import check_dataset_ref, load_job_dataset
from memscore.datauris import split_uri, uris_for
from memscore.engine.datasets import DatasetError
from memscore.engine.parquet import ParquetColumns
from memscore.store.objects import LocalObjectStore, open_object_store

from .conftest import S3_ACCESS_KEY, S3_SECRET_KEY


def table(n: int = 24, d: int = 4, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "embedding": pa.array(list(rng.standard_normal((n, d)).astype(np.float32)), pa.list_(pa.float32())),
            "label": np.arange(n) % 3,
            "split": ["test" if i % 4 == 0 else "train" for i in range(n)],
        }
    )


def parquet_bytes(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


@pytest.fixture
def data(s3_settings, s3_endpoint, s3_bucket):
    """(the job store, the data bucket's name): a second bucket on the same server holding
    tables, read with the store's credentials."""
    from memscore.store.objects import S3ObjectStore

    bucket = f"{s3_bucket}-data"
    owner = S3ObjectStore(s3_endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, bucket)  # creates it
    t = table()
    owner.put_bytes("shared/t.parquet", parquet_bytes(t))
    owner.put_bytes("team-a/t.parquet", parquet_bytes(t))
    owner.put_bytes("team-ab/t.parquet", parquet_bytes(t))
    for i, (lo, hi) in enumerate([(0, 10), (10, 24)]):
        owner.put_bytes(f"shared/shards/part-{i}.parquet", parquet_bytes(t.slice(lo, hi - lo)))
    owner.put_bytes("shared/shards/_SUCCESS", b"")
    plain = t.drop_columns(["split"])
    owner.put_bytes("shared/two/train/a.parquet", parquet_bytes(plain.slice(0, 16)))
    owner.put_bytes("shared/two/test/a.parquet", parquet_bytes(plain.slice(16)))
    return open_object_store(s3_settings), bucket


def same_answer(a: str, b: str, ref_a: str, ref_b: str) -> bool:
    return a.replace(repr(ref_a), "REF") == b.replace(repr(ref_b), "REF")


def test_uri_syntax_is_strict():
    assert split_uri("s3://my-data/team/t.parquet") == ("my-data", "team/t.parquet")
    assert split_uri("s3://my-data/team/") == ("my-data", "team/")
    for bad in ("s3://my-data/a/../b", "s3://my-data/a//b", "s3://my-data/./a", "s3://My_Data/a", "s3://x/a"):
        with pytest.raises(ValueError):
            split_uri(bad)
    with pytest.raises(ValueError, match="only letters"):
        split_uri("s3://my-data/a b?.parquet")


def test_tenant_entries_are_that_tenants_alone():
    entries = ["s3://shared/all", "team-a=s3://private/a", "not a uri"]
    assert uris_for(entries, "team-a") == [("shared", "all"), ("private", "a")]
    assert uris_for(entries, "team-b") == [("shared", "all")]
    assert uris_for(entries, None) == [("shared", "all")]


def test_an_allowed_table_loads_and_a_forbidden_one_reads_as_absent(data):
    objects, bucket = data
    uris = [f"s3://{bucket}/shared", f"s3://{bucket}/team-a", f"s3://{bucket}-nope/shared"]
    ok = f"s3://{bucket}/shared/t.parquet"
    assert check_dataset_ref(ok, objects, uris=uris) is None
    ds = load_job_dataset(ok, objects, uris=uris)
    assert (ds.n_train, ds.n_test, ds.kind, ds.name) == (18, 6, "vector", "t")

    forbidden, absent = f"s3://{bucket}/team-ab/t.parquet", f"s3://{bucket}/shared/none.parquet"
    no_bucket = f"s3://{bucket}-nope/shared/t.parquet"
    why = {ref: check_dataset_ref(ref, objects, uris=uris) for ref in (forbidden, absent, no_bucket)}
    assert all(why.values()) and "MEMSCORE_DATA_URIS" in why[forbidden]
    assert same_answer(why[forbidden], why[absent], forbidden, absent)
    assert same_answer(why[forbidden], why[no_bucket], forbidden, no_bucket)
    assert not objects._client.bucket_exists(f"{bucket}-nope")  # read as it is, never created
    assert check_dataset_ref(ok, objects) is not None  # no MEMSCORE_DATA_URIS: no s3:// datasets
    with pytest.raises(DatasetError) as e:
        load_job_dataset(forbidden, objects, uris=uris)
    assert same_answer(str(e.value), why[forbidden], forbidden, forbidden)


def test_a_tenants_prefix_is_invisible_to_other_tenants(data):
    objects, bucket = data
    uris = [f"team-a=s3://{bucket}/team-a"]
    ref, absent = f"s3://{bucket}/team-a/t.parquet", f"s3://{bucket}/team-a/none.parquet"
    assert check_dataset_ref(ref, objects, tenant="team-a", uris=uris) is None
    other = check_dataset_ref(ref, objects, tenant="team-b", uris=uris)
    assert other and same_answer(other, check_dataset_ref(absent, objects, tenant="team-a", uris=uris), ref, absent)
    with pytest.raises(DatasetError):
        load_job_dataset(ref, objects, tenant="team-b", uris=uris)


def test_shards_and_train_test_tables_under_a_prefix_load(data):
    objects, bucket = data
    uris = [f"s3://{bucket}/shared"]
    whole = load_job_dataset(f"s3://{bucket}/shared/t.parquet", objects, uris=uris)
    shards = load_job_dataset(f"s3://{bucket}/shared/shards/", objects, uris=uris)
    assert shards.fingerprint() == whole.fingerprint() and shards.name == "shards"
    two = load_job_dataset(f"s3://{bucket}/shared/two", objects, uris=uris, columns=ParquetColumns(split="unused"))
    assert (two.n_train, two.n_test) == (16, 8)


def test_bad_syntax_a_local_store_and_the_download_budget_are_refused_clearly(data, tmp_path):
    objects, bucket = data
    uris = [f"s3://{bucket}/shared"]
    why = check_dataset_ref(f"s3://{bucket}/shared/../team-a/t.parquet", objects, uris=uris)
    assert why and "'..'" in why
    local = check_dataset_ref(f"s3://{bucket}/shared/t.parquet", LocalObjectStore(tmp_path / "store"), uris=uris)
    assert local and "MEMSCORE_STORE=s3://" in local and "local directory" in local
    with pytest.raises(DatasetError, match="MEMSCORE_MAX_DECOMPRESSED_BYTES"):
        load_job_dataset(f"s3://{bucket}/shared/shards/", objects, uris=uris, max_bytes=100)


def test_the_gateway_reads_facts_by_ranges_without_the_features(data, monkeypatch):
    from memscore.datarefs import uri_dataset_facts
    from memscore.store import objects as objects_module

    objects, bucket = data
    owner = objects.bucket_reader(bucket)
    rng = np.random.default_rng(1)
    wide = pa.table(
        {
            "embedding": pa.array(list(rng.standard_normal((6000, 256)).astype(np.float32)), pa.list_(pa.float32())),
            "label": np.arange(6000) % 5,
            "split": ["test" if i % 4 == 0 else "train" for i in range(6000)],
        }
    )
    owner.put_bytes("shared/wide.parquet", parquet_bytes(wide))
    read = []
    real = objects_module._RangedObject.readinto
    monkeypatch.setattr(
        objects_module._RangedObject, "readinto", lambda self, b: read.append(real(self, b)) or read[-1]
    )
    uris = [f"s3://{bucket}/shared"]
    facts = uri_dataset_facts(f"s3://{bucket}/shared/wide.parquet", objects, uris, None)
    assert facts == {"n_train": 4500, "n_test": 1500, "num_classes": 5, "kind": "vector", "feature_shape": [256]}
    assert sum(read) < owner.size("shared/wide.parquet") / 2  # 6 MB of features: a page or two read
    shards = uri_dataset_facts(f"s3://{bucket}/shared/two/", objects, uris, None)
    assert (shards["n_train"], shards["n_test"]) == (16, 8)
    with pytest.raises(DatasetError, match="MEMSCORE_DATA_URIS"):
        uri_dataset_facts(f"s3://{bucket}/team-a/t.parquet", objects, uris, None)


def test_a_tables_identity_changes_with_its_content_and_is_none_where_it_may_not_be_read(data):
    from memscore.datarefs import dataset_identity

    objects, bucket = data
    uris = (f"s3://{bucket}/shared",)
    ref = f"s3://{bucket}/shared/shards/"
    first = dataset_identity(ref, objects, uris=uris)
    assert first is not None and first == dataset_identity(ref, objects, uris=uris)
    objects.bucket_reader(bucket).put_bytes("shared/shards/part-1.parquet", parquet_bytes(table(seed=1).slice(10, 14)))
    assert dataset_identity(ref, objects, uris=uris) not in (None, first)
    assert dataset_identity(f"s3://{bucket}/team-a/t.parquet", objects, uris=uris) is None  # not allowed
    assert dataset_identity(f"s3://{bucket}/shared/none.parquet", objects, uris=uris) is None  # absent


def test_an_image_table_in_the_object_store_loads_as_the_same_images_as_locally(data, tmp_path):
    from memscore.engine.parquet import load_parquet
    from tests.engine.test_parquet import image_table

    objects, bucket = data
    t, pixels = image_table(n=12, size=6, colour=True)
    objects.bucket_reader(bucket).put_bytes("shared/img/t.parquet", parquet_bytes(t))
    pq.write_table(t, tmp_path / "t.parquet")
    remote = load_job_dataset(f"s3://{bucket}/shared/img/", objects, uris=[f"s3://{bucket}/shared"])
    local = load_parquet(tmp_path / "t.parquet")
    assert remote.kind == "image" and remote.feature_shape == (3, 6, 6)
    assert remote.fingerprint() == local.fingerprint()
    first_train = int(np.flatnonzero(np.asarray(t.column("split").to_pylist()) == "train")[0])
    np.testing.assert_allclose(remote.x_train[0], pixels[first_train].transpose(2, 0, 1) / 255.0, atol=1e-6)
