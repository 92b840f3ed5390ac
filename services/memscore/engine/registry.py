"""Every model a spec may name, and where its builder comes from.

- built-ins: the zoo of models.py (mlp, cnn1d, resnet, linear);
- `torchvision/<name>`: torchvision's classification architectures adapted by vision.py;
- plugins: functions installed under the entry-point group `memscore.models`, as a package's
  pyproject declares them:

      [project.entry-points."memscore.models"]
      mynet = "mypackage.models:build"

  `build(feature_shape, num_classes) -> nn.Module` gets the shape of one example without the
  batch dimension. It may carry attributes: `recipe` (a dict of engine/recipes.py Recipe
  fields overriding the default recipe for the data's kind), `input` (the shapes it takes, in
  words) and `reference_shape` (one shape it takes, for `memscore models`' parameter counts).
- `models.register_model`: a builder registered in this process (benchmarks).

The built-ins register the same way (pyproject.toml lists them under the group); they are also
known here in code, so an installation whose metadata predates them still has them, and an
entry point of a built-in's name pointing at the same builder is the built-in itself.

Importing this module imports no torch (the gateway validates specs with it); building a
model, loading a plugin and checking one (model_check.py) do. A plugin that fails to load does
not hide the others: it is listed with its error (`load_error`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import sys
from dataclasses import dataclass
from typing import Callable

from .catalog import ARCH_FEATURE_NDIM, ARCH_INPUT_DESCRIPTION, TORCHVISION_MODELS, TORCHVISION_PREFIX

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "memscore.models"
BUILTIN_BUILDERS = {name: f"memscore.engine.models:build_{name}" for name in ARCH_FEATURE_NDIM}
# A shape each kind of model takes: vectors (an embedding's width), sequences (mnist1d), images (CIFAR)
REFERENCE_SHAPES: dict[str, tuple[int, ...]] = {"vector": (512,), "sequence": (40,), "image": (3, 32, 32)}
BUILTIN_REFERENCE_KIND = {"mlp": "vector", "linear": "vector", "cnn1d": "sequence", "resnet": "image"}
REFERENCE_CLASSES = 10  # classes of the reference problem (parameter counts of `memscore models`)

Builder = Callable[[tuple[int, ...], int], object]  # (feature_shape, num_classes) -> nn.Module

_REGISTERED: dict[str, Builder] = {}  # register(): name -> builder, this process only
_LOADED: dict[tuple[str, str], Builder | str] = {}  # (name, entry point value) -> builder, or its load error


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # "builtin" | "torchvision" | "plugin package.module:build" | "registered"
    input: str  # the shapes it takes, in words
    load_error: str = ""  # why a plugin could not be loaded ("" when it loads)


def register(name: str, build: Builder) -> None:
    """Make `build` model `name` in this process (models.register_model)."""
    if name in BUILTIN_BUILDERS or name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"{name!r} is a built-in model")
    if _REGISTERED.get(name, build) is not build:  # the trainer caches a model's forward pass by name
        raise ValueError(f"model {name!r} is already registered in this process")
    _REGISTERED[name] = build


def plugins() -> dict[str, str]:
    """Installed plugins: name -> entry point value (package.module:build), the first on sys.path
    for a name; entry points under a built-in's or a torchvision name are not plugins (another
    builder under such a name is ignored, with a warning)."""
    return dict(_plugins(tuple(sys.path)))


@functools.lru_cache(maxsize=8)
def _plugins(path: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    # cached per sys.path: a test (or a process) that adds a distribution to the path sees it
    found: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if BUILTIN_BUILDERS.get(ep.name) == ep.value or ep.name in found:
            continue  # a built-in's own entry point (pyproject.toml), or shadowed by one earlier on the path
        if ep.name in BUILTIN_BUILDERS or ep.name.startswith(TORCHVISION_PREFIX):
            log.warning("model plugin %s = %s ignored: %r is a built-in model's name", ep.name, ep.value, ep.name)
            continue
        found[ep.name] = ep.value
    return tuple(sorted(found.items()))


def name_problem(name: str) -> str | None:
    """None if a spec may name model `name` here, else why not (listing what exists). Loads
    nothing: a plugin's import errors are model_problem's."""
    if not isinstance(name, str):
        return f"must be a model's name, got {name!r}"
    if name in ("auto", *BUILTIN_BUILDERS) or name in _REGISTERED or name in plugins():
        return None
    if name.startswith(TORCHVISION_PREFIX):
        if name[len(TORCHVISION_PREFIX) :] in TORCHVISION_MODELS:
            return None
        supported = ", ".join(TORCHVISION_PREFIX + m for m in TORCHVISION_MODELS)
        return f"unknown model {name!r}: the torchvision architectures this memscore trains are {supported}"
    names = ["auto", *BUILTIN_BUILDERS, *(TORCHVISION_PREFIX + m for m in TORCHVISION_MODELS)]
    names += sorted({*_REGISTERED, *plugins()})
    return f"unknown model {name!r}; choose one of {', '.join(names)}"


def is_builtin(name: str) -> bool:
    return name in ("", "auto", *BUILTIN_BUILDERS)


def _load(name: str, value: str) -> Builder | str:
    key = (name, value)
    if key not in _LOADED:
        try:
            _LOADED[key] = importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP).load()
        except Exception as e:  # noqa: BLE001 - any failure of a plugin's import is its load error
            _LOADED[key] = f"{value} failed to load: {type(e).__name__}: {e}"
        if not isinstance(_LOADED[key], str) and not callable(_LOADED[key]):
            _LOADED[key] = f"{value} is not a callable build(feature_shape, num_classes)"
    return _LOADED[key]


def load_error(name: str) -> str | None:
    """Why plugin `name` cannot be loaded; None for a plugin that loads and for other models."""
    value = plugins().get(name)
    if value is None or name in _REGISTERED:
        return None
    loaded = _load(name, value)
    return loaded if isinstance(loaded, str) else None


def builder(name: str) -> Builder:
    """The build function of model `name`; ValueError naming the problem if there is none."""
    if name in BUILTIN_BUILDERS:
        return _load(name, BUILTIN_BUILDERS[name])
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name.startswith(TORCHVISION_PREFIX) and not name_problem(name):
        from .vision import build_torchvision

        return functools.partial(build_torchvision, name[len(TORCHVISION_PREFIX) :])
    value = plugins().get(name)
    if value is None:
        raise ValueError(name_problem(name))
    loaded = _load(name, value)
    if isinstance(loaded, str):
        raise ValueError(f"model {name!r}: {loaded}")
    return loaded


def source(name: str) -> str:
    if name in BUILTIN_BUILDERS:
        return "builtin"
    if name.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    if name in _REGISTERED:
        return "registered"
    return f"plugin {plugins()[name]}"


def recipe_overrides(name: str) -> dict:
    """Recipe fields a plugin's (or registered) builder sets by its `recipe` attribute."""
    if is_builtin(name) or name.startswith(TORCHVISION_PREFIX):
        return {}
    return dict(getattr(builder(name), "recipe", None) or {})


