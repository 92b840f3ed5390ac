"""Validation experiments for memscore's scores (issues 5 and 10), small enough for a 2-core CPU.

Each subcommand trains what it needs with the engine (`train_ensemble`, `run_scoring`,
`run_exposure_job`), prints a table, and writes `<name>.json` and `<name>*.png` under `--out`
(PNGs also under `--img-dir` when given). Measured numbers and the exact commands are in
docs/validation.md.

    B="nice -n 10 .venv/bin/python bench/validate.py"; O="--out out/validate --img-dir docs/img"
    $B label-noise --arch cnn1d --epochs 0 --num-samples 2000 --threads 1 $O
    $B label-noise --dataset digits --epochs 0 --threads 1 --name label_noise_digits $O
    $B statistics --threads 1 $O
    $B convergence $O
    $B marginal-utility $O
    $B influence $O
    $B exposure $O

- label-noise: flip 10% of the training labels; cleanlab on a 5-fold cross-validation against
  memscore's subset models at equal training time (CV folds and memscore's groups trained
  alternately, CPU seconds), and the reliability and detection (AUROC, precision@k) of every
  candidate statistic (`score_statistics`) for K = 8 ... 64 models of the same run.
- statistics: the same per-K table on a long tail (rare subgroups vs common examples), and for
  influence from the test example's 0/1 correctness, true-class probability or margin
  (`influence_statistics`) against planted near-copies and same-subgroup pairs.
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
from memscore.engine.moments import mean as _mean
from memscore.engine.moments import var_of_mean as _var_of_mean
from memscore.engine.reliability import SplitHalf, models_for, pearson, spearman, spearman_brown
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
    (a trace keeps full distributions only as held-out sums over *training* examples; the CV's
    fold models need theirs on examples outside their training set). Returns (dataset, offset
    of the probe block)."""
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
    """AUROC; an example without an estimate (NaN) gets the median score: no evidence either way."""
    from sklearn.metrics import roc_auc_score

    s = np.where(np.isfinite(score), score, np.nanmedian(score))
    return float(roc_auc_score(positive, s))


def _mnist1d(args) -> Dataset:
    if getattr(args, "dataset", "mnist1d") == "digits":
        from memscore.engine.datasets import load_digits_dataset

        return load_digits_dataset(seed=args.seed)
    return load_mnist1d(seed=42, num_samples=args.num_samples)


# -- which statistic: reliability and detection per model trained ----------------------------------


# Per training example, higher = more memorized (or, for label_quality, more likely mislabeled).
def score_statistics(acc: ScoreAccumulator) -> dict[str, np.ndarray]:
    """The candidate per-example statistics from one accumulator (NaN where not estimable):
    the engine's three memorization columns; with φ = log p_y − log(1 − p_y), the raw margin
    difference Δφ = mean_in φ − mean_out φ (logit units; the engine's
    memorization_log_odds), its σ-rescaled version sigmoid(mean_in φ) − sigmoid(mean_out φ)
    (not a monotone function of it) and its
    standardized version (Welch's t, NaN below 2 models on a side)

        t = Δφ / sqrt(v_in/n_in + v_out/n_out);

    1 − label_quality, where label_quality, the held-out mean probability of the given label,
    is mean_out p_y (the number the engine derives from the held-out distributions, available
    here for any subset of models); and −mean_out φ, the same on the logit scale."""
    s = acc.scores()
    phi_out = _mean(acc.margin_out, acc.n_out)
    with np.errstate(invalid="ignore", divide="ignore"):
        d_phi = _mean(acc.margin_in, acc.n_in) - phi_out
        se = np.sqrt(
            _var_of_mean(acc.margin_in, acc.margin2_in, acc.n_in)
            + _var_of_mean(acc.margin_out, acc.margin2_out, acc.n_out)
        )
    return {
        "memorization": s["memorization"],
        "memorization_soft": s["memorization_soft"],
        "σ-rescaled Δφ": _sigmoid(_mean(acc.margin_in, acc.n_in)) - _sigmoid(phi_out),
        "memorization_log_odds (Δφ)": s["memorization_log_odds"],
        "Δφ / se (Welch t)": d_phi / se,
        "1 - label_quality": 1.0 - _mean(acc.prob_out, acc.n_out),
        "-mean_out φ": -phi_out,
    }


