import math

import numpy as np
import pytest
from scipy import stats

from memscore.engine.canaries import CanaryFormat
from memscore.engine.corpus import load_corpus
from memscore.engine.exposure import (
    exposure_exact,
    exposure_extrapolated,
    measure_exposure,
    run_exposure_experiment,
)
from memscore.engine.lm import log_perplexity

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# --- the exact estimator against Definitions 3 and 4 ---------------------------------------


def test_exact_rank_counts_candidates_at_most_as_perplexed_as_the_canary():
    others = np.array([1.0, 2.0, 3.0, 4.0])  # |R| = 5 with the canary
    exposure, rank = exposure_exact(2.5, others)
    assert rank == 3 and exposure == pytest.approx(math.log2(5) - math.log2(3))


def test_ties_rank_against_the_canary():
    exposure, rank = exposure_exact(2.0, np.array([1.0, 2.0, 2.0, 3.0]))
    assert rank == 4 and exposure == pytest.approx(math.log2(5) - 2)
    assert exposure_exact(5.0, np.full(7, 5.0)) == (0.0, 8)  # all tied: the worst rank


def test_best_rank_gives_log2_space_and_worst_gives_zero():
    others = np.linspace(10, 20, 9999)
    assert exposure_exact(9.0, others) == (pytest.approx(math.log2(10_000)), 1)
    assert exposure_exact(21.0, others) == (0.0, 10_000)
    # An explicit |R| replaces len(candidates) + 1 in the first term only.
    assert exposure_exact(9.0, others, space_size=2**20)[0] == pytest.approx(20.0)


def tf_privacy_interpolation(secret: float, reference: np.ndarray) -> float:
    """tensorflow-privacy's `compute_exposure_interpolation` for one secret, rewritten here as
    its algorithm: sort (value, set) pairs with references (-1) before secrets on ties, count
    the references ahead of the secret, exposure = log2(#references) - log2(count + 1)."""
    pairs = sorted([(p, -1) for p in reference] + [(secret, 0)])
    ahead = int(np.cumsum([s == -1 for _, s in pairs])[[s for _, s in pairs].index(0)])
    return math.log2(len(reference)) - math.log2(ahead + 1)


def test_exact_matches_tensorflow_privacy_interpolation_including_ties():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 40, size=500).astype(float)  # many ties
    for secret in [-1.0, 0.0, 7.0, 7.5, 20.0, 39.0, 50.0]:
        ours, _ = exposure_exact(secret, reference, space_size=len(reference))
        assert ours == pytest.approx(tf_privacy_interpolation(secret, reference), abs=1e-12)


def test_never_inserted_canaries_average_about_1_44_bits():
    size = 1000
    # Closed form for a uniformly random rank: log2|R| - log2(|R|!)/|R| -> log2(e) = 1.4427.
    closed = math.log2(size) - math.lgamma(size + 1) / math.log(2) / size
    assert closed == pytest.approx(1.44, abs=0.01)
    rng = np.random.default_rng(1)
    trials = [exposure_exact(x[0], x[1:])[0] for x in rng.normal(size=(3000, size))]
    assert np.mean(trials) == pytest.approx(closed, abs=0.1)


def test_nan_log_perplexities_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        exposure_exact(1.0, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="NaN"):
        exposure_extrapolated(np.nan, np.arange(100.0), 1000)


# --- the extrapolated estimator ---------------------------------------------------------------


def test_extrapolation_is_tensorflow_privacys_skewnorm_formula():
    reference = stats.skewnorm.rvs(3.0, loc=20, scale=4, size=2000, random_state=np.random.default_rng(2))
    for canary in [8.0, 15.0, 22.0, 30.0]:
        want = -np.log2(stats.skewnorm.cdf(canary, *stats.skewnorm.fit(reference)))
        exposure, rank = exposure_extrapolated(canary, reference, space_size=10_000)
        assert exposure == pytest.approx(want, rel=1e-9)
        assert rank == pytest.approx(10_000 * 2.0**-want)  # exposure = log2|R| - log2 rank


