"""Checking a model the zoo does not know before a job is queued with it, and measuring what it
costs (the gateway's check of `torchvision/<name>` and plugin models, engine/registry.py).

`dry_run` does what the trainer (ensemble.py) will do, at the smallest size: 2 members built
and stacked (`stack_module_state`), one vmapped `functional_call` on a (2, 2, *shape) batch,
a cross-entropy backward, and the evaluation pass (one batch shared by the members) without
gradients. A model that fails here would fail every shard an hour later; the message says at
which of these stages, with the error.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from .cost import ModelCost
from .models import forward_flops, hooked_forward
from .recipes import Recipe

MEMBERS = 2  # stacked members, and examples per member, of the dry run
MAX_DRY_RUN_BYTES = 2 << 30  # what one check may hold on the gateway: a hostile shape cannot exhaust it
MAX_UNSIZED_ELEMENTS = 3 * 256 * 256  # a model the meta device cannot size is checked for real up to this


def recipe_problem(recipe) -> str | None:
    """None if a builder's `recipe` attribute (a dict of Recipe fields) is usable."""
    if recipe is None:
        return None
    fields = {f.name for f in dataclasses.fields(Recipe)}
    if not isinstance(recipe, dict) or set(recipe) - fields:
        unknown = sorted(set(recipe) - fields) if isinstance(recipe, dict) else recipe
        return f"its `recipe` attribute must be a dict of Recipe fields ({', '.join(sorted(fields))}); got {unknown!r}"
    return None


def _build(build, feature_shape: tuple[int, ...], num_classes: int) -> list[nn.Module] | str:
    members = []
    for _ in range(MEMBERS):
        try:
            model = build(feature_shape, num_classes)
        except Exception as e:  # noqa: BLE001 - whatever the plugin raises is its problem to report
            return f"building it for examples of shape {feature_shape} failed: {type(e).__name__}: {e}"
        if not isinstance(model, nn.Module):
            return f"its build function returned {type(model).__name__}, not a torch.nn.Module"
        members.append(model)
    if not any(p.requires_grad for p in members[0].parameters()):
        return "it has no trainable parameters"
    norms = sorted({type(m).__name__ for m in members[0].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    if norms:
        return (
            f"it uses {', '.join(norms)}, whose running statistics are updated in forward: G members cannot train "
            "at once under torch.func.vmap; use GroupNorm or LayerNorm"
        )
    return members


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def dry_run_bytes(build, feature_shape: tuple[int, ...], num_classes: int) -> int | None:
    """Bytes the dry run would hold at least: every leaf module's output for MEMBERS × MEMBERS examples
    with its gradient, and MEMBERS models' weights, stacked copies and gradients; from a forward
    pass on torch's meta device (shapes, no storage). None when the model cannot run there."""
    outputs = []
    try:
        with torch.device("meta"):
            model = build(feature_shape, num_classes)
            x = torch.empty(MEMBERS, *feature_shape)
        hooked_forward(model, _leaves(model), lambda m, i, o: outputs.append(o.numel()), x)
        params = sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a model that needs real tensors is simply run for real
        return None
    return 4 * (2 * MEMBERS * sum(outputs) + 3 * MEMBERS * params)


def dry_run(build, feature_shape: tuple[int, ...], num_classes: int) -> str | None:
    """None if the trainer can train models of `build` on examples of `feature_shape` with
    `num_classes` classes, else why not. A dry run that would hold more than MAX_DRY_RUN_BYTES
    (the gateway checks every submitted model this way) is refused before anything is allocated."""
    need = dry_run_bytes(build, feature_shape, num_classes)
    if need is None and math.prod(feature_shape) > MAX_UNSIZED_ELEMENTS:
        return (
            f"it cannot be sized on the meta device, and examples of shape {feature_shape} are too large to check "
            f"it for real on the gateway (at most {MAX_UNSIZED_ELEMENTS:,} values each)"
        )
    if need is not None and need > MAX_DRY_RUN_BYTES:
        return (
            f"checking it on examples of shape {feature_shape} ({MEMBERS} members on {MEMBERS} examples) would take "
            f"~{need / 2**30:.1f} GiB, over the {MAX_DRY_RUN_BYTES / 2**30:.0f} GiB a gateway spends on a check; "
            "use smaller examples (e.g. resize images) or a smaller model"
        )
    members = _build(build, feature_shape, num_classes)
    if isinstance(members, str):
        return members
    x = torch.randn(MEMBERS, MEMBERS, *feature_shape, generator=torch.Generator().manual_seed(0))
    try:
        out = members[0](x[0])
    except Exception as e:  # noqa: BLE001
        return f"it does not take examples of shape {feature_shape}: {type(e).__name__}: {e}"
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (MEMBERS, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"its output on a batch of {MEMBERS} examples is {got}, not logits of shape ({MEMBERS}, {num_classes})"
    params, buffers = stack_module_state(members)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(members[0]).to("meta")

    def fmodel(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    try:
        logits = torch.vmap(fmodel, in_dims=(0, 0, 0))(params, buffers, x)
        y = torch.arange(MEMBERS).remainder(num_classes).repeat(MEMBERS)
        F.cross_entropy(logits.flatten(0, 1), y).backward()
    except Exception as e:  # noqa: BLE001
        return f"it does not train vectorised (torch.func.vmap over stacked members): {type(e).__name__}: {e}"
    if any(p.grad is None or not torch.isfinite(p.grad).all() for p in params.values() if p.requires_grad):
        return "its backward pass leaves some parameters without a finite gradient"
    try:
        with torch.no_grad():
            torch.vmap(fmodel, in_dims=(0, 0, None))(params, buffers, x[0])
    except Exception as e:  # noqa: BLE001
        return f"its evaluation pass fails vectorised: {type(e).__name__}: {e}"
    return None


def measure(model: nn.Module, feature_shape: tuple[int, ...], num_classes: int) -> ModelCost:
    """The ModelCost of `model` on one example, as cost.py's tables give it for the zoo:
    parameters, forward FLOPs (models.forward_flops), activation elements (the input and every
    leaf module's output: what autograd keeps) and the widest single output."""
    outputs = []

    def hook(mod, inp, out):
        if isinstance(out, torch.Tensor):
            outputs.append(out[0].numel())

    hooked_forward(model, _leaves(model), hook, torch.zeros(1, *feature_shape))
    params = sum(p.numel() for p in model.parameters())
    inputs = 1
    for d in feature_shape:
        inputs *= d
    widest = max(outputs, default=num_classes)
    return ModelCost(params, forward_flops(model, feature_shape), inputs + sum(outputs), widest)
