"""Checking a submitted spec completely, before anything is stored or queued ("fail loudly,
early, once"): every bad field is named in one INVALID_ARGUMENT, server limits are
RESOURCE_EXHAUSTED, and the dataset or corpus it names must be reachable."""

from __future__ import annotations

import json

from ..datarefs import check_corpus_ref, check_dataset_ref
from ..engine.catalog import BUILTIN_FACTS, BUILTIN_SHAPES, model_takes
from ..engine.cost import DatasetFacts
from ..engine.spec import ExposureSpec, ScoringSpec
from ..errors import InvalidArgument, ResourceExhausted, Unavailable
from ..settings import Settings
from ..store import layout
from ..store.objects import ObjectNotFound, ObjectStore, StoreUnavailable
from .admission import admit


def check_scoring(
    spec: dict, settings: Settings, objects: ObjectStore, tenant: str | None = None
) -> tuple[dict, int, int]:
    """(spec as it will run, shards, models) of a valid scoring spec that the workers can hold
    (admission.py: its shard size is fixed here); raises otherwise."""
    try:
        s = ScoringSpec.from_dict(spec)
    except (TypeError, ValueError) as e:
        raise InvalidArgument([("spec.scoring", str(e))]) from None
    limit = settings.max_models
    if s.models > limit:
        raise ResourceExhausted(
            f"spec.scoring.models: {s.models} models exceeds this server's limit of {limit} (MEMSCORE_MAX_MODELS)"
        )
    problems = [(f"spec.scoring.{f}", m) for f, m in s.validate(max_models=limit)]
    meta = None
    if s.dataset:
        try:
            why = check_dataset_ref(s.dataset, objects, settings.data_roots, tenant)
            if why:
                problems.append(("spec.scoring.dataset", why))
            else:
                meta = dataset_meta(s.dataset, objects)
                problems += _dataset_fits(s, settings, meta)
        except StoreUnavailable as e:
            raise Unavailable(f"object store unavailable: {e}") from e
    if problems:
        raise InvalidArgument(problems)
    s.shard_size = admit_spec(s, settings, meta)  # fixed at submit: model k's shard never changes
    return s.to_dict(), s.num_shards, s.models


def admit_spec(s: ScoringSpec, settings: Settings, meta: dict | None) -> int:
    """The shard size `s` runs with (admission.admit); a dataset the gateway knows nothing of
    (a file under MEMSCORE_DATA_ROOTS) is sized by the worker only, with the spec's shard size."""
    facts = DatasetFacts.from_meta(meta) if meta else None
    return admit(s, facts, settings) if facts else s.effective_shard_size


def check_exposure(
    spec: dict, objects: ObjectStore, roots: tuple[str, ...] = (), tenant: str | None = None
) -> tuple[dict, int, int]:
    """As `check_scoring`, for an exposure job (one task: one shard of one model)."""
    try:
        s = ExposureSpec.from_dict(spec)
    except (TypeError, ValueError) as e:
        raise InvalidArgument([("spec.exposure", str(e))]) from None
    problems = [(f"spec.exposure.{f}", m) for f, m in s.validate()]
    try:
        why = check_corpus_ref(s.corpus, objects, roots, tenant)
    except StoreUnavailable as e:
        raise Unavailable(f"object store unavailable: {e}") from e
    if why:
        problems.append(("spec.exposure.corpus", why))
    if problems:
        raise InvalidArgument(problems)
    return s.to_dict(), 1, 1


def dataset_meta(ref: str, objects: ObjectStore) -> dict | None:
    """What the gateway knows of a dataset without loading it: built-ins' shapes, and the
    facts recorded at upload. None for a path on the server (checked by the worker)."""
    if ref in BUILTIN_SHAPES:
        return {**BUILTIN_FACTS[ref], "feature_shape": list(BUILTIN_SHAPES[ref])}
    if not layout.is_dataset_key(ref):
        return None
    try:
        return json.loads(objects.get_bytes(layout.dataset_meta_key(ref)))
    except ObjectNotFound:
        return None


def _dataset_fits(s: ScoringSpec, settings: Settings, meta: dict | None) -> list[tuple[str, str]]:
    """The dataset's size is within limits and the model takes its shape."""
    if meta is None:
        return []
    if meta.get("n_train", 0) > settings.max_train_examples:
        raise ResourceExhausted(
            f"spec.scoring.dataset: {meta['n_train']} training examples exceeds this server's limit of "
            f"{settings.max_train_examples} (MEMSCORE_MAX_TRAIN_EXAMPLES)"
        )
    why = model_takes(s.model, tuple(meta.get("feature_shape") or ()))
    return [("spec.scoring.model", why)] if why and meta.get("feature_shape") else []