def test_extrapolation_stays_finite_far_in_the_tail():
    reference = stats.norm.rvs(size=1000, random_state=np.random.default_rng(3)) + 50
    exposure, rank = exposure_extrapolated(0.0, reference, space_size=10**9)
    assert math.isfinite(exposure) and exposure > 100 and rank < 1


def skewnormal_exact_and_extrapolated(quantile: float, seed: int) -> tuple[float, float]:
    """|R| = 10^4 candidates whose log-perplexities follow a skew-normal; the canary sits at
    `quantile`. Exact exposure by enumeration of all 9999 others; extrapolated from 2000."""
    shape, loc, scale = 4.0, 18.0, 6.0
    rng = np.random.default_rng(seed)
    others = stats.skewnorm.rvs(shape, loc=loc, scale=scale, size=9999, random_state=rng)
    canary = stats.skewnorm.ppf(quantile, shape, loc=loc, scale=scale)
    exact, _ = exposure_exact(canary, others)
    estimated, _ = exposure_extrapolated(canary, rng.choice(others, 2000, replace=False), 10_000)
    return exact, estimated


@pytest.mark.parametrize("quantile", [3e-3, 1e-2, 0.1, 0.5, 0.9])
def test_extrapolation_within_one_bit_of_enumeration_on_skewnormal_candidates(quantile):
    # Measured over 40 seeds, max |error|: 0.86 bits at 3e-3 (exact rank ~30), 0.50 at 1e-2,
    # 0.19 at 0.1, 0.06 at 0.5, 0.02 at 0.9.
    for seed in range(3):
        exact, estimated = skewnormal_exact_and_extrapolated(quantile, seed)
        assert abs(estimated - exact) < 1.0, (seed, exact, estimated)


def test_extrapolation_within_one_bit_on_average_at_rank_ten():
    # At quantile 1e-3 the exact rank itself is ~Poisson(10): one draw can be 1.6 bits off
    # (measured, 40 seeds), the mean |error| is 0.47 bits.
    errors = [abs(np.subtract(*skewnormal_exact_and_extrapolated(1e-3, seed))) for seed in range(10)]
    assert np.mean(errors) < 1.0


# --- on a trained model ---------------------------------------------------------------------

PIN = "the pin is {dddd}"


@pytest.fixture(scope="module")
def experiment():
    """A 2-layer char LSTM trained on 20,000 characters of the built-in corpus with a pin
    inserted 64 times, one 4 times and one never (measured: about 13 s on one CPU thread)."""
    return run_exposure_experiment(
        load_corpus("builtin")[:20_000],
        [PIN],
        [0, 4, 64],
        arch="lstm",
        steps=300,
        seed=0,
        hidden=128,
        device="cpu",
        enumeration_budget=10_000,
    )


@pytest.mark.slow  # > 10 s on 2 cores
def test_a_canary_inserted_64_times_is_far_more_exposed_than_one_never_inserted(experiment):
    by_t = {r.insertions: r for r in experiment}
    # Measured (seed 0, CPU): 64x -> 13.29 bits (rank 1 of 10^4, extracted by greedy and beam),
    # 4x -> 3.24 bits (rank 1062), 0x -> 0.41 bits (rank 7545): a margin of 12.9 bits.
    assert all(r.rank_exact and r.method == "enumeration" and r.space_size == 10_000 for r in experiment)
    assert by_t[64].exposure >= 10.0
    assert by_t[64].exposure - by_t[0].exposure >= 6.0
    assert by_t[64].extracted_beam and by_t[64].beam_completion == by_t[64].secret
    assert not by_t[0].extracted_beam
    assert len({r.secret for r in experiment}) == 3
    assert experiment.summary["model"]["steps"] == 300
    assert experiment.summary["training_chars"] == 20_000 + 68 * (len("the pin is 0000") + 1)


