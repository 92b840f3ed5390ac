"""The estimators find what was planted: flipped labels are memorized, and a training copy of a
rare test example is that example's most influential training example."""

import numpy as np
import pytest

from memscore.engine.datasets import load_mnist1d
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
def test_training_copy_of_a_rare_test_example_is_its_top_influence(rare_copies):
    """The planted copies (conftest `rare_copies`) are their test examples' top influence."""
    ds, n0, rare_test, _, _ = rare_copies(600, 200)
    spec = ScoringSpec(dataset="longtail", model="mlp", models=64, epochs=60, seed=0, influence_top_k=3)
    result = run_scoring(ds, spec, device="cpu")
    infl = result.influence
    for copy, j in enumerate(rare_test):
        assert infl.topk_train[j, 0] == n0 + copy, (j, infl.topk_train[j], infl.topk_value[j])
        assert infl.topk_value[j, 0] >= 0.15  # the paper's threshold for a significant pair
