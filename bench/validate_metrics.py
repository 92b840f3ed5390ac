"""One model bank, every metric (issue 12): each per-example metric against a planted group, and
LiRA against the number of models. Small enough for a 2-core CPU; the measured tables, commands
and wall times are in docs/validation.md ("Every metric on planted label noise and a long tail",
"LiRA vs K on mnist1d").

    B="nice -n 10 .venv/bin/python bench/validate_metrics.py"; O="--out out/validate_metrics --img-dir docs/img"
    $B metrics $O
    $B lira-vs-k $O
    $B privacy-level $O

- metrics: two jobs through `run_scoring`, each with `--metrics adversarial,dynamics` (plus any
  group `--metrics` adds): mnist1d with 10% of its labels flipped (planted group: the flipped
  examples) and longtail (planted group: the rare-subgroup training examples). Per metric, the
  mean of the planted group and of the rest, and the AUROC of the metric for finding the
  planted group, in the direction the metric's definition predicts, with a stratified
  bootstrap 95% interval over examples. Plots: planted vs rest per metric, and the Spearman
  correlation matrix of the metrics.
- lira-vs-k: one balanced bank on mnist1d, LiRA (engine/membership.py) on its first K models
  for each K: AUC, TPR at 0.1% and 1% FPR, the chance level, and the log-log ROC per K.
- privacy-level: one longtail job with `--metrics dp` (engine/privacy_level.py): each DP level's
  ε, σ and accuracies, the distribution of privacy_level for the rare-subgroup examples and the
  common ones, its AUROC for finding the rare ones (+inf ranks highest), and the share of
  examples whose bootstrap interval leaves the level undecided (lower < upper).

Each subcommand prints markdown tables and writes `<name>.json` and PNGs under --out (PNGs also
under --img-dir). A job's scores are cached under --out (`--no-cache` retrains).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from validate import _plt, _save_fig  # bench/validate.py: run as a script, bench/ is on the path

from memscore.engine.datasets import load_dataset
from memscore.engine.membership import FPR_TARGETS, ROC_FPRS, membership_inference
from memscore.engine.privacy_level import DP_EPSILONS
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec
from memscore.report.metrics import _heatmap_png, spearman_matrix

# Per-example metrics, and the side the planted group (flipped labels, rare subgroups) should
# fall on by each metric's definition: +1 = higher, -1 = lower. The AUROC is of sign · metric.
METRIC_DIRECTIONS: dict[str, int] = {
    "privacy_risk": +1,  # members told from non-members: the models fit the example itself
    "model_confidence": -1,
    "holdout_retraining": +1,  # training on it moves its predicted distribution
    "ensemble_agreement": -1,
    "adv_distance_l2": -1,  # the boundary is carved close around it
    "adv_distance_linf": -1,
    "learning_speed": -1,
    "first_learned_epoch": +1,
    "critical": +1,
    "memorization": +1,
    "label_quality": -1,  # held-out probability of the given label
    "privacy_level": +1,  # needs a weaker privacy level (larger ε) to be classified correctly
}
BOOTSTRAP = 1000  # resamples for every AUROC interval
MIN_EXAMPLES = 10  # finite values needed in each group for a metric to be reported


# -- shared helpers -------------------------------------------------------------------------------


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    return o.item() if isinstance(o, np.generic) else str(o)


def _save_json(args, name: str, payload: dict) -> None:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default))
    print(f"wrote {path}")


def _markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _spec(args, dataset: str, models: int, label_noise: float, metrics: list[str]) -> ScoringSpec:
    return ScoringSpec.from_dict(
        {
            "dataset": dataset,
            "model": args.model,
            "models": models,
            "epochs": args.epochs,
            "seed": args.seed,
            "label_noise": label_noise,
            "plan": args.plan,
            "metrics": metrics,
        }
    )


def _cached_job(args, key: str, spec: ScoringSpec, traces: list | None = None) -> tuple[dict, dict]:
    """(score columns, summary) of the job `spec`, from --out when an earlier run left them."""
    npz, meta = Path(args.out) / f"scores-{key}.npz", Path(args.out) / f"summary-{key}.json"
    if npz.exists() and meta.exists() and not args.no_cache and traces is None:
        print(f"reusing {npz}")
        z = np.load(npz)
        return {k: z[k] for k in z.files}, json.loads(meta.read_text())
    problems = spec.validate()
    if problems:
        raise SystemExit("; ".join(f"{f}: {m}" for f, m in problems))
    result = run_scoring(load_dataset(spec.dataset), spec, device=args.device, traces_out=traces)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, **result.scores)
    meta.write_text(json.dumps(result.summary, default=_json_default))
    return result.scores, json.loads(meta.read_text())


# -- every metric against a planted group ---------------------------------------------------------


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie) (Mann–Whitney); +inf ranks last."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    pos = int(positive.sum())
    neg = len(score) - pos
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def separation(values: np.ndarray, planted: np.ndarray, direction: int, seed: int) -> dict | None:
    """Planted vs rest for one metric: means (of finite values; privacy_level's +inf counted
    apart), the AUROC of direction · value with a bootstrap 95% interval that resamples the
    planted and the other examples separately (so every resample has both). Examples without
    an estimate (NaN) are left out; None below MIN_EXAMPLES in either group."""
    v = np.asarray(values, np.float64)
    ok = ~np.isnan(v)
    v, y = direction * v[ok], planted[ok]
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if min(len(pos), len(neg)) < MIN_EXAMPLES:
        return None
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(BOOTSTRAP):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        boot.append(_auroc(v[idx], y[idx]))
    raw = direction * v

    def mean(a: np.ndarray) -> float:
        a = a[np.isfinite(a)]
        return float(a.mean()) if len(a) else float("nan")

    return {
        "direction": "higher" if direction > 0 else "lower",
        "mean_planted": mean(raw[pos]),
        "mean_rest": mean(raw[neg]),
        "infinite_planted": int(np.isinf(raw[pos]).sum()),
        "infinite_rest": int(np.isinf(raw[neg]).sum()),
        "auroc": _auroc(v, y),
        "auroc_interval": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "missing": int((~ok).sum()),
    }


def _planted_group(run: str, scores: dict, dataset: str) -> np.ndarray:
    if run == "label_noise":
        return np.asarray(scores["label_flipped"], bool)
    # label_noise 0 keeps the dataset's order: the rare-subgroup examples are the long tail
    return load_dataset(dataset).extras["train_subgroup"] >= 0


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.{digits}g}" if abs(x) >= 100 else f"{x:.{digits}f}"


def _separation_rows(table: dict[str, dict]) -> list[list]:
    rows = []
    for name, s in table.items():
        lo, hi = s["auroc_interval"]
        mp, mr = _fmt(s["mean_planted"]), _fmt(s["mean_rest"])
        if s["infinite_planted"] or s["infinite_rest"]:
            mp, mr = f"{mp} (+{s['infinite_planted']} ∞)", f"{mr} (+{s['infinite_rest']} ∞)"
        rows.append([f"`{name}`", s["direction"], mp, mr, f"{s['auroc']:.3f} [{lo:.3f}, {hi:.3f}]", s["missing"]])
    return rows


def _plot_separation(title: str, scores: dict, planted: np.ndarray, table: dict[str, dict], args, name: str):
    plt = _plt()
    cols = 4
    rows = (len(table) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.3 * rows), squeeze=False)
    for ax, (metric, s) in zip(axes.ravel(), table.items()):
        v = np.asarray(scores[metric], np.float64)
        ok = np.isfinite(v)
        groups = [(v[ok & planted], "planted", "tab:red"), (v[ok & ~planted], "rest", "tab:blue")]
        if metric == "critical":
            ax.bar([0, 1], [g[0].mean() for g in groups], color=[g[2] for g in groups])
            ax.set_xticks([0, 1], [g[1] for g in groups])
            ax.set_ylabel("share critical", fontsize=7)
        else:
            # each group's own 0.5-99.5% range: a small planted group's tail is not clipped away
            lo = min(np.quantile(g[0], 0.005) for g in groups)
            hi = max(np.quantile(g[0], 0.995) for g in groups)
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
            for g, label, color in groups:
                ax.hist(np.clip(g, lo, hi), bins=bins, density=True, alpha=0.5, color=color, label=label)
        ax.set_title(f"{metric}\nAUROC {s['auroc']:.2f} ({s['direction']})", fontsize=8)
        ax.tick_params(labelsize=6)
    axes.ravel()[0].legend(fontsize=6)
    for ax in axes.ravel()[len(table) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save_fig(fig, args, name)


def _plot_correlation(names: list[str], r: np.ndarray, args, name: str) -> list[str]:
    """The report's Spearman heatmap (report/metrics.py), written as a PNG file."""
    paths = []
    for d in filter(None, (args.out, args.img_dir)):
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / name).write_bytes(_heatmap_png(names, r))
        paths.append(str(Path(d) / name))
    return paths


