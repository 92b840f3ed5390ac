"""A plugin package written at test time, as `pip install` would leave it: a module and a
`*.dist-info/` (METADATA, entry_points.txt) in a directory that goes on sys.path (and on the
workers' PYTHONPATH), where importlib.metadata discovers its `memscore.models` entry points."""

from __future__ import annotations

from pathlib import Path

MODULE = '''
import math

from torch import nn


def build_tiny(feature_shape, num_classes):
    """A small MLP: any shape, flattened."""
    d = math.prod(feature_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, num_classes))


build_tiny.recipe = {"lr": 5e-3, "min_steps": 60, "epochs": 0}
build_tiny.input = "any shape (flattened)"


def build_takes_16(feature_shape, num_classes):
    """Takes 16-d vectors only, whatever it is told."""
    return nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))


def build_wrong_output(feature_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(feature_shape), num_classes + 1))


def build_batchnorm(feature_shape, num_classes):
    d = math.prod(feature_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.BatchNorm1d(16), nn.Linear(16, num_classes))


def build_dropout(feature_shape, num_classes):
    d = math.prod(feature_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.Dropout(0.5), nn.Linear(16, num_classes))


def build_bad_recipe(feature_shape, num_classes):
    return build_tiny(feature_shape, num_classes)


build_bad_recipe.recipe = {"learning_rate": 0.1}
'''

ENTRY_POINTS = {
    "test-tiny": "memscore_test_plugins:build_tiny",
    "test-takes-16": "memscore_test_plugins:build_takes_16",
    "test-wrong-output": "memscore_test_plugins:build_wrong_output",
    "test-batchnorm": "memscore_test_plugins:build_batchnorm",
    "test-dropout": "memscore_test_plugins:build_dropout",
    "test-bad-recipe": "memscore_test_plugins:build_bad_recipe",
    "test-broken": "memscore_test_broken_plugin:build",
    "linear": "memscore.engine.models:build_linear",  # the built-in's own entry point: not a duplicate
    "mlp": "memscore_test_plugins:build_tiny",  # a built-in's name taken by another builder: ignored
}


def write_plugin_package(root: Path) -> Path:
    """The package's directory (put it on sys.path / PYTHONPATH)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "memscore_test_plugins.py").write_text(MODULE)
    (root / "memscore_test_broken_plugin.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    info = root / "memscore_test_plugins-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: memscore-test-plugins\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in ENTRY_POINTS.items())
    (info / "entry_points.txt").write_text("[memscore.models]\n" + lines)
    return root
