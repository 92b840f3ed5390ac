"""Estimators against a brute-force, example-by-example reading of Feldman & Zhang's formulas."""

import numpy as np
import pytest

from memscore.engine.estimators import ScoreAccumulator
from memscore.engine.influence import InfluenceAccumulator
from memscore.engine.traces import Trace


def random_trace(rng, ids, n, m, p_in=0.7):
    G = len(ids)
    return Trace.from_probs(
        model_ids=np.asarray(ids, np.int64),
        masks=rng.random((G, n)) < p_in,
        train_correct=rng.random((G, n)) < 0.6,
        train_prob=rng.random((G, n)).astype(np.float32),
        test_correct=rng.random((G, m)) < 0.5,
        test_prob=rng.random((G, m)).astype(np.float32),
    )


def brute_force(traces, n, m):
    M = np.concatenate([t.masks for t in traces])
    c = np.concatenate([t.train_correct for t in traces]).astype(float)
    p = np.concatenate([t.train_prob for t in traces]).astype(float)
    ct = np.concatenate([t.test_correct for t in traces]).astype(float)
    mem, soft, held, ins = (np.full(n, np.nan) for _ in range(4))
    for i in range(n):
        inn, out = M[:, i], ~M[:, i]
        if inn.any() and out.any():
            mem[i] = c[inn, i].mean() - c[out, i].mean()
            soft[i] = p[inn, i].mean() - p[out, i].mean()
        if inn.any():
            ins[i] = c[inn, i].mean()
        if out.any():
            held[i] = c[out, i].mean()
    infl = np.full((n, m), np.nan)
    for i in range(n):
        inn, out = M[:, i], ~M[:, i]
        for j in range(m):
            if inn.any() and out.any():
                infl[i, j] = ct[inn, j].mean() - ct[out, j].mean()
    return mem, soft, held, ins, infl


def test_scores_equal_brute_force_over_streamed_shards():
    rng = np.random.default_rng(0)
    n, m = 37, 11
    traces = [random_trace(rng, range(s * 5, s * 5 + 5), n, m) for s in range(4)]
    acc = ScoreAccumulator(n, m)
    for t in traces:
        acc.add(t)
    s = acc.scores()
    mem, soft, held, ins, _ = brute_force(traces, n, m)
    np.testing.assert_allclose(s["memorization"], mem, atol=1e-12)
    np.testing.assert_allclose(s["memorization_soft"], soft, atol=1e-6)
    np.testing.assert_allclose(s["heldout_accuracy"], held, atol=1e-12)
    np.testing.assert_allclose(s["in_sample_accuracy"], ins, atol=1e-12)
    M = np.concatenate([t.masks for t in traces])
    np.testing.assert_array_equal(s["n_in"], M.sum(0))
    np.testing.assert_array_equal(s["n_out"], (~M).sum(0))


def test_stderr_matches_definition():
    rng = np.random.default_rng(1)
    n, m = 9, 3
    t = random_trace(rng, range(30), n, m)
    acc = ScoreAccumulator(n, m)
    acc.add(t)
    s = acc.scores()
    for i in range(n):
        inn, out = t.masks[:, i], ~t.masks[:, i]
        p = t.train_prob[:, i].astype(float)
        se_soft = np.sqrt(p[inn].var(ddof=1) / inn.sum() + p[out].var(ddof=1) / out.sum())
        assert s["memorization_soft_stderr"][i] == pytest.approx(se_soft, rel=1e-6)
        c = t.train_correct[:, i]
        pin = (c[inn].sum() + 0.5) / (inn.sum() + 1)
        pout = (c[out].sum() + 0.5) / (out.sum() + 1)
        se = np.sqrt(pin * (1 - pin) / inn.sum() + pout * (1 - pout) / out.sum())
        assert s["memorization_stderr"][i] == pytest.approx(se, rel=1e-9)


def test_example_never_held_out_has_no_estimate():
    rng = np.random.default_rng(2)
    t = random_trace(rng, range(6), 5, 2)
    t.masks[:, 0] = True  # every model trained on example 0
    t.masks[:, 1] = False  # no model trained on example 1
    acc = ScoreAccumulator(5, 2)
    acc.add(t)
    s = acc.scores()
    assert np.isnan(s["memorization"][0]) and s["n_out"][0] == 0
    assert np.isnan(s["memorization"][1]) and s["n_in"][1] == 0
    assert np.isnan(s["heldout_accuracy"][0]) and np.isfinite(s["in_sample_accuracy"][0])


def test_trace_added_twice_is_rejected():
    rng = np.random.default_rng(3)
    t = random_trace(rng, range(4), 5, 2)
    acc = ScoreAccumulator(5, 2)
    acc.add(t)
    with pytest.raises(ValueError, match="already merged"):
        acc.add(t)


