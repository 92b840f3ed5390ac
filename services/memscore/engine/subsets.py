"""Subset plans: model k trains on a subset S_k of size round(r·n), drawn without replacement.

Two plans (`ScoringSpec.plan`):
- "random": every S_k drawn independently (Feldman & Zhang 2020).
- "balanced": r = 1/2 and models 2p and 2p+1 split one random permutation between them, so S_{2p+1}
  is the complement of S_{2p} and every example is in exactly half of any even number of models,
  as LiRA's shadow sets are built (Carlini et al. 2022, §VI-A). With n odd the even member gets
  the extra example.

Every random choice about model k comes from a generator seeded by (job seed, k, purpose), so
any model can be rebuilt alone, in any shard, on any worker (Feldman & Zhang 2020, §3: the
estimator needs only i ∈ S_k for each k, never which shard trained model k).
"""

from __future__ import annotations

import numpy as np

from .catalog import PLANS

# purposes: independent streams for one model's subset, weight init and batch order; a pair's
# permutation; the batch order every model of a job shares (shared-batch recipes: k is 0)
SUBSET, INIT, BATCHES, AUGMENT, PAIR, SHARED = 0, 1, 2, 3, 4, 5


def model_seed(seed: int, k: int, purpose: int) -> int:
    """A 63-bit seed for model k's `purpose` stream, stable across numpy versions."""
    state = np.random.SeedSequence([int(seed), int(k), int(purpose)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def subset_size(n: int, ratio: float) -> int:
    size = int(round(ratio * n))
    if not 1 <= size < n:
        raise ValueError(f"subset ratio {ratio} gives {size} of {n} examples; need 1 <= round(r*n) < n")
    return size


def subset_indices(n: int, ratio: float, seed: int, k: int, plan: str = "random") -> np.ndarray:
    """Sorted indices of S_k."""
    if plan == "balanced":
        perm = np.random.default_rng(model_seed(seed, k // 2, PAIR)).permutation(n)
        half = subset_size(n, ratio)
        return np.sort(perm[:half] if k % 2 == 0 else perm[half:])
    if plan != "random":
        raise ValueError(f"unknown subset plan {plan!r}; choose one of {', '.join(PLANS)}")
    rng = np.random.default_rng(model_seed(seed, k, SUBSET))
    return np.sort(rng.choice(n, size=subset_size(n, ratio), replace=False))


def masks_of(subsets, n: int) -> np.ndarray:
    """bool (len(subsets), n): row g is True at the indices of subsets[g]."""
    masks = np.zeros((len(subsets), n), dtype=bool)
    for g, s in enumerate(subsets):
        masks[g, s] = True
    return masks


def subset_masks(n: int, ratio: float, seed: int, model_ids, plan: str = "random") -> np.ndarray:
    """bool (len(model_ids), n): row g is the membership mask of model model_ids[g]."""
    return masks_of([subset_indices(n, ratio, seed, k, plan) for k in model_ids], n)


def shard_model_ids(total_models: int, shard_size: int, shard: int) -> list[int]:
    """Model ids trained by shard s: [s·G, min((s+1)·G, K))."""
    start = shard * shard_size
    return list(range(start, min(start + shard_size, total_models)))


def num_shards(total_models: int, shard_size: int) -> int:
    return (total_models + shard_size - 1) // shard_size
