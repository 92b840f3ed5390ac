"""Significant influence pairs: the per-pair test is valid at small counts, Benjamini–Hochberg
counted block by block equals BH over all n·m p-values, planted pairs are found with high
precision, and on data without influence at most q of the reported pairs are false."""

import itertools

import numpy as np
import pytest
from scipy.stats import binom

from memscore.engine import significance
from memscore.engine.influence import InfluenceAccumulator
from memscore.engine.significance import PairTest, benjamini_hochberg, box_pvalues, exact_pvalue_table


def boundary_size(table: np.ndarray, delta: float, alpha: float, p_out: np.ndarray) -> np.ndarray:
    """P(p-value ≤ alpha) at (p_in, p_out) = (p_out + δ, p_out), exactly, for each p_out."""
    n_in, n_out = table.shape[0] - 1, table.shape[1] - 1
    reject = (table <= alpha).astype(float)
    b_in = binom.pmf(np.arange(n_in + 1)[None, :], n_in, np.clip(p_out + delta, 0, 1)[:, None])
    b_out = binom.pmf(np.arange(n_out + 1)[None, :], n_out, p_out[:, None])
    return np.einsum("ga,ab,gb->g", b_in, reject, b_out)


@pytest.mark.parametrize("n_in,n_out,delta", [(9, 4, 0.15), (22, 10, 0.0), (30, 14, -0.2), (45, 19, 0.15)])
def test_exact_pvalues_reject_a_true_null_at_most_at_their_level(n_in, n_out, delta):
    """On the H0 boundary (the worst case), off the nuisance grid's points."""
    table = exact_pvalue_table(n_in, n_out, delta)
    p_out = np.linspace(max(0, -delta), min(1, 1 - delta), 1001)[1:-1]
    for alpha in (1e-4, 1e-3, 0.01, 0.05):
        size = boundary_size(table, delta, alpha, p_out)
        assert size.max() <= alpha * (1 + 1e-3), (alpha, size.max())
    assert boundary_size(table, delta, 0.05, p_out).max() >= 0.05 / 4  # and not absurdly conservative


def test_simulated_rejection_rate_under_the_null_is_at_most_alpha():
    """200,000 binomial draws at each of three boundary points, K = 40 (n_in 28, n_out 12)."""
    rng = np.random.default_rng(0)
    table, delta, draws = exact_pvalue_table(28, 12, 0.15), 0.15, 200_000
    for p_out in (0.2, 0.5, 0.8):
        p = table[rng.binomial(28, p_out + delta, draws), rng.binomial(12, p_out, draws)]
        for alpha in (0.01, 0.05):
            assert (p <= alpha).mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / draws)


def test_table_equals_a_brute_force_supremum_over_the_whole_null():
    """n_in = 6, n_out = 4, δ = 0.1: the statistic's monotone majorant by definition, and the sup
    of P(T ≥ t) over a 2-D grid of all (p_in, p_out) with p_in − p_out ≤ δ (not only its boundary)."""
    n_in, n_out, delta = 6, 4, 0.1
    raw = np.empty((n_in + 1, n_out + 1))
    for a, b in itertools.product(range(n_in + 1), range(n_out + 1)):
        pa, pb = (a + 0.5) / (n_in + 1), (b + 0.5) / (n_out + 1)
        raw[a, b] = (pa - pb - delta) / np.sqrt(pa * (1 - pa) / n_in + pb * (1 - pb) / n_out)
    t = np.empty_like(raw)
    for a, b in itertools.product(range(n_in + 1), range(n_out + 1)):
        t[a, b] = raw[: a + 1, b:].max()  # outcomes with fewer right in and more right out
    grid = np.linspace(0, 1, 401)
    pin, pout = (g.ravel() for g in np.meshgrid(grid, grid, indexing="ij"))
    null = pin - pout <= delta + 1e-12
    joint = binom.pmf(np.arange(n_in + 1)[:, None, None], n_in, pin[null]) * binom.pmf(
        np.arange(n_out + 1)[None, :, None], n_out, pout[null]
    )  # (n_in + 1, n_out + 1, points)
    want = np.empty_like(t)
    for a, b in itertools.product(range(n_in + 1), range(n_out + 1)):
        want[a, b] = joint[t >= np.round(t[a, b], 9) - 1e-9].sum(0).max()
    np.testing.assert_allclose(exact_pvalue_table(n_in, n_out, delta), np.minimum(want, 1), rtol=2e-3, atol=1e-12)