def _split_half(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None, int]:
    """Spearman (the engine's reliability) and Pearson correlation of two halves' estimates
    over the examples both estimate; (spearman, pearson, examples). Pearson is classical test
    theory's reliability of the values: where most examples' true score is about 0 (a long
    tail), Spearman mostly measures how consistently the noise around 0 is ranked."""
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 3:
        return None, None, int(both.sum())
    return spearman(a[both], b[both]), pearson(a[both], b[both]), int(both.sum())


def statistics_by_k(traces: list[Trace], ks: list[int], truth: np.ndarray, stats=score_statistics) -> list[dict]:
    """For each K in `ks` (the traces, in model-id order, must end exactly at each K): per
    statistic, split-half reliability (even vs odd ids of the first K models, K/2 each) with
    its Spearman–Brown projection to K and the models projected for 0.95, coverage (fraction
    of examples with an estimate from all K), and detection of `truth` (AUROC, precision@k with
    k = truth.sum()) from all K models."""
    n, m = traces[0].masks.shape[1], traces[0].test_correct.shape[1]
    full, halves = ScoreAccumulator(n, m), SplitHalf(n, m)
    points, k = [], int(truth.sum())
    for tr in traces:
        full.add(tr)
        halves.add(tr)
        K = full.num_models
        if K not in ks:
            continue
        s_all, (s_even, s_odd) = stats(full), (stats(h) for h in halves.halves)
        point = {"K": K, "statistics": {}}
        for name, score in s_all.items():
            r, pearson, examples = _split_half(s_even[name], s_odd[name])
            rho = spearman_brown(r) if r is not None else None
            point["statistics"][name] = {
                "split_half_spearman": r,
                "spearman_brown": rho,
                "models_for_0_95": models_for(rho, K),
                "split_half_pearson": pearson,
                "examples_both_halves": examples,
                "coverage": float(np.isfinite(score).mean()),
                "auroc": _auroc(score, truth),
                "precision_at_k": _precision_at_k(score, truth, k),
            }
        points.append(point)
    return points


def _v(x):
    return "-" if x is None else x


def _print_by_k(points: list[dict]) -> None:
    rows = [
        [
            f"{p['K']}" + (f" ({p['seconds']['cpu']:.0f} s)" if "seconds" in p else ""),
            name,
            _v(v["split_half_spearman"]),
            _v(v["spearman_brown"]),
            v["models_for_0_95"] or "-",
            _v(v["split_half_pearson"]),
            v["coverage"],
            v["auroc"],
            v["precision_at_k"],
        ]
        for p in points
        for name, v in p["statistics"].items()
    ]
    header = ["K", "statistic", "Spearman r", "SB(K)", "K for 0.95", "Pearson r", "coverage", "AUROC", "P@k"]
    print(_table(header, rows))


def _plot_by_k(title: str, points: list[dict], panels: list[tuple[str, str]], args, name: str) -> None:
    """One panel per (key, label) of `panels`: that figure against K, one line per statistic."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    Ks = [p["K"] for p in points]
    for ax, (key, label) in zip(axes[0], panels):
        for stat in points[0]["statistics"]:
            ys = [p["statistics"][stat][key] for p in points]
            ax.plot(Ks, [np.nan if y is None else y for y in ys], "o-", label=stat)
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ks, [str(k) for k in Ks])
        ax.set_xlabel("K (models trained)")
        ax.set_ylabel(label)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_fig(fig, args, name)


MEMORIZATION_PANELS = [
    ("split_half_spearman", "split-half Spearman (K/2 vs K/2)"),
    ("split_half_pearson", "split-half Pearson (K/2 vs K/2)"),
    ("auroc", "AUROC"),
]


def _train_models(
    ds: Dataset, args, ids: list[int], ratio: float = 0.7, epochs: int | None = None
) -> tuple[Trace, dict]:
    """Models `ids` trained at once; (trace, seconds: optimisation steps, wall and process CPU
    time of the whole call incl. evaluation)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = train_ensemble(
        ds,
        args.arch,
        ids,
        ratio,
        args.seed,
        make_recipe(args.arch, epochs=args.epochs if epochs is None else epochs),
        device=args.device,
        group_size=len(ids),
    )
    seconds = {
        "train": out.trace.meta["train_seconds"],
        "wall": time.perf_counter() - w0,
        "cpu": time.process_time() - c0,
    }
    return out.trace, seconds


