"""ListModels: the models this deployment trains (engine/registry.py: built-ins, torchvision
architectures, the plugins installed in this image), each with its parameter count for an
example shape.

Parameters are counted on torch's meta device (registry.model_params: shapes without
storage), so a request for a huge shape costs no memory (a builder that cannot build there is
built for real, for small shapes only); whether a plugin takes the shape is its registry dry run (two
examples), run only for shapes of at most MAX_CHECKED_ELEMENTS. Answers are cached per shape:
the installed models do not change while the server runs.
"""

from __future__ import annotations

import functools
import math

from ..engine import registry
from ..engine.catalog import model_takes
from ..engine.datasets import MAX_CLASSES
from ..errors import InvalidArgument

MAX_DIMS = 4  # (c, h, w) images at most, as datasets.py allows
MAX_DIM = 1 << 16
MAX_ELEMENTS = 1 << 26  # one example of 64 M values: beyond any dataset the workers hold
MAX_CHECKED_ELEMENTS = 1 << 20  # a plugin's dry run (2 examples) up to 1 M values each


def _shape_problems(feature_shape: tuple[int, ...], num_classes: int) -> list[tuple[str, str]]:
    problems = []
    if len(feature_shape) > MAX_DIMS or any(not 1 <= d <= MAX_DIM for d in feature_shape):
        problems.append(("feature_shape", f"at most {MAX_DIMS} dimensions, each 1 to {MAX_DIM}"))
    elif math.prod(feature_shape) > MAX_ELEMENTS:
        problems.append(("feature_shape", f"at most {MAX_ELEMENTS:,} values per example"))
    if not 0 <= num_classes <= MAX_CLASSES or num_classes == 1:
        problems.append(("num_classes", f"0 (= {registry.REFERENCE_CLASSES}) or 2 to {MAX_CLASSES}"))
    return problems


def list_models(feature_shape: tuple[int, ...] = (), num_classes: int = 0) -> list[dict]:
    """One dict per model (name, source, input, params, feature_shape, problem); `feature_shape`
    empty = each model's reference shape, `num_classes` 0 = REFERENCE_CLASSES."""
    feature_shape = tuple(int(d) for d in feature_shape)
    if problems := _shape_problems(feature_shape, int(num_classes)):
        raise InvalidArgument(problems)
    return [dict(info) for info in _listing(feature_shape, int(num_classes) or registry.REFERENCE_CLASSES)]


@functools.lru_cache(maxsize=64)
def _listing(feature_shape: tuple[int, ...], num_classes: int) -> tuple[dict, ...]:
    out = []
    for entry in registry.available_models():
        info = {"name": entry.name, "source": entry.source, "input": entry.input, "params": 0, "problem": ""}
        info["feature_shape"], info["problem"] = _shape_for(entry, feature_shape, num_classes)
        if not info["problem"]:
            try:
                info["params"] = registry.model_params(
                    entry.name, _counted_shape(entry.name, info["feature_shape"]), num_classes, MAX_CHECKED_ELEMENTS
                )
            except ValueError as e:
                info["problem"] = str(e)
            except Exception as e:  # noqa: BLE001 - a plugin's own failure is its problem, not the server's
                info["problem"] = f"does not build: {type(e).__name__}: {str(e)[:200]}"
        out.append(info)
    return tuple(out)


def _shape_for(entry: registry.ModelEntry, requested: tuple[int, ...], num_classes: int):
    """(shape the count is for, why the model does not take it or "")."""
    if entry.load_error:
        return requested, entry.load_error
    if not requested:
        try:
            return registry.reference_shape(entry.name), ""
        except ValueError as e:
            return (), str(e)
    if registry.is_builtin(entry.name):
        return requested, model_takes(entry.name, requested) or ""
    if entry.name.startswith(registry.TORCHVISION_PREFIX):  # no dry run of an ImageNet-sized network here
        return requested, "" if len(requested) == 3 else f"{entry.name} takes (c, h, w) images"
    if math.prod(requested) > MAX_CHECKED_ELEMENTS:
        return requested, ""  # not dry-run here; SubmitJob checks it on the dataset's real shape
    return requested, registry.model_problem(entry.name, requested, num_classes) or ""


def _counted_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A torchvision network's parameters depend on its channels, not its image size: counted at 32x32."""
    return (shape[0], 32, 32) if name.startswith(registry.TORCHVISION_PREFIX) and len(shape) == 3 else shape
