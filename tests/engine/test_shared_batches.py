"""Shared batches (engine/shared_batches.py): one minibatch for every model, each counting only
its own subset. A model trained so equals the plain loop's run of it on its members of the same
batches, whatever its group; no example outside a model's subset reaches its gradient; the
linear heads' matrix product is the module's forward pass."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.func import functional_call, stack_module_state

from memscore.engine.ensemble import make_recipe, train_ensemble
from memscore.engine.models import build_model
from memscore.engine.reference import train_single
from memscore.engine.shared_batches import SharedBatches, linear_heads, masked_loss, shared_batch_size


def _recipe(arch: str = "linear", steps: int = 40):
    return replace(make_recipe(arch), epochs=0, min_steps=steps, batch_size=32, shared_batches=True)


@pytest.mark.parametrize("arch", ["linear", "mlp"])
def test_models_trained_on_shared_batches_equal_their_plain_runs(embeddings, arch):
    """The trainer's tolerance (tests/engine/test_ensemble.py): 2e-3 on probabilities."""
    ds, recipe, ids = embeddings(), _recipe(arch), [0, 3, 5]
    out = train_ensemble(ds, arch, ids, 0.7, seed=1, recipe=recipe, device="cpu")
    for g, k in enumerate(ids):
        single = train_single(ds, arch, k, 0.7, seed=1, recipe=recipe)
        np.testing.assert_array_equal(out.trace.masks[g], single["mask"])
        np.testing.assert_allclose(out.trace.train_prob[g], single["train_prob"], atol=2e-3)
        np.testing.assert_allclose(out.trace.test_prob[g], single["test_prob"], atol=2e-3)


def test_a_model_does_not_depend_on_its_group(embeddings):
    ds, recipe = embeddings(), _recipe()
    together = train_ensemble(ds, "linear", [0, 1, 2, 3], 0.7, seed=4, recipe=recipe, device="cpu").trace
    apart = train_ensemble(ds, "linear", [0, 1, 2, 3], 0.7, seed=4, recipe=recipe, device="cpu", group_size=1).trace
    np.testing.assert_allclose(together.train_margin, apart.train_margin, atol=1e-4)
    np.testing.assert_array_equal(together.test_pred, apart.test_pred)


def test_examples_outside_a_subset_never_reach_its_gradient():
    torch.manual_seed(0)
    logits = torch.randn(3, 10, 4, requires_grad=True)
    y = torch.randint(0, 4, (10,))
    weights = (torch.rand(3, 10) < 0.6).float()
    masked_loss(logits, y, weights).backward()
    outside = weights == 0
    assert outside.any() and torch.all(logits.grad[outside] == 0)
    assert torch.all(logits.grad[~outside].abs().sum(-1) > 0)


def test_the_shared_stream_is_one_per_job_and_covers_every_example_each_epoch(embeddings):
    ds = embeddings(n=100)
    masks = np.ones((2, ds.n_train), bool)
    one, other = (SharedBatches(ds, m, 32, 0.7, seed=7, dev="cpu", steps=200) for m in (masks, masks[:1]))
    labels = [one(i)[1] for i in range(64)]
    assert all(torch.equal(y, other(i)[1]) for i, y in enumerate(labels))  # the same batches whatever the group
    assert shared_batch_size(32, 0.7, ds.n_train) == 46 == len(labels[0])
    first_epoch = one.order.flatten()[: ds.n_train]
    assert sorted(first_epoch.tolist()) == list(range(ds.n_train))


def test_linear_heads_equal_the_modules_forward_pass():
    torch.manual_seed(0)
    models = [build_model("linear", (2, 5), 3) for _ in range(4)]
    params, buffers = stack_module_state(models)
    x = torch.randn(7, 2, 5)
    base = models[0]
    vmapped = torch.vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    torch.testing.assert_close(linear_heads(params, buffers, x), vmapped(params, buffers, x))
