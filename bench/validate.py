"""Validation experiments for memscore's scores (issue 5), small enough for a 2-core CPU.

Each subcommand trains what it needs with the engine (`train_ensemble`, `run_scoring`,
`run_exposure_job`), prints a table, and writes `<name>.json` and `<name>*.png` under `--out`
(PNGs also under `--img-dir` when given). Measured numbers and the exact commands are in
docs/validation.md.

    .venv/bin/python bench/validate.py label-noise      --out out/validate --img-dir docs/img
    .venv/bin/python bench/validate.py convergence      --out out/validate --img-dir docs/img
    .venv/bin/python bench/validate.py marginal-utility --out out/validate --img-dir docs/img
    .venv/bin/python bench/validate.py influence        --out out/validate --img-dir docs/img
    .venv/bin/python bench/validate.py exposure         --out out/validate --img-dir docs/img

- label-noise: flip 5/10/20% of mnist1d's training labels; how well do memorization (0/1 and
  soft) and 1 - held-out accuracy find the flipped examples (AUROC, precision@k with k = number
  flipped)? Against cleanlab's `get_label_quality_scores` on out-of-sample class probabilities
  from the *same* K models (the ensemble's held-out predictions), and on a standard 5-fold
  cross-validation (5 models).
- convergence: split-half Spearman correlation of memorization between two disjoint halves of
  the first K models, as K grows (one run of the largest K; smaller K are its prefixes).
- marginal-utility: retrain without the top-x% most memorized vs x% random training examples.
- influence: plant near-copies of rare longtail test examples in the training set; is the copy
  the test example's most influential training example?
- exposure: Secret Sharer exposure vs insertion count for a tiny LSTM and Transformer.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from memscore.engine.datasets import Dataset, flip_labels, load_longtail, load_mnist1d
from memscore.engine.ensemble import make_recipe, train_ensemble
from memscore.engine.estimators import ScoreAccumulator
from memscore.engine.traces import Trace

# -- shared helpers -------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, args, name: str) -> list[str]:
    paths = []
    for d in filter(None, (args.out, args.img_dir)):
        Path(d).mkdir(parents=True, exist_ok=True)
        p = Path(d) / name
        fig.savefig(p, dpi=110, bbox_inches="tight")
        paths.append(str(p))
    _plt().close(fig)
    return paths


def _save_json(args, name: str, payload: dict) -> None:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    print(f"wrote {path}")


def _table(header: list[str], rows: list[list]) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _train(
    ds: Dataset, args, models: int, ratio: float = 0.7, seed: int | None = None, ids=None
) -> tuple[Trace, float]:
    """Train `models` subset models (ids 0..models-1 unless `ids`); (trace, wall seconds)."""
    t0 = time.perf_counter()
    out = train_ensemble(
        ds,
        args.arch,
        list(ids if ids is not None else range(models)),
        ratio,
        args.seed if seed is None else seed,
        make_recipe(args.arch, epochs=args.epochs),
        device=args.device,
    )
    return out.trace, time.perf_counter() - t0


def _scores(trace: Trace, model_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """FZ scores from the models in `model_rows` of `trace` (all if None)."""
    if model_rows is not None:
        trace = trace.select(model_rows)
    acc = ScoreAccumulator(trace.masks.shape[1], trace.test_correct.shape[1])
    acc.add(trace)
    return acc.scores()


def _cached_trace(args, key: str, make) -> tuple[Trace, float]:
    """A trace saved under --out by an earlier subcommand with the same configuration, or a new one."""
    path = Path(args.out) / f"trace-{key}.npz"
    if path.exists() and not args.no_cache:
        meta = json.loads(path.with_suffix(".json").read_text())
        print(f"reusing {path} (trained in {meta['seconds']:.0f} s)")
        return Trace.from_bytes(path.read_bytes()), meta["seconds"]
    trace, seconds = make()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path.write_bytes(trace.to_bytes())
    path.with_suffix(".json").write_text(json.dumps({"seconds": seconds}))
    return trace, seconds


def _with_probe(ds: Dataset, x_probe: np.ndarray, keep_test: bool = True) -> tuple[Dataset, int]:
    """`ds` whose test set is followed by every probe example once per class (label c in block
    c): the trace's test_prob then holds each model's full class distribution on the probes
    (the trace itself stores only the true-class probability). Returns (dataset, offset of the
    probe block)."""
    C = ds.num_classes
    head_x = ds.x_test if keep_test else ds.x_test[:0]
    head_y = ds.y_test if keep_test else ds.y_test[:0]
    x = np.concatenate([head_x, np.tile(x_probe, (C,) + (1,) * (x_probe.ndim - 1))])
    y = np.concatenate([head_y, np.repeat(np.arange(C, dtype=np.int64), len(x_probe))])
    return replace(ds, x_test=x, y_test=y), len(head_x)


def _probe_probs(trace: Trace, offset: int, n_probe: int, C: int) -> np.ndarray:
    """(G, n_probe, C) class probabilities on the probe block written by `_with_probe`."""
    p = trace.test_prob[:, offset : offset + C * n_probe].reshape(len(trace.model_ids), C, n_probe)
    return p.transpose(0, 2, 1).astype(np.float64)


def _precision_at_k(score: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Fraction of positives among the k highest scores (NaN ranks last; ties by index)."""
    s = np.where(np.isfinite(score), score, -np.inf)
    top = np.argsort(-s, kind="stable")[:k]
    return float(positive[top].mean())


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    s = np.where(np.isfinite(score), score, np.nanmin(score) - 1.0)
    return float(roc_auc_score(positive, s))


