"""Stopping a model once it fits its subset (Recipe.stop_when_fit): what it saves, and whether
it changes the scores beyond their standard errors.

On mnist1d with 10% of the training labels flipped (the planted memorized examples), the
default model and recipe, K models are trained twice - to the end of the schedule and with
stop_when_fit - with the same ids, subsets, initial weights and batches. Reported: training
time both ways, the steps the models stopped at, and per score (memorization 0/1, soft,
log-odds) the mean |difference| between the two runs against the mean standard error of one
run, the share of examples whose difference exceeds twice its standard error, and each run's
AUROC for the flipped labels. Usage (about 10 minutes on 2 cores at the defaults):

    .venv/bin/python bench/fit_stop.py --models 32 --json bench-results/fit_stop.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
from validate import _auroc as auroc  # bench/validate.py: run as a script, bench/ is on the path

from memscore.engine.datasets import flip_labels, load_dataset
from memscore.engine.ensemble import make_recipe, resolve_arch, train_ensemble
from memscore.engine.estimators import ScoreAccumulator

SCORES = ("memorization", "memorization_soft", "memorization_log_odds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument("--models", type=int, default=32)
    ap.add_argument("--label-noise", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=0, help="0 = the recipe's default")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    ds, flipped = flip_labels(load_dataset(args.dataset), args.label_noise, 0)
    positive = np.zeros(ds.n_train, bool)
    positive[flipped] = True
    arch = resolve_arch("auto", ds)
    base = make_recipe(arch, epochs=args.epochs)
    # warm-up, untimed: the first models in a process pay one-off costs (oneDNN primitives,
    # allocator growth) that would otherwise be charged to whichever run goes first
    train_ensemble(ds, arch, [0, 1], 0.7, 0, replace(base, epochs=1, min_steps=0), device="cpu")
    runs = {}
    for name, recipe in (("full schedule", base), ("stop when fit", replace(base, stop_when_fit=True))):
        t = time.perf_counter()
        trace = train_ensemble(ds, arch, list(range(args.models)), 0.7, 0, recipe, device="cpu").trace
        wall = time.perf_counter() - t
        acc = ScoreAccumulator(ds.n_train, ds.n_test)
        acc.add(trace)
        in_sample = float((trace.train_correct & trace.masks).sum() / trace.masks.sum())
        flipped_fit = float((trace.train_correct & trace.masks)[:, positive].sum() / trace.masks[:, positive].sum())
        runs[name] = {
            "wall_s": wall,
            "stop_steps": trace.meta.get("fit_stop_steps"),
            "steps": trace.meta["steps"],
            "scores": acc.scores(),
            "in_sample_accuracy": in_sample,
            "flipped_fit": flipped_fit,
            "test_accuracy": float(trace.test_correct.mean()),
        }
        stops = trace.meta.get("fit_stop_steps")
        print(
            f"{name}: {wall:.0f} s for {args.models} models, steps {trace.meta['steps']}"
            + (f", stopped at median {np.median(stops):.0f} (max {max(stops)})" if stops else "")
            + f", in-sample accuracy {in_sample:.3f}, flipped labels fit {flipped_fit:.3f}, "
            f"test accuracy {runs[name]['test_accuracy']:.3f}",
            flush=True,
        )
    full, stop = runs["full schedule"]["scores"], runs["stop when fit"]["scores"]
    out = {"models": args.models, "dataset": ds.name, "arch": arch, "runs": {}, "scores": {}}
    print("\n| score | mean abs diff | mean stderr (one run) | diff > 2 se | AUROC full | AUROC stop |")
    print("| --- | --- | --- | --- | --- | --- |")
    for score in SCORES:
        a, b = full[score], stop[score]
        se = np.sqrt(full[f"{score}_stderr"] ** 2 + stop[f"{score}_stderr"] ** 2)  # of the difference
        ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(se)
        diff = np.abs(a - b)[ok]
        beyond = float((diff > 2 * se[ok]).mean())
        row = {
            "mean_abs_diff": float(diff.mean()),
            "mean_stderr": float(np.nanmean(full[f"{score}_stderr"][ok])),
            "share_beyond_2se": beyond,
            "auroc_full": auroc(a, positive),
            "auroc_stop": auroc(b, positive),
        }
        out["scores"][score] = row
        print(
            f"| {score} | {row['mean_abs_diff']:.4f} | {row['mean_stderr']:.4f} | {beyond:.1%} | "
            f"{row['auroc_full']:.3f} | {row['auroc_stop']:.3f} |"
        )
    saved = 1 - runs["stop when fit"]["wall_s"] / runs["full schedule"]["wall_s"]
    print(f"\ntraining time saved by stopping when fit: {saved:.0%}")
    if args.json:
        out["runs"] = {k: {kk: vv for kk, vv in v.items() if kk != "scores"} for k, v in runs.items()}
        out["time_saved"] = saved
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