# -- label noise ------------------------------------------------------------------------------------


def _fold_probs(ds: Dataset, args, te: np.ndarray, fold: int) -> tuple[np.ndarray, dict]:
    """One cross-validation model trained on every training example but `te`, and its class
    distribution on `te` (the test set is `te` once per class, see `_with_probe`)."""
    tr = np.setdiff1d(np.arange(ds.n_train), te)
    fold_ds, _ = _with_probe(
        replace(ds, x_train=ds.x_train[tr], y_train=ds.y_train[tr], extras={}), ds.x_train[te], keep_test=False
    )
    # ratio (n-1)/n: the engine's subsets are strict, so the fold model sees all but one example.
    trace, seconds = _train_models(fold_ds, args, [fold], ratio=(len(tr) - 1) / len(tr))
    return _probe_probs(trace, 0, len(te), ds.num_classes)[0], seconds


def _issues(labels: np.ndarray, probs: np.ndarray, flipped: np.ndarray) -> dict:
    """cleanlab's `find_label_issues` on `probs` (rows without an estimate: uniform): the size,
    precision and recall of the set it flags."""
    from cleanlab.filter import find_label_issues

    flagged = find_label_issues(labels, _uniform_where_missing(probs))
    hits = int((flagged & flipped).sum())
    return {
        "flagged": int(flagged.sum()),
        "precision": hits / max(int(flagged.sum()), 1),
        "recall": hits / max(int(flipped.sum()), 1),
    }


def _label_noise_run(ds: Dataset, args, fold_of: np.ndarray):
    """The CV's out-of-fold distributions and memscore's traces, trained alternately (a CV
    fold, a group of memscore models, ...) so both see the same machine load. Returns
    (memscore traces per group, cumulative seconds after each group, out-of-fold probs, CV seconds)."""
    n, C = ds.n_train, ds.num_classes
    # Untimed warm-up of both shapes (G = 1 and G = --group): the first training in a process
    # pays one-off costs (oneDNN primitives, allocator growth; docs/performance.md).
    _train_models(ds, args, list(range(args.group)), epochs=1)
    _train_models(ds, args, [0], epochs=1)
    zero = {"train": 0.0, "wall": 0.0, "cpu": 0.0}
    oof, cv_sec = np.full((n, C), np.nan), dict(zero)
    traces, cum = [], []
    groups = [list(range(a, min(a + args.group, args.models))) for a in range(0, args.models, args.group)]
    for step in range(max(len(groups), args.folds)):
        if step < len(groups):
            tr, sec = _train_models(ds, args, groups[step])
            traces.append(tr)
            cum.append({key: (cum[-1] if cum else zero)[key] + sec[key] for key in sec})
            ids = f"{groups[step][0]}-{groups[step][-1]}"
            print(f"  memscore models {ids}: {sec['cpu']:.1f} s CPU, {sec['wall']:.1f} s wall")
        if step < args.folds:
            te = np.flatnonzero(fold_of == step)
            oof[te], sec = _fold_probs(ds, args, te, step)
            cv_sec = {key: cv_sec[key] + sec[key] for key in sec}
            print(f"  CV fold {step}: {sec['cpu']:.1f} s CPU, {sec['wall']:.1f} s wall")
    return traces, cum, oof / oof.sum(1, keepdims=True), cv_sec


