"""Exposure of inserted canaries (Carlini et al. 2019, "The Secret Sharer", §4).

A canary s[r] with randomness r from space R is inserted t times into a corpus and a model is
trained. Every candidate r' in R gets a log-perplexity Px(s[r']) (bits, see `lm`), and

    rank(s[r])     = 1 + |{r' in R, r' != r : Px(s[r']) <= Px(s[r])}|       (Def. 3)
    exposure(s[r]) = log2 |R| - log2 rank(s[r])                            (Def. 4)

Ties count against the canary (a candidate as likely as the canary ranks ahead of it), the
conservative reading. Exposure ranges from 0 (rank |R|) to log2 |R| (rank 1); a canary that
was never inserted has a uniformly random rank, so its expected exposure is
log2|R| - E[log2 U{1..|R|}] -> log2 e ≈ 1.44 bits.

Estimators, checkable against tensorflow-privacy's `secret_sharer/exposures.py`:
- exact (`exposure_exact`), by enumerating R; the rank is the one
  `compute_exposure_interpolation` gives (references sorted before a secret on ties). That
  function's first term is log2 of the number of references; pass
  `space_size=len(candidate_logppls)` to reproduce it to the bit (the default is the
  paper's |R| = references + the canary, a difference of log2(|R|/(|R|-1)) bits).
- extrapolated (`exposure_extrapolated`, §4.3), when R is too large to enumerate: fit a
  skew-normal to the log-perplexities of random candidates and read the canary's rank off
  its CDF, exposure = -log2 SkewNormCDF(Px(s[r])) as `compute_exposure_extrapolation` does.

Measured (tests/engine/test_exposure.py, one CPU thread): a 2×128 char LSTM trained 300 steps
(13 s) on 20,000 characters of the built-in corpus with `the pin is {dddd}` canaries: inserted
64 times, 13.29 bits (rank 1 of 10^4, extracted by greedy and beam search); 4 times, 3.24 bits;
never, 0.41 bits. Scoring all 10^4 candidates takes about 0.25 s.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from .canaries import CanaryFormat, insert_canaries
from .corpus import CharTokenizer, check_corpus
from .ensemble import Cancelled
from .lm import beam_complete, greedy_complete, log_perplexity, resolve_steps, train_lm
from .recipes import LM_BATCH_SIZE, LM_SEQ_LEN

LN2 = math.log(2.0)
SMALLEST_CDF = 5e-324  # the smallest positive float64: exposure is reported as >= 1074 bits below it


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contain NaN or infinite log-perplexities")
    return values


def exposure_exact(
    canary_logppl: float, candidate_logppls: np.ndarray, space_size: int | None = None
) -> tuple[float, int]:
    """(exposure in bits, rank) of a canary among `candidate_logppls`, the log-perplexities
    of every *other* candidate of R (the canary itself excluded).

    rank = 1 + number of other candidates with log-perplexity <= the canary's (ties count
    against the canary); exposure = log2(space_size) - log2(rank), space_size defaulting
    to |R| = len(candidate_logppls) + 1."""
    others = _finite(candidate_logppls, "candidates")
    canary = float(_finite(np.array([canary_logppl]), "the canary")[0])
    size = len(others) + 1 if space_size is None else int(space_size)
    if size < 1:
        raise ValueError(f"space_size must be >= 1, got {size}")
    rank = 1 + int(np.count_nonzero(others <= canary))
    return math.log2(size) - math.log2(rank), rank


def exposure_extrapolated(canary_logppl: float, reference_logppls: np.ndarray, space_size: int) -> tuple[float, float]:
    """(exposure in bits, estimated rank) from a skew-normal fitted (scipy's maximum
    likelihood `skewnorm.fit`) to `reference_logppls`, log-perplexities of candidates drawn
    uniformly from R.

    exposure = -log2 F(canary) with F the fitted CDF, as tensorflow-privacy's
    `compute_exposure_extrapolation`; estimated rank = |R|·F(canary), so
    exposure = log2|R| - log2 rank as for the exact estimator. F is evaluated as a log-CDF so
    far tails stay finite; beyond float64 (F < 5e-324) exposure is reported as 1074 bits, a
    lower bound. The estimate is not capped at log2|R|: above it the canary is more likely
    than the fitted distribution allows any candidate to be (rank < 1).

    Accuracy, measured on |R| = 10^4 (tests/engine/test_exposure.py): within 1 bit of
    enumeration in the bulk, but a trained model's best candidates can be heavier-tailed than
    a skew-normal, and there the estimate over-states exposure by several bits; read a large
    extrapolated exposure as "highly exposed", not as a rank."""
    reference = _finite(reference_logppls, "reference candidates")
    if len(reference) < 10:
        raise ValueError(f"extrapolation needs at least 10 reference candidates, got {len(reference)}")
    canary = float(_finite(np.array([canary_logppl]), "the canary")[0])
    params = stats.skewnorm.fit(reference)
    log_cdf = max(float(stats.skewnorm.logcdf(canary, *params)), math.log(SMALLEST_CDF))
    exposure = -log_cdf / LN2
    return exposure, space_size * 2.0 ** (-exposure)


@dataclass
class ExposureMeasurement:
    exposure: float  # bits
    rank: float  # exact integer rank, or |R|·F(canary) when extrapolated
    rank_exact: bool  # True: by enumeration of R
    log_perplexity: float  # Px of the canary's secret given its context, bits
    space_size: int  # |R|
    method: str  # "enumeration" | "extrapolation"
    candidates_scored: int  # log-perplexities computed (the canary included)
    seconds: float


def measure_exposure(
    model,
    fmt: CanaryFormat | str,
    secret: str,
    prefix: str | None = None,
    enumeration_budget: int = 100_000,
    num_samples: int = 5_000,
    seed: int = 0,
    batch_size: int = 4096,
) -> ExposureMeasurement:
    """Exposure of `secret` (a whole canary of `fmt`, or its secret part) under `model`.

    Exact by scoring all of R when |R| <= enumeration_budget; otherwise extrapolated from
    `num_samples` candidates drawn uniformly from R minus the canary (seeded by `seed`).
    The context defaults to a newline followed by the format's prefix, since canaries are
    inserted as lines. The canary is scored in the same batches as the candidates it is
    compared with, so a tie is a tie bit for bit."""
    t0 = time.perf_counter()
    fmt = CanaryFormat.parse(fmt) if isinstance(fmt, str) else fmt
    index = fmt.index_of(secret)
    context = "\n" + fmt.prefix if prefix is None else prefix
    size = fmt.space_size
    tok = model.tokenizer
    if size <= enumeration_budget:
        scores = np.empty(size, dtype=np.float64)
        lo = 0
        for batch in fmt.enumerate(batch_size=max(batch_size, 65_536)):
            scores[lo : lo + len(batch)] = log_perplexity(model, context, tok.encode_batch(batch), batch_size)
            lo += len(batch)
        canary = float(scores[index])
        exposure, rank = exposure_exact(canary, np.delete(scores, index), space_size=size)
        return ExposureMeasurement(
            exposure, float(rank), True, canary, size, "enumeration", size, time.perf_counter() - t0
        )
    if num_samples < 10:
        raise ValueError(f"num_samples must be >= 10 for extrapolation, got {num_samples}")
    drawn = fmt.sample_indices(np.random.default_rng(seed), min(num_samples + 1, size))
    drawn = drawn[drawn != index][:num_samples]
    ids = tok.encode_batch(fmt.render_secrets(np.concatenate([[index], drawn])))
    scores = log_perplexity(model, context, ids, batch_size)
    exposure, rank = exposure_extrapolated(scores[0], scores[1:], size)
    return ExposureMeasurement(
        exposure, rank, False, float(scores[0]), size, "extrapolation", len(scores), time.perf_counter() - t0
    )


@dataclass
class CanaryResult:
    format: str
    canary: str  # the whole inserted line
    secret: str  # its secret part (what is ranked and extracted)
    insertions: int  # t, copies in the training corpus
    exposure: float
    rank: float
    rank_exact: bool
    log_perplexity: float
    space_size: int
    method: str
    extracted_greedy: bool  # greedy decoding from the prefix, within the format, gives the secret
    extracted_beam: bool  # so does beam search
    greedy_completion: str
    beam_completion: str

    def to_dict(self) -> dict:
        return asdict(self)


class ExposureResults(list):
    """The `CanaryResult`s of one experiment (a plain list), with its `summary` dict and the
    trained `model` (for a checkpoint: `lm.lm_checkpoint(results.model)`)."""

    def __init__(self, results: Sequence[CanaryResult] = (), summary: dict | None = None, model=None):
        super().__init__(results)
        self.summary: dict = summary or {}
        self.model = model


def run_exposure_experiment(
    corpus_text: str,
    formats: Sequence[str],
    insertions: Sequence[int],
    arch: str = "lstm",
    steps: int = 0,
    epochs: float = 0.0,
    seed: int = 0,
    enumeration_budget: int = 100_000,
    num_samples: int = 5_000,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    seq_len: int = LM_SEQ_LEN,
    batch_size: int = LM_BATCH_SIZE,
    lr: float = 3e-3,
    hidden: int = 256,
    layers: int = 2,
    beam: int = 5,
    score_batch_size: int = 4096,
) -> ExposureResults:
    """The Secret Sharer test: for each format and each t in `insertions` draw one secret
    (distinct within a format; generator seeded by `seed`), insert it t times into the
    corpus (t = 0: drawn, never inserted, the baseline), train one language model on the
    result (`train_lm` with these arguments) and measure every canary's exposure
    (`measure_exposure`) and whether greedy / beam decoding extracts it.

    progress(done, total) counts training steps, then one unit per canary."""
    t_start = time.perf_counter()
    check_corpus(corpus_text)
    if not formats:
        raise ValueError("at least one canary format is required")
    if not insertions or any(int(t) < 0 for t in insertions):
        raise ValueError(f"insertions must be a non-empty list of counts >= 0, got {list(insertions)}")
    parsed = [CanaryFormat.parse(f) for f in formats]
    rng = np.random.default_rng([seed, 0x5EC12E7])  # secrets: a stream apart from insertion and training
    planted: list[tuple[CanaryFormat, str, int]] = []
    for fmt in parsed:
        if len(insertions) > fmt.space_size:
            raise ValueError(f"format {fmt.text!r} has only {fmt.space_size} secrets for {len(insertions)} canaries")
        for canary, t in zip(fmt.sample(rng, len(insertions)), insertions):
            planted.append((fmt, canary, int(t)))
    text = insert_canaries(corpus_text, [(c, t) for _, c, t in planted], seed=seed)
    tokenizer = CharTokenizer.build(text, parsed)
    t_inserted = time.perf_counter()

    train_steps = resolve_steps(len(text), steps, epochs, batch_size, seq_len)
    total = train_steps + len(planted)
    model = train_lm(
        text,
        arch=arch,
        steps=train_steps,
        seq_len=seq_len,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
        should_stop=should_stop,
        tokenizer=tokenizer,
        hidden=hidden,
        layers=layers,
    )
    t_trained = time.perf_counter()

    results = ExposureResults(model=model)
    score_seconds = extract_seconds = 0.0
    for i, (fmt, canary, t) in enumerate(planted):
        if should_stop is not None and should_stop():
            raise Cancelled(f"exposure measurement stopped after {i}/{len(planted)} canaries")
        m = measure_exposure(
            model,
            fmt,
            canary,
            enumeration_budget=enumeration_budget,
            num_samples=num_samples,
            seed=seed + 1 + i,
            batch_size=score_batch_size,
        )
        score_seconds += m.seconds
        t0 = time.perf_counter()
        secret = canary[len(fmt.prefix) :]
        context, allowed = "\n" + fmt.prefix, fmt.allowed_chars()
        greedy = greedy_complete(model, context, fmt.secret_length, allowed=allowed)
        beamed = beam_complete(model, context, fmt.secret_length, beam=beam, allowed=allowed)
        extract_seconds += time.perf_counter() - t0
        results.append(
            CanaryResult(
                format=fmt.text,
                canary=canary,
                secret=secret,
                insertions=t,
                exposure=m.exposure,
                rank=m.rank,
                rank_exact=m.rank_exact,
                log_perplexity=m.log_perplexity,
                space_size=m.space_size,
                method=m.method,
                extracted_greedy=greedy == secret,
                extracted_beam=beamed == secret,
                greedy_completion=greedy,
                beam_completion=beamed,
            )
        )
        if progress is not None:
            progress(train_steps + i + 1, total)
    results.summary = {
        "corpus_chars": len(corpus_text),
        "corpus_lines": corpus_text.count("\n") + 1,
        "training_chars": len(text),
        "vocab_size": tokenizer.vocab_size,
        "canaries": len(planted),
        "seed": seed,
        "enumeration_budget": enumeration_budget,
        "num_samples": num_samples,
        "model": dict(model.train_summary, hidden=hidden, layers=layers),
        "timings": {
            "insert_seconds": t_inserted - t_start,
            "train_seconds": t_trained - t_inserted,
            "score_seconds": score_seconds,
            "extract_seconds": extract_seconds,
            "total_seconds": time.perf_counter() - t_start,
        },
    }
    return results