def _job_facts(summary: dict) -> dict:
    mi, adv = summary.get("membership_inference", {}), summary.get("adversarial") or {}
    return {
        "arch": summary.get("arch"),
        "wall_seconds": summary.get("timings", {}).get("wall_seconds"),
        "timings": summary.get("timings"),
        "mean_test_accuracy": summary.get("mean_test_accuracy"),
        "mean_in_sample_accuracy": summary.get("mean_in_sample_accuracy"),
        "membership_auc": mi.get("auc"),
        "membership_auc_interval": mi.get("auc_interval"),
        "membership_chance_auc": mi.get("chance_auc"),
        "adversarial": adv,
        "critical_sample_ratio": summary.get("critical_sample_ratio"),
    }


def separation_table(scores: dict, planted: np.ndarray, seed: int) -> dict[str, dict]:
    """`separation` of every metric of METRIC_DIRECTIONS the job has an estimate of."""
    table = {}
    for metric, direction in METRIC_DIRECTIONS.items():
        s = separation(scores[metric], planted, direction, seed) if metric in scores else None
        if s is not None:
            table[metric] = s
    return table


def _metrics_run(args, run: str, dataset: str, noise: float, groups: list[str]) -> dict:
    spec = _spec(args, dataset, args.models, noise, groups)
    scores, summary = _cached_job(args, f"{run}-{_key(spec)}", spec)
    facts = _job_facts(summary)
    planted = _planted_group(run, scores, dataset)
    table = separation_table(scores, planted, args.seed)
    what = "labels flipped" if run == "label_noise" else "rare-subgroup examples"
    title = f"{dataset}, {args.models} {facts['arch']} models: {int(planted.sum())} {what} vs {int((~planted).sum())}"
    print(f"\n### {title}\n")
    _print_facts(facts)
    header = ["metric", "planted is", "mean planted", "mean rest", "AUROC [95%]", "no estimate"]
    print(_markdown(header, _separation_rows(table)))
    names, r = spearman_matrix(scores, names=tuple(table))
    print("\nSpearman correlations\n")
    print(_markdown(["", *names], [[n, *(f"{x:.2f}" for x in row)] for n, row in zip(names, r)]))
    plots = _plot_separation(title, scores, planted, table, args, f"metrics_{run}.png")
    plots += _plot_correlation(names, r, args, f"metrics_correlation_{run}.png")
    return {
        "spec": spec.to_dict(),
        "planted": int(planted.sum()),
        "rest": int((~planted).sum()),
        **facts,
        "separation": table,
        "spearman": {"names": names, "matrix": r},
        "plots": plots,
    }


