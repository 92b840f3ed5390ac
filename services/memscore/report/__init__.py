"""A scoring run as one self-contained HTML page: `memscore report JOB|DIR --out FILE.html`.

The page holds the run summary, a histogram of the scores, per class a grid of its most
memorized training examples (images drawn as images, sequences and flat vectors as line plots),
the membership-inference audit with the most exposed examples and the correlations of the
per-example metrics (`metrics.py`), and, per test example with the strongest influence, the
test example beside its most influential training examples (pictures and HTML cells:
`draw.py`). Every picture is a PNG embedded as a `data:` URI and the style sheet is inline, so
the file opens offline, attached to an e-mail or from an artifact store.

Pure: `render_report` takes the result columns, the summary and (optionally) the dataset and
returns a string. `read_result_files` parses the bytes a run writes; `run_dataset` turns the
dataset named in the spec back into the one the job trained on (label noise included). Where
the data cannot be had, the page shows tables instead of pictures and says why.
"""

from __future__ import annotations

import io
import json

import numpy as np

from ..engine.datasets import Dataset
from .draw import (
    Columns,
    _class_name,
    _esc,
    _example_figure,
    _fmt,
    _label_text,
    _png_uri,
    _table,
    example_png,
)
from .metrics import correlation_section, dp_section, dynamics_section, privacy_section

RESULT_FILES = ("scores.parquet", "influence.parquet", "summary.json")


# -- inputs ----------------------------------------------------------------------------------------


def read_result_files(files: dict[str, bytes]) -> tuple[Columns, Columns, dict]:
    """(scores columns, influence columns, summary) from the bytes of `RESULT_FILES`."""
    import pyarrow.parquet as pq

    missing = [name for name in RESULT_FILES if name not in files]
    if missing:
        raise ValueError(f"missing result files: {', '.join(missing)}")

    def columns(data: bytes) -> Columns:
        table = pq.read_table(io.BytesIO(data))
        return {name: table.column(name).to_numpy() for name in table.column_names}

    return columns(files["scores.parquet"]), columns(files["influence.parquet"]), json.loads(files["summary.json"])


def run_dataset(summary: dict, ds: Dataset) -> Dataset:
    """The dataset the run trained on: `ds` (as loaded from the spec's reference) with the
    spec's label noise applied as `engine.scoring.prepare_dataset` does. Raises ValueError if
    it is not the data the run saw (its fingerprint differs from the summary's)."""
    from ..engine.datasets import flip_labels

    spec = summary.get("spec", {})
    noise = float(spec.get("label_noise") or 0.0)
    if noise > 0:
        ds, _ = flip_labels(ds, noise, int(spec.get("seed", 0)))
    want = summary.get("dataset", {}).get("fingerprint")
    if want and ds.fingerprint() != want:
        raise ValueError(
            f"dataset {ds.name!r} as loaded now ({ds.n_train} train, {ds.n_test} test) is not the data "
            f"the run trained on (fingerprint {ds.fingerprint()[:12]} != {want[:12]})"
        )
    return ds


# -- pictures -------------------------------------------------------------------------------------


def _histogram_png(scores: Columns) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in ("memorization", "memorization_soft", "heldout_accuracy") if c in scores]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.0 * len(cols), 2.8), squeeze=False)
    flipped = scores.get("label_flipped")
    for ax, col in zip(axes[0], cols):
        v = np.asarray(scores[col], np.float64)
        ok = np.isfinite(v)
        bins = np.linspace(0.0, 1.0, 21) if col == "heldout_accuracy" else np.linspace(-1.0, 1.0, 41)
        if flipped is not None and flipped.any():
            ax.hist(
                [v[ok & ~flipped], v[ok & flipped]], bins=bins, stacked=True, label=["clean label", "flipped label"]
            )
            ax.legend(fontsize=7)
        else:
            ax.hist(v[ok], bins=bins, color="tab:blue")
        if col.startswith("memorization"):
            ax.axvline(0.25, color="tab:red", lw=0.8, ls="--")
        ax.set_title(f"{col} ({int(ok.sum())} examples)", fontsize=9)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# -- html -----------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 14px; margin: 16px 0 6px; }