def available_models() -> list[ModelEntry]:
    """Every name a spec may use: the built-ins first, then torchvision's, the registered and
    the plugins' in name order; a plugin that does not load is listed with its error."""
    out = [ModelEntry(n, "builtin", ARCH_INPUT_DESCRIPTION[n]) for n in sorted(BUILTIN_BUILDERS)]
    out += [ModelEntry(TORCHVISION_PREFIX + m, "torchvision", "(c, h, w) images") for m in TORCHVISION_MODELS]
    for name in sorted({*_REGISTERED, *plugins()}):
        error = load_error(name) or ""
        words = "" if error else getattr(builder(name), "input", "")
        out.append(ModelEntry(name, source(name), words or "declared by the plugin (see reference_shape)", error))
    return out


def reference_shape(name: str) -> tuple[int, ...]:
    """A shape model `name` takes: (512,) vectors, (40,) sequences or (3, 32, 32) images; a
    plugin's `reference_shape` attribute, else the first of these its dry run accepts.
    ValueError when it takes none of them."""
    if name in BUILTIN_REFERENCE_KIND:
        return REFERENCE_SHAPES[BUILTIN_REFERENCE_KIND[name]]
    if name.startswith(TORCHVISION_PREFIX):
        return REFERENCE_SHAPES["image"]
    declared = getattr(builder(name), "reference_shape", None)
    if declared:
        return tuple(int(d) for d in declared)
    for shape in REFERENCE_SHAPES.values():
        if model_problem(name, shape, REFERENCE_CLASSES) is None:
            return shape
    raise ValueError(f"model {name!r} takes none of the reference shapes {list(REFERENCE_SHAPES.values())}")