@pytest.mark.slow  # > 10 s on 2 cores
def test_measure_exposure_by_enumeration_follows_the_definition(experiment):
    model, canary = experiment.model, experiment[1].canary
    fmt = CanaryFormat.parse(PIN)
    m = measure_exposure(model, fmt, canary, enumeration_budget=10_000)
    scores = log_perplexity(model, "\nthe pin is ", fmt.render_secrets(np.arange(10_000)))
    i = fmt.index_of(canary)
    exposure, rank = exposure_exact(scores[i], np.delete(scores, i))
    assert (m.exposure, m.rank, m.rank_exact, m.space_size) == (pytest.approx(exposure), rank, True, 10_000)
    assert m.log_perplexity == pytest.approx(scores[i])
    assert m.exposure == pytest.approx(experiment[1].exposure)


@pytest.mark.slow  # > 10 s on 2 cores
def test_extrapolation_agrees_with_enumeration_on_a_trained_model(experiment):
    """Canaries in the bulk of the trained model's candidate distribution (exact rank >= 300 of
    10^4): the skew-normal estimate from 2000 samples is within 1 bit of the exact exposure.
    Measured (seed 0, CPU) error in bits at exact rank 9000: +0.01, 6000: +0.00, 3000: -0.02,
    1000: -0.08, 300: -0.03, 100: +0.40. Not asserted: in the far tail this model's
    candidates are heavier-tailed than a skew-normal and extrapolation over-estimates
    (rank 30: +1.4, rank 10: +3.8, rank 1: +9.2 bits), so read large extrapolated exposures
    as "highly exposed", not as a rank."""
    model, fmt = experiment.model, CanaryFormat.parse(PIN)
    scores = log_perplexity(model, "\nthe pin is ", fmt.render_secrets(np.arange(10_000)))
    order = np.argsort(scores, kind="stable")
    for rank in [300, 1000, 3000, 6000, 9000]:
        secret = fmt.render(int(order[rank - 1]))
        exact = measure_exposure(model, fmt, secret, enumeration_budget=10_000)
        estimated = measure_exposure(model, fmt, secret, enumeration_budget=0, num_samples=2000, seed=rank)
        assert not estimated.rank_exact and estimated.method == "extrapolation"
        assert abs(estimated.exposure - exact.exposure) < 1.0, (rank, exact.exposure, estimated.exposure)


def test_experiment_runs_with_the_transformer_and_reports_progress():
    seen = []
    results = run_exposure_experiment(
        load_corpus("builtin")[:3000],
        ["code {dd}", "key {a}"],
        [0, 2],
        arch="transformer",
        steps=10,
        seed=1,
        hidden=32,
        seq_len=32,
        batch_size=8,
        device="cpu",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert [(r.format, r.insertions) for r in results] == [
        ("code {dd}", 0),
        ("code {dd}", 2),
        ("key {a}", 0),
        ("key {a}", 2),
    ]
    assert [r.space_size for r in results] == [100, 100, 26, 26]
    assert all(0.0 <= r.exposure <= math.log2(r.space_size) + 1e-12 and r.rank_exact for r in results)
    assert seen[-1] == (14, 14)  # 10 training steps + 4 canaries
    assert results.summary["model"]["arch"] == "transformer"
    assert all(isinstance(r.to_dict()["exposure"], float) for r in results)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(formats=[]), "at least one canary format"),
        (dict(insertions=[1, -1]), "counts >= 0"),
        (dict(formats=["the pin is {dxd}"]), "unknown placeholder"),
        (dict(formats=["{d}"], insertions=list(range(11))), "only 10 secrets"),
        (dict(corpus_text=""), "empty"),
    ],
)
def test_experiment_rejects_bad_requests_before_training(kwargs, words):
    args = dict(corpus_text=load_corpus("builtin")[:3000], formats=[PIN], insertions=[0, 1], steps=10**9, device="cpu")
    with pytest.raises(ValueError, match=words):
        run_exposure_experiment(**{**args, **kwargs})
