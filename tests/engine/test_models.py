"""The zoo's linear model (multinomial logistic regression): G of them trained at once are G
ordinary runs, and its recipe fits what a linear model can fit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from memscore.engine.datasets import load_digits_dataset
from memscore.engine.ensemble import make_recipe, train_ensemble
from memscore.engine.models import build_model, count_params
from memscore.engine.reference import train_single


def test_the_linear_model_is_one_affine_map_of_the_flattened_input():
    model = build_model("linear", (1, 8, 8), 10)
    assert count_params(model) == 64 * 10 + 10


def test_g_linear_models_trained_at_once_equal_g_single_runs(embeddings):
    """The trainer's tolerance (tests/engine/test_ensemble.py): 2e-3 on probabilities."""
    ds = embeddings()
    recipe = replace(make_recipe("linear"), epochs=0, min_steps=40, batch_size=32)
    ids = [1, 4, 6]
    out = train_ensemble(ds, "linear", ids, 0.7, seed=2, recipe=recipe, device="cpu")
    for g, k in enumerate(ids):
        single = train_single(ds, "linear", k, 0.7, seed=2, recipe=recipe)
        np.testing.assert_array_equal(out.trace.masks[g], single["mask"])
        np.testing.assert_allclose(out.trace.train_prob[g], single["train_prob"], atol=2e-3)
        np.testing.assert_allclose(out.trace.test_prob[g], single["test_prob"], atol=2e-3)


def test_the_linear_recipe_fits_a_separable_set_and_digits(embeddings):
    """In-sample accuracy of the default recipe: every training example of a separable set; on
    digits (64 pixels, 10 classes) at least 98% (measured 0.996, engine/recipes.py)."""
    sep = train_ensemble(embeddings(), "linear", [0, 1], 0.7, seed=0, recipe=make_recipe("linear"), device="cpu")
    assert sep.trace.train_correct[sep.trace.masks].mean() == 1.0
    assert sep.trace.test_correct.mean() > 0.95
    digits = load_digits_dataset()
    tr = train_ensemble(digits, "linear", [0], 0.7, seed=0, recipe=make_recipe("linear"), device="cpu").trace
    assert tr.train_correct[tr.masks].mean() >= 0.98


@pytest.mark.parametrize("shape", [(512,), (40,), (1, 8, 8)])
def test_a_spec_with_the_linear_model_validates_for_any_shape(shape):
    from memscore.engine.registry import model_problem
    from memscore.engine.spec import ScoringSpec

    assert ScoringSpec(dataset="digits", model="linear").validate() == []
    assert model_problem("linear", shape, 10) is None