def model_problem(name: str, feature_shape: tuple[int, ...], num_classes: int) -> str | None:
    """None if model `name` trains on examples of `feature_shape` with `num_classes` classes,
    else why not: unknown, fails to load, or fails model_check.dry_run (builds, takes the
    shape, outputs (B, num_classes), runs vectorised, backpropagates). Built-ins are checked
    by their tables only (no torch)."""
    if why := name_problem(name):
        return why
    if is_builtin(name):
        from .catalog import model_takes

        return model_takes(name, tuple(feature_shape)) if name != "auto" else None
    if name.startswith(TORCHVISION_PREFIX) and len(feature_shape) != 3:  # said without building one
        return f"{name} takes (c, h, w) images; this dataset's examples have shape {tuple(feature_shape)}"
    return _checked(name, tuple(int(d) for d in feature_shape), int(num_classes))


@functools.lru_cache(maxsize=256)
def _checked(name: str, feature_shape: tuple[int, ...], num_classes: int) -> str | None:
    if why := load_error(name):
        return why
    from .model_check import dry_run, recipe_problem

    build = builder(name)
    return recipe_problem(getattr(build, "recipe", None)) or dry_run(build, feature_shape, num_classes)


def model_params(name: str, feature_shape: tuple[int, ...], num_classes: int, max_real_elements: int = 0) -> int:
    """Parameters of one model `name` on examples of `feature_shape`, counted on torch's meta
    device (shapes without storage: a huge shape costs no memory). A builder that cannot build
    there (one that copies weights, as torchvision's regnet does) is built on the CPU, when the
    example has at most `max_real_elements` values (0: any); else ValueError."""
    import torch

    from .models import count_params

    shape, build = tuple(int(d) for d in feature_shape), builder(name)
    try:
        with torch.device("meta"):
            return count_params(build(shape, int(num_classes)))
    except (NotImplementedError, RuntimeError):
        if max_real_elements and math.prod(shape) > max_real_elements:
            raise ValueError(
                f"not counted: it builds only with real weights, here for at most {max_real_elements:,} values "
                "per example"
            ) from None
    return count_params(build(shape, int(num_classes)))


def measured_cost(name: str, feature_shape: tuple[int, ...], num_classes: int):
    """cost.ModelCost of model `name`, measured on one built model (model_check.measure): the
    sizing of models without an analytic cost in cost.py (admission, the trainer's groups, the
    calibration); None for the zoo's models ("auto" included), which cost.py's tables size."""
    if is_builtin(name):
        return None
    return _measured(name, tuple(int(d) for d in feature_shape), int(num_classes))


@functools.lru_cache(maxsize=256)
def _measured(name: str, feature_shape: tuple[int, ...], num_classes: int):
    from .model_check import measure

    return measure(builder(name)(feature_shape, num_classes), feature_shape, num_classes)