def _mnist1d(args) -> Dataset:
    if getattr(args, "dataset", "mnist1d") == "digits":
        from memscore.engine.datasets import load_digits_dataset

        return load_digits_dataset(seed=args.seed)
    return load_mnist1d(seed=42, num_samples=args.num_samples)


# -- label noise ------------------------------------------------------------------------------------


def label_noise(args) -> dict:
    from cleanlab.rank import get_label_quality_scores

    base = _mnist1d(args)
    n, C = base.n_train, base.num_classes
    rows, results = [], []
    fig_data = {}
    for frac in args.noise:
        ds, flipped_idx = flip_labels(base, frac, args.seed)
        flipped = np.zeros(n, bool)
        flipped[flipped_idx] = True
        k = int(flipped.sum())

        # FZ: K subset models; their held-out class probabilities also feed cleanlab.
        probe, offset = _with_probe(ds, ds.x_train)
        trace, fz_seconds = _train(probe, args, args.models)
        s = _scores(trace)
        P = _probe_probs(trace, offset, n, C)  # (K, n, C)
        out = ~trace.masks
        with np.errstate(invalid="ignore"):
            heldout_probs = (out[:, :, None] * P).sum(0) / out.sum(0)[:, None]
        heldout_probs = np.nan_to_num(heldout_probs, nan=1.0 / C)
        heldout_probs /= heldout_probs.sum(1, keepdims=True)
        t0 = time.perf_counter()
        cl_ens = 1.0 - get_label_quality_scores(ds.y_train, heldout_probs)  # self_confidence
        cl_ens_margin = 1.0 - get_label_quality_scores(ds.y_train, heldout_probs, method="normalized_margin")
        cl_ens_seconds = time.perf_counter() - t0

        # cleanlab's usual recipe: out-of-fold probabilities from a 5-fold cross-validation.
        rng = np.random.default_rng([args.seed, 5])
        fold_of = rng.permutation(n) % args.folds
        oof = np.zeros((n, C))
        t0 = time.perf_counter()
        for f in range(args.folds):
            tr, te = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
            fold_ds, _ = _with_probe(
                replace(ds, x_train=ds.x_train[tr], y_train=ds.y_train[tr], extras={}), ds.x_train[te], keep_test=False
            )
            # ratio (n-1)/n: the engine's subsets are strict, so each fold model sees all but one example.
            ft, _ = _train(fold_ds, args, 1, ratio=(len(tr) - 1) / len(tr), ids=[f])
            oof[te] = _probe_probs(ft, 0, len(te), C)[0]
        oof /= oof.sum(1, keepdims=True)
        cv_train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        cl_cv = 1.0 - get_label_quality_scores(ds.y_train, oof)
        cl_cv_seconds = time.perf_counter() - t0 + cv_train_seconds

        methods = {
            "memorization (0/1)": (s["memorization"], args.models, fz_seconds),
            "memorization_soft": (s["memorization_soft"], args.models, fz_seconds),
            "1 - heldout_accuracy": (1.0 - s["heldout_accuracy"], args.models, fz_seconds),
            "cleanlab self_confidence, ensemble held-out probs": (cl_ens, args.models, fz_seconds + cl_ens_seconds),
            "cleanlab normalized_margin, ensemble held-out probs": (
                cl_ens_margin,
                args.models,
                fz_seconds + cl_ens_seconds,
            ),
            f"cleanlab self_confidence, {args.folds}-fold CV": (cl_cv, args.folds, cl_cv_seconds),
        }
        mem = s["memorization"]
        level = {
            "noise": frac,
            "flipped": k,
            "n_train": n,
            "mean_test_accuracy": float(trace.test_correct[:, :offset].mean()),
            "mean_in_sample_accuracy": float(np.nanmean(s["in_sample_accuracy"])),
            "flipped_mem_ge_0.25": float((mem[flipped] >= 0.25).mean()),
            "clean_mem_ge_0.25": float((mem[~flipped] >= 0.25).mean()),
            "methods": {},
        }
        for name, (score, models, seconds) in methods.items():
            auroc, pk = _auroc(score, flipped), _precision_at_k(score, flipped, k)
            level["methods"][name] = {"auroc": auroc, "precision_at_k": pk, "models": models, "seconds": seconds}
            rows.append([f"{frac:.0%}", k, name, models, auroc, pk, round(seconds, 1)])
        results.append(level)
        fig_data[frac] = (s["memorization_soft"], flipped)
        print(
            f"noise {frac:.0%}: test acc {level['mean_test_accuracy']:.3f}, in-sample "
            f"{level['mean_in_sample_accuracy']:.3f}, "
            f"mem>=0.25: {level['flipped_mem_ge_0.25']:.0%} of flipped vs {level['clean_mem_ge_0.25']:.1%} of clean"
        )

    print(_table(["noise", "k", "method", "models", "AUROC", "P@k", "seconds"], rows))
    plt = _plt()
    fig, axes = plt.subplots(1, len(fig_data), figsize=(4.2 * len(fig_data), 3.2), squeeze=False)
    bins = np.linspace(-0.5, 1.0, 31)
    for ax, (frac, (soft, flipped)) in zip(axes[0], fig_data.items()):
        ax.hist(soft[~flipped & np.isfinite(soft)], bins=bins, alpha=0.6, label="clean", density=True)
        ax.hist(soft[flipped & np.isfinite(soft)], bins=bins, alpha=0.6, label="flipped", density=True)
        ax.set_title(f"{frac:.0%} labels flipped")
        ax.set_xlabel("soft memorization")
    axes[0][0].legend()
    fig.suptitle(f"{base.name} ({n} train), {args.arch}, K={args.models}", y=1.04)
    _save_fig(fig, args, f"{args.name}.png")
    payload = {"config": _config(args), "levels": results}
    _save_json(args, args.name, payload)
    return payload


