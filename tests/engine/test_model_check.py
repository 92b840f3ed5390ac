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