def _print_facts(facts: dict) -> None:
    print(f"job wall time {facts['wall_seconds']:.0f} s; timings {facts['timings']}")
    print(f"mean test accuracy {facts['mean_test_accuracy']:.3f}, in-sample {facts['mean_in_sample_accuracy']:.3f}")
    ci = facts["membership_auc_interval"]
    print(f"LiRA AUC {facts['membership_auc']} {ci}, chance {facts['membership_chance_auc']}\n")


def metrics(args) -> dict:
    extra = [m for m in args.metrics.split(",") if m and m not in ("adversarial", "dynamics")]
    groups = ["adversarial", "dynamics", *extra]
    runs = [("label_noise", args.noise_dataset, args.label_noise), ("longtail", "longtail", 0.0)]
    out = {"config": _config(args), "runs": {}}
    for run, dataset, noise in runs:
        out["runs"][run] = _metrics_run(args, run, dataset, noise, groups)
    _save_json(args, "metrics", out)
    return out


# -- LiRA against the number of models ------------------------------------------------------------


def _bank(traces: list) -> tuple[np.ndarray, np.ndarray]:
    """(masks, margins) of the job's non-private models, in model-id order."""
    traces = [t for t in traces if "dp_level" not in t.meta]
    ids = np.concatenate([t.model_ids for t in traces])
    order = np.argsort(ids, kind="stable")
    masks = np.concatenate([t.masks for t in traces])[order]
    margins = np.concatenate([t.train_margin for t in traces])[order]
    return masks, margins


