"""The plain PyTorch loop: one model, one `nn.Module`, one optimiser, step by step.

It is the baseline the vectorised trainer is measured against (`bench/throughput.py`) and the
definition it is checked against (`tests/engine/test_ensemble.py`): the same initial weights,
batch order, augmentation (images: the model's own translations and flips), schedule and loss
as `ensemble.train_ensemble` for a model id, written the ordinary way. With shared batches
(`Recipe.shared_batches`) a step takes the members of the model's subset in the job's shared
batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import Dataset
from .ensemble import (
    FIT_LOSS,
    AugmentStream,
    BatchStream,
    Recipe,
    augment_images,
    augment_pad,
    init_model,
    lr_factor,
    total_steps,
)
from .shared_batches import shared_batch_size
from .subsets import SHARED, masks_of, subset_indices, subset_size


def train_single(
    ds: Dataset, arch: str, k: int, ratio: float, seed: int, recipe: Recipe, plan: str = "random"
) -> dict[str, np.ndarray]:
    """Train model k alone on the CPU; return its mask, correctness and true-class probability
    on the train and test sets (the fields of one row of a `Trace`), and the steps it trained."""
    subset = subset_indices(ds.n_train, ratio, seed, k, plan)
    size = subset_size(ds.n_train, ratio)  # the plan's size: a balanced pair's odd member may have one less
    batch = min(recipe.batch_size, size)
    steps = total_steps(recipe, size)
    model = init_model(arch, ds, seed, k)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    stream = BatchStream(subset, batch, seed, k)
    if recipe.shared_batches:  # the job's one stream over all the examples; the model keeps its own members
        stream = BatchStream(np.arange(ds.n_train), shared_batch_size(batch, ratio, ds.n_train), seed, 0, SHARED)
    member = torch.from_numpy(masks_of([subset], ds.n_train)[0])
    pad = augment_pad(ds, recipe)
    aug = AugmentStream(batch, pad, recipe.flip, seed, k)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    patience, streak, trained = -(-size // batch), 0, steps  # Recipe.stop_when_fit: an epoch of batches wholly fit
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, steps, recipe.warmup)
        idx = stream.next(1)[0]
        if recipe.shared_batches:
            idx = idx[member[idx]]
        xb = augment_images(x[idx], aug.next(1)[0], pad) if pad else x[idx]
        each = F.cross_entropy(model(xb), y[idx], reduction="none")
        if recipe.stop_when_fit and not recipe.shared_batches:  # the trainer does not stop shared batches
            streak = streak + 1 if bool((each < FIT_LOSS).all()) else 0
            if streak >= patience:
                trained = step
                break
        loss = each.mean() if len(each) else each.sum()  # a shared batch without members: no gradient
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    mask = masks_of([subset], ds.n_train)[0]
    with torch.no_grad():
        out = {"mask": mask, "steps": trained}
        for split, xs, ys in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
            p = model(torch.from_numpy(xs)).softmax(-1)
            yt = torch.from_numpy(ys)
            out[f"{split}_correct"] = (p.argmax(-1) == yt).numpy()
            out[f"{split}_prob"] = p.gather(1, yt[:, None]).squeeze(1).numpy()
    return out