.note { background: #fff6d8; border: 1px solid #e8d58a; padding: 6px 10px; margin: 8px 0; }
table { border-collapse: collapse; font-size: 13px; }
td, th { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; padding: 4px; border: 1px solid #e3e3e3; border-radius: 4px; background: #fafafa;
         text-align: center; }
figure img { display: block; margin: 0 auto; image-rendering: pixelated; }
figcaption { font-size: 11px; line-height: 1.3; margin-top: 3px; }
figure.flipped { border-color: #d62728; } figure.test { border-color: #1f77b4; background: #eef5fc; }
.influence-row { display: flex; align-items: center; gap: 8px; margin: 6px 0; flex-wrap: wrap; }
.arrow { font-size: 20px; color: #888; }
img.plot { max-width: 100%; }
details pre { font-size: 11px; background: #f6f6f6; padding: 8px; overflow-x: auto; }
"""


def _corrected_text(summary: dict) -> str:
    """The noise-corrected fractions with their 95% intervals; '–' for reports of older jobs."""
    parts = []
    for t, c in (summary.get("fraction_memorization_ge_corrected") or {}).items():
        if c and c.get("estimate") is not None:
            bounds = f" [{_fmt(c['lower'])}, {_fmt(c['upper'])}]" if c.get("lower") is not None else ""
            parts.append(f"≥ {t}: {_fmt(c['estimate'])}{bounds}")
    return "; ".join(parts) + " (95% interval)" if parts else "–"


def _summary_rows(summary: dict) -> list[tuple[str, str]]:
    spec, info = summary.get("spec", {}), summary.get("dataset", {})
    timings, recipe = summary.get("timings", {}), summary.get("recipe", {})
    frac = summary.get("fraction_memorization_ge", {})
    acc, acc_sd = summary.get("mean_test_accuracy"), summary.get("std_test_accuracy")
    rows = [
        (
            "dataset",
            f"{info.get('name', spec.get('dataset', '?'))} ({spec.get('dataset', '')}): "
            f"{info.get('n_train', '?')} train, "
            f"{info.get('n_test', '?')} test, {info.get('num_classes', '?')} classes, {info.get('kind', '?')} "
            f"{tuple(info.get('feature_shape', ()))}",
        ),
        (
            "model",
            f"{summary.get('arch', spec.get('model', '?'))}, {recipe.get('epochs', '?')} epochs, batch "
            f"{recipe.get('batch_size', '?')}, "
            f"lr {recipe.get('lr', '?')}",
        ),
        (
            "models",
            f"{summary.get('models_done', '?')} of {summary.get('models_total', spec.get('models', '?'))}"
            + ("" if summary.get("final", True) else " (anytime estimate: the job had not finished)"),
        ),
        ("subset ratio, seed", f"{spec.get('ratio', '?')}, {spec.get('seed', '?')}"),
    ]
    if spec.get("label_noise"):
        rows.append(
            (
                "label noise",
                f"{spec['label_noise']:.1%} of training labels flipped ({info.get('labels_flipped', '?')} examples)",
            )
        )
    rows += [
        ("test accuracy", f"{_fmt(acc)} ± {_fmt(acc_sd)} (mean ± sd over models)"),
        (
            "in-sample / held-out accuracy",
            f"{_fmt(summary.get('mean_in_sample_accuracy'))} / {_fmt(summary.get('mean_heldout_accuracy'))}",
        ),
        ("mean memorization", _fmt(summary.get("mean_memorization"))),
        ("memorization ≥ 0.25 / ≥ 0.5", f"{_fmt(frac.get('0.25'))} / {_fmt(frac.get('0.5'))} of examples (raw)"),
        ("noise-corrected ≥ 0.25 / ≥ 0.5", _corrected_text(summary)),
        (
            "memorized beyond doubt",
            f"{summary.get('count_memorization_lower_ge_0_25', '–')} examples whose 95% interval lies wholly ≥ 0.25",
        ),
        ("examples without an estimate", _fmt(summary.get("examples_without_estimate"))),
        (
            "influence pairs ≥ threshold / significant",
            f"{summary.get('influence_pairs_above_threshold', '?')} ≥ threshold "
            f"{spec.get('influence_threshold', '?')} (raw) / "
            f"{summary.get('influence_pairs_significant', '–')} significant at false discovery rate "
            f"{summary.get('influence_fdr', spec.get('influence_fdr', '–'))}",
        ),
        (
            "time",
            ", ".join(
                f"{k.replace('_seconds', '')} {v:.1f} s" for k, v in timings.items() if isinstance(v, (int, float))
            ),
        ),
        ("environment", ", ".join(f"{k} {v}" for k, v in summary.get("environment", {}).items())),
    ]
    return rows


def _reliability_section(summary: dict) -> str:
    """Split-half reliability per score (engine/reliability.py), and why a self-stopping run
    stopped; empty for results written before every job reported it."""
    rel = summary.get("reliability")
    if not rel:
        return ""
    rows = [
        [metric, _fmt(r.get("split_half_spearman")), _fmt(r.get("spearman_brown")), _fmt(r.get("models_for_0_95"))]
        for metric, r in rel.items()
    ]
    header = ["score", "split-half Spearman r", "reliability (Spearman–Brown, all models)", "models for 0.95"]
    models = next(iter(rel.values())).get("models", summary.get("models_done", "?"))
    spec = summary.get("spec", {})
    stop = ""
    if spec.get("until_reliability"):
        stop = (
            f" Self-stopping: target {spec['until_reliability']:g} for {_esc(spec.get('reliability_metric', ''))}, "
            f"at most {spec.get('max_models') or spec.get('models')} models; stopped: "
            f"{_esc(summary.get('stopped_because', '?'))}."
        )
    return (
        '<section id="reliability"><h2>Reliability</h2>'
        + _table(header, rows)
        + f"<p>The {models} models split by the parity of their id; r is the rank correlation of the two "
        "halves' scores over the examples both estimate, projected to all models by the Spearman–Brown "
        "formula 2r/(1 + r): the correlation expected between two independent runs of this size. "
        f"“models for 0.95” is the projected run size for a reliability of 0.95.{stop}</p></section>"
    )


def _ranked_by_memorization(scores: Columns, idx: np.ndarray) -> np.ndarray:
    """`idx` most memorized first: memorization, then soft memorization; NaN last."""
    mem = np.nan_to_num(np.asarray(scores["memorization"], np.float64)[idx], nan=-np.inf)
    soft = np.nan_to_num(
        np.asarray(scores.get("memorization_soft", scores["memorization"]), np.float64)[idx], nan=-np.inf
    )
    return idx[np.lexsort((idx, -soft, -mem))]


def _memorized_section(scores: Columns, ds: Dataset | None, per_class: int, max_classes: int) -> str:
    labels = np.asarray(scores["label"], np.int64)
    mem = np.asarray(scores["memorization"], np.float64)
    se = np.asarray(scores.get("memorization_stderr", np.full(len(mem), np.nan)), np.float64)
    classes = np.unique(labels)
    out = ['<section id="memorized"><h2>Most memorized training examples, per class</h2>']
    if len(classes) > max_classes:
        # The classes whose top examples are most memorized come first.
        best = {
            c: np.nanmax(np.where(labels == c, mem, np.nan)) if np.isfinite(mem[labels == c]).any() else -np.inf
            for c in classes
        }
        classes = np.array(sorted(classes, key=lambda c: -best[c])[:max_classes])
        out.append(
            f'<p class="note">{len(np.unique(labels))} classes; showing the {max_classes} with the most '
            "memorized examples.</p>"
        )
    for c in classes:
        members = np.flatnonzero(labels == c)
        top = _ranked_by_memorization(scores, members)[:per_class]
        m = mem[members]
        fin = m[np.isfinite(m)]
        stats = (
            f"{len(members)} examples, mean memorization {_fmt(float(fin.mean()) if len(fin) else None)}, "
            f"{(fin >= 0.25).mean() if len(fin) else 0:.1%} at ≥ 0.25"
        )
        out.append(
            f'<div class="class-grid" id="class-{int(c)}" data-class="{int(c)}">'
            f"<h3>class {_esc(_class_name(ds, int(c)))}: {stats}</h3>"
        )
        if ds is not None:
            out.append('<div class="grid">')
            for i in top:
                flipped = scores.get("label_flipped") is not None and bool(scores["label_flipped"][i])
                caption = f"#{int(i)} · {_label_text(scores, ds, int(i))}<br>mem {_fmt(mem[i], 2)} ± {_fmt(se[i], 2)}"
                out.append(
                    _example_figure(_png_uri(example_png(ds, ds.x_train[i])), caption, "flipped" if flipped else "")
                )
            out.append("</div>")
        else:
            out.append(
                _table(
                    ["train index", "label", "memorization", "stderr", "held-out accuracy"],
                    [
                        [
                            int(i),
                            _label_text(scores, None, int(i)),
                            _fmt(mem[i]),
                            _fmt(se[i]),
                            _fmt(float(scores["heldout_accuracy"][i])),
                        ]
                        for i in top
                    ],
                    raw=True,
                )
            )
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)


def _influence_section(
    influence: Columns, scores: Columns, ds: Dataset | None, examples: int, k: int, summary: dict | None = None
) -> str:
    out = ['<section id="influence"><h2>Influence: test examples and their most influential training examples</h2>']
    if not influence or len(influence.get("test_index", ())) == 0:
        out.append("<p>No influence pairs were kept for this run.</p></section>")
        return "\n".join(out)
    tr, te = influence["train_index"], influence["test_index"]
    val, rank = influence["influence"], influence["topk_rank"]
    top1 = np.flatnonzero(rank == 1)
    se = influence.get("influence_stderr", np.zeros(len(val)))
    sig = influence.get("significant", np.zeros(len(val), bool))
    chosen = top1[np.lexsort((te[top1], se[top1], -val[top1]))][:examples]  # ties: the surer estimate first
    out.append(
        f"<p>The {len(chosen)} test examples whose most influential training example has the highest influence "
        f"(FZ eq. 2: P[correct on the test example | train example in the subset] − P[… | held out]), "
        f"each followed by its top {k} training examples (influence ± standard error; with few models most of "
        f"these values are noise).</p>"
    )
    mem = np.asarray(scores["memorization"], np.float64)
    for r in chosen:
        j = int(te[r])
        row = np.flatnonzero((te == j) & (rank >= 1) & (rank <= k))
        row = row[np.argsort(rank[row], kind="stable")]
        test_label = int(influence["test_label"][r]) if "test_label" in influence else None
        if ds is not None:
            parts = [
                '<div class="influence-row">',
                _example_figure(
                    _png_uri(example_png(ds, ds.x_test[j])),
                    f"test #{j}<br>label {_esc(_class_name(ds, int(ds.y_test[j])))}",
                    "test",
                ),
                '<span class="arrow">←</span>',
            ]
            for q in row:
                i = int(tr[q])
                parts.append(
                    _example_figure(
                        _png_uri(example_png(ds, ds.x_train[i])),
                        f"train #{i} · {_label_text(scores, ds, i)}<br>infl {_fmt(float(val[q]), 2)} ± "
                        f"{_fmt(float(se[q]), 2)}{' (significant)' if sig[q] else ''}"
                        f" · mem {_fmt(mem[i], 2)}",
                    )
                )
            parts.append("</div>")
            out.append("".join(parts))
        else:
            out.append(f"<h3>test #{j} (label {test_label})</h3>")
            out.append(
                _table(
                    ["rank", "train index", "train label", "influence", "stderr", "significant", "memorization"],
                    [
                        [
                            int(rank[q]),
                            int(tr[q]),
                            int(scores["label"][int(tr[q])]),
                            _fmt(float(val[q])),
                            _fmt(float(se[q])),
                            "yes" if sig[q] else "no",
                            _fmt(mem[int(tr[q])]),
                        ]
                        for q in row
                    ],
                )
            )
    out += _pair_tables(influence, summary or {})
    out.append("</section>")
    return "\n".join(out)


def _pair_tables(influence: Columns, summary: dict) -> list[str]:
    """The strongest significant pairs, then the strongest at or above the raw threshold."""
    n = len(influence["train_index"])
    sig = np.asarray(influence.get("significant", np.zeros(n, bool)), bool)
    above = np.asarray(influence.get("above_threshold", np.zeros(n, bool)), bool)
    spec = summary.get("spec", {})
    sig_count = summary.get("influence_pairs_significant", int(sig.sum()))
    above_count = summary.get("influence_pairs_above_threshold", int(above.sum()))
    out = [
        f"<p>{sig_count} pairs are significant (H0: influence ≤ {spec.get('influence_threshold', '?')} rejected "
        f"at false discovery rate {summary.get('influence_fdr', spec.get('influence_fdr', '?'))} over all "
        f"train × test pairs, exact test per pair); {above_count} pairs reach the threshold (the paper's raw "
        "cut, chance hits included: with few models, most of them).</p>"
    ]
    for title, rows, count in (("Strongest significant pairs", sig, sig_count),
                               ("Strongest pairs at or above the threshold (raw)", above, above_count)):  # fmt: skip
        idx = np.flatnonzero(rows)
        if not len(idx):
            continue
        idx = idx[np.argsort(-np.asarray(influence["influence"])[idx], kind="stable")][:25]
        out.append(f"<h3>{title} ({count} in all; top {len(idx)})</h3>")
        out.append(_table(["train index", "test index", "influence", "stderr", "p-value", "significant",
                           "train label", "test label"], [_pair_row(influence, q) for q in idx]))  # fmt: skip
    return out


def _pair_row(influence: Columns, q: int) -> list:
    def col(name, fmt):
        return fmt(influence[name][q]) if name in influence else "–"

    return [
        int(influence["train_index"][q]),
        int(influence["test_index"][q]),
        _fmt(float(influence["influence"][q])),
        col("influence_stderr", lambda v: _fmt(float(v))),
        col("influence_pvalue", lambda v: f"{float(v):.2e}"),
        col("significant", lambda v: "yes" if v else "no"),
        col("train_label", int),
        col("test_label", int),
    ]


def render_report(
    scores: Columns,
    influence: Columns,
    summary: dict,
    ds: Dataset | None = None,
    notes: list[str] | tuple[str, ...] = (),
    title: str = "",
    per_class: int = 8,
    max_classes: int = 50,
    influence_examples: int = 12,
    influence_k: int = 5,
) -> str:
    """The HTML page for one run. `ds` is the dataset the run trained on (see `run_dataset`);
    None draws no pictures of examples (tables instead). `notes` are shown at the top."""
    name = summary.get("dataset", {}).get("name") or summary.get("spec", {}).get("dataset", "run")
    title = title or f"memscore report: {name}"
    notes = list(notes)
    if ds is not None and ds.n_train != len(scores["label"]):
        notes.append(
            f"the dataset has {ds.n_train} training examples but the scores {len(scores['label'])}; examples not drawn"
        )
        ds = None
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    parts += [f'<p class="note">{_esc(n)}</p>' for n in notes]
    parts.append('<section id="summary"><h2>Run summary</h2>')
    parts.append(_table(["", ""], [[k, v] for k, v in _summary_rows(summary)], css="summary", numeric=False))
    parts.append(
        "<details><summary>summary.json</summary>"
        f"<pre>{_esc(json.dumps(summary, indent=2, sort_keys=True))}</pre></details>"
    )
    parts.append("</section>")
    parts.append(_reliability_section(summary))
    parts.append(
        '<section id="histogram"><h2>Score distributions</h2>'
        f'<img class="plot" src="{_png_uri(_histogram_png(scores))}" alt="histograms of the scores">'
        "<p>Counts on a log scale; the dashed line is Feldman &amp; Zhang's threshold for a memorized "
        "example (0.25).</p>"
        "</section>"
    )
    parts.append(_memorized_section(scores, ds, per_class, max_classes))
    parts.append(privacy_section(scores, summary, ds))
    parts.append(correlation_section(scores))
    parts.append(dynamics_section(summary))
    parts.append(dp_section(summary))
    parts.append(_influence_section(influence, scores, ds, influence_examples, influence_k, summary))
    parts.append("</body></html>")
    return "\n".join(parts)


def load_dataset_for_report(summary: dict, ref: str = "", objects=None) -> tuple[Dataset | None, str]:
    """(the run's dataset, "") or (None, why not). `ref` overrides the spec's dataset reference;
    `datasets/<sha256>.npz` references are read from `objects` (an ObjectStore) when given."""
    from ..engine.datasets import DatasetError, dataset_from_npz_bytes, load_dataset

    ref = ref or summary.get("spec", {}).get("dataset", "")
    try:
        if ref.startswith("datasets/"):
            if objects is None:
                return None, f"dataset {ref} is in the service's object store, which is not reachable from here"
            try:
                data = objects.get_bytes(ref)
            except Exception as e:  # not there, a store that is down, credentials missing
                return None, (
                    f"{ref} could not be read from the object store {objects.describe()} ({type(e).__name__}); "
                    "point MEMSCORE_STORE (and MEMSCORE_S3_*) at the service's store, or pass --dataset "
                    "with a local copy"
                )
            ds = dataset_from_npz_bytes(data)
        else:
            ds = load_dataset(ref)
        return run_dataset(summary, ds), ""
    except (DatasetError, ValueError, OSError, KeyError) as e:
        return None, f"dataset {ref!r} could not be loaded: {e}"
    except Exception as e:  # a store that is down, credentials missing: still write the page
        return None, f"dataset {ref!r} could not be loaded: {type(e).__name__}: {e}"


__all__ = [
    "RESULT_FILES",
    "example_png",
    "load_dataset_for_report",
    "read_result_files",
    "render_report",
    "run_dataset",
]
