"""Checking a submitted spec completely, before anything is stored or queued ("fail loudly,
early, once"): every bad field is named in one INVALID_ARGUMENT, server limits are
RESOURCE_EXHAUSTED, and the dataset or corpus it names must be reachable."""

from __future__ import annotations

import functools
import json
import os
from typing import NamedTuple

from ..datarefs import (
    BUILTIN_CORPUS,
    allowed_path,
    check_corpus_ref,
    check_dataset_ref,
    roots_for,
    uri_dataset_facts,
)
from ..datauris import is_uri
from ..engine.catalog import BUILTIN_CORPUS_FACTS, BUILTIN_FACTS, BUILTIN_SHAPES
from ..engine.cost import DatasetFacts
from ..engine.datasets import DatasetError, image_folder_facts, npz_facts
from ..engine.parquet import ParquetColumns, is_parquet, parquet_facts
from ..engine.privacy_level import dp_shards
from ..engine.registry import measured_cost, model_problem, name_problem
from ..engine.spec import ExposureSpec, ScoringSpec
from ..errors import InvalidArgument, ResourceExhausted, Unavailable
from ..settings import Settings
from ..store import layout
from ..store.objects import ObjectNotFound, ObjectStore, StoreUnavailable
from .admission import admit, admit_exposure
from .estimates import JobEstimate, exposure_estimate, scoring_estimate

UNKNOWN_VOCAB = 512  # distinct characters assumed of a corpus whose count was never recorded


class Checked(NamedTuple):
    spec: dict  # as it will run (its shard size fixed by admission)
    shards: int
    models: int
    estimate: JobEstimate  # from the facts the check read (estimates.py)


def check_scoring(spec: dict, settings: Settings, objects: ObjectStore, tenant: str | None = None) -> Checked:
    """A valid scoring spec that the workers can hold (admission.py: its shard size is fixed
    here), with its estimate from the dataset facts read for the check; raises otherwise."""
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
            why = check_dataset_ref(s.dataset, objects, settings.data_roots, tenant, settings.data_uris)
            if why:
                problems.append(("spec.scoring.dataset", why))
            else:
                meta = dataset_meta(s.dataset, objects, settings, tenant, ParquetColumns.of(s))
                problems += _dataset_fits(s, settings, meta)
        except StoreUnavailable as e:
            raise Unavailable(f"object store unavailable: {e}") from e
    if problems:
        raise InvalidArgument(problems)
    s.shard_size = admit_spec(s, settings, meta)  # fixed at submit: model k's shard never changes
    estimate = scoring_estimate(s, DatasetFacts.from_meta(meta) if meta else None, settings)
    return Checked(s.to_dict(), len(s.shards()), s.models, estimate)


def job_shards(rec) -> list[int]:
    """The shard ids of a job's tasks: a scoring job's `ScoringSpec.shards()` (its DP levels
    are numbered apart from its models' shards), an exposure job's one task, 0."""
    dp = dp_shards(rec.spec.get("metrics") or []) if rec.kind == "scoring" else []
    return [*range(rec.shards_total - len(dp)), *dp]


def admit_spec(s: ScoringSpec, settings: Settings, meta: dict | None) -> int:
    """The shard size `s` runs with (admission.admit); a dataset the gateway knows nothing of
    (a file under MEMSCORE_DATA_ROOTS) is sized by the worker only, with the spec's shard size.
    A model without an analytic cost (torchvision/<name>, plugins) is sized by its measured one."""
    facts = DatasetFacts.from_meta(meta) if meta else None
    if not facts:
        return s.effective_shard_size
    return admit(s, facts, settings, measured_cost(s.model, facts.feature_shape, facts.num_classes))


def check_exposure(spec: dict, settings: Settings, objects: ObjectStore, tenant: str | None = None) -> Checked:
    """As `check_scoring`, for an exposure job (one task: one shard of one model), sized by
    admission control (`admission.admit_exposure`)."""
    try:
        s = ExposureSpec.from_dict(spec)
    except (TypeError, ValueError) as e:
        raise InvalidArgument([("spec.exposure", str(e))]) from None
    problems = [(f"spec.exposure.{f}", m) for f, m in s.validate()]
    try:
        why = check_corpus_ref(s.corpus, objects, settings.data_roots, tenant)
        if why:
            problems.append(("spec.exposure.corpus", why))
        if problems:
            raise InvalidArgument(problems)
        chars, vocab = corpus_facts(s.corpus, objects, settings.data_roots, tenant)
    except StoreUnavailable as e:
        raise Unavailable(f"object store unavailable: {e}") from e
    admit_exposure(s, chars, vocab, settings)
    return Checked(s.to_dict(), 1, 1, exposure_estimate(s, chars, vocab, settings))


