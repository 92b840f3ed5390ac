"""The report's privacy and metric sections: the membership-inference audit (LiRA's ROC on
log-log axes, as Carlini et al. 2022 plot it, and the most exposed examples) and the Spearman
correlation matrix of the per-example metrics (as Carlini, Erlingsson & Papernot 2019's figure)."""

from __future__ import annotations

import io

import numpy as np

from ..engine.datasets import Dataset
from .draw import Columns, _esc, _example_figure, _fmt, _label_text, _png_uri, _table, example_png

# Per-example metrics correlated in the report, in this order, where the run has them (NaN-only
# columns are left out): the memorization picture, label quality, privacy and prototypicality.
CORRELATED = (
    "memorization",
    "memorization_log_odds",
    "heldout_accuracy",
    "label_quality",
    "privacy_risk",
    "model_confidence",
    "holdout_retraining",
    "ensemble_agreement",
    "adv_distance_l2",
    "adv_distance_linf",
    "learning_speed",
    "first_learned_epoch",
    "critical_fraction",
    "privacy_level",
)
MIN_PAIRS = 10  # examples with both values below which a correlation is not shown


def spearman_matrix(scores: Columns, names=CORRELATED) -> tuple[list[str], np.ndarray]:
    """(metrics present, their Spearman correlation matrix over the examples where both are
    finite; NaN below MIN_PAIRS such examples)."""
    from scipy.stats import rankdata

    # NaN is "no estimate"; +inf is a value (privacy_level: no DP level learns the example), ranked last
    present = [c for c in names if c in scores and (~np.isnan(np.asarray(scores[c], np.float64))).sum() >= MIN_PAIRS]
    cols = [np.asarray(scores[c], np.float64) for c in present]
    r = np.full((len(cols), len(cols)), np.nan)
    for a in range(len(cols)):
        for b in range(a, len(cols)):
            ok = ~np.isnan(cols[a]) & ~np.isnan(cols[b])
            if ok.sum() < MIN_PAIRS:
                continue
            ra, rb = rankdata(cols[a][ok]), rankdata(cols[b][ok])
            if ra.std() > 0 and rb.std() > 0:
                r[a, b] = r[b, a] = float(np.corrcoef(ra, rb)[0, 1])
    return present, r


