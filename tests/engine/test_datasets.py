"""Datasets: built-ins, users' .npz files and ImageFolder trees, validation messages, label noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memscore.engine.datasets import (
    BUILTINS,
    Dataset,
    DatasetError,
    collect_problems,
    dataset_from_npz_bytes,
    dataset_to_npz_bytes,
    flip_labels,
    load_dataset,
    load_digits_dataset,
    load_image_folder,
    load_longtail,
    load_mnist1d,
    load_npz,
    validate,
)
from tests.services.conftest import write_zip_bomb


def good_arrays(n: int = 30, m: int = 10, d: int = 5, c: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.standard_normal((n, d)).astype(np.float32),
        "y_train": np.arange(n) % c,
        "x_test": rng.standard_normal((m, d)).astype(np.float32),
        "y_test": np.arange(m) % c,
    }


def write_npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def npz_error(tmp_path: Path, **overrides) -> str:
    arrays = good_arrays()
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    with pytest.raises(DatasetError) as e:
        load_npz(write_npz(tmp_path, **arrays))
    return str(e.value)


# -- built-ins ----------------------------------------------------------------------------------


def test_digits_are_8x8_images_in_unit_range_split_stratified():
    ds = load_digits_dataset(seed=0)
    assert ds.kind == "image" and ds.feature_shape == (1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.n_train + ds.n_test == 1797 and abs(ds.n_test - 0.25 * 1797) < 1
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    train_share = np.bincount(ds.y_train, minlength=10) / ds.n_train
    test_share = np.bincount(ds.y_test, minlength=10) / ds.n_test
    assert np.abs(train_share - test_share).max() < 0.02
    assert load_digits_dataset(seed=0).fingerprint() == ds.fingerprint()
    assert load_digits_dataset(seed=1).fingerprint() != ds.fingerprint()


def test_mnist1d_is_a_40_step_sequence_and_stable_per_seed():
    ds = load_mnist1d(seed=3, num_samples=400)
    assert ds.kind == "sequence" and ds.feature_shape == (40,) and ds.num_classes == 10
    assert (ds.n_train, ds.n_test) == (320, 80)
    assert load_mnist1d(seed=3, num_samples=400).fingerprint() == ds.fingerprint()


def test_longtail_has_rare_subgroups_with_the_claimed_counts():
    ds = load_longtail(seed=0)
    assert ds.kind == "image" and ds.feature_shape == (1, 16, 16)
    assert (ds.n_train, ds.n_test, ds.num_classes) == (2000, 500, 10)
    sub_tr, sub_te = ds.extras["train_subgroup"], ds.extras["test_subgroup"]
    assert sub_tr.shape == (2000,) and sub_te.shape == (500,)
    groups = np.unique(sub_tr[sub_tr >= 0])
    assert len(groups) == 30  # 3 subgroups per class
    train_counts = np.bincount(sub_tr[sub_tr >= 0])
    assert train_counts.min() >= 1 and train_counts.max() <= 3
    assert (np.bincount(sub_te[sub_te >= 0]) == 3).all()
    # a subgroup belongs to one class, and in train it is rare: a few % of the data at most
    for g in groups:
        assert len(np.unique(ds.y_train[sub_tr == g])) == 1
        assert (ds.y_test[sub_te == g] == g // 3).all()
    assert (sub_tr >= 0).mean() < 0.05
    # rare examples look like their subgroup, not like their class's common examples
    g0 = np.flatnonzero(sub_te == 0)[0]
    same_group = ds.x_train[sub_tr == 0].mean(0)
    common = ds.x_train[(sub_tr == -1) & (ds.y_train == 0)].mean(0)
    assert np.abs(ds.x_test[g0] - same_group).mean() < np.abs(ds.x_test[g0] - common).mean()
    assert load_longtail(seed=0).fingerprint() == ds.fingerprint()
    assert load_longtail(seed=1).fingerprint() != ds.fingerprint()


def test_longtail_rejects_sizes_too_small_for_its_subgroups():
    with pytest.raises(DatasetError, match="n_train"):
        load_longtail(n_train=50)


def test_load_dataset_resolves_builtins_and_lists_them_for_unknown_refs(tmp_path):
    assert load_dataset("digits", seed=0).fingerprint() == load_digits_dataset(seed=0).fingerprint()
    assert load_dataset("longtail", seed=2).fingerprint() == load_longtail(seed=2).fingerprint()
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar-1000")
    assert all(b in str(e.value) for b in BUILTINS)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(str(tmp_path / "missing.npz"))


# -- .npz round trips ---------------------------------------------------------------------------


def test_npz_vectors_round_trip(tmp_path):
    arrays = good_arrays()
    ds = load_dataset(str(write_npz(tmp_path, **arrays, class_names=np.array(["a", "b", "c"]))))
    assert ds.kind == "vector" and ds.feature_shape == (5,) and ds.num_classes == 3
    assert ds.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.x_train, arrays["x_train"])
    assert ds.y_train.dtype == np.int64


def test_npz_bytes_round_trip_keeps_fingerprint_kind_and_extras():
    ds = load_longtail(seed=0, n_train=300, n_test=100, num_classes=4, image_size=8)
    back = dataset_from_npz_bytes(dataset_to_npz_bytes(ds))
    assert back.fingerprint() == ds.fingerprint()
    assert (back.kind, back.num_classes, back.class_names) == (ds.kind, ds.num_classes, ds.class_names)
    np.testing.assert_array_equal(back.extras["train_subgroup"], ds.extras["train_subgroup"])
    seq = Dataset("s", *(a for a in good_arrays(d=7).values()), num_classes=3, kind="sequence")
    assert dataset_from_npz_bytes(dataset_to_npz_bytes(seq)).kind == "sequence"


def test_npz_uint8_nhwc_images_become_float_nchw_in_unit_range(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(12, 6, 5, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
    ds = load_npz(
        write_npz(tmp_path, x_train=x_train, y_train=np.arange(12) % 2, x_test=x_test, y_test=np.arange(4) % 2)
    )
    assert ds.kind == "image" and ds.feature_shape == (3, 6, 5)
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1.0
    np.testing.assert_allclose(ds.x_train[1, 2, 4, 3], x_train[1, 4, 3, 2] / 255, rtol=1e-6)


def test_npz_grey_images_get_a_channel_and_float_labels_that_are_whole_are_accepted(tmp_path):
    ds = load_npz(
        write_npz(
            tmp_path,
            x_train=np.zeros((6, 4, 4)),
            y_train=np.array([0, 1, 2, 0, 1, 2.0]),
            x_test=np.zeros((2, 4, 4)),
            y_test=np.array([1.0, 2.0]),
        )
    )
    assert ds.kind == "image" and ds.feature_shape == (1, 4, 4) and ds.num_classes == 3
    assert ds.y_train.dtype == np.int64


def test_npz_nchw_images_are_kept(tmp_path):
    ds = load_npz(
        write_npz(
            tmp_path,
            x_train=np.zeros((4, 3, 8, 8), np.float32),
            y_train=np.array([0, 1, 0, 1]),
            x_test=np.zeros((2, 3, 8, 8), np.float32),
            y_test=np.array([0, 1]),
        )
    )
    assert ds.feature_shape == (3, 8, 8)


# -- bad .npz files: every problem named --------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"x_train": np.array([["a"] * 5] * 30)}, "x_train: dtype <U1 is not numeric"),
        ({"x_test": np.ones((10, 5), np.complex64)}, "x_test: dtype complex64 is not numeric"),
        ({"y_train": np.arange(29) % 3}, "y_train: 29 labels for 30 examples"),
        ({"x_test": np.zeros((10, 6), np.float32)}, "x_test: feature shape (6,) differs from x_train's (5,)"),
        ({"y_train": (np.arange(30) % 3) + 0.5}, "y_train: labels must be integers; label 0.5 (example 0)"),
        ({"y_test": np.array(["a"] * 10)}, "y_test: labels must be integers"),
        ({"y_test": np.array([0, 1, 2, -1, 0, 1, 2, 0, 1, 2])}, "y_test: label -1 (example 3) is outside 0..2"),
        ({"y_train": np.arange(30) % 3 * 2}, "y_train: classes 1, 3 have no training examples"),
        ({"x_train": np.zeros((0, 5)), "y_train": np.zeros(0, int)}, "x_train: the train set is empty"),
        ({"x_test": np.zeros((0, 5)), "y_test": np.zeros(0, int)}, "x_test: the test set is empty"),
        ({"x_train": np.zeros(30)}, "x_train: expected 2 to 4 dimensions"),
        ({"x_train": np.zeros((30, 1, 1, 1, 5))}, "x_train: expected 2 to 4 dimensions"),
        ({"y_train": np.zeros((30, 2), int)}, "y_train: expected 1 dimension"),
        ({"class_names": np.array(["a", "b"])}, "y_train: label 2 (example 2) is outside 0..1"),
        ({"class_names": np.array([1, 2, 3])}, "class_names: expected a 1-D array of strings"),
        ({"x_test": None}, "x_test: missing from the .npz"),
        ({"x_train": np.array([object()] * 30)}, "x_train: cannot be read without pickle"),
        ({"kind": np.array("audio")}, "kind: must be one of"),
        ({"x_test": np.full((10, 5), 1e300)}, "x_test: 50 values exceed float32's range"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_npz_raises_naming_the_problem(tmp_path, overrides, expected):
    if any(isinstance(v, np.ndarray) and v.dtype == object for v in overrides.values()):
        path = tmp_path / "data.npz"
        arrays = {**good_arrays(), **overrides}
        np.savez(path, **arrays, allow_pickle=True)
        with pytest.raises(DatasetError) as e:
            load_npz(path)
        message = str(e.value)
    else:
        message = npz_error(tmp_path, **overrides)
    assert expected in message


def test_nan_and_inf_are_counted_with_the_first_example(tmp_path):
    x = good_arrays()["x_train"]
    x[7, 2] = np.nan
    x[9, 0] = np.inf
    x[9, 1] = np.nan
    message = npz_error(tmp_path, x_train=x)
    assert "x_train: 3 non-finite values (2 NaN, 1 inf); the first in example 7" in message


def test_class_with_no_training_examples_is_named_by_its_class_name(tmp_path):
    message = npz_error(tmp_path, class_names=np.array(["a", "b", "c", "d"]))
    assert "class 3 ('d') has no training examples" in message


def test_all_problems_are_listed_in_one_message(tmp_path):
    x = good_arrays()["x_train"]
    x[0, 0] = np.nan
    with pytest.raises(DatasetError) as e:
        load_npz(
            write_npz(
                tmp_path, x_train=x, y_train=np.arange(30) % 3, x_test=np.zeros((10, 6)), y_test=np.arange(10) + 0.5
            )
        )
    assert str(e.value).startswith("3 problems:")
    assert {f for f, _ in e.value.problems} == {"x_train", "x_test", "y_test"}


def test_too_many_examples_is_refused_before_reading_the_features(tmp_path):
    with pytest.raises(DatasetError, match="x_train: 30 examples exceeds the limit of 20"):
        load_npz(write_npz(tmp_path, **good_arrays()), max_train_examples=20)
    with pytest.raises(DatasetError, match="exceeds the limit of 20"):
        validate(load_npz(write_npz(tmp_path, **good_arrays())), max_train_examples=20)


def test_garbage_bytes_are_not_a_readable_npz():
    with pytest.raises(DatasetError, match="not a readable .npz"):
        dataset_from_npz_bytes(b"definitely not a zip file")


def test_validate_checks_datasets_built_in_code():
    a = good_arrays()
    ds = Dataset(
        "d", a["x_train"], a["y_train"], a["x_test"], a["y_test"], num_classes=3, kind="image", class_names=["a", "b"]
    )
    fields = dict(collect_problems(ds))
    assert "class_names" in fields and "kind" in fields
    bad = Dataset(
        "d",
        a["x_train"].astype(np.float64),
        a["y_train"].astype(np.float32),
        a["x_test"],
        a["y_test"],
        num_classes=3,
        kind="vector",
    )
    with pytest.raises(DatasetError, match="x_train: dtype float64 is not float32.*y_train: labels must be integers"):
        validate(bad)
    validate(Dataset("d", a["x_train"], a["y_train"], a["x_test"], a["y_test"], num_classes=3, kind="vector"))


# -- ImageFolder ---------------------------------------------------------------------------------


def write_png_tree(root: Path, classes=("cat", "dog"), per_class=3, size=(6, 5), mode="RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
                Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(
                    root / split / c / f"{i}.png"
                )


def test_image_folder_loads_rgb_pngs_as_nchw_floats(tmp_path):
    write_png_tree(tmp_path)
    ds = load_dataset(str(tmp_path))
    assert ds.kind == "image" and ds.feature_shape == (3, 5, 6)
    assert (ds.n_train, ds.n_test, ds.num_classes) == (6, 6, 2)
    assert ds.class_names == ["cat", "dog"]
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1])


def test_image_folder_keeps_greyscale_as_one_channel(tmp_path):
    write_png_tree(tmp_path, mode="L")
    assert load_image_folder(tmp_path).feature_shape == (1, 5, 6)


def test_image_folder_with_mixed_sizes_names_the_odd_file(tmp_path):
    from PIL import Image

    write_png_tree(tmp_path)
    Image.new("RGB", (9, 9)).save(tmp_path / "test" / "dog" / "big.png")
    with pytest.raises(DatasetError, match=r"big\.png is 9x9"):
        load_image_folder(tmp_path)


def test_image_folder_needs_train_and_test_with_the_same_classes(tmp_path):
    write_png_tree(tmp_path)
    with pytest.raises(DatasetError, match="train is not a directory"):
        load_image_folder(tmp_path / "train")
    (tmp_path / "test" / "dog").rename(tmp_path / "test" / "wolf")
    with pytest.raises(DatasetError, match=r"only in train: \['dog'\], only in test: \['wolf'\]"):
        load_image_folder(tmp_path)


# -- label noise ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.99])
def test_flip_labels_flips_exactly_that_fraction_each_to_another_class(fraction):
    ds = load_longtail(seed=0, n_train=300, n_test=100, num_classes=4, image_size=8)
    noisy, idx = flip_labels(ds, fraction, seed=5)
    assert len(idx) == round(fraction * ds.n_train) == len(np.unique(idx))
    changed = np.flatnonzero(noisy.y_train != ds.y_train)
    np.testing.assert_array_equal(changed, idx)
    assert noisy.y_train.min() >= 0 and noisy.y_train.max() < ds.num_classes
    np.testing.assert_array_equal(noisy.y_test, ds.y_test)
    again, idx2 = flip_labels(ds, fraction, seed=5)
    np.testing.assert_array_equal(idx, idx2)
    assert again.fingerprint() == noisy.fingerprint()
    if len(idx):
        np.testing.assert_array_equal(noisy.extras["clean_y_train"], ds.y_train)


def test_fraction_one_draws_every_label_at_random_as_zhang_et_al():
    """Not "another class" (which would tell the model the class an example is not): uniform
    over all C classes, independent of the example, so about 1/C keep their class."""
    ds = load_longtail(seed=0, n_train=2000, n_test=100, num_classes=4, image_size=8)
    noisy, idx = flip_labels(ds, 1.0, seed=5)
    np.testing.assert_array_equal(idx, np.flatnonzero(noisy.y_train != ds.y_train))
    assert abs(len(idx) / ds.n_train - 0.75) < 0.04
    counts = np.bincount(noisy.y_train, minlength=4)
    assert (np.abs(counts / ds.n_train - 0.25) < 0.04).all()
    for c in range(4):  # the new label says nothing of the old one
        new = noisy.y_train[ds.y_train == c]
        assert abs((new == c).mean() - 0.25) < 0.07
    np.testing.assert_array_equal(flip_labels(ds, 1.0, seed=5)[0].y_train, noisy.y_train)


def test_flip_labels_rejects_fractions_outside_0_1():
    ds = load_longtail(seed=0, n_train=300, n_test=100, num_classes=4, image_size=8)
    with pytest.raises(DatasetError, match="fraction"):
        flip_labels(ds, 1.5, seed=0)


def test_builtin_shapes_known_to_the_gateway_match_the_loaders():
    from memscore.engine.catalog import BUILTIN_FACTS, BUILTIN_SHAPES
    from memscore.engine.datasets import load_dataset

    for name, shape in BUILTIN_SHAPES.items():
        ds = load_dataset(name)
        assert ds.feature_shape == shape
        facts = BUILTIN_FACTS[name]
        assert (ds.n_train, ds.n_test, ds.num_classes, ds.kind) == (
            facts["n_train"], facts["n_test"], facts["num_classes"], facts["kind"]
        )  # fmt: skip


def test_a_compression_bomb_is_refused_before_it_is_inflated(tmp_path):
    import tracemalloc

    path = tmp_path / "bomb.npz"
    write_zip_bomb(path, 512 << 20)
    assert path.stat().st_size < 2 << 20  # 512 MiB of zeros in under 2 MiB
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match="MEMSCORE_MAX_COMPRESSION_RATIO"):
            load_npz(path, max_compression_ratio=100)
        with pytest.raises(DatasetError, match="MEMSCORE_MAX_DECOMPRESSED_BYTES"):
            load_npz(path, max_decompressed_bytes=64 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # nothing was inflated


def test_a_huge_label_is_refused_without_counting_that_many_classes(tmp_path):
    import tracemalloc

    path = tmp_path / "labels.npz"
    y = np.zeros(20, np.int64)
    y[3] = 10**8
    np.savez(path, x_train=np.zeros((20, 4), np.float32), y_train=y, x_test=np.zeros((5, 4), np.float32), y_test=y[:5])
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as e:
            load_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ("num_classes", "100000001 classes (labels up to 100000000) exceeds the limit of 100000") in e.value.problems
    assert peak < 16 << 20, peak


@pytest.mark.parametrize(
    "x, extra",
    [
        (np.zeros((30, 7), np.float32), {}),  # vectors
        (np.zeros((30, 9, 8), np.uint8), {}),  # (n, h, w) pixels
        (np.zeros((30, 9, 8, 3), np.uint8), {}),  # NHWC
        (np.zeros((30, 3, 9, 8), np.float64), {}),  # NCHW
        (np.zeros((30, 2, 40), np.float32), {"kind": np.array("sequence")}),
        (np.zeros((30, 40), np.int16), {"class_names": np.array(["a", "b", "c", "d"])}),
    ],
)
def test_npz_facts_from_headers_equal_what_loading_finds(tmp_path, x, extra):
    """The gateway sizes a dataset under the data roots from its arrays' headers and labels;
    the facts must be those of the loaded dataset."""
    from memscore.engine.datasets import npz_facts

    path = tmp_path / "d.npz"
    y = np.arange(len(x)) % 4
    np.savez_compressed(path, x_train=x, y_train=y, x_test=x[:11], y_test=y[:11], **extra)
    ds = load_npz(path)
    assert npz_facts(path) == {
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "num_classes": ds.num_classes,
        "kind": ds.kind,
        "feature_shape": list(ds.feature_shape),
    }


def test_npz_facts_refuse_a_file_whose_headers_do_not_say(tmp_path):
    from memscore.engine.datasets import npz_facts

    np.savez(tmp_path / "no_y.npz", x_train=np.zeros((4, 2)), x_test=np.zeros((2, 2)), y_test=np.zeros(2))
    np.savez(
        tmp_path / "short.npz",
        x_train=np.zeros((4, 2)),
        y_train=np.zeros(3),
        x_test=np.zeros((2, 2)),
        y_test=np.zeros(2),
    )
    (tmp_path / "cut.npz").write_bytes((tmp_path / "short.npz").read_bytes()[:200])
    for name in ("no_y", "short", "cut"):
        with pytest.raises(DatasetError):
            npz_facts(tmp_path / f"{name}.npz")


def test_image_folder_facts_count_the_files_and_bound_the_channels(tmp_path):
    from memscore.engine.datasets import image_folder_facts

    write_png_tree(tmp_path, classes=("a", "b", "c"), per_class=2, size=(6, 5), mode="L")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path)
    facts = image_folder_facts(tmp_path)
    assert (facts["n_train"], facts["n_test"], facts["num_classes"]) == (ds.n_train, ds.n_test, ds.num_classes)
    assert facts["kind"] == "image" and facts["feature_shape"] == [3, 5, 6]  # greyscale loads (1, 5, 6)
