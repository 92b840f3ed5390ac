"""Datasets: built-ins that work offline, users' `.npz` files, ImageFolder trees and Parquet tables
(`parquet.py`), validated.

A `Dataset` is plain numpy: x float32 of shape (n, *feature_shape), y int64 in 0..C-1. The
feature shape says what kind of data it is: (d,) flat vectors, (L,) or (c, L) sequences
(mnist1d), (c, h, w) images. Every problem with user data raises `DatasetError` naming it;
`collect_problems` finds all of them at once so a user fixes a file in one round trip.

Built-ins (`load_dataset` names): "mnist1d" (Greydanus 2020), "digits" (scikit-learn's 8x8
digits) and "longtail", a generated set whose rare subgroups are the examples Feldman & Zhang
(2020) say a model must memorize; `Dataset.extras` records which examples those are.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from .catalog import BUILTINS

if TYPE_CHECKING:
    from .parquet import ParquetColumns

KINDS = ("vector", "sequence", "image")
# Beyond this many examples in either split a file is certainly a mistake (or an attack on the
# gateway's memory), whatever the deployment's own limit (MEMSCORE_MAX_TRAIN_EXAMPLES) says.
MAX_EXAMPLES = 100_000_000
MAX_CLASSES = 100_000  # a label of 10**8 must not cost a 10**8-bin count before it is refused
# An archive whose members decompress to more than this many times its compressed size, and to
# more than BOMB_MIN_BYTES, is refused before anything is decompressed (a compression bomb).
BOMB_MIN_BYTES = 256 << 20
# Feature-shape ndim each kind allows: vectors (d,), sequences (L,) or (c, L), images (c, h, w).
_KIND_FEATURE_NDIM = {"vector": (1,), "sequence": (1, 2), "image": (3,)}


class DatasetError(ValueError):
    """A dataset is malformed; the message names the field and the problem.

    `problems` holds every (field, message) pair found, for callers that report them one by one
    (the gateway's INVALID_ARGUMENT field violations)."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [("dataset", message)]


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # float32 (n, *feature_shape)
    y_train: np.ndarray  # int64 (n,)
    x_test: np.ndarray  # float32 (m, *feature_shape)
    y_test: np.ndarray  # int64 (m,)
    num_classes: int
    kind: str  # "vector" | "sequence" | "image"
    class_names: list[str] = field(default_factory=list)
    # Per-example annotations that are not training data (e.g. longtail's `train_subgroup`,
    # `test_subgroup`: -1 for common examples). Not part of the fingerprint.
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def fingerprint(self) -> str:
        """sha256 of the arrays: two datasets with the same fingerprint give the same traces."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


# -- validation ----------------------------------------------------------------------------------


def _raise_if(problems: list[tuple[str, str]]) -> None:
    if problems:
        message = "; ".join(f"{f}: {m}" for f, m in problems)
        if len(problems) > 1:
            message = f"{len(problems)} problems: {message}"
        raise DatasetError(message, problems)


def _x_problems(name: str, x: object) -> list[tuple[str, str]]:
    if not isinstance(x, np.ndarray):
        return [(name, f"expected a numpy array, got {type(x).__name__}")]
    if x.dtype != np.float32:
        return [(name, f"dtype {x.dtype} is not float32")]
    if not 2 <= x.ndim <= 4:
        return [(name, f"expected 2 to 4 dimensions (n, *features), got shape {x.shape}")]
    out = []
    if 0 in x.shape[1:]:
        out.append((name, f"feature shape {x.shape[1:]} is empty"))
    bad = ~np.isfinite(x)
    if bad.any():
        n_nan = int(np.isnan(x).sum())
        n_bad = int(bad.sum())
        first = int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))
        out.append(
            (name, f"{n_bad} non-finite values ({n_nan} NaN, {n_bad - n_nan} inf); the first in example {first}")
        )
    return out


def _y_problems(name: str, y: object, num_classes: int) -> list[tuple[str, str]]:
    if not isinstance(y, np.ndarray):
        return [(name, f"expected a numpy array, got {type(y).__name__}")]
    if y.ndim != 1:
        return [(name, f"expected 1 dimension (n,), got shape {y.shape}")]
    if y.dtype.kind not in "iu":
        return [(name, f"labels must be integers, got dtype {y.dtype}")]
    bad = (y < 0) | (y >= num_classes)
    if num_classes >= 1 and bad.any():
        i = int(np.argmax(bad))
        return [
            (
                name,
                f"label {int(y[i])} (example {i}) is outside 0..{num_classes - 1}"
                + (f"; {int(bad.sum())} labels in all" if bad.sum() > 1 else ""),
            )
        ]
    return []


def collect_problems(ds: Dataset, max_train_examples: int | None = None) -> list[tuple[str, str]]:
    """Every (field, message) problem with `ds`, or [] if it is usable as it stands."""
    problems = _x_problems("x_train", ds.x_train) + _x_problems("x_test", ds.x_test)
    num_classes = ds.num_classes
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 2:
        problems.append(("num_classes", f"must be an integer of at least 2, got {num_classes!r}"))
        num_classes = 0
    elif num_classes > MAX_CLASSES:
        problems.append(
            (
                "num_classes",
                f"{num_classes} classes (labels up to {num_classes - 1}) exceeds the limit of {MAX_CLASSES}",
            )
        )
        num_classes = 0
    y_problems = _y_problems("y_train", ds.y_train, num_classes) + _y_problems("y_test", ds.y_test, num_classes)
    problems += y_problems
    x_ok = all(
        isinstance(x, np.ndarray) and x.dtype == np.float32 and 2 <= x.ndim <= 4 for x in (ds.x_train, ds.x_test)
    )

    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim >= 2 and y.ndim == 1):
            continue
        if len(x) != len(y):
            problems.append((f"y_{split}", f"{len(y)} labels for {len(x)} examples in x_{split}"))
        if len(x) == 0:
            problems.append((f"x_{split}", f"the {split} set is empty"))
        limit = MAX_EXAMPLES if split == "test" or max_train_examples is None else max_train_examples
        if len(x) > limit:
            problems.append((f"x_{split}", f"{len(x)} examples exceeds the limit of {limit}"))
    if x_ok and ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        problems.append(
            ("x_test", f"feature shape {ds.x_test.shape[1:]} differs from x_train's {ds.x_train.shape[1:]}")
        )

    if ds.kind not in KINDS:
        problems.append(("kind", f"{ds.kind!r} is not one of {', '.join(KINDS)}"))
    elif isinstance(ds.x_train, np.ndarray) and ds.x_train.ndim - 1 not in _KIND_FEATURE_NDIM[ds.kind]:
        problems.append(("kind", f"{ds.kind!r} data cannot have feature shape {ds.x_train.shape[1:]}"))

    if ds.class_names and len(ds.class_names) != num_classes:
        problems.append(("class_names", f"{len(ds.class_names)} names for {ds.num_classes} classes"))
    if num_classes and len(ds.y_train) and not any(f in ("y_train", "class_names") for f, _ in problems):
        counts = np.bincount(ds.y_train, minlength=num_classes)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            names = [f"{c}" + (f" ({ds.class_names[c]!r})" if ds.class_names else "") for c in empty[:10]]
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            which = "class" if len(empty) == 1 else "classes"
            problems.append(
                (
                    "y_train",
                    f"{which} {', '.join(names)}{more} ha{'s' if len(empty) == 1 else 've'} no training examples",
                )
            )
    return problems


def validate(ds: Dataset, max_train_examples: int | None = None) -> None:
    """Raise `DatasetError` listing every problem with `ds` (see `collect_problems`)."""
    _raise_if(collect_problems(ds, max_train_examples))


# -- built-ins -----------------------------------------------------------------------------------


def load_mnist1d(seed: int = 42, num_samples: int = 5000) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated offline by `mnist1d.data.make_dataset`: 40-step
    sequences, 10 classes, 80/20 train/test split."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    d = make_dataset(args)
    ds = Dataset(
        name="mnist1d",
        x_train=d["x"].astype(np.float32),
        y_train=d["y"].astype(np.int64),
        x_test=d["x_test"].astype(np.float32),
        y_test=d["y_test"].astype(np.int64),
        num_classes=10,
        kind="sequence",
        class_names=[str(c) for c in range(10)],
    )
    validate(ds)
    return ds


def load_digits_dataset(seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits (ships with the wheel), as (n, 1, 8, 8) images
    in [0, 1], split stratified by class with `seed`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction: must be in (0, 1), got {test_fraction}")
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
    y = d.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    ds = Dataset(
        "digits",
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=10,
        kind="image",
        class_names=[str(c) for c in range(10)],
    )
    validate(ds)
    return ds


def _blob_prototypes(rng: np.random.Generator, count: int, size: int, blobs: int = 4) -> np.ndarray:
    """`count` image-like patterns of shape (size, size): sums of random gaussian blobs, in [0, 1]."""
    grid = np.arange(size, dtype=np.float64)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    centres = rng.uniform(0, size - 1, size=(count, blobs, 2))
    widths = rng.uniform(0.08, 0.2, size=(count, blobs, 1, 1)) * size
    amps = rng.uniform(0.5, 1.0, size=(count, blobs, 1, 1))
    d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
    p = (amps * np.exp(-d2 / (2 * widths**2))).sum(axis=1)
    p -= p.min(axis=(1, 2), keepdims=True)
    return p / p.max(axis=(1, 2), keepdims=True)


def load_longtail(
    seed: int = 0,
    n_train: int = 2000,
    n_test: int = 500,
    num_classes: int = 10,
    image_size: int = 16,
    subgroups_per_class: int = 3,
    rare_train: tuple[int, int] = (1, 3),
    rare_test: int = 3,
    noise: float = 0.1,
) -> Dataset:
    """A long-tailed image set in the spirit of Feldman (2020): each class is mostly noisy copies
    of one common prototype, plus `subgroups_per_class` rare subgroups (their own prototypes)
    seen only `rare_train` = (lo, hi) times (inclusive, drawn per subgroup) in train and
    `rare_test` times in test. A model can only get a rare example right by having seen its
    subgroup, so rare training examples should get high memorization and their test twins high
    influence from them.

    `extras["train_subgroup"]` / `extras["test_subgroup"]`: the subgroup id of each example
    (class * subgroups_per_class + j), -1 for common examples."""
    lo, hi = rare_train
    problems = []
    if num_classes < 2:
        problems.append(("num_classes", f"must be at least 2, got {num_classes}"))
    if image_size < 2:
        problems.append(("image_size", f"must be at least 2, got {image_size}"))
    if not 1 <= lo <= hi:
        problems.append(("rare_train", f"must be (lo, hi) with 1 <= lo <= hi, got {rare_train}"))
    if subgroups_per_class < 0 or rare_test < 0:
        problems.append(("subgroups_per_class", "subgroups_per_class and rare_test must be >= 0"))
    n_groups = num_classes * subgroups_per_class
    if n_train < n_groups * hi + num_classes:
        problems.append(
            (
                "n_train",
                f"{n_train} is too small for {n_groups} subgroups of up to {hi} examples plus one common "
                "example per class",
            )
        )
    if n_test < n_groups * rare_test + num_classes:
        problems.append(
            (
                "n_test",
                f"{n_test} is too small for {n_groups} subgroups of {rare_test} examples plus one common "
                "example per class",
            )
        )
    _raise_if(problems)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4C4F4E47]))  # "LONG"
    protos = _blob_prototypes(rng, num_classes * (1 + subgroups_per_class), image_size)
    common = protos[:num_classes]
    rare = protos[num_classes:]  # subgroup g belongs to class g // subgroups_per_class
    group_class = np.repeat(np.arange(num_classes), subgroups_per_class)

    def split(n: int, group_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        group = np.repeat(np.arange(n_groups), group_counts)
        n_common = n - len(group)
        common_class = np.arange(n_common) % num_classes  # balanced head
        y = np.concatenate([common_class, group_class[group]])
        sub = np.concatenate([np.full(n_common, -1), group])
        base = np.concatenate([common[common_class], rare[group]])
        x = np.clip(base + noise * rng.standard_normal(base.shape), 0.0, 1.0)
        order = rng.permutation(n)
        return x[order, None].astype(np.float32), y[order].astype(np.int64), sub[order].astype(np.int64)

    x_train, y_train, sub_train = split(n_train, rng.integers(lo, hi + 1, size=n_groups))
    x_test, y_test, sub_test = split(n_test, np.full(n_groups, rare_test))
    ds = Dataset(
        name="longtail",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        kind="image",
        class_names=[str(c) for c in range(num_classes)],
        extras={"train_subgroup": sub_train, "test_subgroup": sub_test},
    )
    validate(ds)
    return ds


# -- users' data -------------------------------------------------------------------------------


def _layout(shape: tuple[int, ...], kind: str | None) -> tuple[str | None, tuple[int, ...], str]:
    """For features of `shape` (examples first): (inferred kind, feature shape in canonical
    layout, the change that gets there: "", "channel" (add one) or "nhwc" (to NCHW)); kind None
    when the rank is not 2 to 4."""
    if len(shape) == 2:
        return kind or "vector", tuple(shape[1:]), ""
    if len(shape) == 3:
        inferred = kind or "image"
        return (inferred, (1, *shape[1:]), "channel") if inferred == "image" else (inferred, tuple(shape[1:]), "")
    if len(shape) == 4:
        if shape[3] in (1, 3) and shape[1] not in (1, 3):
            return kind or "image", (shape[3], shape[1], shape[2]), "nhwc"
        return kind or "image", tuple(shape[1:]), ""
    return None, tuple(shape[1:]), ""


def _coerce_x(name: str, x: np.ndarray, kind: str | None, problems: list) -> tuple[np.ndarray, str | None]:
    """(float32 array in canonical layout, inferred kind); appends problems and returns x as
    given when it cannot be converted."""
    if x.dtype.kind not in "biuf":
        problems.append((name, f"dtype {x.dtype} is not numeric (need float, integer or bool features)"))
        return x, None
    inferred, _, change = _layout(x.shape, kind)
    if inferred is None:
        problems.append(
            (name, f"expected 2 to 4 dimensions: (n, d), (n, h, w), (n, c, h, w) or (n, h, w, c); got shape {x.shape}")
        )
        return x, None
    if change == "channel":
        x = x[:, None]  # (n, h, w) -> (n, 1, h, w)
    elif change == "nhwc":
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    if x.dtype.kind == "f" and x.dtype.itemsize > 4:
        with np.errstate(invalid="ignore"):
            huge = np.abs(x) > np.finfo(np.float32).max  # would become inf in float32
        if huge.any():
            first = int(np.argmax(huge.reshape(len(x), -1).any(axis=1)))
            problems.append(
                (name, f"{int(huge.sum())} values exceed float32's range (3.4e38); the first in example {first}")
            )
            return x, inferred
    return np.ascontiguousarray(x, dtype=np.float32), inferred


def _coerce_y(name: str, y: np.ndarray, problems: list) -> np.ndarray:
    if y.ndim != 1:
        problems.append((name, f"expected 1 dimension (n,), got shape {y.shape}"))
        return y
    if y.dtype.kind in "biu":
        if y.dtype == np.uint64 and len(y) and y.max() > np.iinfo(np.int64).max:
            problems.append((name, f"label {int(y.max())} is outside the int64 range"))
            return y
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            problems.append(
                (
                    name,
                    f"labels must be integers; label {y[i].item()!r} (example {i}) is not"
                    + (f" ({int(bad.sum())} such labels)" if bad.sum() > 1 else ""),
                )
            )
            return y
        return y.astype(np.int64)
    problems.append((name, f"labels must be integers, got dtype {y.dtype}"))
    return y


def _open_npz(source) -> np.lib.npyio.NpzFile:
    """An `.npz` archive opened lazily (nothing decompressed yet), or DatasetError."""
    try:
        npz = np.load(source, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any failure to parse means "not an npz"
        raise DatasetError(f"not a readable .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError("expected an .npz archive of named arrays, got a single .npy array")
    return npz


def load_npz(
    path_or_bytes: str | os.PathLike | bytes | BinaryIO,
    max_train_examples: int | None = None,
    name: str | None = None,
    max_decompressed_bytes: int | None = None,
    max_compression_ratio: float | None = None,
) -> Dataset:
    """A dataset from an `.npz` with x_train, y_train, x_test, y_test and optionally class_names
    (strings) and kind ("vector" | "sequence" | "image"). Features may be float, integer or bool;
    uint8 is taken as pixels and scaled to [0, 1]. Shapes: (n, d) vectors, (n, h, w) or
    (n, c, h, w) images, NHWC when the last axis is 1 or 3 and the second is not; with
    kind="sequence", (n, L) or (n, c, L). Labels: integers, or floats that are whole numbers.
    num_classes is len(class_names) if given, else the largest label + 1. Any other array in the
    file is kept in `extras`. Raises `DatasetError` listing every problem found.
    `max_decompressed_bytes` and `max_compression_ratio` bound the archive by its members' sizes
    as the zip directory states them (zipfile never inflates a member past its stated size),
    checked before any member is decompressed."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        name = name or f"npz:{hashlib.sha256(data).hexdigest()[:12]}"
        source: str | os.PathLike | BinaryIO = io.BytesIO(data)
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        path = Path(path_or_bytes).expanduser()
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        name = name or path.stem
        source = path
    else:
        name = name or "npz"
        source = path_or_bytes
    npz = _open_npz(source)

    problems: list[tuple[str, str]] = []
    with npz:
        _check_archive_size(npz, max_decompressed_bytes, max_compression_ratio)

        def get(key: str) -> np.ndarray | None:
            try:
                return npz[key]
            except ValueError as e:  # object arrays need pickle, which we never allow
                problems.append((key, f"cannot be read without pickle (object dtype?): {e}"))
            except Exception as e:  # noqa: BLE001 - a corrupt member
                problems.append((key, f"cannot be read ({type(e).__name__}: {e})"))
            return None

        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz.files]
        for k in missing:
            problems.append((k, f"missing from the .npz (it has: {', '.join(npz.files) or 'nothing'})"))
        _raise_if(problems)
        raw = {k: get(k) for k in ("y_train", "y_test")}
        # Labels are small: check the example count before reading the (large) features.
        limit = MAX_EXAMPLES if max_train_examples is None else max_train_examples
        too_many = []
        for k, lim in (("y_train", limit), ("y_test", MAX_EXAMPLES)):
            if raw[k] is not None and raw[k].ndim and len(raw[k]) > lim:
                too_many.append((f"x_{k[2:]}", f"{len(raw[k])} examples exceeds the limit of {lim}"))
        _raise_if(too_many)
        raw.update({k: get(k) for k in ("x_train", "x_test")})
        kind = None
        if "kind" in npz.files:
            k_arr = get("kind")
            if k_arr is not None:
                kind = str(k_arr.item()) if k_arr.size == 1 and k_arr.dtype.kind in "US" else None
                if kind not in KINDS:
                    problems.append(("kind", f"must be one of {', '.join(KINDS)}, got {k_arr!r}"))
                    kind = None
        class_names: list[str] = []
        if "class_names" in npz.files:
            cn = get("class_names")
            if cn is not None:
                if cn.ndim != 1 or cn.dtype.kind not in "US":
                    problems.append(
                        ("class_names", f"expected a 1-D array of strings, got dtype {cn.dtype} shape {cn.shape}")
                    )
                else:
                    class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in cn.tolist()]
        extras = {}
        for k in npz.files:
            if k not in ("x_train", "y_train", "x_test", "y_test", "class_names", "kind"):
                a = get(k)
                if a is not None:
                    extras[k] = a

    failed: set[str] = {f for f, _ in problems}  # unreadable arrays are reported once
    kinds = []
    for k in ("x_train", "x_test"):
        before = len(problems)
        if raw[k] is not None:
            raw[k], inferred = _coerce_x(k, raw[k], kind, problems)
            kinds.append(inferred)
        if raw[k] is None or len(problems) > before:
            failed |= {k, "kind"}
    for k in ("y_train", "y_test"):
        before = len(problems)
        if raw[k] is not None:
            raw[k] = _coerce_y(k, raw[k], problems)
        if raw[k] is None or len(problems) > before:
            failed.add(k)
    if class_names:
        num_classes = len(class_names)
    elif failed & {"y_train", "y_test"}:
        num_classes, failed = 0, failed | {"num_classes"}
    else:
        num_classes = int(max([y.max() for y in (raw["y_train"], raw["y_test"]) if len(y)], default=-1)) + 1
    empty = np.zeros(0, np.float32)  # stands in for an unreadable array, already reported
    ds = Dataset(
        name=name,
        x_train=raw["x_train"] if raw["x_train"] is not None else empty,
        y_train=raw["y_train"] if raw["y_train"] is not None else empty,
        x_test=raw["x_test"] if raw["x_test"] is not None else empty,
        y_test=raw["y_test"] if raw["y_test"] is not None else empty,
        num_classes=num_classes,
        kind=next((k for k in kinds if k), kind or "vector"),
        class_names=class_names,
        extras=extras,
    )
    problems += [(f, m) for f, m in collect_problems(ds, max_train_examples) if f not in failed]
    _raise_if(problems)
    return ds