# -- convergence ------------------------------------------------------------------------------------


def _clean_trace(args) -> tuple[Dataset, Trace, float]:
    """mnist1d (clean labels), the largest K of --ks models; cached for marginal-utility."""
    ds = _mnist1d(args)
    K = max(args.ks)
    key = f"mnist1d-{args.num_samples}-{args.arch}-e{args.epochs}-K{K}-s{args.seed}"
    trace, seconds = _cached_trace(args, key, lambda: _train(ds, args, K))
    return ds, trace, seconds


def convergence(args) -> dict:
    from scipy.stats import spearmanr

    ds, trace, seconds = _clean_trace(args)
    rows, points = [], []
    for K in sorted(args.ks):
        a, b = np.arange(0, K, 2), np.arange(1, K, 2)  # two disjoint halves of the first K models
        sa, sb = _scores(trace, a), _scores(trace, b)
        point = {"K": K, "models_per_half": len(a)}
        for col in ("memorization", "memorization_soft"):
            ok = np.isfinite(sa[col]) & np.isfinite(sb[col])
            rho = float(spearmanr(sa[col][ok], sb[col][ok]).statistic)
            point[col] = {"spearman": rho, "examples": int(ok.sum()), "spearman_brown": 2 * rho / (1 + rho)}
        points.append(point)
        m, ms = point["memorization"], point["memorization_soft"]
        rows.append(
            [K, len(a), m["examples"], m["spearman"], m["spearman_brown"], ms["spearman"], ms["spearman_brown"]]
        )
    print(f"mnist1d ({ds.n_train} train), {args.arch}, {max(args.ks)} models trained in {seconds:.0f} s")
    print(_table(["K", "per half", "examples", "rho mem", "SB(K) mem", "rho soft", "SB(K) soft"], rows))

    reached = {}
    for col in ("memorization", "memorization_soft"):
        for target in (0.9, 0.95):
            hit = [p["K"] for p in points if p[col]["spearman"] >= target]
            reached[f"{col}>={target}"] = hit[0] if hit else f"not reached at K<={max(args.ks)}"
    for key, v in reached.items():
        print(f"split-half {key}: {v if isinstance(v, str) else f'K={v}'}")

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    Ks = [p["K"] for p in points]
    for col, style in (("memorization", "o-"), ("memorization_soft", "s-")):
        ax.plot(Ks, [p[col]["spearman"] for p in points], style, label=f"{col} (split-half)")
        ax.plot(
            Ks,
            [p[col]["spearman_brown"] for p in points],
            style.replace("-", ":"),
            alpha=0.6,
            label=f"{col} (Spearman-Brown, all K)",
        )
    for t in (0.9, 0.95):
        ax.axhline(t, color="grey", lw=0.7, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(Ks, [str(k) for k in Ks])
    ax.set_xlabel("K (models; each half has K/2)")
    ax.set_ylabel("Spearman correlation")
    ax.set_title(f"mnist1d ({ds.n_train} train), {args.arch}")
    ax.legend(fontsize=7)
    _save_fig(fig, args, "convergence.png")
    payload = {"config": _config(args), "train_seconds": seconds, "points": points, "reached": reached}
    _save_json(args, "convergence", payload)
    return payload


# -- marginal utility -------------------------------------------------------------------------------


def marginal_utility(args) -> dict:
    ds, trace, seconds = _clean_trace(args)
    s = _scores(trace)
    n = ds.n_train
    # A larger, independent evaluation set than mnist1d's 20% split: another draw of the generator.
    extra = load_mnist1d(seed=args.seed + 1000, num_samples=args.eval_samples)
    x_eval = np.concatenate([extra.x_train, extra.x_test])
    y_eval = np.concatenate([extra.y_train, extra.y_test])
    # Most memorized first; soft memorization breaks the many ties of the 0/1 score.
    mem = np.nan_to_num(s["memorization"], nan=-np.inf)
    soft = np.nan_to_num(s["memorization_soft"], nan=-np.inf)
    by_mem = np.lexsort((-soft, -mem))
    rng = np.random.default_rng([args.seed, 7])

    def retrain(keep: np.ndarray, tag: str) -> dict:
        sub = replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep], x_test=x_eval, y_test=y_eval, extras={})
        t, secs = _train(sub, args, args.retrain, ratio=(len(keep) - 1) / len(keep), seed=args.seed + 1)
        acc = t.test_accuracy
        print(
            f"  {tag:<28} {len(keep):>5} examples: test accuracy {acc.mean():.4f} ± "
            f"{acc.std(ddof=1) / np.sqrt(len(acc)):.4f} ({secs:.0f} s)"
        )
        return {
            "kept": int(len(keep)),
            "test_accuracy": acc.tolist(),
            "mean": float(acc.mean()),
            "stderr": float(acc.std(ddof=1) / np.sqrt(len(acc))),
            "seconds": secs,
        }

    print(
        f"retraining {args.retrain} models per condition on mnist1d ({n} train), evaluated on {len(y_eval)} "
        "fresh examples"
    )
    results = {"full": retrain(np.arange(n), "full training set")}
    removed_stats = {}
    for x in args.fractions:
        r = round(x * n)
        top = by_mem[:r]
        removed_stats[str(x)] = {"mean_memorization_removed": float(np.nanmean(s["memorization"][top]))}
        results[f"top{x:g}"] = retrain(np.sort(by_mem[r:]), f"without top {x:.0%} memorized")
        results[f"random{x:g}"] = retrain(np.sort(rng.permutation(n)[r:]), f"without random {x:.0%}")
    rows = [
        [name, v["kept"], v["mean"], v["stderr"], v["mean"] - results["full"]["mean"]] for name, v in results.items()
    ]
    print(_table(["condition", "kept", "test acc", "stderr", "vs full"], rows))

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [0.0] + list(args.fractions)
    for kind, label in (("top", "remove most memorized"), ("random", "remove random")):
        ys = [results["full"]["mean"]] + [results[f"{kind}{x:g}"]["mean"] for x in args.fractions]
        es = [results["full"]["stderr"]] + [results[f"{kind}{x:g}"]["stderr"] for x in args.fractions]
        ax.errorbar([100 * x for x in xs], ys, yerr=es, marker="o", capsize=3, label=label)
    ax.set_xlabel("% of training set removed")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"mnist1d ({n} train), {args.arch}, {args.retrain} models each")
    ax.legend()
    _save_fig(fig, args, "marginal_utility.png")
    payload = {
        "config": _config(args),
        "score_models": int(len(trace.model_ids)),
        "results": results,
        "removed": removed_stats,
    }
    _save_json(args, "marginal_utility", payload)
    return payload


