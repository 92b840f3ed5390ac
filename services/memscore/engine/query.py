"""Influence on new examples, from a finished job's stored weights and masks: no retraining.

For a query point (x, y), FZ eq. 2 needs only, for every model k, whether k classifies x as y,
and whether training example i was in S_k. The masks are rebuilt from (seed, k); the
correctness comes from running the stored stacked weights (one `vmap` per shard) on the query
points. The result equals what the job would have reported had the points been in its test set.
"""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np
import torch
from torch.func import functional_call

from .influence import InfluenceAccumulator, InfluenceResult
from .models import build_model
from .subsets import subset_masks


def checkpoint_to_bytes(model_ids: list[int], arch: str, state: dict[str, torch.Tensor]) -> bytes:
    """One shard's checkpoint: its model ids and their stacked (G, ...) weights."""
    buf = io.BytesIO()
    torch.save({"model_ids": list(model_ids), "arch": arch, "state": state}, buf)
    return buf.getvalue()


def checkpoint_from_bytes(blob: bytes) -> tuple[list[int], dict[str, torch.Tensor]]:
    """(model ids, stacked state dict) of a checkpoint; tensors only, never pickled code."""
    ck = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    return ck["model_ids"], ck["state"]


def correctness(
    arch: str,
    feature_shape: tuple[int, ...],
    num_classes: int,
    state: dict[str, torch.Tensor],
    x: np.ndarray,
    y: np.ndarray,
    batch: int = 1024,
) -> np.ndarray:
    """bool (G, q): does each of the G stacked models classify each query point correctly."""
    base = build_model(arch, feature_shape, num_classes).to("meta")
    fn = torch.vmap(lambda p, xb: functional_call(base, p, (xb,)), in_dims=(0, None))
    out = []
    with torch.no_grad():
        for a in range(0, len(x), batch):
            logits = fn(state, torch.from_numpy(x[a : a + batch]))
            out.append((logits.argmax(-1) == torch.from_numpy(y[a : a + batch])).numpy())
    return np.concatenate(out, axis=1)


def query_influence(
    arch: str,
    feature_shape: tuple[int, ...],
    num_classes: int,
    n_train: int,
    ratio: float,
    seed: int,
    checkpoints: Iterable[bytes],
    x: np.ndarray,
    y: np.ndarray,
    top_k: int = 10,
    plan: str = "random",
) -> InfluenceResult:
    """`checkpoints` yields each shard's checkpoint bytes (`checkpoint_to_bytes`)."""
    acc = InfluenceAccumulator(n_train, len(x))
    for blob in checkpoints:
        model_ids, state = checkpoint_from_bytes(blob)
        acc.add_models(
            subset_masks(n_train, ratio, seed, model_ids, plan),
            correctness(arch, feature_shape, num_classes, state, x, y),
        )
    return acc.compute(top_k=top_k, threshold=np.inf, max_pairs=0)
