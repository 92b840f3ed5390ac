"""Parquet datasets: vectors and images, one file, shards and train/test tables, string labels,
facts without decoding, and every bad input named by column and row."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from memscore.engine.datasets import DatasetError, load_dataset
from memscore.engine.parquet import MAX_IMAGE_PIXELS, ParquetColumns, load_parquet, parquet_facts, table_layout


def vector_table(n: int = 30, d: int = 5, classes: int = 3, test_every: int = 4, seed: int = 0) -> pa.Table:
    """Rows i with label i % classes; every `test_every`-th row is a test row."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return pa.table(
        {
            "embedding": pa.array(list(x), pa.list_(pa.float32())),
            "label": pa.array(np.arange(n) % classes, pa.int64()),
            "split": ["test" if i % test_every == 0 else "train" for i in range(n)],
        }
    )


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def image_table(n: int = 12, size: int = 6, colour: bool = False, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n, size, size, 3) if colour else (n, size, size)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    table = pa.table(
        {
            "image": pa.array([png(p) for p in pixels], pa.binary()),
            "label": np.arange(n) % 2,
            "split": ["test" if i % 3 == 0 else "train" for i in range(n)],
        }
    )
    return table, pixels


def write(table: pa.Table, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kwargs)
    return path


def error_of(path: Path, **columns) -> str:
    with pytest.raises(DatasetError) as e:
        load_parquet(path, ParquetColumns(**columns))
    return str(e.value)


# -- what loads ----------------------------------------------------------------------------------


def test_a_vector_table_splits_by_its_split_column_keeping_row_order(tmp_path):
    table = vector_table()
    ds = load_dataset(str(write(table, tmp_path / "t.parquet")))
    x = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    test = np.arange(30) % 4 == 0
    assert ds.kind == "vector" and ds.feature_shape == (5,) and ds.num_classes == 3
    np.testing.assert_array_equal(ds.x_train, x[~test])
    np.testing.assert_array_equal(ds.x_test, x[test])
    np.testing.assert_array_equal(ds.y_train, (np.arange(30) % 3)[~test])
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64


def test_fixed_size_lists_of_doubles_and_small_row_groups_read_the_same(tmp_path):
    table = vector_table(n=40)
    x = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
    fixed = table.set_column(0, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 5))
    a = load_parquet(write(table, tmp_path / "a.parquet"))
    b = load_parquet(write(fixed, tmp_path / "b.parquet", row_group_size=7))
    assert a.fingerprint() == b.fingerprint()


def test_shards_are_read_in_name_order_as_one_table(tmp_path):
    table = vector_table(n=30)
    whole = load_parquet(write(table, tmp_path / "whole.parquet"))
    shards = tmp_path / "shards"
    for i, (lo, hi) in enumerate([(0, 11), (11, 20), (20, 30)]):
        write(table.slice(lo, hi - lo), shards / f"part-{i:03d}.parquet")
    (shards / "_SUCCESS").write_text("")  # what Spark leaves beside its shards
    ds = load_dataset(str(shards))
    assert ds.fingerprint() == whole.fingerprint() and ds.name == "shards"


def test_train_and_test_tables_need_no_split_column(tmp_path):
    table = vector_table(n=30).drop_columns(["split"])
    for layout in ("files", "dirs"):
        root = tmp_path / layout
        if layout == "files":
            write(table.slice(0, 20), root / "train.parquet")
            write(table.slice(20), root / "test.parquet")
        else:
            write(table.slice(0, 12), root / "train" / "a.parquet")
            write(table.slice(12, 8), root / "train" / "b.parquet")
            write(table.slice(20), root / "test" / "a.parquet")
        ds = load_dataset(str(root))
        assert (ds.n_train, ds.n_test) == (20, 10), layout
        np.testing.assert_array_equal(ds.y_test, np.arange(20, 30) % 3)


def test_string_labels_become_classes_in_sorted_order(tmp_path):
    names = np.array(["dog", "cat", "emu"])
    table = vector_table(n=30).set_column(1, "species", pa.array(names[np.arange(30) % 3]).dictionary_encode())
    ds = load_parquet(write(table, tmp_path / "t.parquet"), ParquetColumns(label="species"))
    assert ds.class_names == ["cat", "dog", "emu"]
    expected = np.searchsorted(ds.class_names, names[np.arange(30) % 3])
    np.testing.assert_array_equal(np.concatenate([ds.y_train, ds.y_test]), ds_order(expected))


