"""Parquet datasets: a table (one file or a directory of shards) with a label column, a feature
column and a train/test split, read into a `datasets.Dataset`.

Layouts (`table_layout`): one `.parquet` file; a directory of `.parquet` shards, read in name
order (their schemas must agree); or `train.parquet` + `test.parquet`, or `train/` + `test/`
shard directories (two tables: no split column). Otherwise the split column says
"train"/"test" for each row.

Features: a list (or fixed-size list) of numbers per row is a vector (kind "vector"); binary
cells are encoded images (PNG/JPEG, kind "image", float32 (c, h, w) in [0, 1]). Labels are
integers >= 0, or strings (classes in sorted order). Every problem is a `DatasetError` naming the
column and the first bad row.

Memory: the label and split columns are read first (small); the row counts in the files'
metadata size the feature arrays, which the feature column fills batch by batch
(`ParquetFile.iter_batches`): the table is never held whole, nor turned into Python lists.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from .datasets import MAX_CLASSES, MAX_EXAMPLES, Dataset, DatasetError, validate

SUFFIX = ".parquet"
SPLITS = ("train", "test")
DEFAULT_LABEL, DEFAULT_SPLIT, DEFAULT_FEATURES = "label", "split", ("embedding", "image")
# An image of more pixels than this is refused from its header, before decoding (a
# decompression bomb: a few KB of PNG can claim 10^5 x 10^5 pixels).
MAX_IMAGE_PIXELS = 1 << 25
VECTOR_BATCH_ROWS = 8192
IMAGE_BATCH_ROWS = 256  # encoded images are large cells: a batch stays a few MB
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass(frozen=True)
class ParquetColumns:
    """The columns a job names; "" = the default (`DEFAULT_*`)."""

    feature: str = ""
    label: str = ""
    split: str = ""

    @classmethod
    def of(cls, spec) -> "ParquetColumns":
        """The columns of a `ScoringSpec` (its feature_column, label_column, split_column)."""
        return cls(spec.feature_column, spec.label_column, spec.split_column)


# -- layout --------------------------------------------------------------------------------------


def table_layout(names: Iterable[str], where: str) -> dict[str, list[str]]:
    """{"train": [...], "test": [...]} or {"all": [...]}: which of `names` ('/'-separated, relative
    to a directory or object prefix) hold the tables, each list in name order. Names starting
    with '.' or '_' (Spark's _SUCCESS, _metadata) and other suffixes are ignored."""
    found = sorted(
        n for n in names if n.lower().endswith(SUFFIX) and not any(p.startswith((".", "_")) for p in n.split("/"))
    )
    top = [n for n in found if "/" not in n]
    tables = {s: [f"{s}{SUFFIX}"] for s in SPLITS if f"{s}{SUFFIX}" in top}
    if not tables:
        tables = {s: [n for n in found if n.count("/") == 1 and n.startswith(s + "/")] for s in SPLITS}
        tables = {s: names for s, names in tables.items() if names}
    if len(tables) == 1:
        (have,) = tables
        other = "test" if have == "train" else "train"
        raise DatasetError(f"{where}: has {have} data but no {other}{SUFFIX} or {other}/ shards beside it")
    if tables:
        return tables
    if top:
        return {"all": top}
    raise DatasetError(
        f"{where}: no {SUFFIX} files (expected *{SUFFIX} shards with a split column, "
        f"train{SUFFIX} + test{SUFFIX}, or train/ + test/ directories of shards)"
    )


def local_layout(path: str | os.PathLike) -> dict[str, list[Path]]:
    """`table_layout` of a local file or directory (its files and those of train/ and test/)."""
    root = Path(path)
    if root.is_file():
        return {"all": [root]}
    try:
        names = [e.name for e in os.scandir(root) if e.is_file()]
        for split in SPLITS:
            if (root / split).is_dir():
                names += [f"{split}/{e.name}" for e in os.scandir(root / split) if e.is_file()]
    except OSError as e:
        raise DatasetError(f"{root}: {e}") from None
    return {s: [root / n for n in names] for s, names in table_layout(names, str(root)).items()}


def is_parquet(path: str | os.PathLike) -> bool:
    """A `.parquet` file, or a directory in one of the layouts (its names alone are checked)."""
    p = Path(path)
    if p.is_file():
        return p.name.lower().endswith(SUFFIX)
    try:
        local_layout(p)
        return p.is_dir()
    except DatasetError:
        return False


# -- the tables ----------------------------------------------------------------------------------


# A table's shard: (its name for messages, a path or a seekable binary file object).
Part = tuple[str, "str | os.PathLike | BinaryIO"]
_READ_BUFFER = 1 << 20  # column chunks are read page by page through a buffer of this size


class _Table:
    """One table of a layout: its shards' metadata, and rows numbered across them. A shard is
    open only while it is read (a directory may hold more shards than a process may open files)."""

    def __init__(self, split: str, parts: list[Part]):
        self.split, self.names, self.sources = split, [n for n, _ in parts], [s for _, s in parts]
        self.metadata = []
        for name, source in parts:
            with _open(name, source) as f:
                self.metadata.append(f.metadata)
                schema = f.schema_arrow
            if len(self.metadata) == 1:
                self.schema = schema
            elif not schema.equals(self.schema):
                raise DatasetError(
                    f"{name}: its schema ({_describe(schema)}) differs from {self.names[0]}'s "
                    f"({_describe(self.schema)}); every shard of a table must have the same columns and types"
                )
        self.starts = np.cumsum([0] + [m.num_rows for m in self.metadata])
        if self.rows > MAX_EXAMPLES:
            raise DatasetError(f"{self.split}: {self.rows} rows exceeds the limit of {MAX_EXAMPLES}")

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def where(self, row: int) -> str:
        """Row `row` (counted across shards) as an error names it: with its shard when sharded."""
        name = "" if self.split == "all" else f"{self.split} "
        if len(self.sources) == 1:
            return f"{name}row {row}"
        i = int(np.searchsorted(self.starts, row, side="right")) - 1
        return f"{name}row {row} ({self.names[i]} row {row - int(self.starts[i])})"

    def batches(self, columns: list[str], batch_rows: int) -> Iterator[tuple[int, object]]:
        """(first row, RecordBatch) over every shard, reading only `columns`."""
        for name, source, metadata, start in zip(self.names, self.sources, self.metadata, self.starts):
            row = int(start)
            with _open(name, source, metadata) as f:
                for batch in f.iter_batches(batch_size=batch_rows, columns=columns):
                    yield row, batch
                    row += batch.num_rows


def _open(name: str, source, metadata=None):
    """A ParquetFile over `source` (its footer already read when `metadata` is given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # pre_buffer=False and a read buffer: pyarrow would otherwise keep each column chunk
        # read whole in memory (60k x 512 floats: 505 MB of RSS for 123 MB of arrays)
        return pq.ParquetFile(source, metadata=metadata, pre_buffer=False, buffer_size=_READ_BUFFER)
    except (pa.ArrowException, OSError) as e:  # not the caller's own errors (a store outage)
        raise DatasetError(f"{name}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def _describe(schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _column_type(tables: list[_Table], name: str, role: str, flag: str):
    """The arrow type of column `name` (the same in every table), or a DatasetError listing the
    table's columns."""
    types = []
    for t in tables:
        if name not in t.schema.names:
            which = "" if t.split == "all" else f"{t.split} "
            raise DatasetError(
                f"column {name!r} ({role}, {flag}) is not in the {which}table; "
                f"its columns are: {', '.join(t.schema.names)}"
            )
        types.append(t.schema.field(name).type)
    if any(ty != types[0] for ty in types):
        raise DatasetError(f"column {name!r}: type {types[0]} in train but {types[1]} in test")
    return types[0]


def _feature_name(tables: list[_Table], columns: ParquetColumns) -> str:
    if columns.feature:
        return columns.feature
    names = tables[0].schema.names
    return next((c for c in DEFAULT_FEATURES if c in names), DEFAULT_FEATURES[0])


def _plain(col):
    """A dictionary-encoded column as its plain values (strings written by pandas categoricals)."""
    import pyarrow as pa

    return col.dictionary_decode() if pa.types.is_dictionary(col.type) else col


# -- split and labels ----------------------------------------------------------------------------


def _split_flags(table: _Table, name: str) -> np.ndarray:
    """is_test per row: the split column's "test" rows; a value other than "train"/"test"
    (or a null) names its first row."""
    import pyarrow.compute as pc

    if table.split != "all":
        return np.full(table.rows, table.split == "test")
    is_test = np.empty(table.rows, bool)
    for row, batch in table.batches([name], VECTOR_BATCH_ROWS):
        col = _plain(batch.column(0))
        values = col.cast("string") if not col.type.equals("string") else col
        train = pc.fill_null(pc.equal(values, "train"), False).to_numpy(zero_copy_only=False)
        test = pc.fill_null(pc.equal(values, "test"), False).to_numpy(zero_copy_only=False)
        bad = ~(train | test)
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetError(
                f"column {name!r} (split, --split-column): {table.where(row + i)} has {col[i].as_py()!r}; "
                "every value must be 'train' or 'test' (or give train/test tables: train.parquet and test.parquet)"
            )
        is_test[row : row + len(bad)] = test
    return is_test


def _label_kind(ty, name: str) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(ty):
        ty = ty.value_type
    if pa.types.is_integer(ty):
        return "int"
    if pa.types.is_string(ty) or pa.types.is_large_string(ty):
        return "str"
    hint = " (floats are not class labels: cast them to integers)" if pa.types.is_floating(ty) else ""
    raise DatasetError(f"column {name!r} (label, --label-column): type {ty} is not integers or strings{hint}")


def _label_batches(table: _Table, name: str) -> Iterator[tuple[int, object]]:
    """(first row, label column) per batch; a null names its row."""
    for row, batch in table.batches([name], VECTOR_BATCH_ROWS):
        col = _plain(batch.column(0))
        if col.null_count:
            i = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
            raise DatasetError(f"column {name!r} (label, --label-column): {table.where(row + i)} is null")
        yield row, col


def _int_labels(table: _Table, name: str) -> np.ndarray:
    y = np.empty(table.rows, np.int64)
    for row, col in _label_batches(table, name):
        values = col.to_numpy(zero_copy_only=False)
        bad = (values < 0) | (values > np.iinfo(np.int64).max)
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetError(
                f"column {name!r} (label, --label-column): {table.where(row + i)} has label {values[i]}; "
                "labels must be integers >= 0"
            )
        y[row : row + len(values)] = values
    return y


def _string_classes(tables: list[_Table], name: str) -> list[str]:
    """The distinct string labels of every table, sorted: class c is the c-th."""
    import pyarrow.compute as pc

    seen: set[str] = set()
    for t in tables:
        for _, col in _label_batches(t, name):
            seen.update(pc.unique(col).to_pylist())  # distinct values of one batch: small
            if len(seen) > MAX_CLASSES:
                raise DatasetError(f"column {name!r}: more than {MAX_CLASSES} distinct labels")
    return sorted(seen)


def _string_labels(table: _Table, name: str, classes: list[str]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    y = np.empty(table.rows, np.int64)
    value_set = pa.array(classes, pa.string())
    for row, col in _label_batches(table, name):
        idx = pc.index_in(col.cast(pa.string()), value_set=value_set)
        y[row : row + len(col)] = idx.to_numpy(zero_copy_only=False)
    return y


@dataclass
class _Index:
    """What the label and split columns say: per table, each row's split, its place in its
    split's arrays and its label; the classes."""

    name: str
    tables: list[_Table]
    feature: str
    is_test: list[np.ndarray]
    pos: list[np.ndarray]
    labels: list[np.ndarray]
    num_classes: int
    class_names: list[str]

    @property
    def n_test(self) -> int:
        return int(sum(f.sum() for f in self.is_test))

    @property
    def n_train(self) -> int:
        return sum(t.rows for t in self.tables) - self.n_test

    def split_labels(self, test: bool) -> np.ndarray:
        return np.concatenate([y[f == test] for y, f in zip(self.labels, self.is_test)])


def _parts(source: "str | os.PathLike | dict[str, list[Part]]") -> tuple[str, dict[str, list[Part]]]:
    """(dataset name, {split: shards}) of a local path, or of a layout of file objects as given."""
    if isinstance(source, dict):
        return "table", source
    layout = local_layout(source)
    name = Path(source).name.removesuffix(SUFFIX) or str(source)
    return name, {split: [(p.name, p) for p in paths] for split, paths in layout.items()}


def _index(source: "str | os.PathLike | dict[str, list[Part]]", columns: ParquetColumns) -> _Index:
    name, layout = _parts(source)
    tables = [_Table(s, parts) for s, parts in layout.items()]
    label, feature = columns.label or DEFAULT_LABEL, _feature_name(tables, columns)
    kind = _label_kind(_column_type(tables, label, "label", "--label-column"), label)
    _column_type(tables, feature, "features", "--feature-column")
    split = columns.split or DEFAULT_SPLIT
    if tables[0].split == "all":
        _column_type(tables, split, "split", "--split-column")
    is_test = [_split_flags(t, split) for t in tables]
    class_names = _string_classes(tables, label) if kind == "str" else []
    if class_names:
        labels = [_string_labels(t, label, class_names) for t in tables]
    else:
        labels = [_int_labels(t, label) for t in tables]
    num_classes = len(class_names) or int(max((y.max() for y in labels if len(y)), default=-1)) + 1
    if num_classes > MAX_CLASSES:
        raise DatasetError(f"column {label!r}: label {num_classes - 1} exceeds the limit of {MAX_CLASSES} classes")
    pos, counts = [], [0, 0]
    for f in is_test:
        p = np.empty(len(f), np.int64)
        for side in (0, 1):
            rows = f == bool(side)
            p[rows] = counts[side] + np.arange(int(rows.sum()))
            counts[side] += int(rows.sum())
        pos.append(p)
    return _Index(name, tables, feature, is_test, pos, labels, num_classes, class_names)


# -- features ------------------------------------------------------------------------------------


def _first_cell(ix: _Index):
    """The feature cell of the first row (a scalar), to size the arrays."""
    table = next((t for t in ix.tables if t.rows), None)
    if table is None:
        raise DatasetError(f"{ix.name}: the table has no rows")
    _, batch = next(table.batches([ix.feature], 1))
    cell = batch.column(0)[0]
    if not cell.is_valid:
        raise DatasetError(f"column {ix.feature!r} (features): {table.where(0)} is null")
    return cell


def _feature_shape(ix: _Index) -> tuple[str, tuple[int, ...]]:
    """(kind, feature shape) from the column's type and its first cell; images' channels are the
    first image's (1 grey, 3 colour)."""
    import pyarrow as pa

    ty = ix.tables[0].schema.field(ix.feature).type
    if pa.types.is_list(ty) or pa.types.is_large_list(ty) or pa.types.is_fixed_size_list(ty):
        vt = ty.value_type
        if not (pa.types.is_integer(vt) or pa.types.is_floating(vt)):
            raise DatasetError(f"column {ix.feature!r} (features): lists of {vt}, not of numbers")
        dim = ty.list_size if pa.types.is_fixed_size_list(ty) else len(_first_cell(ix).values)
        if dim == 0:
            raise DatasetError(f"column {ix.feature!r} (features): the first row's vector is empty")
        return "vector", (dim,)
    if pa.types.is_binary(ty) or pa.types.is_large_binary(ty):
        grey, (w, h) = _image_header(_first_cell(ix).as_py(), ix.feature, ix.tables[0].where(0))
        return "image", (1 if grey else 3, h, w)
    raise DatasetError(
        f"column {ix.feature!r} (features, --feature-column): type {ty} is neither a list of numbers "
        "(vectors) nor binary (encoded PNG/JPEG images)"
    )


def _image_header(data: bytes, column: str, where: str) -> tuple[bool, tuple[int, int]]:
    """(greyscale?, (width, height)) from an encoded image's header, nothing decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            grey, size = im.mode in _GREY_MODES, im.size
    except Exception as e:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise DatasetError(f"column {column!r}: {where} cannot be read as an image ({type(e).__name__}: {e})") from None
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DatasetError(
            f"column {column!r}: {where} is a {size[0]}x{size[1]} image, over the limit of {MAX_IMAGE_PIXELS} pixels"
        )
    return grey, size


def _images(col, table: _Table, row: int, column: str, size: tuple[int, int]) -> np.ndarray:
    """One batch of encoded images as float32 (k, c, h, w) in [0, 1]: c = 3 if any is colour."""
    from PIL import Image

    w, h = size
    pixels = []
    for i in range(len(col)):
        where = table.where(row + i)
        data = col[i].as_py()
        if data is None:
            raise DatasetError(f"column {column!r} (features): {where} is null")
        grey, got = _image_header(data, column, where)
        if got != size:
            raise DatasetError(
                f"column {column!r}: {where} is {got[0]}x{got[1]} but the first image is {w}x{h}; "
                "every image must have the same size (resize them when writing the table)"
            )
        try:
            with Image.open(io.BytesIO(data)) as im:
                pixels.append(np.asarray(im.convert("L" if grey else "RGB")))
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt image body
            raise DatasetError(f"column {column!r}: {where} cannot be decoded ({type(e).__name__}: {e})") from None
    c = 3 if any(p.ndim == 3 for p in pixels) else 1
    x = np.empty((len(pixels), c, h, w), np.float32)
    for i, p in enumerate(pixels):
        x[i] = p[None] if p.ndim == 2 else p.transpose(2, 0, 1)  # a grey image in colour: three equal planes
    return x / np.float32(255.0)


def _vectors(col, table: _Table, row: int, column: str, dim: int) -> np.ndarray:
    """One batch of list cells as float32 (k, dim); a null, a wrong length, NaN or inf names its row."""
    import pyarrow.compute as pc

    if col.null_count:
        i = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        raise DatasetError(f"column {column!r} (features): {table.where(row + i)} is null")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if (lengths != dim).any():
        i = int(np.argmax(lengths != dim))
        raise DatasetError(
            f"column {column!r}: {table.where(row + i)} has {lengths[i]} values but the first row has {dim}; "
            "every vector must have the same length"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range -> inf, named below
        x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(col), dim)
    bad = ~np.isfinite(x).all(axis=1)  # a null inside a list reads as NaN
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(
            f"column {column!r}: {table.where(row + i)} has a NaN, infinite or null value; features must be finite"
        )
    return x


def _check_bytes(n: int, shape: tuple[int, ...], max_bytes: int | None) -> None:
    size = 4 * n * int(np.prod(shape))
    if max_bytes is not None and size > max_bytes:
        raise DatasetError(
            f"{n} examples of shape {shape} decode to {size} bytes of float32, over this server's limit of "
            f"{max_bytes} (MEMSCORE_MAX_DECOMPRESSED_BYTES)"
        )


def _fill(ix: _Index, kind: str, shape: tuple[int, ...], max_bytes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(x_train, x_test), preallocated from the row counts and filled batch by batch."""
    _check_bytes(ix.n_train + ix.n_test, shape, max_bytes)
    out = [np.empty((ix.n_train, *shape), np.float32), np.empty((ix.n_test, *shape), np.float32)]
    rows = VECTOR_BATCH_ROWS if kind == "vector" else IMAGE_BATCH_ROWS
    for table, is_test, pos in zip(ix.tables, ix.is_test, ix.pos):
        for row, batch in table.batches([ix.feature], rows):
            col = batch.column(0)
            if kind == "vector":
                x = _vectors(col, table, row, ix.feature, shape[0])
            else:
                x = _images(col, table, row, ix.feature, (shape[2], shape[1]))
            if x.shape[1] > out[0].shape[1]:  # the first colour image after grey ones: grey -> 3 planes
                shape = x.shape[1:]
                _check_bytes(ix.n_train + ix.n_test, shape, max_bytes)
                out = [np.repeat(o, 3, axis=1) for o in out]
            test, p = is_test[row : row + len(x)], pos[row : row + len(x)]
            out[0][p[~test]] = x[~test]
            out[1][p[test]] = x[test]
    return out[0], out[1]


# -- entry points --------------------------------------------------------------------------------


def load_parquet(
    path: "str | os.PathLike | dict[str, list[Part]]",
    columns: ParquetColumns | None = None,
    max_train_examples: int | None = None,
    max_decoded_bytes: int | None = None,
) -> Dataset:
    """The dataset of a Parquet file or directory (see the module's docstring), validated."""
    ix = _index(path, columns or ParquetColumns())
    if max_train_examples is not None and ix.n_train > max_train_examples:
        raise DatasetError(f"x_train: {ix.n_train} examples exceeds the limit of {max_train_examples}")
    kind, shape = _feature_shape(ix)
    x_train, x_test = _fill(ix, kind, shape, max_decoded_bytes)
    ds = Dataset(
        name=ix.name,
        x_train=x_train,
        y_train=ix.split_labels(False),
        x_test=x_test,
        y_test=ix.split_labels(True),
        num_classes=ix.num_classes,
        kind=kind,
        class_names=ix.class_names,
    )
    validate(ds, max_train_examples)
    return ds


def parquet_facts(source: "str | os.PathLike | dict[str, list[Part]]", columns: ParquetColumns | None = None) -> dict:
    """What the gateway records of a Parquet dataset (n_train, n_test, num_classes, kind,
    feature_shape) from the files' metadata, the label and split columns and the first feature
    cell: no features decoded. Images count three channels (an upper bound, as ImageFolder's).
    `source`: a local path, or {split ("all", "train", "test"): [(name, seekable file)]} as
    `table_layout` arranges them (the object store's tables, read by ranges)."""
    ix = _index(source, columns or ParquetColumns())
    kind, shape = _feature_shape(ix)
    return {
        "n_train": ix.n_train,
        "n_test": ix.n_test,
        "num_classes": ix.num_classes,
        "kind": kind,
        "feature_shape": [3, *shape[1:]] if kind == "image" else list(shape),
    }