def _heatmap_png(names: list[str], r: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.2 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(r, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for a in range(len(names)):
        for b in range(len(names)):
            if np.isfinite(r[a, b]):
                ax.text(b, a, f"{r[a, b]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _png(fig, plt)


def _roc_png(roc: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr = np.asarray(roc["fpr"], np.float64)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    floor = fpr.min() / 2
    for key, label, style in (("tpr", "LiRA on this job's models", "-"), ("chance_tpr", "membership shuffled", "--")):
        tpr = np.asarray([np.nan if v is None else v for v in roc[key]], np.float64)
        ax.plot(fpr, np.maximum(tpr, floor), style, marker="o", ms=2.5, label=label)
    ax.plot(fpr, fpr, ":", color="grey", lw=0.8, label="random guess")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(fpr.min(), 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false positive rate", fontsize=8)
    ax.set_ylabel("true positive rate", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig, plt)


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _interval(mi: dict, key: str) -> str:
    lo, hi = (mi.get(key + "_interval") or [None, None])[:2]
    return f"{_fmt(mi.get(key))} [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None else _fmt(mi.get(key))


def privacy_section(scores: Columns, summary: dict, ds: Dataset | None, top: int = 12) -> str:
    """Membership inference: the figures with their intervals beside the chance level, the ROC
    on log-log axes and the `top` examples most exposed (highest privacy_risk)."""
    mi = summary.get("membership_inference")
    out = ['<section id="privacy"><h2>Membership inference (LiRA on the job\'s own models)</h2>']
    if not mi:
        out.append("<p>This run was reduced before memscore measured membership inference.</p></section>")
        return "\n".join(out)
    if mi.get("skipped"):
        out.append(f"<p>Not measured: {_esc(mi['skipped'])} (this run has {_esc(mi.get('models'))}).</p></section>")
        return "\n".join(out)
    verdict = "above chance" if mi.get("significant") else "not distinguishable from chance"
    out.append(
        f"<p>Each of the {_esc(mi['models'])} models attacked with the others as shadow models "
        f"({_esc(mi.get('variance'))} variance): membership leaks <b>{verdict}</b>.</p>"
    )
    rows = [
        ["AUC", _interval(mi, "auc"), _interval(mi, "chance_auc")],
        ["TPR at 0.1% FPR", _interval(mi, "tpr_at_fpr_0_001"), _fmt(mi.get("chance_tpr_at_fpr_0_001"), 4)],
        ["TPR at 1% FPR", _interval(mi, "tpr_at_fpr_0_01"), _fmt(mi.get("chance_tpr_at_fpr_0_01"), 4)],
        ["examples leaking (BH, FDR 5%)", _fmt(mi.get("privacy_risk_significant")), ""],
    ]
    out.append(_table(["", "this run [95%]", "membership shuffled"], rows, css="privacy", numeric=False))
    if mi.get("roc"):
        out.append(f'<img class="plot" src="{_png_uri(_roc_png(mi["roc"]))}" alt="ROC curve, log-log">')
    out.append(_exposed(scores, ds, top))
    out.append("</section>")
    return "\n".join(out)


def most_exposed(scores: Columns, top: int) -> np.ndarray:
    """Indices of the `top` examples with the highest privacy_risk (ties, e.g. at the ceiling of
    1: the smaller standard error first); examples without an estimate never."""
    risk = np.asarray(scores.get("privacy_risk", []), np.float64)
    se = np.asarray(scores.get("privacy_risk_stderr", np.zeros(len(risk))), np.float64)
    finite = np.flatnonzero(np.isfinite(risk))
    order = finite[np.lexsort((finite, np.nan_to_num(se[finite], nan=np.inf), -risk[finite]))]
    return order[:top]


def _exposed(scores: Columns, ds: Dataset | None, top: int) -> str:
    order = most_exposed(scores, top)
    if not len(order):
        return "<p>No per-example privacy risk in this run.</p>"
    risk = np.asarray(scores["privacy_risk"], np.float64)
    se = np.asarray(scores.get("privacy_risk_stderr", np.full(len(risk), np.nan)), np.float64)
    out = [f"<h3>The {len(order)} most exposed training examples (privacy_risk, 0.5 = nothing leaks)</h3>"]
    if ds is not None:
        out.append('<div class="grid" id="exposed">')
        for i in order:
            caption = f"#{int(i)} · {_label_text(scores, ds, int(i))}<br>risk {_fmt(risk[i], 2)} ± {_fmt(se[i], 2)}"
            out.append(_example_figure(_png_uri(example_png(ds, ds.x_train[i])), caption))
        out.append("</div>")
    else:
        mem = np.asarray(scores["memorization"], np.float64)
        out.append(
            _table(
                ["train index", "label", "privacy_risk", "stderr", "memorization"],
                [[int(i), _label_text(scores, None, int(i)), _fmt(risk[i]), _fmt(se[i]), _fmt(mem[i])] for i in order],
                raw=True,
                css="exposed",
            )
        )
    return "\n".join(out)


def _csr_png(csr: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for key, label in (("clean", "clean labels"), ("noisy", "flipped labels"), ("all", "all examples")):
        if key in csr and (key != "all" or "clean" not in csr):
            (line,) = ax.plot(csr["epochs"], csr[key], marker="o", ms=2.5, label=label)
            se = np.array([np.nan if v is None else v for v in csr.get(key + "_stderr", [])], np.float64)
            if len(se) == len(csr[key]):  # ±1.96 standard errors, the examples as clusters
                mid = np.asarray(csr[key], np.float64)
                ax.fill_between(csr["epochs"], mid - 1.96 * se, mid + 1.96 * se, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("critical sample ratio", fontsize=8)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig, plt)


def dynamics_section(summary: dict) -> str:
    """The critical sample ratio per epoch (jobs with the dynamics metrics; nothing otherwise)."""
    csr = summary.get("critical_sample_ratio")
    if not csr:
        return ""
    return (
        '<section id="dynamics"><h2>Learning dynamics: critical samples per epoch (Arpit et al. 2017)</h2>'
        f'<img class="plot" src="{_png_uri(_csr_png(csr))}" alt="critical sample ratio per epoch">'
        f"<p>The fraction of (model, training example) pairs, over {_esc(csr['sample'])} sampled examples "
        f"and the models that trained on each, for which an input in the L∞ box of radius "
        f"{_fmt(csr['radius'], 4)} gets a different prediction. Networks fit real patterns first; "
        "an example fitted by carving a small region around it (a flipped or atypical label) stays "
        "critical. Bands: 95% intervals (±1.96 standard errors, the examples as clusters).</p></section>"
    )


def dp_section(summary: dict) -> str:
    """The DP levels (jobs with the dp metrics; nothing otherwise): each level's ε, noise and
    accuracy, and how many examples each level is the strongest for."""
    dp = summary.get("dp")
    if not dp:
        return ""
    rows = [
        [_fmt(lv["epsilon"]), _fmt(lv["delta"], 2), _fmt(lv["noise_multiplier"]), lv["models"],
         _fmt(lv["mean_in_sample_accuracy"]), _fmt(lv["mean_test_accuracy"]),
         dp.get("examples_at_level", {}).get(f"{lv['epsilon_target']:g}", "")]
        for lv in dp["levels"]
    ]  # fmt: skip
    rows.append(["∞ (no level)", "", "", "", "", "", dp.get("examples_at_level", {}).get("inf", "")])
    header = ["ε", "δ", "noise σ", "models", "in-sample acc.", "test acc.", "examples at this level"]
    return (
        '<section id="dp"><h2>Privacy level: the strongest ε that still learns an example</h2>'
        + _table(header, rows)
        + "<p>Each level's models are trained with DP-SGD (per-example clipping and Gaussian noise); "
        "an example's privacy_level is the smallest ε at which the majority of that level's models "
        "that trained on it classify it correctly (Carlini, Erlingsson &amp; Papernot 2019). "
        f"{_esc(dp.get('examples_without_estimate', 0))} examples have no estimate; the "
        "privacy_level_lower/upper columns give each example's 95% bootstrap interval.</p></section>"
    )


def correlation_section(scores: Columns) -> str:
    names, r = spearman_matrix(scores)
    out = ['<section id="correlations"><h2>How the per-example metrics agree (Spearman correlation)</h2>']
    if len(names) < 2:
        out.append("<p>Fewer than two metrics have estimates.</p></section>")
        return "\n".join(out)
    out.append(f'<img class="plot" src="{_png_uri(_heatmap_png(names, r))}" alt="Spearman correlation matrix">')
    out.append(
        "<p>Over the examples where both metrics have an estimate. Atypical or mislabeled examples "
        "score high on memorization, holdout_retraining and privacy_risk and low on held-out "
        "accuracy, label quality, confidence and agreement, so those pairs correlate negatively.</p>"
    )
    out.append(_table([""] + names, [[a] + [_fmt(v, 2) for v in row] for a, row in zip(names, r)], css="correlations"))
    out.append("</section>")
    return "\n".join(out)
