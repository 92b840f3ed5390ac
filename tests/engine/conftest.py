"""Fixtures of the engine tests; `torch_one_thread` is in tests/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rare_copies():
    """make(n_train, n_test) -> (ds, n0, rare_test, sub_tr, sub_te): the long-tailed set where
    four rare subgroups keep a single training example, a copy of one of their test examples
    (their other training examples are removed; the copies are training rows n0..n0+3, of test
    examples `rare_test`). When a model trains on a copy it classifies its test example right;
    when not, it cannot: planted ground truth for influence."""
    from memscore.engine.datasets import load_longtail

    def make(n_train: int, n_test: int):
        ds = load_longtail(seed=1, n_train=n_train, n_test=n_test)
        sub_tr, sub_te = ds.extras["train_subgroup"], ds.extras["test_subgroup"]
        groups = [g for g in np.unique(sub_te[sub_te >= 0])][:4]
        rare_test = np.array([np.nonzero(sub_te == g)[0][0] for g in groups])
        keep = ~np.isin(sub_tr, groups)
        n0 = int(keep.sum())
        ds.x_train = np.concatenate([ds.x_train[keep], ds.x_test[rare_test]])
        ds.y_train = np.concatenate([ds.y_train[keep], ds.y_test[rare_test]])
        sub_tr = np.concatenate([sub_tr[keep], sub_te[rare_test]])
        return ds, n0, rare_test, sub_tr, sub_te

    return make


@pytest.fixture
def embeddings():
    """make(n, m, d, classes, seed) -> a Dataset of Gaussian blobs in d dimensions (class means
    3 apart, spread 1 in all): linearly separable with high probability, as frozen embeddings."""
    from memscore.engine.datasets import Dataset

    def make(n: int = 400, m: int = 100, d: int = 64, classes: int = 4, seed: int = 0) -> Dataset:
        rng = np.random.default_rng(seed)
        centers = rng.normal(0, 3 / np.sqrt(2), (classes, d))
        y = rng.integers(0, classes, n + m)
        x = (centers[y] + rng.normal(0, 1 / np.sqrt(d), (n + m, d))).astype(np.float32)
        return Dataset("blobs", x[:n], y[:n], x[n:], y[n:], classes, "vector")

    return make