# -- influence --------------------------------------------------------------------------------------


def plant_near_copies(ds: Dataset, count: int, seed: int, noise: float) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Copy `count` rare test examples (distinct subgroups) into the training set with a little
    pixel noise, and drop their subgroups' own training examples: each copy is then the one
    training example like its test example (a unique near-duplicate, the case FZ's influence
    is for; with the subgroup's originals still there, any one of them covers the test example
    and no single one is influential). Returns (dataset, test indices, copies' training indices)."""
    rng = np.random.default_rng([seed, 11])
    sub_test, sub_train = ds.extras["test_subgroup"], ds.extras["train_subgroup"]
    rare = np.flatnonzero(sub_test >= 0)
    _, first = np.unique(sub_test[rare], return_index=True)  # one test example per subgroup
    chosen = np.sort(rng.choice(rare[first], size=count, replace=False))
    copies = np.clip(ds.x_test[chosen] + noise * rng.standard_normal(ds.x_test[chosen].shape), 0, 1).astype(np.float32)
    keep = ~np.isin(sub_train, sub_test[chosen])
    n = int(keep.sum())
    planted = replace(
        ds,
        name=ds.name + "+planted",
        x_train=np.concatenate([ds.x_train[keep], copies]),
        y_train=np.concatenate([ds.y_train[keep], ds.y_test[chosen]]),
        extras={"train_subgroup": np.concatenate([sub_train[keep], sub_test[chosen]]), "test_subgroup": sub_test},
    )
    return planted, chosen, np.arange(n, n + count)


def influence(args) -> dict:
    from memscore.engine.scoring import run_scoring
    from memscore.engine.spec import ScoringSpec

    base = load_longtail(seed=args.seed, n_train=args.n_train, n_test=args.n_test, rare_train=(1, 2))
    ds, test_idx, copy_idx = plant_near_copies(base, args.plant, args.seed, args.copy_noise)
    spec = ScoringSpec(
        dataset="longtail",
        model=args.arch,
        models=args.models,
        epochs=args.epochs,
        seed=args.seed,
        influence_top_k=args.top_k,
    )
    t0 = time.perf_counter()
    res = run_scoring(ds, spec, device=args.device)
    seconds = time.perf_counter() - t0
    inf = res.influence
    top = inf.topk_train[test_idx]
    sub_tr, sub_te = ds.extras["train_subgroup"], ds.extras["test_subgroup"]
    hit1 = top[:, 0] == copy_idx
    hitk = (top == copy_idx[:, None]).any(1)
    same1 = sub_tr[top[:, 0]] == sub_te[test_idx]
    # The generator's own unique twins: rare test examples (not planted) whose subgroup has exactly
    # one training example. Is that example their top-1?
    others = np.setdiff1d(np.flatnonzero(sub_te >= 0), test_idx)
    groups, counts = np.unique(sub_tr[sub_tr >= 0], return_counts=True)
    single = {int(g): int(np.flatnonzero(sub_tr == g)[0]) for g in groups[counts == 1]}
    twins = np.array([j for j in others if int(sub_te[j]) in single and j not in set(test_idx.tolist())], np.int64)
    twin_hit1 = np.array([inf.topk_train[j, 0] == single[int(sub_te[j])] for j in twins], bool)
    ctrl_same1 = sub_tr[inf.topk_train[others, 0]] == sub_te[others]
    common = np.flatnonzero(sub_te < 0)
    pairs = []
    for j, c, row, vals in zip(test_idx, copy_idx, top, inf.topk_value[test_idx]):
        pairs.append(
            {
                "test_index": int(j),
                "copy_train_index": int(c),
                "top_train": row.tolist(),
                "top_influence": [float(v) for v in vals],
                "copy_rank": int(np.flatnonzero(row == c)[0]) + 1 if (row == c).any() else None,
            }
        )
    summary = {
        "planted": int(args.plant),
        "recall_at_1": float(hit1.mean()),
        f"recall_at_{args.top_k}": float(hitk.mean()),
        "top1_same_subgroup": float(same1.mean()),
        "natural_unique_twins": int(len(twins)),
        "natural_unique_twins_recall_at_1": float(twin_hit1.mean()) if len(twins) else None,
        "other_rare_top1_same_subgroup": float(ctrl_same1.mean()),
        "other_rare_examples": int(len(others)),
        "mean_top1_influence_planted": float(np.nanmean(inf.topk_value[test_idx, 0])),
        "mean_top1_influence_common": float(np.nanmean(inf.topk_value[common, 0])),
        "mean_test_accuracy": res.summary["mean_test_accuracy"],
        "seconds": seconds,
    }
    print(
        f"longtail ({ds.n_train} train incl. {args.plant} planted copies, their subgroups' originals "
        f"dropped, {ds.n_test} test), {args.arch}, K={args.models}: "
        f"{seconds:.0f} s, test accuracy {summary['mean_test_accuracy']:.3f}"
    )
    print(_table(["measure", "value"], [[k, v] for k, v in summary.items() if k != "seconds"]))
    print(
        _table(
            ["test", "copy", "copy rank", "top-1 train", "top-1 infl"],
            [
                [
                    p["test_index"],
                    p["copy_train_index"],
                    p["copy_rank"] or "-",
                    p["top_train"][0],
                    p["top_influence"][0],
                ]
                for p in pairs
            ],
        )
    )

    plt = _plt()
    show = min(len(test_idx), 8)
    cols = 1 + min(args.top_k, 5)
    fig, axes = plt.subplots(show, cols, figsize=(1.5 * cols, 1.6 * show), squeeze=False)
    for r in range(show):
        j = test_idx[r]
        axes[r][0].imshow(ds.x_test[j, 0], cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(f"test {j} (y={ds.y_test[j]})", fontsize=7)
        for c in range(1, cols):
            i = inf.topk_train[j, c - 1]
            ax = axes[r][c]
            if i >= 0:
                ax.imshow(ds.x_train[i, 0], cmap="gray", vmin=0, vmax=1)
                tag = " copy" if i == copy_idx[r] else (" same sg" if sub_tr[i] == sub_te[j] else "")
                ax.set_title(
                    f"#{i} y={ds.y_train[i]}\ninfl {inf.topk_value[j, c - 1]:.2f}{tag}",
                    fontsize=6,
                    color="tab:red" if i == copy_idx[r] else "black",
                )
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("planted test examples (left) and their most influential training examples", fontsize=8)
    _save_fig(fig, args, "influence_pairs.png")
    payload = {"config": _config(args), "summary": summary, "pairs": pairs}
    _save_json(args, "influence", payload)
    return payload


# -- exposure ---------------------------------------------------------------------------------------


def exposure(args) -> dict:
    from memscore.engine.corpus import load_corpus
    from memscore.engine.exposure_job import run_exposure_job
    from memscore.engine.spec import ExposureSpec

    text = load_corpus("builtin")
    results, rows = {}, []
    for arch in args.archs:
        spec = ExposureSpec(canaries=[args.canary], insertions=args.insertions, model=arch, seed=args.seed)
        t0 = time.perf_counter()
        r = run_exposure_job(spec, text, device=args.device, steps=args.steps, hidden=args.hidden, layers=args.layers)
        seconds = time.perf_counter() - t0
        m = r.summary["model"]
        results[arch] = {"rows": r.rows, "model": m, "seconds": seconds}
        for row in r.rows:
            rows.append(
                [
                    arch,
                    row["insertions"],
                    row["exposure"],
                    row["rank"],
                    row["method"],
                    "yes" if row["extracted_greedy"] or row["extracted_beam"] else "no",
                ]
            )
        print(
            f"{arch}: {m.get('parameters', 0):,} parameters, {m.get('steps')} steps, "
            f"{m.get('final_loss_bits_per_char', float('nan')):.2f} bits/char, {seconds:.0f} s"
        )
    print(_table(["arch", "t", "exposure", "rank", "method", "extracted"], rows))
    space = results[args.archs[0]]["rows"][0]["space_size"]

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for arch in args.archs:
        rr = results[arch]["rows"]
        ax.plot([max(x["insertions"], 0.5) for x in rr], [x["exposure"] for x in rr], "o-", label=arch)
    ax.axhline(np.log2(space), color="grey", ls="--", lw=0.7, label="log2|R| (rank 1)")
    ax.axhline(np.log2(np.e), color="grey", ls=":", lw=0.7, label="never inserted (≈1.44)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("insertions t (t=0 drawn at 0.5)")
    ax.set_ylabel("exposure (bits)")
    ax.set_title(f"{args.canary!r}, {args.steps} steps")
    ax.legend(fontsize=7)
    _save_fig(fig, args, "exposure.png")
    payload = {"config": _config(args), "space_size": space, "results": results}
    _save_json(args, "exposure", payload)
    return payload


# -- command line -----------------------------------------------------------------------------------


def _config(args) -> dict:
    import torch

    d = {k: v for k, v in vars(args).items() if k != "func"}
    d["torch_threads"] = torch.get_num_threads()
    return d


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",")]


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, arch: str = "mlp", epochs: int = 40) -> None:
        p.add_argument("--out", default="out/validate", help="directory for JSON and PNG results")
        p.add_argument("--img-dir", default="", help="also write the PNGs here (e.g. docs/img)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
        p.add_argument("--arch", default=arch)
        p.add_argument("--epochs", type=int, default=epochs, help="epochs per model (no min-steps floor)")
        p.add_argument("--no-cache", action="store_true", help="retrain even if a cached trace exists")

    p = sub.add_parser("label-noise", help="find flipped labels: memorization vs cleanlab")
    common(p)
    p.add_argument(
        "--dataset",
        default="mnist1d",
        choices=["mnist1d", "digits"],
        help="digits: scikit-learn's 8x8 digits (1347 train), where an MLP generalises well",
    )
    p.add_argument("--name", default="label_noise", help="basename of the JSON and PNG written")
    p.add_argument("--num-samples", type=int, default=1250, help="mnist1d examples (80%% train)")
    p.add_argument("--models", type=int, default=32)
    p.add_argument("--noise", type=_floats, default=[0.05, 0.1, 0.2])
    p.add_argument("--folds", type=int, default=5)
    p.set_defaults(func=label_noise)

    p = sub.add_parser("convergence", help="split-half Spearman of memorization vs K")
    common(p)
    p.add_argument("--num-samples", type=int, default=1250)
    p.add_argument("--ks", type=_ints, default=[8, 16, 32, 64])
    p.set_defaults(func=convergence)

    p = sub.add_parser("marginal-utility", help="retrain without the most memorized vs random examples")
    common(p)
    p.add_argument("--num-samples", type=int, default=1250)
    p.add_argument("--ks", type=_ints, default=[8, 16, 32, 64], help="as for convergence (its largest K scores)")
    p.add_argument("--fractions", type=_floats, default=[0.05, 0.1])
    p.add_argument("--retrain", type=int, default=4, help="models per condition")
    p.add_argument("--eval-samples", type=int, default=3000, help="fresh mnist1d examples to evaluate on")
    p.set_defaults(func=marginal_utility)

    p = sub.add_parser("influence", help="recall of planted near-duplicate train/test pairs")
    common(p)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--plant", type=int, default=10, help="rare test examples copied into train")
    p.add_argument("--copy-noise", type=float, default=0.03, help="pixel noise on each planted copy")
    p.add_argument("--models", type=int, default=32)
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=influence)

    p = sub.add_parser("exposure", help="exposure vs insertions for a tiny LSTM and Transformer")
    common(p)
    p.add_argument("--archs", type=lambda s: s.split(","), default=["lstm", "transformer"])
    p.add_argument("--canary", default="the pin is {dddd}")
    p.add_argument("--insertions", type=_ints, default=[0, 1, 2, 4, 8, 16])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.set_defaults(func=exposure)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    args.func(args)
    print(f"{args.command}: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