def test_box_test_is_valid_and_more_conservative_than_the_exact_test():
    n_in, n_out, delta = 30, 14, 0.15
    s_in, s_out = np.meshgrid(np.arange(n_in + 1), np.arange(n_out + 1), indexing="ij")
    box = box_pvalues(n_in, s_in, n_out, s_out, delta)
    exact = exact_pvalue_table(n_in, n_out, delta)
    assert np.all(box >= exact * (1 - 1e-3))
    p_out = np.linspace(0, 1 - delta, 301)
    for alpha in (1e-3, 0.05):
        assert boundary_size(box, delta, alpha, p_out).max() <= alpha


def test_pairs_nobody_held_out_get_p_value_one_and_thresholds_at_the_ends_work():
    assert np.all(exact_pvalue_table(0, 12, 0.15) == 1) and np.all(exact_pvalue_table(12, 0, 0.15) == 1)
    assert np.all(exact_pvalue_table(8, 4, 1.0) == 1)  # H0: infl ≤ 1 always holds
    t = exact_pvalue_table(8, 4, -1.0)  # H0: p_in = 0 and p_out = 1, so anything else refutes it
    assert t[0, 4] == 1 and t[1, 4] == 0 and t[0, 3] == 0
    test = PairTest(12, np.inf, [0, 5, 12])  # QueryInfluence: no pairs wanted
    assert np.all(test.pvalues(np.array([5, 12]), np.array([[3], [12]]), np.array([[1], [0]])) == 1)


def simulate(rng, K, n, m, planted=(), effect=0.9):
    """Masks of K random 70% subsets; test example j correct with its own probability, except a
    planted pair (i, j): then P(correct) = ½ ± effect/2 as i is in or out of the subset."""
    masks = np.argsort(rng.random((K, n)), axis=1) < round(0.7 * n)
    correct = rng.random((K, m)) < rng.uniform(0.05, 0.95, m)
    for i, j in planted:
        correct[:, j] = rng.random(K) < np.where(masks[:, i], 0.5 + effect / 2, 0.5 - effect / 2)
    return masks, correct


def influence_of(masks, correct, **kw):
    acc = InfluenceAccumulator(masks.shape[1], correct.shape[1])
    acc.add_models(masks, correct)
    return acc.compute(**kw)


def significant_set(res) -> set:
    return set(zip(res.sig_train.tolist(), res.sig_test.tolist()))


def test_planted_influential_pairs_are_significant_with_high_precision():
    """K = 96, 400 × 80 pairs, 20 planted with influence 0.9 (a training example whose presence
    decides its test example, like a near-duplicate of a rare one), the rest without influence."""
    rng = np.random.default_rng(1)
    planted = {(int(i), j) for j, i in enumerate(rng.choice(400, 20, replace=False))}
    res = influence_of(*simulate(rng, 96, 400, 80, planted), top_k=3, threshold=0.15, max_pairs=1000)
    found = significant_set(res)
    assert planted <= found
    assert len(found & planted) / len(found) >= 0.8
    assert res.num_significant == len(found) and res.num_above_threshold > 50 * len(found)  # raw count: noise
    assert res.test == "exact-unconditional"


@pytest.mark.parametrize("threshold", [0.0, 0.15])
def test_without_real_influence_at_most_q_of_reported_pairs_are_false_on_average(threshold):
    """Masks permuted relative to the outcomes (complete null), and planted pairs among null ones
    (mixed): the false discovery proportion, averaged over 150 data sets, is at most q = 0.1."""
    rng = np.random.default_rng(2)
    q, reps, fdp_null, fdp_mixed, found = 0.1, 150, [], [], 0
    for _ in range(reps):
        planted = {(int(i), j) for j, i in enumerate(rng.choice(60, 4, replace=False))}
        masks, correct = simulate(rng, 32, 60, 30, planted)
        null = influence_of(masks[rng.permutation(32)], correct, top_k=0, threshold=threshold, fdr=q)
        fdp_null.append(null.num_significant > 0)  # every reported pair is false
        mixed = significant_set(influence_of(masks, correct, top_k=0, threshold=threshold, fdr=q))
        fdp_mixed.append(len(mixed - planted) / max(len(mixed), 1))
        found += len(mixed & planted)
    slack = 2 * np.sqrt(q * (1 - q) / reps)
    assert np.mean(fdp_null) <= q + slack and np.mean(fdp_mixed) <= q + slack
    assert found >= reps  # and the test has power: on average at least one of the 4 planted pairs


