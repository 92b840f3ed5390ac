"""Every model a spec may name: built-ins, torchvision's, and plugins installed under the
`memscore.models` entry-point group (here a test package on sys.path, tests/model_plugins.py)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from memscore.engine import registry
from memscore.engine.registry import (
    ModelEntry,
    available_models,
    load_error,
    model_params,
    model_problem,
    reference_shape,
)
from memscore.engine.spec import ScoringSpec
from tests.model_plugins import ENTRY_POINTS, write_plugin_package


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The test plugin package, installed (on sys.path) for this test only."""
    monkeypatch.syspath_prepend(str(write_plugin_package(tmp_path / "site")))
    return ENTRY_POINTS


def test_builtins_come_first_then_torchvision_sorted_by_name():
    entries = available_models()
    assert [e.name for e in entries[:4]] == ["cnn1d", "linear", "mlp", "resnet"]
    assert all(e.source == "builtin" for e in entries[:4])
    assert ModelEntry("torchvision/resnet18", "torchvision", "(c, h, w) images") in entries
    assert [e.name for e in entries if e.source == "torchvision"] == sorted(
        e.name for e in entries if e.source == "torchvision"
    )


def test_an_installed_plugin_is_listed_with_its_entry_point_and_validates(plugins):
    entries = available_models()
    by_name = {e.name: e for e in entries}
    assert set(plugins) <= set(by_name) and len(by_name) == len(entries)
    tiny = by_name["test-tiny"]
    assert tiny.source == "plugin memscore_test_plugins:build_tiny" and tiny.input == "any shape (flattened)"
    assert tiny.load_error == ""
    assert ScoringSpec(dataset="digits", model="test-tiny").validate() == []


def test_a_plugin_that_fails_to_import_is_listed_with_its_error_and_the_others_still_load(plugins):
    by_name = {e.name: e for e in available_models()}
    assert "this plugin is broken on purpose" in by_name["test-broken"].load_error
    assert "RuntimeError" in load_error("test-broken")
    assert "broken on purpose" in model_problem("test-broken", (16,), 3)
    assert model_problem("test-tiny", (16,), 3) is None
    assert (
        ScoringSpec(dataset="digits", model="test-broken").validate() == []
    )  # the name exists: loading is checked later


def test_an_unknown_model_is_a_problem_listing_what_exists(plugins):
    [(field, why)] = ScoringSpec(dataset="digits", model="resnet9000").validate()
    assert field == "model" and "'resnet9000'" in why
    for name in ("auto", "linear", "torchvision/resnet18", "test-tiny"):
        assert name in why
    [(_, why)] = ScoringSpec(dataset="digits", model="torchvision/vgg11").validate()
    assert "torchvision/resnet18" in why
    assert ScoringSpec.from_dict({"dataset": "digits", "model": 3}).validate() == [
        ("model", "must be a model's name, got 3")
    ]


def test_a_plugin_is_unknown_once_its_package_is_gone(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.syspath_prepend(str(write_plugin_package(tmp_path / "site")))
        assert ScoringSpec(dataset="digits", model="test-tiny").validate() == []
    assert ScoringSpec(dataset="digits", model="test-tiny").validate() != []


def test_a_plugin_model_trains_vectorised_with_its_recipe_attribute(plugins, embeddings):
    from memscore.engine.ensemble import train_ensemble
    from memscore.engine.recipes import RECIPES, make_recipe

    recipe = make_recipe("test-tiny", kind="vector")
    assert recipe == replace(RECIPES["mlp"], lr=5e-3, min_steps=60, epochs=0)  # the mlp's, with the plugin's fields
    ds = embeddings()
    out = train_ensemble(ds, "test-tiny", [0, 1], 0.7, seed=0, recipe=recipe, device="cpu").trace
    assert out.train_correct[out.masks].mean() > 0.9
    assert out.meta["arch"] == "test-tiny"


def test_a_spec_with_a_plugin_model_runs_end_to_end(plugins, embeddings):
    from memscore.engine.scoring import run_scoring

    ds = embeddings(n=200, m=50)
    result = run_scoring(ds, ScoringSpec(dataset="blobs", model="test-tiny", models=4, seed=1), device="cpu")
    assert np.isfinite(result.scores["memorization"]).any()


def test_non_builtin_models_default_to_the_recipe_of_their_data_kind():
    from memscore.engine.recipes import RECIPES, make_recipe

    assert make_recipe("torchvision/resnet18", kind="image") == RECIPES["resnet"]
    assert make_recipe("torchvision/resnet18", epochs=3, kind="image").epochs == 3


@pytest.mark.parametrize(
    "name, shape", [("mlp", (512,)), ("linear", (512,)), ("cnn1d", (40,)), ("resnet", (3, 32, 32))]
)
def test_reference_shapes_are_taken_by_their_models(name, shape):
    assert reference_shape(name) == shape
    assert model_problem(name, shape, 10) is None


def test_parameter_counts_are_the_built_models(plugins):
    assert model_params("linear", (512,), 10) == 5130
    assert model_params("test-tiny", (16,), 3) == 16 * 32 + 32 + 32 * 3 + 3
    assert reference_shape("test-tiny") == (512,)  # the first reference shape its dry run accepts
    with pytest.raises(ValueError, match="none of the reference shapes"):
        reference_shape("test-takes-16")


def test_validating_a_spec_loads_neither_torch_nor_a_plugin(tmp_path):
    site = write_plugin_package(tmp_path / "site")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "from memscore.engine.spec import ScoringSpec\n"
        "for m in ('test-tiny', 'test-broken', 'torchvision/resnet18', 'linear'):\n"
        "    assert ScoringSpec(dataset='digits', model=m).validate() == [], m\n"
        "loaded = ('torch', 'torchvision', 'memscore_test_plugins')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_register_model_refuses_builtin_names_and_a_second_builder():
    with pytest.raises(ValueError, match="built-in"):
        registry.register("linear", lambda shape, classes: None)
    with pytest.raises(ValueError, match="built-in"):
        registry.register("torchvision/resnet18", lambda shape, classes: None)


def test_a_builtins_own_entry_point_is_the_builtin_and_another_builder_cannot_take_its_name(plugins, caplog):
    """The test package declares `linear` (memscore's own builder, as pyproject.toml does) and
    `mlp` (its own builder): both stay the built-ins, the second with a warning."""
    from memscore.engine.models import MLP, build_linear

    registry._plugins.cache_clear()
    with caplog.at_level("WARNING", logger="memscore.engine.registry"):
        assert "linear" not in registry.plugins() and "mlp" not in registry.plugins()
    assert "mlp = memscore_test_plugins:build_tiny ignored" in caplog.text and "linear" not in caplog.text
    assert registry.builder("linear") is build_linear and registry.source("mlp") == "builtin"
    assert isinstance(registry.builder("mlp")((16,), 3), MLP)