def dataset_meta(
    ref: str,
    objects: ObjectStore,
    settings: Settings | None = None,
    tenant: str | None = None,
    columns: ParquetColumns | None = None,
) -> dict | None:
    """What the gateway knows of a dataset without loading it: built-ins' shapes, the facts
    recorded at upload, and, with `settings`, those of an `.npz`, Parquet table (its `columns`)
    or ImageFolder tree under the data roots `tenant` may read (`datasets.npz_facts`,
    `parquet.parquet_facts`, `image_folder_facts`: headers and labels only). None when nothing
    is known. An s3:// table's facts are read by ranged GETs (`datarefs.uri_dataset_facts`)."""
    if ref in BUILTIN_SHAPES:
        return {**BUILTIN_FACTS[ref], "feature_shape": list(BUILTIN_SHAPES[ref])}
    if layout.is_dataset_key(ref):
        try:
            return json.loads(objects.get_bytes(layout.dataset_meta_key(ref)))
        except ObjectNotFound:
            return None
    if settings is None:
        return None
    if is_uri(ref):
        try:
            return uri_dataset_facts(ref, objects, settings.data_uris, tenant, columns)
        except DatasetError as e:
            raise InvalidArgument([("spec.scoring.dataset", str(e))]) from None
    path = allowed_path(ref, roots_for(settings.data_roots, tenant))
    if path is None:
        return None
    try:
        return _path_facts(
            path,
            os.stat(path).st_mtime_ns,
            settings.max_decompressed_bytes,
            settings.max_compression_ratio,
            columns or ParquetColumns(),
        )
    except DatasetError as e:
        raise InvalidArgument([("spec.scoring.dataset", str(e))]) from None


@functools.lru_cache(maxsize=256)
def _path_facts(path: str, mtime_ns: int, max_bytes: int, max_ratio: float, columns: ParquetColumns) -> dict:
    """Facts of a file or tree under the data roots; cached while its modification time holds."""
    if is_parquet(path):
        return parquet_facts(path, columns)
    if os.path.isdir(path):
        return image_folder_facts(path)
    return npz_facts(path, max_bytes, max_ratio)


def corpus_facts(
    ref: str, objects: ObjectStore, roots: tuple[str, ...] = (), tenant: str | None = None
) -> tuple[int, int]:
    """(characters, distinct characters) of an exposure job's corpus, or bounds of them: the
    built-in's, an upload's recorded facts (before they were recorded: its size in bytes, as
    UTF-8 takes at least a byte a character), a file's size under the data roots."""
    if ref in ("", BUILTIN_CORPUS):
        return BUILTIN_CORPUS_FACTS["chars"], BUILTIN_CORPUS_FACTS["vocab"]
    if layout.is_dataset_key(ref):
        try:
            meta = json.loads(objects.get_bytes(layout.dataset_meta_key(ref)))
        except ObjectNotFound:
            meta = {}
        chars = int(meta.get("chars") or meta.get("size_bytes") or 0)
        return chars, int(meta.get("vocab") or min(chars, UNKNOWN_VOCAB))
    path = allowed_path(ref, roots_for(roots, tenant), directory_ok=False)
    size = os.path.getsize(path) if path else 0
    return size, min(size, UNKNOWN_VOCAB)


def _dataset_fits(s: ScoringSpec, settings: Settings, meta: dict | None) -> list[tuple[str, str]]:
    """The dataset's size is within limits and the model takes its shape: the built-ins by
    their tables, other models by a dry run of the trainer's vectorised step (torch is loaded
    for those only; registry.model_problem)."""
    if meta is None:
        return []
    if meta.get("n_train", 0) > settings.max_train_examples:
        raise ResourceExhausted(
            f"spec.scoring.dataset: {meta['n_train']} training examples exceeds this server's limit of "
            f"{settings.max_train_examples} (MEMSCORE_MAX_TRAIN_EXAMPLES)"
        )
    shape = tuple(meta.get("feature_shape") or ())
    if not shape or name_problem(s.model):  # an unknown name is validate()'s problem
        return []
    why = model_problem(s.model, shape, int(meta.get("num_classes") or 2))
    return [("spec.scoring.model", why)] if why else []
