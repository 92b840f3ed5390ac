"""Shared batches: every model of a group steps on the same minibatch, each counting only the
examples of its own subset (`Recipe.shared_batches`; the `linear` model's recipe).

The default trainer gathers each model's own batch: G copies of B examples per step, and for a
model as small as a linear head that gather, not the arithmetic, is the step. Here one batch of
the whole training set serves every model: the G forward passes are the evaluation pass's
(one input, G weight sets: for a linear head a single matrix product X_b · [W_1 … W_G]), and
model k's loss is the mean cross-entropy over the batch's members of S_k,

    loss_k = Σ_{i ∈ batch} m_ki · CE(f_k(x_i), y_i) / max(1, Σ_i m_ki),     m_ki = [i ∈ S_k],

so examples outside S_k never touch model k's weights (what the FZ estimator needs), and the
gradient of Σ_k loss_k with respect to model k's weights is loss_k's own. The batch holds
round(B / r) examples, B of them in a model's subset on average; the batch order is one stream
seeded by (job seed, SHARED), the same for every model and every grouping, so a model's
training does not depend on which models share its group. Models share their step order (not
their subsets): their SGD noise is correlated, which leaves each estimate's expectation as it
is. No augmentation: the trainer refuses a shared-batch recipe that augments.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .batches import BatchStream
from .datasets import Dataset
from .subsets import SHARED


def shared_batch_size(batch: int, ratio: float, n: int) -> int:
    """Examples per shared batch: B / r, so a model sees about B of its own per step."""
    return max(1, min(n, round(batch / ratio)))


class SharedBatches:
    """Step `step`'s shared batch on the device: inputs (Bs, ...), labels (Bs,) and each model's
    membership weights (G, Bs) float32; drawn `block` steps at a time, as GroupBatches."""

    block = 64

    def __init__(self, ds: Dataset, masks: np.ndarray, batch: int, ratio: float, seed: int, dev, steps: int):
        self.x = torch.from_numpy(ds.x_train).to(dev)
        self.y = torch.from_numpy(ds.y_train).to(dev)
        self.masks = torch.from_numpy(masks).to(dev)  # (G, n) bool
        self.size = shared_batch_size(batch, ratio, ds.n_train)
        self.stream = BatchStream(np.arange(ds.n_train), self.size, seed, 0, purpose=SHARED)
        self.dev, self.steps = dev, steps

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if step % self.block == 0:
            self.order = self.stream.next(min(self.block, self.steps - step)).to(self.dev)  # (n, Bs)
        idx = self.order[step % self.block]
        return self.x[idx], self.y[idx], self.masks[:, idx].float()


def masked_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k loss_k of (G, Bs, C) logits: each model's mean cross-entropy over its own members."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(logits.shape[0]), reduction="none")
    per_model = (ce.view(weights.shape) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return per_model.sum()


def linear_heads(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    """The `linear` model's G heads on one batch, (G, B, C): a single (B, D) × (D, G·C) matrix
    product. vmap of the module would broadcast the batch to every head first (G copies of it:
    6x slower for 256 heads on 2 cores); this is its shared-input pass (eval_fn), in training
    with shared batches and in evaluation."""
    w, b = params["net.1.weight"], params["net.1.bias"]  # (G, C, D), (G, C): models.Linear stacked
    g, c, d = w.shape
    return (x.flatten(1) @ w.reshape(g * c, d).T).view(-1, g, c).transpose(0, 1) + b[:, None, :]
