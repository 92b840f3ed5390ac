"""One exposure job, from an `ExposureSpec` and corpus text to its result files. Shared by the
worker task (`memscore.exposure`) and `memscore exposure` (embedded), so both write the same
bytes for the same spec.

    result = run_exposure_job(spec, corpus_text, device="cpu")
    rows, summary, files = result         # files: {"exposure.parquet": bytes, "summary.json": bytes}

`exposure.parquet` has one row per canary, i.e. per (format, t) in the spec's order: formats
outer, insertion counts inner (`EXPOSURE_COLUMNS`). `summary.json` holds the spec, the corpus,
the trained model, timings and the same table.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Callable, NamedTuple

from .spec import ExposureSpec

RESULT_FILES = ("exposure.parquet", "summary.json")
# (column, arrow type name), in file order. The results server maps these to CanaryExposure.
EXPOSURE_COLUMNS = (
    ("format", "string"),
    ("canary", "string"),  # the whole inserted line
    ("secret", "string"),  # its secret part (what is ranked and extracted)
    ("insertions", "int64"),  # t
    ("exposure", "float64"),  # bits: log2|R| - log2 rank
    ("rank", "float64"),  # exact integer rank, or |R|·F(canary) when extrapolated
    ("rank_exact", "bool"),  # True: every candidate of R was scored
    ("log_perplexity", "float64"),  # Px of the secret given "\n" + prefix, bits
    ("space_size", "int64"),  # |R|
    ("method", "string"),  # "enumeration" | "extrapolation"
    ("extracted_greedy", "bool"),  # greedy decoding within the format gives the secret
    ("extracted_beam", "bool"),  # so does beam search
    ("greedy_completion", "string"),
    ("beam_completion", "string"),
)

# progress(done, total, message): training steps, then one unit per canary.
Progress = Callable[[int, int, str], None]


class ExposureJobResult(NamedTuple):
    rows: list[dict]  # one per canary, keys EXPOSURE_COLUMNS
    summary: dict  # what summary.json holds
    files: dict[str, bytes]  # RESULT_FILES -> bytes


class InvalidExposureSpec(ValueError):
    """The spec fails `ExposureSpec.validate()`; `problems` lists every (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in problems))


def run_exposure_job(
    spec: ExposureSpec,
    corpus_text: str,
    device: str = "auto",
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    corpus_source: str = "",
    steps: int = 0,
    hidden: int = 256,
    layers: int = 2,
) -> ExposureJobResult:
    """Run the Secret Sharer experiment `spec` describes on `corpus_text`
    (`exposure.run_exposure_experiment`) and render its result files.

    Training length: `steps` if > 0 (an advanced override, e.g. for quick tests), else
    `spec.epochs` passes over the corpus, else (epochs 0) the language-model recipe's default.
    `hidden`/`layers` size the model (defaults: the paper's 2-layer LSTM, 256 units).
    Raises `InvalidExposureSpec`, `corpus.CorpusError` (unusable text) or
    `ensemble.Cancelled` (should_stop() returned True)."""
    from .exposure import run_exposure_experiment  # torch: imported only when a job runs

    problems = spec.validate()
    if problems:
        raise InvalidExposureSpec(problems)
    n_canaries = len(spec.canaries) * len(spec.insertions)
    train_total: list[int] = []  # the training step count, known from the first report

    def report(done: int, total: int) -> None:
        # The engine reports training as (step, steps), then canaries as (steps + i, steps + n).
        if not train_total:
            train_total.append(total)
        steps_ = train_total[0]
        if total == steps_:
            progress(done, steps_ + n_canaries, f"training: step {done}/{steps_}")
        else:
            progress(done, total, f"measuring: canary {done - steps_}/{n_canaries}")

    results = run_exposure_experiment(
        corpus_text,
        spec.canaries,
        spec.insertions,
        arch=spec.model,
        steps=steps,
        epochs=float(spec.epochs),
        seed=spec.seed,
        enumeration_budget=spec.enumeration_budget,
        num_samples=spec.num_samples,
        device=device,
        progress=report if progress is not None else None,
        should_stop=should_stop,
        hidden=hidden,
        layers=layers,
    )
    names = [name for name, _ in EXPOSURE_COLUMNS]
    rows = [{k: r.to_dict()[k] for k in names} for r in results]
    s = results.summary
    summary = {
        "kind": "exposure",
        "spec": spec.to_dict(),
        "corpus": {
            "source": corpus_source or spec.corpus or "builtin",
            "chars": s["corpus_chars"],
            "lines": s["corpus_lines"],
            "sha256": hashlib.sha256(corpus_text.encode("utf-8")).hexdigest(),
            "training_chars": s["training_chars"],  # with every inserted copy
            "vocab_size": s["vocab_size"],
        },
        "model": s["model"],
        "timings": s["timings"],
        "canaries": rows,
        "max_exposure": max(r["exposure"] for r in rows),
        "extracted": sum(bool(r["extracted_greedy"] or r["extracted_beam"]) for r in rows),
        # Perplexity on held-out text: the model trains on the whole corpus, so there is none.
        "test_log_perplexity": None,
    }
    files = {"exposure.parquet": exposure_parquet(rows), "summary.json": summary_json(summary)}
    return ExposureJobResult(rows, summary, files)


def exposure_parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {name: pa.array([r[name] for r in rows], type=pa.type_for_alias(kind)) for name, kind in EXPOSURE_COLUMNS}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _json_safe(o):
    """NaN/inf (not JSON) become null; numpy scalars become Python numbers."""
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def summary_json(summary: dict) -> bytes:
    return json.dumps(_json_safe(summary), indent=2, sort_keys=True, allow_nan=False).encode()


def small_summary(summary: dict) -> dict:
    """The few numbers a job record carries while the full table lives in summary.json."""
    model = summary.get("model", {})
    return _json_safe(
        {
            "canaries": len(summary.get("canaries", ())),
            "max_exposure": summary.get("max_exposure"),
            "extracted": summary.get("extracted"),
            "final_loss_bits_per_char": model.get("final_loss_bits_per_char"),
            "train_seconds": model.get("train_seconds"),
            "models_done": 1,
        }
    )
