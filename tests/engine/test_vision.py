"""torchvision's architectures by name (`torchvision/<name>`): randomly initialised, BatchNorm
replaced by GroupNorm, a small-image stem, trained G at a time under vmap."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from torch import nn

from memscore.engine.catalog import TORCHVISION_MODELS
from memscore.engine.datasets import Dataset
from memscore.engine.models import build_model
from memscore.engine.registry import model_problem


def tiny_images(n: int = 48, m: int = 16, classes: int = 3, seed: int = 0) -> Dataset:
    """3×16×16 images whose class is which third of the image is bright."""
    rng = np.random.default_rng(seed)
    y = np.arange(n + m) % classes
    x = rng.normal(0, 0.3, (n + m, 3, 16, 16)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, :, :, 5 * c : 5 * c + 6] += 1.5
    return Dataset("tiny", x[:n], y[:n], x[n:], y[n:], classes, "image")


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 16, 16)])
def test_every_supported_architecture_passes_the_dry_run(name, shape):
    """The list in catalog.TORCHVISION_MODELS is what this test verified: builds, takes 1- and
    3-channel 16×16 images, runs vectorised, backpropagates."""
    assert model_problem(f"torchvision/{name}", shape, 10) is None


def test_resnet18_has_group_norm_a_small_image_stem_and_no_batch_norm():
    model = build_model("torchvision/resnet18", (1, 16, 16), 7)
    kinds = {type(m) for m in model.modules()}
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert nn.GroupNorm in kinds and nn.Dropout not in kinds
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity) and model.fc.out_features == 7


def test_weights_are_random_not_downloaded():
    a = build_model("torchvision/resnet18", (3, 16, 16), 10)
    b = build_model("torchvision/resnet18", (3, 16, 16), 10)
    assert not np.allclose(a.fc.weight.detach().numpy(), b.fc.weight.detach().numpy())


def test_resnet18_trains_vectorised_on_tiny_images():
    """~7 s on 2 cores: 2 resnet18s (11M parameters each) untrained, then 6 steps of 8 images."""
    from memscore.engine.ensemble import train_ensemble
    from memscore.engine.recipes import make_recipe

    ds = tiny_images()
    base = replace(make_recipe("torchvision/resnet18", kind="image"), epochs=0, batch_size=8)
    traces = [
        train_ensemble(ds, "torchvision/resnet18", [0, 1], 0.7, seed=0, recipe=replace(base, min_steps=s), device="cpu")
        for s in (0, 6)
    ]
    before, after = (t.trace for t in traces)
    assert after.meta["arch"] == "torchvision/resnet18" and after.meta["steps"] == 6
    assert after.train_correct.shape == (2, 48) and np.isfinite(after.train_margin).all()
    # every model's true-class margin on its own training examples grew: the models learn
    for g in range(2):
        assert after.train_margin[g][after.masks[g]].mean() > before.train_margin[g][before.masks[g]].mean() + 0.1


def test_resnets_keep_the_standard_stem_for_large_images():
    """The CIFAR stem up to 64 px a side; ImageNet-sized images keep the 7x7 stride-2 stem and
    its max-pool (a stride-1 stem at 224 px would cost 16x the first stage)."""
    from memscore.engine.vision import build_torchvision

    small, large = (build_torchvision("resnet18", shape, 10) for shape in ((3, 64, 64), (3, 224, 224)))
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    assert large.conv1.stride == (2, 2) and large.conv1.kernel_size == (7, 7)
    assert isinstance(large.maxpool, nn.MaxPool2d)
