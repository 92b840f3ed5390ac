"""torchvision's classification architectures, made trainable hundreds at a time.

`torchvision/<name>` builds `torchvision.models.get_model(name, weights=None)` (random
initialisation: nothing is downloaded) and adapts it to the vectorised trainer and to small
images:
- every BatchNorm becomes a GroupNorm over the same channels: BatchNorm updates its running
  statistics in forward, which `torch.func.vmap` over stacked members cannot do (Wu & He 2018
  show GroupNorm trains ResNets about as well at small batches);
- every Dropout becomes the identity: a random draw in forward is refused under vmap's default
  randomness mode, and the paper's models train without it;
- the first convolution takes the data's channel count; in the resnets, for images of at most
  SMALL_IMAGE pixels a side, it becomes a 3x3 stride-1 convolution and the max-pool goes (the
  usual CIFAR stem, He et al. 2016 §4.2), so a 32x32 image is not cut to 8x8 before the first
  block; larger images (ImageNet's 224) keep the standard stem, which they need (a stride-1
  stem at 224 px costs 16x the compute and memory of the first stage).
"""

from __future__ import annotations

import math

from torch import nn

from .catalog import TORCHVISION_MODELS, TORCHVISION_PREFIX

SMALL_IMAGE = 64  # pixels a side up to which the resnets get the CIFAR stem
GROUPS = 32  # GroupNorm's default group count (Wu & He 2018); fewer where the channels do not divide


def torchvision_name(arch: str) -> str | None:
    """`resnet18` for `torchvision/resnet18`; None for other names."""
    return arch[len(TORCHVISION_PREFIX) :] if arch.startswith(TORCHVISION_PREFIX) else None


def build_torchvision(name: str, feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's `name` for (c, h, w) images and `num_classes` classes, adapted as above."""
    import torchvision

    if name not in TORCHVISION_MODELS:
        raise ValueError(f"torchvision/{name} is not supported; choose one of {', '.join(TORCHVISION_MODELS)}")
    if len(feature_shape) != 3:
        raise ValueError(
            f"torchvision/{name} takes (c, h, w) images; this dataset's examples have shape {feature_shape}"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    _replace_layers(model)
    if name.startswith("resnet") and max(feature_shape[1:]) <= SMALL_IMAGE:
        model.conv1 = nn.Conv2d(feature_shape[0], model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        _adapt_first_conv(model, feature_shape[0])
    return model


def _replace_layers(module: nn.Module) -> None:
    """BatchNorm -> GroupNorm, Dropout -> identity, in place, at any depth."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(c, GROUPS), c))
        elif isinstance(child, nn.Dropout):
            setattr(module, name, nn.Identity())
        else:
            _replace_layers(child)


def _adapt_first_conv(model: nn.Module, channels: int) -> None:
    """The first Conv2d takes `channels` input channels, with its kernel, stride and padding."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != channels:
                    conv = nn.Conv2d(
                        channels,
                        child.out_channels,
                        child.kernel_size,
                        stride=child.stride,
                        padding=child.padding,
                        bias=child.bias is not None,
                    )
                    setattr(parent, name, conv)
                return
