"""Subset plans: model k trains on a subset S_k of size round(r·n), drawn without replacement.

Every random choice about model k comes from a generator seeded by (job seed, k, purpose), so
any model can be rebuilt alone, in any shard, on any worker (Feldman & Zhang 2020, §3: the
estimator needs only i ∈ S_k for each k, never which shard trained model k).
"""

from __future__ import annotations

import numpy as np

# purposes: independent streams for one model's subset, weight init and batch order
SUBSET, INIT, BATCHES, AUGMENT = 0, 1, 2, 3


def model_seed(seed: int, k: int, purpose: int) -> int:
    """A 63-bit seed for model k's `purpose` stream, stable across numpy versions."""
    state = np.random.SeedSequence([int(seed), int(k), int(purpose)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def subset_size(n: int, ratio: float) -> int:
    size = int(round(ratio * n))
    if not 1 <= size < n:
        raise ValueError(f"subset ratio {ratio} gives {size} of {n} examples; need 1 <= round(r*n) < n")
    return size


def subset_indices(n: int, ratio: float, seed: int, k: int) -> np.ndarray:
    """Sorted indices of S_k."""
    rng = np.random.default_rng(model_seed(seed, k, SUBSET))
    return np.sort(rng.choice(n, size=subset_size(n, ratio), replace=False))


def subset_masks(n: int, ratio: float, seed: int, model_ids) -> np.ndarray:
    """bool (len(model_ids), n): row g is the membership mask of model model_ids[g]."""
    masks = np.zeros((len(model_ids), n), dtype=bool)
    for g, k in enumerate(model_ids):
        masks[g, subset_indices(n, ratio, seed, k)] = True
    return masks


def shard_model_ids(total_models: int, shard_size: int, shard: int) -> list[int]:
    """Model ids trained by shard s: [s·G, min((s+1)·G, K))."""
    start = shard * shard_size
    return list(range(start, min(start + shard_size, total_models)))


def num_shards(total_models: int, shard_size: int) -> int:
    return (total_models + shard_size - 1) // shard_size