@pytest.mark.parametrize("block_rows", [8, 16, 1000])
def test_influence_topk_and_pairs_equal_brute_force(block_rows):
    rng = np.random.default_rng(4)
    n, m, k = 43, 7, 3
    traces = [random_trace(rng, range(s * 8, s * 8 + 8), n, m, p_in=0.5) for s in range(3)]
    acc = InfluenceAccumulator(n, m)
    for t in traces:
        acc.add(t)
    res = acc.compute(top_k=k, threshold=0.3, max_pairs=10_000, block_rows=block_rows)
    *_, infl = brute_force(traces, n, m)
    ranked = np.where(np.isnan(infl), -np.inf, infl)
    for j in range(m):
        want = np.sort(ranked[:, j])[::-1][:k]
        np.testing.assert_allclose(res.topk_value[j], want, atol=1e-6)
        np.testing.assert_allclose(infl[res.topk_train[j], j], res.topk_value[j], atol=1e-6)
    ii, jj = np.nonzero(ranked >= 0.3)
    assert set(zip(res.pairs_train.tolist(), res.pairs_test.tolist())) == set(zip(ii.tolist(), jj.tolist()))
    assert np.all(np.diff(res.pairs_value) <= 0)


def test_influence_keeps_only_the_largest_pairs_when_capped():
    rng = np.random.default_rng(5)
    n, m = 64, 9
    t = random_trace(rng, range(20), n, m, p_in=0.5)
    acc = InfluenceAccumulator(n, m)
    acc.add(t)
    res = acc.compute(top_k=0, threshold=-1.0, max_pairs=25, block_rows=8)
    *_, infl = brute_force([t], n, m)
    want = np.sort(np.nan_to_num(infl, nan=-np.inf).ravel())[::-1][:25]
    np.testing.assert_allclose(res.pairs_value, want, atol=1e-6)


def test_trace_round_trips_through_bytes():
    rng = np.random.default_rng(6)
    t = random_trace(rng, [3, 9, 11], 13, 5)
    t.meta = {"shard": 2}
    u = Trace.from_bytes(t.to_bytes())
    for f in ("model_ids", "masks", "train_correct", "train_margin", "test_correct", "test_margin"):
        np.testing.assert_array_equal(getattr(t, f), getattr(u, f))
    assert u.meta == {"shard": 2}


def _format1_blob(t: Trace) -> bytes:
    """A trace as memscore wrote it before format 2 (true-class probabilities, no margins)."""
    import io
    import json

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        model_ids=t.model_ids,
        masks=np.packbits(t.masks, axis=1),
        train_correct=np.packbits(t.train_correct, axis=1),
        train_prob=t.train_prob,
        test_correct=np.packbits(t.test_correct, axis=1),
        test_prob=t.test_prob,
        shape=np.array([t.masks.shape[1], t.test_correct.shape[1]]),
        meta=np.frombuffer(json.dumps({"format": 1, "shard": 4}).encode(), dtype=np.uint8),
    )
    return buf.getvalue()


def test_format1_traces_stay_readable_and_give_the_same_scores():
    rng = np.random.default_rng(8)
    t = random_trace(rng, [0, 1, 2, 5], 20, 6)
    old = Trace.from_bytes(_format1_blob(t))
    assert old.meta == {"shard": 4} and old.heldout_prob_sum is None and old.train_pred is None
    np.testing.assert_allclose(old.train_prob, t.train_prob, rtol=1e-6)
    a, b = ScoreAccumulator(20, 6), ScoreAccumulator(20, 6)
    a.add(t)
    b.add(old)
    for k, v in a.scores().items():
        np.testing.assert_allclose(b.scores()[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    assert b.heldout_probs() is None and np.isnan(b.scores(np.zeros(20, int))["label_quality"]).all()


def test_margins_do_not_saturate_where_probabilities_do():
    """Two members certain of an example (p rounds to 1.0 in float32) but at margins 20 and 40:
    the soft score cannot tell them apart, the log-odds one can."""
    n = 2
    masks = np.array([[True, False], [False, True]])
    t = Trace(
        model_ids=np.array([0, 1]),
        masks=masks,
        train_correct=np.ones((2, n), bool),
        train_margin=np.array([[40.0, 20.0], [20.0, 40.0]], np.float32),
        test_correct=np.ones((2, 1), bool),
        test_margin=np.zeros((2, 1), np.float32),
    )
    assert (t.train_prob == 1.0).all()
    s = ScoreAccumulator(n, 1)
    s.add(t)
    sc = s.scores()
    assert (sc["memorization_soft"] == 0).all()
    np.testing.assert_allclose(sc["memorization_log_odds"], [20.0, 20.0])  # 40 in, 20 out


def test_label_quality_is_the_heldout_mean_probability_of_the_given_label():
    n, C = 3, 2
    masks = np.array([[True, False, False], [False, False, True]])
    held = np.zeros((n, C), np.float32)
    held[1] = [0.2 + 0.4, 0.8 + 0.6]  # example 1 held out by both members
    held[0] = [0.9, 0.1]  # held out by member 1 only
    held[2] = [0.3, 0.7]  # held out by member 0 only
    t = Trace(
        model_ids=np.array([0, 1]),
        masks=masks,
        train_correct=np.ones((2, n), bool),
        train_margin=np.zeros((2, n), np.float32),
        test_correct=np.ones((2, 1), bool),
        test_margin=np.zeros((2, 1), np.float32),
        heldout_prob_sum=held,
    )
    s = ScoreAccumulator(n, 1)
    s.add(t)
    probs = s.heldout_probs()
    np.testing.assert_allclose(probs, [[0.9, 0.1], [0.3, 0.7], [0.3, 0.7]], atol=1e-6)
    sc = s.scores(np.array([1, 1, 0]))
    np.testing.assert_allclose(sc["label_quality"], [0.1, 0.7, 0.3], atol=1e-6)
    assert sc["predicted_label_heldout"].tolist() == [0, 1, 1]
