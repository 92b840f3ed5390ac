"""The model zoo: small networks that are trained hundreds at a time.

Every model is a plain `nn.Module` whose forward takes one batch (B, *feature_shape). The
ensemble trainer stacks G copies with `torch.func.stack_module_state` and vmaps one
`functional_call` over them, so models must not mutate buffers in forward: no BatchNorm
(running statistics cannot be updated under vmap); the ResNet uses GroupNorm instead.

Each model has a `build_<name>(feature_shape, num_classes)` function: the built-ins are
registered by these, as plugins are (engine/registry.py), and `build_model` looks any name up
there (built-ins, `torchvision/<name>`, plugins, `register_model`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .catalog import ARCH_FEATURE_NDIM, DEFAULT_ARCH, model_takes

ARCHS = tuple(ARCH_FEATURE_NDIM)


class Linear(nn.Module):
    """Multinomial logistic regression on flattened inputs: the classifier head of frozen
    embeddings (one affine map to the logits)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLP(nn.Module):
    """Two hidden ReLU layers on flattened inputs."""

    def __init__(self, in_features: int, num_classes: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN1D(nn.Module):
    """The MNIST-1D paper's CNN (Greydanus 2020): three stride-2 convolutions, then a linear
    head. Takes (B, L) or (B, c, L)."""

    def __init__(self, in_channels: int, length: int, num_classes: int, channels: int = 32):
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Sequential(
            nn.Conv1d(in_channels, channels, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        out_len = length
        for _ in range(3):
            out_len = (out_len - 1) // 2 + 1
        self.head = nn.Linear(channels * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.conv(x).flatten(1))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return torch.relu(y + (x if self.skip is None else self.skip(x)))


class SmallResNet(nn.Module):
    """A ResNet for small images: a stem, one residual block per stage (widths w, 2w, 4w, the
    last two at stride 2), global average pooling, linear head. ~0.3M parameters at w=32."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.GroupNorm(min(8, width), width),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(
            ResBlock(width, width, 1),
            ResBlock(width, 2 * width, 2),
            ResBlock(2 * width, 4 * width, 2),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


def default_arch(kind: str) -> str:
    """The model a dataset gets when the user names none."""
    return DEFAULT_ARCH[kind]


def _shape_checked(arch: str, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
    if why := model_takes(arch, tuple(feature_shape)):
        raise ValueError(why)
    return tuple(int(d) for d in feature_shape)


def build_linear(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return Linear(math.prod(feature_shape), num_classes)


def build_mlp(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(feature_shape), num_classes)


def build_cnn1d(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    shape = _shape_checked("cnn1d", feature_shape)
    c, length = (1, *shape) if len(shape) == 1 else shape
    return CNN1D(c, length, num_classes)


def build_resnet(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return SmallResNet(_shape_checked("resnet", feature_shape)[0], num_classes)


def register_model(name: str, build: Callable[[tuple[int, ...], int], nn.Module]) -> None:
    """Make `build(feature_shape, num_classes) -> nn.Module` trainable as model `name` in this
    process (benchmarks' own networks). The module must obey the zoo's rule: no buffers
    mutated in forward (no BatchNorm), so that G copies train under one vmap."""
    from .registry import register

    register(name, build)


def build_model(arch: str, feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One model `arch` (any name of registry.available_models) for inputs of `feature_shape`
    (without the batch dimension)."""
    from .registry import builder

    return builder(arch)(tuple(int(d) for d in feature_shape), num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, feature_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates ×2 of one forward pass on one example, counted by hooks on Linear
    and Conv layers (the rest is negligible here). Used for TFLOP/s in benchmarks."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            k = math.prod(mod.kernel_size) * mod.in_channels // mod.groups
            total += 2 * k * out[0].numel()

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    hooked_forward(model, layers, hook, torch.zeros(1, *feature_shape))
    return total


def hooked_forward(model: nn.Module, modules, hook, x: torch.Tensor) -> None:
    """Run `model` on `x` without gradients, `hook(module, input, output)` called after each of
    `modules` (the hooks are removed afterwards, also on an error)."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
