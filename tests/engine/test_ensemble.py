"""The vectorised trainer is G ordinary training runs done at once."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from memscore.engine.datasets import load_mnist1d
from memscore.engine.ensemble import BatchStream, make_recipe, train_ensemble
from memscore.engine.reference import train_single
from memscore.engine.subsets import subset_indices, subset_masks


@pytest.fixture(scope="module")
def small_mnist1d():
    return load_mnist1d(num_samples=600)


@pytest.mark.parametrize("arch", ["mlp", "cnn1d"])
def test_g_member_run_equals_g_single_model_runs(small_mnist1d, arch):
    """Tolerance: 2e-3 on true-class probabilities after 40 AdamW steps (float32 reductions are
    ordered differently in batched kernels), and identical 0/1 predictions except at most one
    example per model whose two top classes are that close."""
    ds = small_mnist1d
    recipe = replace(make_recipe(arch), epochs=0, min_steps=40, batch_size=32)
    ids = [3, 7, 8]
    out = train_ensemble(ds, arch, ids, 0.7, seed=5, recipe=recipe, device="cpu")
    for g, k in enumerate(ids):
        single = train_single(ds, arch, k, 0.7, seed=5, recipe=recipe)
        np.testing.assert_array_equal(out.trace.masks[g], single["mask"])
        np.testing.assert_allclose(out.trace.train_prob[g], single["train_prob"], atol=2e-3)
        np.testing.assert_allclose(out.trace.test_prob[g], single["test_prob"], atol=2e-3)
        assert (out.trace.train_correct[g] != single["train_correct"]).sum() <= 1
        assert (out.trace.test_correct[g] != single["test_correct"]).sum() <= 1


def test_a_model_is_the_same_whichever_shard_trains_it(small_mnist1d):
    recipe = replace(make_recipe("mlp"), epochs=0, min_steps=30)
    a = train_ensemble(small_mnist1d, "mlp", [0, 1, 2, 3], 0.7, seed=1, recipe=recipe, device="cpu").trace
    b = train_ensemble(small_mnist1d, "mlp", [2, 5], 0.7, seed=1, recipe=recipe, device="cpu").trace
    np.testing.assert_allclose(a.train_prob[2], b.train_prob[0], atol=2e-3)


def test_same_seed_gives_identical_traces_on_cpu(small_mnist1d):
    recipe = replace(make_recipe("cnn1d"), epochs=0, min_steps=20)
    a = train_ensemble(small_mnist1d, "cnn1d", [0, 1], 0.7, seed=9, recipe=recipe, device="cpu").trace
    b = train_ensemble(small_mnist1d, "cnn1d", [0, 1], 0.7, seed=9, recipe=recipe, device="cpu").trace
    np.testing.assert_array_equal(a.train_prob, b.train_prob)
    np.testing.assert_array_equal(a.test_correct, b.test_correct)


def test_subsets_have_size_round_rn_and_depend_only_on_seed_and_k():
    n = 101
    m = subset_masks(n, 0.7, seed=3, model_ids=[0, 1, 2])
    assert (m.sum(1) == round(0.7 * n)).all()
    np.testing.assert_array_equal(m[1], subset_masks(n, 0.7, 3, [1])[0])
    assert not np.array_equal(m[0], m[1])
    assert not np.array_equal(subset_indices(n, 0.7, 3, 0), subset_indices(n, 0.7, 4, 0))


def test_batch_stream_visits_every_subset_example_once_per_epoch():
    subset = np.arange(10, 30)
    stream = BatchStream(subset, batch_size=6, seed=0, k=0)
    first = torch.cat([stream.next(2).flatten(), stream.next(1).flatten()])  # 18 of the 20
    rest = stream.next(1).flatten()[:2]
    assert sorted(torch.cat([first, rest]).tolist()) == list(range(10, 30))


def test_default_recipe_fits_training_subsets_including_flipped_labels():
    """The paper's regime: in-sample accuracy near 100%, noisy labels included."""
    ds = load_mnist1d(num_samples=1000)
    rng = np.random.default_rng(0)
    flipped = rng.choice(ds.n_train, 80, replace=False)
    ds.y_train[flipped] = (ds.y_train[flipped] + rng.integers(1, 10, 80)) % 10
    tr = train_ensemble(ds, "cnn1d", [0, 1], 0.7, seed=0, recipe=make_recipe("cnn1d"), device="cpu").trace
    in_acc = (tr.train_correct & tr.masks).sum() / tr.masks.sum()
    assert in_acc >= 0.99
    flip_mask = np.zeros(ds.n_train, bool)
    flip_mask[flipped] = True
    assert tr.train_correct[tr.masks & flip_mask[None]].mean() >= 0.95