@pytest.mark.parametrize("block_rows", [8, 16, 40, 1000])
def test_bh_counted_block_by_block_equals_bh_over_all_pvalues(block_rows):
    rng = np.random.default_rng(3)
    n, m, K = 90, 25, 40
    planted = {(int(i), j) for j, i in enumerate(rng.choice(n, 12, replace=False))}
    masks, correct = simulate(rng, K, n, m, planted)
    M = masks.astype(float)
    s_in = M.T @ correct
    direct = PairTest(K, 0.1, M.sum(0)).pvalues(M.sum(0), s_in, correct.sum(0) - s_in)
    cutoff = benjamini_hochberg(direct, 0.05)
    want = set(zip(*(v.tolist() for v in np.nonzero(direct <= cutoff))))
    res = influence_of(masks, correct, top_k=4, threshold=0.1, max_pairs=10_000, block_rows=block_rows)
    assert res.pvalue_cutoff == cutoff and res.num_significant == len(want) > 0
    assert significant_set(res) == want
    np.testing.assert_array_equal(res.sig_pvalue, np.sort(direct[res.sig_train, res.sig_test]))
    np.testing.assert_array_equal(res.pairs_pvalue, direct[res.pairs_train, res.pairs_test])
    ok = res.topk_train >= 0
    np.testing.assert_array_equal(res.topk_pvalue[ok], direct[res.topk_train[ok], np.nonzero(ok)[0]])
    assert np.array_equal(res.pairs_significant, res.pairs_pvalue <= cutoff)
    capped = influence_of(masks, correct, top_k=0, threshold=0.1, max_pairs=3, block_rows=block_rows)
    assert capped.num_significant == len(want) and len(capped.sig_pvalue) == 3  # the count stays exact
    np.testing.assert_array_equal(capped.sig_pvalue, np.sort(direct[direct <= cutoff])[:3])


def test_large_jobs_fall_back_to_the_box_test_with_the_same_bookkeeping(monkeypatch):
    rng = np.random.default_rng(4)
    planted = {(int(i), j) for j, i in enumerate(rng.choice(200, 10, replace=False))}
    masks, correct = simulate(rng, 64, 200, 40, planted)
    exact = influence_of(masks, correct, top_k=2, threshold=0.15)
    monkeypatch.setattr(significance, "EXACT_TABLE_CELLS", 0)
    box = influence_of(masks, correct, top_k=2, threshold=0.15)
    assert box.test == "clopper-pearson-box"
    assert np.all(box.pairs_pvalue >= exact.pairs_pvalue * (1 - 1e-3))
    assert significant_set(box) <= significant_set(exact) and len(significant_set(box) & planted) >= 5


@pytest.mark.slow  # about 20 s on 2 cores: trains 96 MLPs
def test_training_copies_of_rare_test_examples_are_significant_and_so_is_little_else(torch_one_thread, rare_copies):
    """test_memorization's planted set, halved: four rare subgroups keep a single training
    example, a copy of one of their test examples. At K = 96 the four (copy, test example) pairs
    are significant, and at least 80% of all significant pairs are real: planted, or a rare
    subgroup's training example influencing a test example of its subgroup (what the generator
    makes influential); the raw threshold flags over ten times as many pairs."""
    from memscore.engine.scoring import run_scoring
    from memscore.engine.spec import ScoringSpec

    ds, n0, rare_test, sub_tr, sub_te = rare_copies(300, 100)
    spec = ScoringSpec(dataset="longtail", model="mlp", models=96, epochs=30, seed=0, influence_top_k=3)
    res = run_scoring(ds, spec, device="cpu")
    infl, summary = res.influence, res.summary
    found = significant_set(infl)
    planted = {(n0 + c, int(j)) for c, j in enumerate(rare_test)}
    real = {(i, j) for i, j in found if sub_tr[i] >= 0 and sub_tr[i] == sub_te[j]} | planted
    assert planted <= found
    assert len(found & real) / len(found) >= 0.8
    assert summary["influence_pairs_significant"] == infl.num_significant == len(found)
    assert summary["influence_pairs_above_threshold"] > 10 * len(found) and summary["influence_fdr"] == 0.05
    table = res.influence_table().to_pydict()
    assert {(i, j) for i, j, s in zip(table["train_index"], table["test_index"], table["significant"]) if s} == found