def _cached_label_noise_run(ds: Dataset, args, frac: float):
    """`_label_noise_run`, saved under --out (traces, probabilities and the seconds measured
    when they were trained) and reused by a later run with the same configuration."""
    key = (
        f"labelnoise-{ds.name}-{ds.n_train}-{args.arch}-e{args.epochs}-K{args.models}-g{args.group}"
        f"-f{args.folds}-t{args.threads}-s{args.seed}-n{frac:g}"
    )
    base = Path(args.out) / f"run-{key}"
    meta_path = Path(f"{base}.json")  # not with_suffix: the key holds dots
    if meta_path.exists() and not args.no_cache:
        meta = json.loads(meta_path.read_text())
        print(f"reusing {base}* (trained in {meta['cum'][-1]['cpu'] + meta['cv']['cpu']:.0f} CPU s)")
        traces = [Trace.from_bytes(Path(f"{base}-g{i}.npz").read_bytes()) for i in range(len(meta["cum"]))]
        return traces, meta["cum"], np.load(f"{base}-oof.npy"), meta["cv"]
    fold_of = np.random.default_rng([args.seed, 5]).permutation(ds.n_train) % args.folds
    traces, cum, oof, cv_sec = _label_noise_run(ds, args, fold_of)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for i, tr in enumerate(traces):
        Path(f"{base}-g{i}.npz").write_bytes(tr.to_bytes())
    np.save(f"{base}-oof.npy", oof)
    meta_path.write_text(json.dumps({"cum": cum, "cv": cv_sec}))
    return traces, cum, oof, cv_sec


def label_noise(args) -> dict:
    """At equal training time: cleanlab on 5-fold cross-validation (one model per fold, trained
    alone, as `cross_val_predict` would) vs memscore's first K subset models (trained `--group`
    at a time), for the two K whose training time brackets the CV's. Training continues to
    `--models` for the reliability-vs-K table."""
    from cleanlab.rank import get_label_quality_scores

    base = _mnist1d(args)
    n = base.n_train
    ks = sorted(k for k in args.ks if k <= args.models)
    results, rows = [], []
    for frac in args.noise:
        ds, flipped_idx = flip_labels(base, frac, args.seed)
        flipped = np.zeros(n, bool)
        flipped[flipped_idx] = True
        k = int(flipped.sum())
        traces, cum, oof, cv_sec = _cached_label_noise_run(ds, args, frac)
        # Equal time: the two group boundaries whose CPU seconds bracket the CV's. CPU time, not
        # wall time: on a shared machine a call's wall time depends on what else runs then; with
        # one torch thread (--threads 1) CPU seconds are what an idle machine's wall clock shows.
        below = [i for i, c in enumerate(cum) if c["cpu"] <= cv_sec["cpu"]]
        above = [i for i, c in enumerate(cum) if c["cpu"] >= cv_sec["cpu"]]
        bracket = sorted({below[-1] if below else 0, above[0] if above else len(cum) - 1})
        methods = {
            f"cleanlab {args.folds}-fold CV: self_confidence": (
                1 - get_label_quality_scores(ds.y_train, oof),  # self_confidence
                args.folds,
                cv_sec,
                _issues(ds.y_train, oof, flipped),
            )
        }
        for g in bracket:
            acc = ScoreAccumulator(n, ds.n_test)
            for tr in traces[: g + 1]:
                acc.add(tr)
            K, stats, s = acc.num_models, score_statistics(acc), acc.scores(ds.y_train)
            assert np.allclose(1 - stats["1 - label_quality"], s["label_quality"], atol=1e-4, equal_nan=True)
            methods.update({f"memscore K={K}: {name}": (v, K, cum[g], None) for name, v in stats.items()})
            # Why the σ-rescaled Δφ misses flipped labels: the median in/out mean margins of the
            # flipped examples and of the clean ones among its k highest.
            with np.errstate(invalid="ignore", divide="ignore"):
                phi_in, phi_out = acc.margin_in / acc.n_in, acc.margin_out / acc.n_out
            top = np.argsort(-np.nan_to_num(stats["σ-rescaled Δφ"], nan=-np.inf), kind="stable")[:k]
            clean_top = top[~flipped[top]]
            margins = {
                "flipped": [float(np.nanmedian(phi_in[flipped])), float(np.nanmedian(phi_out[flipped]))],
                "clean_in_logit_top_k": [
                    float(np.nanmedian(phi_in[clean_top])),
                    float(np.nanmedian(phi_out[clean_top])),
                ],
                "clean_in_logit_top_k_count": int(len(clean_top)),
            }
            print(f"K={K}: median (mean_in φ, mean_out φ): {margins}")
            methods[f"memscore K={K}: cleanlab on heldout_probs"] = (
                1 - get_label_quality_scores(ds.y_train, _uniform_where_missing(acc.heldout_probs())),
                K,
                cum[g],
                _issues(ds.y_train, acc.heldout_probs(), flipped),
            )
        level = {
            "noise": frac,
            "flipped": k,
            "n_train": n,
            "cv_seconds": cv_sec,
            "memscore_seconds_by_models": {
                sum(len(t.model_ids) for t in traces[: i + 1]): c for i, c in enumerate(cum)
            },
            "K_bracketing_cv_time": [sum(len(t.model_ids) for t in traces[: g + 1]) for g in bracket],
            "median_margins_at_largest_bracket_K": margins,
            "mean_test_accuracy": float(np.mean([t.test_accuracy.mean() for t in traces])),
            "mean_in_sample_accuracy": float(np.nanmean(s["in_sample_accuracy"])),
            "methods": {},
        }
        for name, (score, models, sec, issues) in methods.items():
            auroc, pk = _auroc(score, flipped), _precision_at_k(score, flipped, k)
            level["methods"][name] = {
                "auroc": auroc,
                "precision_at_k": pk,
                "models": models,
                "seconds": sec,
                "find_label_issues": issues,
            }
            f = issues or {}
            rows.append(
                [
                    f"{frac:.0%}",
                    name,
                    models,
                    f"{sec['cpu']:.1f}",
                    f"{sec['wall']:.1f}",
                    auroc,
                    pk,
                    f.get("flagged", "-"),
                    f.get("precision", "-"),
                    f.get("recall", "-"),
                ]
            )
        level["by_k"] = statistics_by_k(traces, ks, flipped)
        for p in level["by_k"]:
            p["seconds"] = level["memscore_seconds_by_models"][p["K"]]
        results.append(level)
        print(
            f"noise {frac:.0%}: {k} flipped; test acc {level['mean_test_accuracy']:.3f}, in-sample "
            f"{level['mean_in_sample_accuracy']:.3f} at K={acc.num_models}; CV {cv_sec['cpu']:.1f} CPU s "
            f"({cv_sec['wall']:.1f} wall); memscore K={level['K_bracketing_cv_time']}"
        )
        _print_by_k(level["by_k"])

    print(_table(["noise", "method", "models", "CPU s", "wall s", "AUROC", "P@k", "flagged", "prec", "recall"], rows))
    title = f"{base.name} ({n} train, {args.noise[-1]:.0%} flipped), {args.arch}: finding flipped labels"
    _plot_by_k(title, results[-1]["by_k"], MEMORIZATION_PANELS, args, f"{args.name}_by_k.png")
    payload = {"config": _config(args), "levels": results}
    _save_json(args, args.name, payload)
    return payload


