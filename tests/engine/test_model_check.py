"""The gateway's dry run of a model the zoo does not know (model_check.dry_run, through
registry.model_problem): each way a model can fail the trainer is caught and named."""

from __future__ import annotations

import math

import pytest

from memscore.engine.model_check import measure
from memscore.engine.registry import model_problem
from tests.model_plugins import write_plugin_package


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_plugin_package(tmp_path / "site")))


@pytest.mark.parametrize(
    "name, shape, classes, expected",
    [
        ("test-tiny", (16,), 3, None),
        ("test-tiny", (1, 8, 8), 10, None),
        ("test-takes-16", (16,), 3, None),
        ("test-takes-16", (40,), 3, "does not take examples of shape (40,)"),
        ("test-wrong-output", (16,), 3, "not logits of shape (2, 3)"),
        ("test-batchnorm", (16,), 3, "uses BatchNorm1d"),
        ("test-dropout", (16,), 3, "does not train vectorised"),
        ("test-bad-recipe", (16,), 3, "learning_rate"),
        ("torchvision/resnet18", (40,), 10, "takes (c, h, w) images"),
    ],
)
def test_the_dry_run_names_what_stops_a_model_from_training(plugins, name, shape, classes, expected):
    why = model_problem(name, shape, classes)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why, why


def test_a_measured_cost_is_the_analytic_one_where_both_exist():
    """The zoo's MLP measured by hooks (input + every leaf's output) against cost.py's table."""
    from memscore.engine.cost import model_cost
    from memscore.engine.models import build_model

    for arch, shape in (("mlp", (40,)), ("linear", (1, 8, 8))):
        measured, table = measure(build_model(arch, shape, 10), shape, 10), model_cost(arch, shape, 10)
        assert (measured.params, measured.forward_flops) == (table.params, table.forward_flops)
        # the measure counts Flatten's output (a view of the input: the table does not): the upper side
        assert measured.activations == table.activations + math.prod(shape)
        assert measured.widest == max(table.widest, math.prod(shape))


def test_a_check_too_large_for_the_gateway_is_refused_before_anything_is_allocated():
    """resnet34 on 1024 px images: ~7 GiB for 2 members on 2 examples, sized on the meta device."""
    import resource
    import time

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    why = model_problem("torchvision/resnet34", (3, 1024, 1024), 10)
    assert why is not None and "GiB, over the 2 GiB" in why, why
    assert time.perf_counter() - t < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20  # KiB: under 1 GiB more


def test_a_model_the_meta_device_cannot_size_is_checked_for_real_only_on_small_examples():
    from memscore.engine.model_check import MAX_UNSIZED_ELEMENTS, dry_run_bytes
    from memscore.engine.registry import builder

    build = builder("torchvision/regnet_y_400mf")
    assert dry_run_bytes(build, (3, 32, 32), 10) is None  # it copies weights at construction
    assert model_problem("torchvision/regnet_y_400mf", (3, 32, 32), 10) is None
    why = model_problem("torchvision/regnet_y_400mf", (3, 512, 512), 10)
    assert 3 * 512 * 512 > MAX_UNSIZED_ELEMENTS and "too large to check" in why
