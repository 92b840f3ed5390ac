"""The gateway's view of a Parquet table under the data roots: its facts read with the spec's
columns (no features decoded), and a bad column named as a problem of spec.scoring.dataset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memscore.dataplane.specs import check_scoring, dataset_meta
from memscore.engine.parquet import ParquetColumns
from memscore.errors import InvalidArgument
from memscore.store.objects import LocalObjectStore


@pytest.fixture
def table(tmp_path):
    """(a table under the data root, settings allowing that root, a local store)."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    t = pa.table(
        {
            "vec": pa.array(list(rng.standard_normal((40, 6)).astype(np.float32)), pa.list_(pa.float32())),
            "kind": np.array(["x", "y"])[np.arange(40) % 2],
            "part": ["test" if i % 5 == 0 else "train" for i in range(40)],
        }
    )
    root.mkdir()
    pq.write_table(t, root / "t.parquet")
    return root / "t.parquet", root, LocalObjectStore(tmp_path / "store")


def test_the_gateway_sizes_a_parquet_table_with_the_specs_columns(table, make_settings):
    path, root, objects = table
    settings = make_settings(data_roots=(str(root),))
    columns = ParquetColumns(feature="vec", label="kind", split="part")
    meta = dataset_meta(str(path), objects, settings, columns=columns)
    assert meta == {"n_train": 32, "n_test": 8, "num_classes": 2, "kind": "vector", "feature_shape": [6]}
    spec = dict(dataset=str(path), models=4, feature_column="vec", label_column="kind", split_column="part")
    checked, shards, models, _ = check_scoring(spec, settings, objects)
    assert checked["label_column"] == "kind" and (shards, models) == (1, 4)


def test_a_missing_column_is_a_dataset_problem_listing_the_columns(table, make_settings):
    path, root, objects = table
    settings = make_settings(data_roots=(str(root),))
    with pytest.raises(InvalidArgument) as e:
        check_scoring(dict(dataset=str(path), models=4, feature_column="vec"), settings, objects)
    [(field, message)] = e.value.violations
    assert field == "spec.scoring.dataset" and "column 'label'" in message and "vec, kind, part" in message
