"""Each model's minibatches: its own batch order and augmentation, from CPU generators seeded
by (seed, k, purpose) (`subsets.model_seed`), drawn a block of steps at a time and stacked
for a group of models (`GroupBatches`), so model k's batches do not depend on its group, its
device, or how many steps a caller takes at a time. The trainer (ensemble.py) and the plain
loop (reference.py) both draw from here."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import Dataset
from .recipes import Recipe
from .subsets import AUGMENT, BATCHES, model_seed


class BatchStream:
    """Model k's training example indices: consecutive epochs of fresh permutations of its
    subset, cut into batches of B (a batch may straddle two epochs, so every step has exactly
    B examples). Drawn in blocks so memory stays O(block·B) however long training is."""

    def __init__(self, subset: np.ndarray, batch_size: int, seed: int, k: int, purpose: int = BATCHES):
        self.subset = torch.from_numpy(subset)
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(model_seed(seed, k, purpose))
        self.pending = self.subset[:0]

    def next(self, steps: int) -> torch.Tensor:
        """The next `steps` batches, (steps, B)."""
        need = steps * self.batch_size
        parts, have = [self.pending], len(self.pending)
        while have < need:
            parts.append(self.subset[torch.randperm(len(self.subset), generator=self.gen)])
            have += len(self.subset)
        flat = torch.cat(parts)
        self.pending = flat[need:]
        return flat[:need].view(steps, self.batch_size)


AUG_BLOCK = 64  # steps of augmentation drawn per generator call; part of the stream's definition


def augment_pad(ds: Dataset, recipe: Recipe) -> int:
    """Translation range in pixels, 0 for no augmentation: size/8 (4 px on 32×32, as for CIFAR),
    and none below 16 px, where even one pixel is a large part of the image (8×8 digits)."""
    pad = ds.feature_shape[-1] // 8 if ds.kind == "image" else 0
    return pad if recipe.augment and pad >= 2 else 0


class AugmentStream:
    """Model k's augmentation: for each step and each of its B examples, a translation (dy, dx)
    in 0..2·pad and a horizontal flip (0/1, always 0 unless `flip`), from a CPU generator seeded
    by (seed, k, AUGMENT). Drawn in fixed chunks of AUG_BLOCK steps, so the values depend neither
    on how many steps a caller takes at a time, nor on the device, nor on the group."""

    def __init__(self, batch_size: int, pad: int, flip: bool, seed: int, k: int):
        self.batch_size, self.pad, self.flip = batch_size, pad, flip
        self.gen = torch.Generator().manual_seed(model_seed(seed, k, AUGMENT))
        self.pending = torch.zeros(0, batch_size, 3, dtype=torch.int64)

    def next(self, steps: int) -> torch.Tensor:
        """The next `steps` steps' draws, (steps, B, 3) int64: dy, dx, flip."""
        parts, have = [self.pending], len(self.pending)
        while have < steps:
            shape = (AUG_BLOCK, self.batch_size)
            shift = torch.randint(0, 2 * self.pad + 1, (*shape, 2), generator=self.gen)
            flip = torch.zeros(shape, dtype=torch.int64)
            if self.flip:  # a recipe without flips draws none
                flip = torch.randint(0, 2, shape, generator=self.gen)
            parts.append(torch.cat([shift, flip[..., None]], -1))
            have += AUG_BLOCK
        flat = torch.cat(parts)
        self.pending = flat[steps:]
        return flat[:steps]


def augment_images(x: torch.Tensor, aug: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate image i of a (N, C, H, W) batch by (dy_i - pad, dx_i - pad) pixels (reflect
    padding), then flip it horizontally where flip_i is 1; `aug` (N, 3) holds (dy, dx, flip) on
    x's device. One pad and one gather for the whole batch, whatever N is."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect").flatten(2)  # (N, C, (H+2p)·(W+2p))
    dy, dx, flip = aug.unbind(-1)
    j = torch.arange(w, device=x.device)
    # column j of a flipped image is column w-1-j of the unflipped one: the flip is part of the gather
    cols = dx[:, None] + torch.where(flip[:, None].bool(), w - 1 - j, j)  # (N, W)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    flat = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # (N, H, W) into the padded image
    return xp.gather(2, flat.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


class GroupBatches:
    """The G models' minibatches, step by step, on the device: each model's batch indices and
    augmentation come from its own CPU streams, drawn `block` steps at a time, stacked, and
    moved to the device once per block (no per-model work on the device)."""

    block = 64  # steps per transfer: the streams are block-invariant, so this only sets the cost

    def __init__(
        self,
        ds: Dataset,
        subsets: list[np.ndarray],
        model_ids: list[int],
        batch: int,
        seed: int,
        recipe: Recipe,
        dev: torch.device,
        steps: int,
        channels_last: bool = False,
    ):
        self.x = torch.from_numpy(ds.x_train).to(dev)
        if channels_last and self.x.dim() == 4:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(ds.y_train).to(dev)
        self.pad, self.dev, self.steps = augment_pad(ds, recipe), dev, steps
        self.batches = [BatchStream(s, batch, seed, k) for s, k in zip(subsets, model_ids)]
        self.augs = [AugmentStream(batch, self.pad, recipe.flip, seed, k) for k in model_ids] if self.pad else []

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step `step`'s inputs (G, B, ...) and labels (G, B); steps are taken in order."""
        if step % self.block == 0:
            n = min(self.block, self.steps - step)
            self.order = torch.stack([st.next(n) for st in self.batches], dim=1).to(self.dev)  # (n, G, B)
            if self.augs:
                self.aug = torch.stack([a.next(n) for a in self.augs], dim=1).to(self.dev)  # (n, G, B, 3)
        idx = self.order[step % self.block]
        xb = self.x[idx]
        if self.augs:
            xb = augment_images(xb.flatten(0, 1), self.aug[step % self.block].flatten(0, 1), self.pad).view_as(xb)
        return xb, self.y[idx]
