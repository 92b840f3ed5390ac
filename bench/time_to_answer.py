"""Time to a converged answer: wall time until memorization scores are reliable, memscore
against a plain sequential PyTorch loop, in one process and one run.

"Reliable" is the reliability every memscore job reports: the split-half Spearman r of the
scores estimated from the even- and the odd-numbered models, projected to all the models by
Spearman-Brown, 2r / (1 + r) (engine/reliability.py) - the correlation two independent runs of
that many models would have. Targets 0.90 and 0.95.

(a) memscore as users run it: `memscore run --dataset mnist1d --until-reliability 0.95
    --reliability-metric memorization_soft` (self-stopping, with the statistic whose
    reliability is highest on clean mnist1d: 0.894 at 64 models against 0.874 for 0/1 and 0.684
    for the log-odds, docs/performance.md), timed as a command: process start, data,
    training, reduce and files included; 0.90 is when that run's reliability first reached it
    (the summary's `reliability_history`).
(b) the plain loop of the Feldman & Zhang reference code and opendataval's
    InfluenceSubsample: one `nn.Module` and one optimiser per model, models one after another
    (engine/reference.py: same data, subsets, initial weights, recipe), scored with the 0/1
    estimator mean(correct | in) - mean(correct | out); its reliability is measured after every
    second model, the same way, until it reaches 0.95 or `--baseline-budget-s` runs out. A
    baseline that runs out is projected by Spearman-Brown from where it stopped (marked).

Usage (about 1.5 hours on 2 cores at the defaults: ~144 vectorised models, then the plain loop's budget):

    .venv/bin/python bench/time_to_answer.py --json bench-results/time_to_answer.json
    .venv/bin/python bench/time_to_answer.py --dataset digits --epochs 2 --baseline-budget-s 20  # a quick check

The last line is `time-to-answer ratio N.Nx` (the baseline's time to 0.95 over memscore's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from memscore.engine.datasets import load_dataset
from memscore.engine.ensemble import make_recipe, resolve_arch
from memscore.engine.models import build_model, forward_flops
from memscore.engine.recipes import total_steps
from memscore.engine.reference import train_single
from memscore.engine.reliability import models_for, spearman, spearman_brown
from memscore.engine.subsets import subset_size

TARGETS = (0.90, 0.95)
RATIO = 0.7


def flops_per_model(ds, arch: str, recipe) -> float:
    """Training (forward + backward = 3 forward passes per example) and the trace's forward
    passes over the training and test sets."""
    fwd = forward_flops(build_model(arch, ds.feature_shape, ds.num_classes), ds.feature_shape)
    s = subset_size(ds.n_train, RATIO)
    steps = total_steps(recipe, s)
    return 3.0 * fwd * steps * min(recipe.batch_size, s) + fwd * (ds.n_train + ds.n_test)


def memscore_run(args, out: Path) -> list[dict]:
    """`memscore run` self-stopping at the highest target, timed as a command; per target, the
    time at which the run's reliability first reached it (its `reliability_history`: the
    reduce after each growth step, plus the command's start-up before the job's clock)."""
    cmd = [sys.executable, "-m", "memscore.cli", "run", "--dataset", args.dataset, "--out", str(out)]  # bar: stderr
    cmd += ["--models", str(args.first_models), "--max-models", str(args.max_models), "--device", "cpu"]
    cmd += ["--until-reliability", f"{TARGETS[-1]}", "--reliability-metric", args.metric, "--top", "0"]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())
    startup = wall - summary["timings"]["wall_seconds"]
    history = summary["reliability_history"]
    print(
        "  memscore: "
        + ", ".join(f"{h['models']} models {h['reliability']:.3f} at {h['seconds']:.0f} s" for h in history)
    )
    rows = []
    for target in TARGETS:
        hit = next((h for h in history if h["reliability"] is not None and h["reliability"] >= target), None)
        last = hit or history[-1]
        rows.append(
            {
                "target": target,
                "wall_s": startup + last["seconds"] if hit else wall,
                "models": last["models"],
                "reliability": last["reliability"],
                "reached": hit is not None,
                "train_s": summary["timings"]["train_seconds"] * last["models"] / summary["models_done"],
            }
        )
    return rows


def zero_one_halves(masks: np.ndarray, correct: np.ndarray, ids: np.ndarray) -> float | None:
    """Split-half Spearman r of the 0/1 estimator (even vs odd model ids), over the examples
    estimated in both halves; None while a half cannot estimate."""
    est = []
    for p in (0, 1):
        m, c = masks[ids % 2 == p], correct[ids % 2 == p]
        n_in, n_out = m.sum(0), (~m).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            est.append((c & m).sum(0) / n_in - (c & ~m).sum(0) / n_out)
    both = np.isfinite(est[0]) & np.isfinite(est[1])
    if both.sum() < 3:
        return None
    return spearman(est[0][both], est[1][both])


def plain_loop(args, ds, arch: str, recipe) -> dict:
    """Models one at a time until the 0/1 estimator's reliability reaches the last target or
    the budget runs out; the time each target was first reached."""
    masks, correct, seconds, history = [], [], [], []
    reached: dict[float, dict] = {}
    t0 = time.perf_counter()
    k = 0
    while len(reached) < len(TARGETS):
        t = time.perf_counter()
        row = train_single(ds, arch, k, RATIO, 0, recipe)
        seconds.append(time.perf_counter() - t)
        masks.append(row["mask"])
        correct.append(row["train_correct"])
        k += 1
        if k % 2 or k < 4:
            continue
        r = zero_one_halves(np.array(masks), np.array(correct), np.arange(k))
        rho = spearman_brown(r) if r is not None else None
        elapsed = time.perf_counter() - t0
        history.append({"models": k, "elapsed_s": elapsed, "split_half_r": r, "reliability": rho})
        print(f"  plain loop: {k} models, {elapsed:.0f} s, reliability {rho}", flush=True)
        for target in TARGETS:
            if target not in reached and rho is not None and rho >= target:
                reached[target] = {"models": k, "wall_s": elapsed, "reliability": rho, "projected": False}
        if elapsed > args.baseline_budget_s or k >= args.max_models:
            break
    per_model = float(np.mean(seconds))
    last = history[-1] if history else {"models": k, "reliability": None}
    for target in TARGETS:
        if target not in reached:  # Spearman-Brown projection from the last measurement
            need = models_for(last["reliability"], last["models"], target)
            reached[target] = {
                "models": need,
                "wall_s": None if need is None else need * per_model,
                "reliability": None,
                "projected": True,
            }
    return {"s_per_model": per_model, "models_trained": k, "targets": reached, "history": history}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument(
        "--metric",
        default="memorization_soft",
        help="memscore's stopping statistic (soft: the most reliable of the three on mnist1d at 64 models)",
    )
    ap.add_argument("--epochs", type=int, default=0, help="0 = the recipe's default (both trainers)")
    ap.add_argument("--first-models", type=int, default=16, help="memscore's first batch of models")
    ap.add_argument("--max-models", type=int, default=1024)
    ap.add_argument("--baseline-budget-s", type=float, default=1500, help="plain loop: stop here and project the rest")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    ds = load_dataset(args.dataset)
    arch = resolve_arch("auto", ds)
    recipe = make_recipe(arch, epochs=args.epochs)
    flops = flops_per_model(ds, arch, recipe)
    steps = total_steps(recipe, subset_size(ds.n_train, RATIO))
    print(
        f"{ds.name}: {ds.n_train} train / {ds.n_test} test, {arch}, {steps} steps a model,"
        f" {recipe.epochs} epochs, {flops / 1e9:.1f} GFLOP a model,"
        f" {torch.get_num_threads()} threads, {os.cpu_count()} CPUs",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        ours = memscore_run(args, Path(tmp) / "run")
    base = plain_loop(args, ds, arch, recipe)

    print(f"\n| reliability | memscore ({args.metric}) | plain loop (0/1 estimator) | ratio |")
    print("| --- | --- | --- | --- |")
    ratio = None
    for res in ours:
        b = base["targets"][res["target"]]
        mark = " (projected)" if b["projected"] else ""
        ours_s = f"{res['wall_s']:.0f} s, {res['models']} models" + ("" if res["reached"] else " (not reached)")
        if b["wall_s"] is None:
            print(f"| {res['target']:.2f} | {ours_s} | not reached, no projection | - |")
            continue
        ratio = b["wall_s"] / res["wall_s"]
        print(f"| {res['target']:.2f} | {ours_s} | {b['wall_s']:.0f} s, {b['models']} models{mark} | {ratio:.1f}x |")
    top = ours[-1]
    ours_rate, base_rate = top["models"] / top["train_s"], 1 / base["s_per_model"]
    print(
        f"\nmodels/s: memscore {ours_rate:.3f} ({ours_rate * flops / 1e9:.1f} GFLOP/s in training), "
        f"plain loop {base_rate:.3f} ({base_rate * flops / 1e9:.1f} GFLOP/s)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {"dataset": ds.name, "arch": arch, "flops_per_model": flops, "memscore": ours, "plain": base}, indent=2
            )
        )
    notes = [
        ("plain loop projected", base["targets"][TARGETS[-1]]["projected"]),
        ("memscore short of it", not top["reached"]),
    ]
    tail = "; ".join(n for n, bad in notes if bad)
    print(
        f"time-to-answer ratio {ratio:.1f}x" + (f" ({tail})" if tail else "") if ratio else "time-to-answer ratio n/a"
    )


if __name__ == "__main__":
    main()