def ds_order(y: np.ndarray) -> np.ndarray:
    """Labels of rows 0..29 as a dataset orders them: train rows, then test rows."""
    test = np.arange(len(y)) % 4 == 0
    return np.concatenate([y[~test], y[test]])


def test_png_images_decode_to_unit_range_chw_grey_and_colour(tmp_path):
    for colour in (False, True):
        table, pixels = image_table(colour=colour)
        ds = load_dataset(str(write(table, tmp_path / f"img{colour}.parquet")))
        c = 3 if colour else 1
        assert ds.kind == "image" and ds.feature_shape == (c, 6, 6)
        first_train = pixels[1] if not colour else pixels[1].transpose(2, 0, 1)
        np.testing.assert_allclose(ds.x_train[0].reshape(first_train.shape), first_train / 255.0, atol=1e-6)
        assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_a_colour_image_after_grey_ones_turns_the_whole_set_to_rgb(tmp_path):
    table, pixels = image_table(n=6)
    cells = table.column("image").to_pylist()
    cells[4] = png(np.stack([pixels[4]] * 3, axis=-1))  # the same pixels, saved as RGB
    ds = load_parquet(write(table.set_column(0, "image", pa.array(cells, pa.binary())), tmp_path / "t.parquet"))
    assert ds.feature_shape == (3, 6, 6)
    np.testing.assert_allclose(ds.x_train[0, 0], ds.x_train[0, 2])  # a grey image: three equal planes
    np.testing.assert_allclose(ds.x_train[0, 1], pixels[1] / 255.0, atol=1e-6)


def test_facts_come_without_decoding_and_match_the_loaded_dataset(tmp_path):
    path = write(vector_table(n=30, d=7), tmp_path / "v.parquet")
    ds = load_parquet(path)
    assert parquet_facts(path) == {
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "num_classes": 3,
        "kind": "vector",
        "feature_shape": [7],
    }
    table, _ = image_table(n=12, size=6)
    facts = parquet_facts(write(table, tmp_path / "i.parquet"))
    assert facts["kind"] == "image" and facts["feature_shape"] == [3, 6, 6]  # channels: an upper bound
    assert (facts["n_train"], facts["n_test"]) == (8, 4)


def test_layouts_are_recognised_by_name():
    assert table_layout(["b.parquet", "a.parquet", "_SUCCESS", ".a.parquet.crc"], "d") == {
        "all": ["a.parquet", "b.parquet"]
    }
    assert table_layout(["train.parquet", "test.parquet", "x.parquet"], "d") == {
        "train": ["train.parquet"],
        "test": ["test.parquet"],
    }
    assert table_layout(["train/1.parquet", "test/2.parquet", "train/0.parquet"], "d") == {
        "train": ["train/0.parquet", "train/1.parquet"],
        "test": ["test/2.parquet"],
    }
    with pytest.raises(DatasetError, match="no test.parquet or test/"):
        table_layout(["train.parquet"], "d")
    with pytest.raises(DatasetError, match="no .parquet files"):
        table_layout(["notes.txt"], "d")


# -- every bad input, named ----------------------------------------------------------------------


def test_a_missing_column_lists_the_tables_columns(tmp_path):
    path = write(vector_table(), tmp_path / "t.parquet")
    message = error_of(path, label="target")
    assert "column 'target'" in message and "--label-column" in message
    assert "embedding, label, split" in message
    assert "column 'image'" in error_of(path, feature="image")
    no_split = write(vector_table().drop_columns(["split"]), tmp_path / "n.parquet")
    assert "column 'split'" in error_of(no_split) and "--split-column" in error_of(no_split)


def test_ragged_vectors_name_the_first_bad_row(tmp_path):
    table = vector_table(n=10, d=3)
    cells = table.column("embedding").to_pylist()
    cells[6] = [1.0, 2.0]
    message = error_of(write(table.set_column(0, "embedding", pa.array(cells)), tmp_path / "t.parquet"))
    assert "column 'embedding'" in message and "row 6 has 2 values" in message and "first row has 3" in message


def test_nan_and_null_features_name_their_rows(tmp_path):
    table = vector_table(n=10, d=3)
    cells = table.column("embedding").to_pylist()
    cells[7] = [0.0, float("nan"), 1.0]
    message = error_of(write(table.set_column(0, "embedding", pa.array(cells)), tmp_path / "nan.parquet"))
    assert "row 7" in message and "NaN" in message
    cells[7] = None
    message = error_of(write(table.set_column(0, "embedding", pa.array(cells)), tmp_path / "null.parquet"))
    assert "row 7 is null" in message