def _uniform_where_missing(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.float64).copy()
    p[~np.isfinite(p).all(1)] = 1.0 / p.shape[1]
    return p / p.sum(1, keepdims=True)


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


# -- statistics: long tail and influence ----------------------------------------------------------


def _influence_matrix(masks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """FZ eq. 2 for an outcome y (K, m) per model and test example: mean over the models that
    trained on i minus the mean over those that did not, (n, m); NaN where a side is empty."""
    M = masks.astype(np.float64)
    n_in = M.sum(0)[:, None]
    n_out = M.shape[0] - n_in
    s_in = M.T @ y
    s_out = y.sum(0)[None, :] - s_in
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_in > 0) & (n_out > 0), s_in / n_in - s_out / n_out, np.nan)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def influence_statistics(masks: np.ndarray, test_correct: np.ndarray, test_margin: np.ndarray) -> dict[str, np.ndarray]:
    """Influence (n, m) with three outcomes of the test example: correct (0/1, FZ), the
    true-class probability p' = sigmoid(φ'), and the mean margin read on the probability scale,
    sigmoid(mean_in φ') − sigmoid(mean_out φ') (the σ-rescaled Δφ)."""
    phi = test_margin.astype(np.float64)
    M = masks.astype(np.float64)
    n_in = M.sum(0)[:, None]
    n_out = M.shape[0] - n_in
    s_in = M.T @ phi
    with np.errstate(invalid="ignore", divide="ignore"):
        logit = _sigmoid(s_in / n_in) - _sigmoid((phi.sum(0)[None, :] - s_in) / n_out)
    return {
        "influence (0/1)": _influence_matrix(masks, test_correct.astype(np.float64)),
        "influence_soft": _influence_matrix(masks, _sigmoid(phi)),
        "influence_logit": np.where((n_in > 0) & (n_out > 0), logit, np.nan),
    }