def _check_archive_size(npz, max_bytes: int | None, max_ratio: float | None) -> None:
    members = npz.zip.infolist()
    size = sum(m.file_size for m in members)
    packed = max(1, sum(m.compress_size for m in members))
    if max_bytes is not None and size > max_bytes:
        raise DatasetError(
            f"the arrays decompress to {size} bytes, over this server's limit of {max_bytes} "
            "(MEMSCORE_MAX_DECOMPRESSED_BYTES)"
        )
    if max_ratio is not None and size > BOMB_MIN_BYTES and size > max_ratio * packed:
        raise DatasetError(
            f"the arrays decompress to {size} bytes from {packed} ({size / packed:.0f}:1, over the limit of "
            f"{max_ratio:g}:1, MEMSCORE_MAX_COMPRESSION_RATIO); save them with np.savez (uncompressed) instead"
        )


def _npy_header(npz, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of member `key` of an open NpzFile, from its header alone."""
    with npz.zip.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(int(d) for d in shape), dtype


def npz_facts(
    path: str | os.PathLike, max_decompressed_bytes: int | None = None, max_compression_ratio: float | None = None
) -> dict:
    """What the gateway records of a dataset (n_train, n_test, num_classes, kind, feature_shape),
    read from an `.npz` without its features: their headers, and the labels (small, read once
    their count is within the limit). Raises DatasetError when the file cannot say; loading it
    (`load_npz`) then names every problem."""
    with _open_npz(path) as npz:
        _check_archive_size(npz, max_decompressed_bytes, max_compression_ratio)
        try:
            shapes = {k: _npy_header(npz, k) for k in ("x_train", "x_test", "y_train", "y_test")}
        except Exception as e:  # noqa: BLE001 - a missing or corrupt member
            raise DatasetError(f"the arrays' headers cannot be read ({type(e).__name__}: {e})") from None
        n_train, n_test = (shapes[k][0][0] if shapes[k][0] else 0 for k in ("x_train", "x_test"))
        for split, n in (("train", n_train), ("test", n_test)):
            if n > MAX_EXAMPLES:
                raise DatasetError(f"x_{split}: {n} examples exceeds the limit of {MAX_EXAMPLES}")
            if shapes[f"y_{split}"][0] != (n,):
                raise DatasetError(
                    f"y_{split}: shape {shapes[f'y_{split}'][0]} does not match x_{split}'s {n} examples"
                )
        try:
            kind = str(npz["kind"].item()) if "kind" in npz.files else None
            names = npz["class_names"] if "class_names" in npz.files else None
            ys = [npz["y_train"], npz["y_test"]]
        except Exception as e:  # noqa: BLE001 - object arrays, a corrupt member
            raise DatasetError(f"the labels cannot be read ({type(e).__name__}: {e})") from None
    kind = kind if kind in KINDS else None
    inferred, feature_shape, _ = _layout(shapes["x_train"][0], kind)
    if inferred is None:
        raise DatasetError(f"x_train: expected 2 to 4 dimensions, got shape {shapes['x_train'][0]}")
    if names is not None and names.ndim == 1:
        num_classes = len(names)
    else:
        num_classes = int(max((int(y.max()) for y in ys if y.size and y.dtype.kind in "iuf"), default=-1)) + 1
    return {
        "n_train": n_train,
        "n_test": n_test,
        "num_classes": num_classes,
        "kind": inferred,
        "feature_shape": list(feature_shape),
    }


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's


def image_folder_facts(path: str | os.PathLike) -> dict:
    """What the gateway records of an ImageFolder tree, without decoding it: images counted by
    file name under train/<class>/ and test/<class>/, the size of the first one from its header,
    three channels (an upper bound: greyscale trees load with one)."""
    from PIL import Image

    root = Path(path)
    counts, first = {}, None
    for split in ("train", "test"):
        n = 0
        try:
            classes = sorted((d for d in os.scandir(root / split) if d.is_dir()), key=lambda d: d.name)
        except OSError as e:
            raise DatasetError(f"{split}: {e}") from None
        for d in classes:
            for f in sorted(os.scandir(d.path), key=lambda e: e.name):
                if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES):
                    n += 1
                    first = first or f.path
        counts[split] = (n, len(classes))
    if first is None:
        raise DatasetError(f"{root}: no images found under train/ or test/")
    try:
        with Image.open(first) as im:
            w, h = im.size
    except OSError as e:
        raise DatasetError(f"{first}: cannot be read as an image ({e})") from None
    return {
        "n_train": counts["train"][0],
        "n_test": counts["test"][0],
        "num_classes": counts["train"][1],
        "kind": "image",
        "feature_shape": [3, h, w],
    }


def dataset_from_npz_bytes(data: bytes, max_train_examples: int | None = None) -> Dataset:
    """A dataset uploaded to object storage (`datasets/<sha256>.npz`); see `load_npz`."""
    return load_npz(data, max_train_examples=max_train_examples)


def dataset_to_npz_bytes(ds: Dataset) -> bytes:
    """The `.npz` that `load_npz` reads back as `ds` (same fingerprint, kind, names, extras)."""
    buf = io.BytesIO()
    arrays = dict(ds.extras)
    arrays.update(x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test, kind=np.array(ds.kind))
    if ds.class_names:
        arrays["class_names"] = np.array(ds.class_names, dtype=str)
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def load_image_folder(path: str | os.PathLike, max_train_examples: int | None = None) -> Dataset:
    """A torchvision ImageFolder tree: `path/train/<class>/*.png` and `path/test/<class>/...`
    with the same class folders. All images must have the same size (they are not resized).
    Greyscale if every image is, else RGB; float32 NCHW in [0, 1] (8-bit images)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder

    root = Path(path).expanduser()
    problems = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            problems.append((split, f"{root / split} is not a directory (expected {root}/{split}/<class>/<image>)"))
    _raise_if(problems)
    folders = {}
    for split in ("train", "test"):
        try:
            folders[split] = ImageFolder(str(root / split), allow_empty=True)
        except (FileNotFoundError, OSError) as e:
            problems.append((split, str(e)))
    _raise_if(problems)
    train, test = folders["train"], folders["test"]
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise DatasetError(
            f"test: class folders differ from train's (only in train: {only_train}, only in test: {only_test})",
            [("test", "class folders differ from train's")],
        )
    if limit := max_train_examples:
        if len(train.samples) > limit:
            raise DatasetError(f"train: {len(train.samples)} images exceeds the limit of {limit}")

    files = [p for p, _ in train.samples] + [p for p, _ in test.samples]
    modes, sizes = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                modes.append(im.mode)
                sizes.append(im.size)
        except (UnidentifiedImageError, OSError) as e:
            problems.append(("image", f"{f}: cannot be read as an image ({e})"))
    _raise_if(problems)
    if not files:
        raise DatasetError(f"{root}: no images found under train/ or test/")
    odd = [(f, s) for f, s in zip(files, sizes) if s != sizes[0]]
    if odd:
        listed = ", ".join(f"{f} is {w}x{h}" for f, (w, h) in odd[:5])
        raise DatasetError(
            f"image: sizes differ from {files[0]}'s {sizes[0][0]}x{sizes[0][1]}: {listed}"
            + (f" and {len(odd) - 5} more" if len(odd) > 5 else ""),
            [("image", "sizes differ")],
        )
    mode = "L" if all(m in ("1", "L", "LA") for m in modes) else "RGB"

    def read(samples: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        w, h = sizes[0]
        x = np.empty((len(samples), 1 if mode == "L" else 3, h, w), dtype=np.float32)
        for i, (f, _) in enumerate(samples):
            with Image.open(f) as im:
                a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
            x[i] = a[None] if mode == "L" else a.transpose(2, 0, 1)
        return x, np.array([t for _, t in samples], dtype=np.int64)

    x_train, y_train = read(train.samples)
    x_test, y_test = read(test.samples)
    ds = Dataset(
        root.name or str(root),
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=len(train.classes),
        kind="image",
        class_names=list(train.classes),
    )
    validate(ds, max_train_examples)
    return ds


def load_dataset(
    ref: str,
    seed: int | None = None,
    max_train_examples: int | None = None,
    *,
    columns: "ParquetColumns | None" = None,
    max_decoded_bytes: int | None = None,
) -> Dataset:
    """A built-in ("mnist1d", "digits", "longtail"), a path to an `.npz`, a Parquet file or
    directory (`engine.parquet`: `columns` names its columns, `max_decoded_bytes` bounds its
    features), or an ImageFolder directory. Built-ins are the same data whatever a job's seed:
    `seed` (None = the canonical draw: 42 for mnist1d as in its paper, 0 otherwise) picks another
    draw or split only when asked."""
    from .parquet import SUFFIX, is_parquet, load_parquet

    if ref == "mnist1d":
        return load_mnist1d(seed=42 if seed is None else seed)
    if ref == "digits":
        return load_digits_dataset(seed=seed or 0)
    if ref == "longtail":
        return load_longtail(seed=seed or 0)
    path = Path(ref).expanduser()
    if ref.lower().endswith(".npz"):
        return load_npz(path, max_train_examples=max_train_examples)
    if ref.lower().rstrip("/").endswith(SUFFIX) or (path.is_dir() and is_parquet(path)):
        return load_parquet(path, columns, max_train_examples, max_decoded_bytes)
    if path.is_dir():
        return load_image_folder(path, max_train_examples=max_train_examples)
    raise DatasetError(
        f"{ref!r} is neither a built-in dataset ({', '.join(BUILTINS)}), a path to an .npz or .parquet file, "
        "a directory of Parquet tables, nor an ImageFolder directory (with train/ and test/)"
    )


# -- label noise ---------------------------------------------------------------------------------


def flip_labels(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, np.ndarray]:
    """Relabel round(fraction * n_train) training examples, chosen with `seed`, each to a
    uniformly random *different* class: the examples a model can only fit by memorizing.
    Fraction 1 is Zhang et al. 2017's random-label run instead: every label drawn uniformly
    from all classes, independent of the example (a "different class" would tell the model
    which class an example is not), so about 1/C keep their class by chance.
    Returns (new dataset, sorted indices of the labels that changed); `extras["clean_y_train"]`
    keeps the labels before flipping. Test labels are untouched."""
    if not 0.0 <= fraction <= 1.0:
        raise DatasetError(f"fraction: must be in [0, 1], got {fraction}")
    k = round(fraction * ds.n_train)
    if k == 0:
        return ds, np.zeros(0, np.int64)
    if ds.num_classes < 2:
        raise DatasetError("num_classes: flipping labels needs at least 2 classes")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x464C4950]))  # "FLIP"
    y = ds.y_train.copy()
    if fraction == 1.0:
        y = rng.integers(0, ds.num_classes, size=ds.n_train).astype(ds.y_train.dtype)
        idx = np.flatnonzero(y != ds.y_train).astype(np.int64)
    else:
        idx = np.sort(rng.choice(ds.n_train, size=k, replace=False)).astype(np.int64)
        y[idx] = (y[idx] + rng.integers(1, ds.num_classes, size=k)) % ds.num_classes  # never 0 shift
    extras = dict(ds.extras)
    extras.setdefault("clean_y_train", ds.y_train)
    return replace(ds, y_train=y, extras=extras), idx
