"""The estimators find what was planted: flipped labels are memorized, and a training copy of a
rare test example is that example's most influential training example."""

import numpy as np
import pytest

from memscore.engine.datasets import load_longtail, load_mnist1d
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    from scipy.stats import rankdata

    ok = np.isfinite(scores)
    s, p = scores[ok], positive[ok]
    r = rankdata(s)
    n_pos, n_neg = p.sum(), (~p).sum()
    return float((r[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.slow  # > 10 s on 2 cores
def test_flipped_labels_get_high_memorization():
    """10% flipped labels on MNIST-1D (1600 training examples), default cnn1d recipe, K=24."""
    ds = load_mnist1d(num_samples=2000)
    spec = ScoringSpec(dataset="mnist1d", models=24, label_noise=0.1, seed=0, influence_top_k=0, max_influence_pairs=0)
    result = run_scoring(ds, spec, device="cpu")
    flipped = result.scores["label_flipped"]
    assert flipped.sum() == 160
    assert result.summary["mean_in_sample_accuracy"] > 0.97  # the paper's regime: subsets are fit
    assert auroc(result.scores["memorization"], flipped) >= 0.9
    assert auroc(result.scores["memorization_soft"], flipped) >= 0.9


@pytest.mark.slow  # > 10 s on 2 cores
def test_training_copy_of_a_rare_test_example_is_its_top_influence():
    """Four rare subgroups of the long-tailed set keep a single training example: a copy of one
    of their test examples (their other training examples are removed). When a model trains on
    the copy it classifies the test example right; when not, it cannot."""
    ds = load_longtail(seed=1, n_train=600, n_test=200)
    sub_tr, sub_te = ds.extras["train_subgroup"], ds.extras["test_subgroup"]
    groups = [g for g in np.unique(sub_te[sub_te >= 0])][:4]
    rare_test = np.array([np.nonzero(sub_te == g)[0][0] for g in groups])
    keep = ~np.isin(sub_tr, groups)
    n0 = int(keep.sum())
    ds.x_train = np.concatenate([ds.x_train[keep], ds.x_test[rare_test]])
    ds.y_train = np.concatenate([ds.y_train[keep], ds.y_test[rare_test]])
    spec = ScoringSpec(dataset="longtail", model="mlp", models=64, epochs=60, seed=0, influence_top_k=3)
    result = run_scoring(ds, spec, device="cpu")
    infl = result.influence
    for copy, j in enumerate(rare_test):
        assert infl.topk_train[j, 0] == n0 + copy, (j, infl.topk_train[j], infl.topk_value[j])
        assert infl.topk_value[j, 0] >= 0.15  # the paper's threshold for a significant pair