def test_null_negative_and_float_labels_are_refused_naming_the_column(tmp_path):
    table = vector_table(n=10)
    for name, labels, expected in (
        ("null", pa.array([0, 1, 2, None, 0, 1, 2, 0, 1, 2], pa.int64()), "row 3 is null"),
        ("negative", pa.array([0, 1, 2, 0, 0, -1, 2, 0, 1, 2], pa.int64()), "row 5 has label -1"),
        ("float", pa.array(np.arange(10) % 3 + 0.5), "type double is not integers or strings"),
    ):
        message = error_of(write(table.set_column(1, "label", labels), tmp_path / f"{name}.parquet"))
        assert "column 'label'" in message and expected in message, name


def test_a_bad_split_value_names_the_first_bad_row_and_its_shard(tmp_path):
    table = vector_table(n=20)
    splits = table.column("split").to_pylist()
    splits[13] = "validation"
    bad = table.set_column(2, "split", pa.array(splits))
    write(bad.slice(0, 10), tmp_path / "d" / "a.parquet")
    write(bad.slice(10), tmp_path / "d" / "b.parquet")
    message = error_of(tmp_path / "d")
    assert "column 'split'" in message and "row 13 (b.parquet row 3)" in message and "'validation'" in message


def test_shards_with_different_schemas_are_refused(tmp_path):
    table = vector_table(n=20)
    write(table.slice(0, 10), tmp_path / "d" / "a.parquet")
    write(table.slice(10).set_column(1, "label", pa.array(np.arange(10) % 3, pa.int32())), tmp_path / "d" / "b.parquet")
    message = error_of(tmp_path / "d")
    assert "b.parquet" in message and "schema" in message


def test_an_undecodable_image_names_its_row(tmp_path):
    table, _ = image_table(n=6)
    cells = table.column("image").to_pylist()
    cells[4] = b"\x89PNG\r\n\x1a\n not really"
    message = error_of(write(table.set_column(0, "image", pa.array(cells, pa.binary())), tmp_path / "t.parquet"))
    assert "column 'image'" in message and "row 4" in message


def test_images_of_mixed_sizes_name_the_first_odd_one(tmp_path):
    table, _ = image_table(n=6, size=6)
    cells = table.column("image").to_pylist()
    cells[5] = png(np.zeros((7, 6), np.uint8))
    message = error_of(write(table.set_column(0, "image", pa.array(cells, pa.binary())), tmp_path / "t.parquet"))
    assert "row 5 is 6x7" in message and "first image is 6x6" in message


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5) + 2
    bomb = png(np.zeros((side, side), np.uint8))  # compresses to a few KB
    table = pa.table({"image": pa.array([bomb, bomb], pa.binary()), "label": [0, 1], "split": ["train", "test"]})
    message = error_of(write(table, tmp_path / "t.parquet"))
    assert f"{side}x{side} image" in message and "limit" in message


def test_decoded_size_over_the_limit_is_refused_before_reading_features(tmp_path):
    path = write(vector_table(n=30, d=5), tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match="MEMSCORE_MAX_DECOMPRESSED_BYTES"):
        load_parquet(path, max_decoded_bytes=30 * 5 * 4 - 1)
    assert load_parquet(path, max_decoded_bytes=30 * 5 * 4).n_train == 22


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"label,embedding\n1,2\n")
    message = error_of(path)
    assert "t.parquet: not a readable Parquet file" in message


def test_a_class_without_training_rows_is_reported_as_for_npz(tmp_path):
    table = vector_table(n=12, classes=3, test_every=1000)
    labels = np.arange(12) % 2  # class 2 only in a test row
    labels[0] = 2
    splits = ["test"] + ["train"] * 11
    t = table.set_column(1, "label", pa.array(labels)).set_column(2, "split", pa.array(splits))
    assert "class 2 has no training examples" in error_of(write(t, tmp_path / "t.parquet"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts the process's open files in /proc")
def test_more_shards_than_the_process_may_open_files_load(tmp_path):
    import subprocess
    import sys

    table = vector_table(n=120)
    for i in range(60):
        write(table.slice(2 * i, 2), tmp_path / "d" / f"part-{i:03d}.parquet")
    code = (
        "import os, resource\n"
        "from memscore.engine.parquet import load_parquet\n"
        "limit = len(os.listdir('/proc/self/fd')) + 24\n"  # far fewer than the 60 shards
        "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        f"ds = load_parquet({str(tmp_path / 'd')!r})\n"
        "print(ds.n_train + ds.n_test)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "120", run.stderr[-2000:]