def _bank_cached(args, spec: ScoringSpec) -> tuple[np.ndarray, np.ndarray, dict]:
    path = Path(args.out) / f"bank-{_key(spec)}.npz"
    if path.exists() and not args.no_cache:
        print(f"reusing {path}")
        z = np.load(path)
        return z["masks"], z["margins"], json.loads(str(z["summary"]))
    traces: list = []
    _, summary = _cached_job(args, f"lira-{_key(spec)}", spec, traces)
    masks, margins = _bank(traces)
    np.savez_compressed(path, masks=masks, margins=margins, summary=json.dumps(summary))
    return masks, margins, summary


def lira_vs_k(args) -> dict:
    metrics_groups = [m for m in args.metrics.split(",") if m]
    if max(args.ks) > args.models:
        raise SystemExit(f"--ks {args.ks} asks for more models than the bank's --models {args.models}")
    spec = _spec(args, args.dataset, args.models, 0.0, metrics_groups)
    masks, margins, summary = _bank_cached(args, spec)
    facts = _job_facts(summary)
    print(f"{args.dataset}, {spec.models} {facts['arch']} models, plan {spec.plan}")
    _print_facts(facts)
    points = []
    for k in args.ks:
        t0 = time.perf_counter()
        mi = membership_inference(masks[:k], margins[:k], seed=args.seed)
        s = mi.summary()
        s["attack_seconds"] = time.perf_counter() - t0
        s["k"] = k
        points.append(s)
    rows = []
    for s in points:
        ci = s["auc_interval"]
        c = s["chance_auc_interval"]
        tprs = []
        for key in ("tpr_at_fpr_0_001", "tpr_at_fpr_0_01"):
            lo, hi = s[key + "_interval"]
            tprs.append(f"{s[key]:.4f} [{lo:.4f}, {hi:.4f}] (chance {s['chance_' + key]:.4f})")
        rows.append([s["k"], s["variance"], f"{s['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                     f"{s['chance_auc']:.3f} [{c[0]:.3f}, {c[1]:.3f}]", *tprs, s["privacy_risk_significant"],
                     f"{s['attack_seconds']:.1f} s"])  # fmt: skip
    header = ["K", "variance", "AUC [95%]", "chance AUC [95%]", "TPR @ 0.1% FPR [95%]", "TPR @ 1% FPR [95%]"]
    print(_markdown(header + ["examples leaking (BH 5%)", "attack time"], rows))
    plots = _plot_roc(points, f"LiRA on the first K of {spec.models} {facts['arch']} models, {args.dataset}", args)
    out = {"config": _config(args), "spec": spec.to_dict(), **facts, "points": points, "plots": plots}
    _save_json(args, "lira_vs_k", out)
    return out