def _top1(infl: np.ndarray, test_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each test example's most influential training example, ties broken at random."""
    block = np.nan_to_num(infl[:, test_idx], nan=-np.inf)
    jitter = rng.random(block.shape) * 1e-9  # below any difference of two means of <= 64 models
    return np.argmax(block + jitter, axis=0)


def influence_by_k(
    traces: list[Trace], ks: list[int], pair_truth: np.ndarray, targets: dict, rare_test: np.ndarray, seed: int
) -> list[dict]:
    """Per K and influence statistic: split-half Spearman and Pearson over all n × m pairs, and
    how often the halves agree on the top-1 training example of the `rare_test` examples; AUROC
    and precision@k (k = true pairs) of the true pairs `pair_truth` (n, m) among all; recall@1
    for each named set of (test indices, their true training example) in `targets`."""
    masks = np.concatenate([t.masks for t in traces])
    correct = np.concatenate([t.test_correct for t in traces])
    margin = np.concatenate([t.test_margin for t in traces])
    ids = np.concatenate([t.model_ids for t in traces])
    points = []
    for K in ks:
        first = np.arange(K)
        halves = [first[ids[first] % 2 == p] for p in (0, 1)]
        full = influence_statistics(masks[first], correct[first], margin[first])
        even, odd = (influence_statistics(masks[h], correct[h], margin[h]) for h in halves)
        point = {"K": K, "statistics": {}}
        for name, infl in full.items():
            r, pearson, pairs = _split_half(even[name].ravel(), odd[name].ravel())
            v = {
                "split_half_spearman": r,
                "split_half_pearson": pearson,
                "pairs_both_halves": pairs,
                "auroc_true_pairs": _auroc(infl.ravel(), pair_truth.ravel()),
                "precision_at_k_pairs": _precision_at_k(infl.ravel(), pair_truth.ravel(), int(pair_truth.sum())),
            }
            for tag, (test_idx, train_idx) in targets.items():
                top = _top1(infl, test_idx, np.random.default_rng([seed, K, 13]))
                v[f"recall_at_1_{tag}"] = float((top == train_idx).mean())
            # What a user of the per-test-example top-k sees: do two halves name the same top-1?
            tops = [_top1(h[name], rare_test, np.random.default_rng([seed, K, p])) for p, h in enumerate((even, odd))]
            v["top1_agreement_rare_test"] = float((tops[0] == tops[1]).mean())
            point["statistics"][name] = v
        points.append(point)
    return points


def statistics(args) -> dict:
    """Which statistic needs fewest models, on the planted long tail of `influence`: memorization
    statistics against the rare subgroups (the long tail), influence statistics against the
    planted near-copies, the generator's unique twins and all same-subgroup pairs."""
    base = load_longtail(seed=args.seed, n_train=args.n_train, n_test=args.n_test, rare_train=(1, 2))
    ds, test_idx, copy_idx = plant_near_copies(base, args.plant, args.seed, args.copy_noise)
    sub_tr, sub_te = ds.extras["train_subgroup"], ds.extras["test_subgroup"]
    rare = sub_tr >= 0

    def train() -> tuple[Trace, float]:
        groups = [list(range(a, min(a + args.group, args.models))) for a in range(0, args.models, args.group)]
        out = [_train_models(ds, args, ids) for ids in groups]
        both = Trace(
            **{
                f: np.concatenate([getattr(t, f) for t, _ in out])
                for f in ("model_ids", "masks", "train_correct", "train_margin", "test_correct", "test_margin")
            }
        )
        return both, sum(sec["cpu"] for _, sec in out)

    key = f"statistics-longtail-{ds.n_train}-{args.arch}-e{args.epochs}-K{args.models}-g{args.group}-s{args.seed}"
    trace, seconds = _cached_trace(args, key, train)
    traces = [trace.select(np.arange(a, min(a + args.group, args.models))) for a in range(0, args.models, args.group)]
    ks = sorted(k for k in args.ks if k <= args.models)

    mem_points = statistics_by_k(traces, ks, rare)
    print(
        f"longtail ({ds.n_train} train, {int(rare.sum())} in rare subgroups; {ds.n_test} test), {args.arch}, "
        f"{args.models} models: {seconds:.0f} CPU s of training"
    )
    print("memorization statistics, truth = rare-subgroup training examples:")
    _print_by_k(mem_points)

    # The generator's own unique twins (as in `influence`): rare test examples, not planted,
    # whose subgroup has exactly one training example.
    groups, counts = np.unique(sub_tr[rare], return_counts=True)
    single = {int(g): int(np.flatnonzero(sub_tr == g)[0]) for g in groups[counts == 1]}
    twins = np.array([j for j in np.flatnonzero(sub_te >= 0) if int(sub_te[j]) in single and j not in test_idx])
    targets = {
        "planted": (test_idx, copy_idx),
        "unique_twins": (twins, np.array([single[int(sub_te[j])] for j in twins])),
    }
    pair_truth = (sub_tr[:, None] == sub_te[None, :]) & (sub_tr[:, None] >= 0)
    infl_points = influence_by_k(traces, ks, pair_truth, targets, np.flatnonzero(sub_te >= 0), args.seed)
    print(
        f"influence statistics, truth = the {int(pair_truth.sum())} same-rare-subgroup pairs of "
        f"{pair_truth.size}; {len(test_idx)} planted copies; {len(twins)} unique twins:"
    )
    rows = [
        [
            p["K"],
            name,
            _v(v["split_half_spearman"]),
            _v(v["split_half_pearson"]),
            v["top1_agreement_rare_test"],
            v["auroc_true_pairs"],
            v["precision_at_k_pairs"],
            v["recall_at_1_planted"],
            v["recall_at_1_unique_twins"],
        ]
        for p in infl_points
        for name, v in p["statistics"].items()
    ]
    header = [
        "K",
        "statistic",
        "Spearman r",
        "Pearson r",
        "top-1 agree",
        "AUROC pairs",
        "P@k pairs",
        "R@1 planted",
        "R@1 twins",
    ]
    print(_table(header, rows))

    title = f"longtail ({ds.n_train} train), {args.arch}"
    _plot_by_k(f"{title}: rare vs common", mem_points, MEMORIZATION_PANELS, args, "statistics_longtail.png")
    panels = [
        ("top1_agreement_rare_test", f"halves agree on top-1, {int((sub_te >= 0).sum())} rare test"),
        ("auroc_true_pairs", "AUROC, same-subgroup pairs"),
        ("recall_at_1_unique_twins", f"recall@1, {len(twins)} unique twins"),
    ]
    _plot_by_k(f"{title}: influence", infl_points, panels, args, "statistics_influence.png")
    payload = {
        "config": _config(args),
        "train_cpu_seconds": seconds,
        "memorization": mem_points,
        "influence": infl_points,
        "rare_train_examples": int(rare.sum()),
        "unique_twins": int(len(twins)),
    }
    _save_json(args, "statistics", payload)
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
    p.add_argument("--models", type=int, default=64, help="memscore models trained (the largest K)")
    p.add_argument(
        "--ks", type=_ints, default=[8, 16, 32, 64], help="K of the reliability table (multiples of --group)"
    )
    p.add_argument("--group", type=int, default=8, help="memscore models trained at once")
    p.add_argument("--noise", type=_floats, default=[0.1])
    p.add_argument("--folds", type=int, default=5)
    p.set_defaults(func=label_noise)

    p = sub.add_parser("statistics", help="reliability and detection per K: memorization and influence statistics")
    common(p)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--plant", type=int, default=10, help="rare test examples copied into train")
    p.add_argument("--copy-noise", type=float, default=0.03, help="pixel noise on each planted copy")
    p.add_argument("--models", type=int, default=64)
    p.add_argument("--ks", type=_ints, default=[8, 16, 32, 64], help="multiples of --group")
    p.add_argument("--group", type=int, default=8, help="models trained at once")
    p.set_defaults(func=statistics)

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
