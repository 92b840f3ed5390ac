"""The points of a QueryInfluence request: an .npz with `x` (q, *feature_shape) and `y` (q,),
checked against the job's data before any model runs."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from ..errors import InvalidArgument

MAX_QUERY_POINTS = 10_000
FIELD = "examples_npz"


def query_points(data: bytes, feature_shape: tuple, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """x (float32, uint8 scaled to [0, 1]) and y (int64) from a query .npz."""
    # the most MAX_QUERY_POINTS float64 points and labels take, headers aside: a compressed
    # member stating more would inflate past what any valid query needs
    limit = MAX_QUERY_POINTS * (int(np.prod(feature_shape)) + 1) * 8 + (1 << 16)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            stated = sum(m.file_size for m in z.zip.infolist())
            if stated > limit:
                raise InvalidArgument(
                    [(FIELD, f"its arrays decompress to {stated} bytes, over the {limit} a query needs")]
                )
            x, y = z["x"], z["y"]
    except KeyError:
        raise InvalidArgument([(FIELD, "must hold arrays x (q, *feature_shape) and y (q,)")]) from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError, MemoryError) as e:
        # TypeError: a bare .npy; MemoryError: a header claiming a huge array for a few bytes
        raise InvalidArgument([(FIELD, f"not a readable .npz ({type(e).__name__}: {e})")]) from None
    why = _problem(x, y, feature_shape, num_classes)
    if why:
        raise InvalidArgument([(FIELD, why)])
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InvalidArgument([(FIELD, "x has NaN or infinite values")])
    return x, y.astype(np.int64)


def _problem(x: np.ndarray, y: np.ndarray, feature_shape: tuple, num_classes: int) -> str | None:
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        return f"x must be numeric and y integer, got {x.dtype} and {y.dtype}"
    if tuple(x.shape[1:]) != feature_shape or y.shape != (x.shape[0],):
        return f"x must be (q, {', '.join(map(str, feature_shape))}) and y (q,), got {x.shape} and {y.shape}"
    if not 1 <= len(x) <= MAX_QUERY_POINTS:
        return f"between 1 and {MAX_QUERY_POINTS} points per query, got {len(x)}"
    if y.min() < 0 or y.max() >= num_classes:
        return f"labels must be in 0..{num_classes - 1}"
    return None