def _plot_roc(points: list[dict], title: str, args) -> list[str]:
    plt = _plt()
    fpr = np.asarray(ROC_FPRS, np.float64)
    floor = fpr.min() / 2
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    for s in points:
        tpr = np.asarray([np.nan if v is None else v for v in s["roc"]["tpr"]], np.float64)
        ax.plot(fpr, np.maximum(tpr, floor), "-", marker="o", ms=2.5, label=f"K = {s['k']}, AUC {s['auc']:.3f}")
    chance = np.asarray([np.nan if v is None else v for v in points[-1]["roc"]["chance_tpr"]], np.float64)
    ax.plot(fpr, np.maximum(chance, floor), "--", color="black", lw=0.8, label=f"shuffled, K = {points[-1]['k']}")
    ax.plot(fpr, fpr, ":", color="grey", lw=0.8, label="random guess")
    for f in FPR_TARGETS:
        ax.axvline(f, color="grey", lw=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(fpr.min(), 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false positive rate", fontsize=8)
    ax.set_ylabel("true positive rate", fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    return _save_fig(fig, args, "lira_vs_k.png")


# -- privacy_level on the long tail ---------------------------------------------------------------

# privacy_level's possible values: the ladder, +inf (no level classifies it) and NaN (no estimate)
LEVEL_BINS: tuple[tuple[str, float], ...] = (*((f"{e:g}", e) for e in DP_EPSILONS), ("inf", np.inf), ("nan", np.nan))


def level_distribution(levels: np.ndarray) -> dict[str, int]:
    """How many of `levels` take each value of LEVEL_BINS."""
    return {k: int(np.isnan(levels).sum() if np.isnan(e) else (levels == e).sum()) for k, e in LEVEL_BINS}


def undecided(lower: np.ndarray, upper: np.ndarray) -> dict[str, int]:
    """Examples whose bootstrap interval spans more than one value (lower < upper), of those
    that have an interval at all."""
    ok = ~(np.isnan(lower) | np.isnan(upper))
    return {"undecided": int((lower[ok] < upper[ok]).sum()), "with_interval": int(ok.sum())}


def privacy_level(args) -> dict:
    extra = [m for m in args.metrics.split(",") if m and m != "dp"]
    spec = _spec(args, "longtail", args.models, 0.0, ["dp", *extra])
    scores, summary = _cached_job(args, f"privacy_level-{_key(spec)}", spec)
    facts = _job_facts(summary)
    rare = _planted_group("longtail", scores, "longtail")
    level, lower, upper = (np.asarray(scores[c], np.float64) for c in ("privacy_level", "privacy_level_lower",
                                                                        "privacy_level_upper"))  # fmt: skip
    groups = {"rare": rare, "common": ~rare}
    dist = {g: level_distribution(level[m]) for g, m in groups.items()}
    doubt = {g: undecided(lower[m], upper[m]) for g, m in {**groups, "all": np.ones_like(rare)}.items()}
    sep = separation(level, rare, METRIC_DIRECTIONS["privacy_level"], args.seed)
    print(f"longtail, {spec.models} {facts['arch']} job models, {spec.epochs} epochs, plan {spec.plan}")
    _print_facts(facts)
    _print_privacy_level(summary["dp"], dist, doubt, sep)
    title = f"privacy_level on longtail ({int(rare.sum())} rare vs {int((~rare).sum())} common training examples)"
    plots = _plot_level_distribution(dist, title, args)
    out = {"config": _config(args), "spec": spec.to_dict(), **facts, "dp": summary["dp"], "distribution": dist,
           "undecided": doubt, "separation": sep, "plots": plots}  # fmt: skip
    _save_json(args, "privacy_level", out)
    return out


def _print_privacy_level(dp: dict, dist: dict, doubt: dict, sep: dict | None) -> None:
    rows = [[lv["level"], f"{lv['epsilon_target']:g}", f"{lv['epsilon']:.2f}", f"{lv['noise_multiplier']:.2f}",
             lv["steps"], lv["models"], f"{lv['mean_in_sample_accuracy']:.3f}", f"{lv['mean_test_accuracy']:.3f}"]
            for lv in dp["levels"]]  # fmt: skip
    header = ["level", "ε target", "ε accounted", "σ", "steps", "models", "mean in-sample acc", "mean test acc"]
    print(f"DP models: {dp['seconds']:.0f} s\n\n" + _markdown(header, rows) + "\n")
    rows = []
    for g, d in dist.items():
        n = sum(d.values())
        rows.append([f"{g} ({n:,})", *(f"{100 * c / n:.1f}% ({c})" for c in d.values())])
    print(_markdown(["examples", *(f"privacy_level {k}" for k, _ in LEVEL_BINS)], rows) + "\n")
    rows = [[g, f"{d['undecided']} / {d['with_interval']}", f"{100 * d['undecided'] / max(1, d['with_interval']):.1f}%"]
            for g, d in doubt.items()]  # fmt: skip
    print(_markdown(["examples", "lower < upper", "share undecided"], rows) + "\n")
    if sep is None:
        print(f"AUROC: fewer than {MIN_EXAMPLES} examples with an estimate in a group")
    else:
        lo, hi = sep["auroc_interval"]
        print(f"AUROC of privacy_level (higher = rare, +inf largest): {sep['auroc']:.3f} [{lo:.3f}, {hi:.3f}], "
              f"{sep['missing']} without an estimate")  # fmt: skip


def _plot_level_distribution(dist: dict, title: str, args) -> list[str]:
    plt = _plt()
    labels = [f"ε = {k}" if k not in ("inf", "nan") else {"inf": "+inf\n(no level)", "nan": "NaN\n(no estimate)"}[k]
              for k, _ in LEVEL_BINS]  # fmt: skip
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for i, ((g, d), color) in enumerate(zip(dist.items(), ("tab:red", "tab:blue"))):
        n = sum(d.values())
        share = np.array(list(d.values())) / n
        bars = ax.bar(x + (i - 0.5) * 0.38, share, 0.38, color=color, label=f"{g} ({n:,})")
        ax.bar_label(bars, [str(c) for c in d.values()], fontsize=6.5, padding=1)
    ax.set_xticks(x, labels, fontsize=7.5)
    ax.set_ylabel("share of the group", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_fig(fig, args, "privacy_level_longtail.png")


# -- command line ---------------------------------------------------------------------------------


def _key(spec: ScoringSpec) -> str:
    """The cache key of a job: the spec fields that change its scores."""
    m = "+".join(spec.metrics) or "none"
    return (
        f"{spec.dataset}-{spec.model}-k{spec.models}-e{spec.epochs}-s{spec.seed}-n{spec.label_noise:g}-{spec.plan}-{m}"
    )


def _config(args) -> dict:
    import platform

    import torch

    d = {k: v for k, v in vars(args).items() if k != "func"}
    d.update(torch_threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.processor())
    return d


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, models: int, epochs: int) -> None:
        p.add_argument("--model", default="mlp", help="the jobs' model (ScoringSpec.model)")
        p.add_argument("--models", type=int, default=models, help="K, subset models per job")
        p.add_argument("--epochs", type=int, default=epochs, help="passes over each model's subset")
        p.add_argument("--plan", default="balanced", help="subset plan: random or balanced (ratio 0.5)")
        p.add_argument("--metrics", default="", help="extra opt-in metric groups, comma-separated (e.g. dp)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 = torch's default")
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", default="out/validate_metrics")
        p.add_argument("--img-dir", default=None, help="also write the PNGs here (docs/img)")
        p.add_argument("--no-cache", action="store_true", help="retrain even if --out holds this job's scores")

    p = sub.add_parser("metrics", help="every per-example metric on planted label noise and on a long tail")
    common(p, models=32, epochs=20)
    p.add_argument("--noise-dataset", default="mnist1d", help="the label-noise job's dataset (mnist1d or digits)")
    p.add_argument("--label-noise", type=float, default=0.1, help="fraction of its training labels flipped")
    p.set_defaults(func=metrics)

    p = sub.add_parser("lira-vs-k", help="LiRA's AUC and TPR at low FPR on the first K models of one bank")
    common(p, models=64, epochs=20)
    p.add_argument("--dataset", default="mnist1d")
    p.add_argument("--ks", type=lambda s: sorted(int(v) for v in s.split(",")), default=[8, 16, 32, 64],
                   help="bank sizes (first K models), comma-separated, each at most --models")  # fmt: skip
    p.set_defaults(func=lira_vs_k)

    p = sub.add_parser("privacy-level", help="privacy_level (--metrics dp) on longtail: rare vs common examples")
    common(p, models=16, epochs=20)
    p.set_defaults(func=privacy_level)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    args.func(args)
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
