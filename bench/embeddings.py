"""Embedding mode at CIFAR-10 size: heads trained on frozen embeddings, time and memory on this machine.

A synthetic stand-in for a backbone's CIFAR-10 embeddings: 50,000 training and 10,000 test
vectors of 512 float32, 10 classes (each class a mixture of a few sub-clusters, so some examples
are atypical), standardised. Each model runs in its own child process through the embedded
engine (`engine.scoring.run_scoring`: vectorised training, the trace evaluation, the reduce with
influence over all 50,000 × 10,000 pairs in blocks), timed end to end, with the child's peak
resident memory. The issue's targets: 256 linear models in <= 10 minutes and <= 4 GB on 2 cores.

    .venv/bin/python bench/embeddings.py                                 # 256 linear, then 256 MLP heads
    .venv/bin/python bench/embeddings.py --runs linear:256 --json out.json
    .venv/bin/python bench/embeddings.py --runs linear:16,mlp:16:1 --n-train 5000 --n-test 1000   # a quick check

`--runs` is a comma list of MODEL:MODELS[:EPOCHS] (epochs 0 or absent = the model's recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

DIM, CLASSES, CLUSTERS = 512, 10, 4
# Within-cluster spread against cluster means of unit variance per dimension: a linear head
# reaches ~85% test accuracy (0.845 with 8 heads), about a linear probe's on CIFAR-10 embeddings.
NOISE = 4.0


def synthetic_embeddings(n_train: int, n_test: int, seed: int = 0):
    """(x_train, y_train, x_test, y_test): class c's examples come from CLUSTERS Gaussian
    sub-clusters with Zipf-like weights (the rarest holds ~8% of the class)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((CLASSES, CLUSTERS, DIM)).astype(np.float32)
    weights = 1.0 / np.arange(1, CLUSTERS + 1)
    weights /= weights.sum()

    def draw(n: int):
        y = rng.integers(0, CLASSES, n)
        cluster = rng.choice(CLUSTERS, n, p=weights)
        x = means[y, cluster] + NOISE * rng.standard_normal((n, DIM), dtype=np.float32)
        return (x / np.sqrt(1.0 + NOISE**2)).astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return x_train, y_train, x_test, y_test


def child(model: str, models: int, epochs: int, n_train: int, n_test: int) -> dict:
    import torch

    from memscore.engine.datasets import Dataset
    from memscore.engine.scoring import run_scoring
    from memscore.engine.spec import ScoringSpec

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    x_train, y_train, x_test, y_test = synthetic_embeddings(n_train, n_test)
    ds = Dataset("embeddings", x_train, y_train, x_test, y_test, CLASSES, "vector")
    spec = ScoringSpec(dataset="embeddings", model=model, models=models, epochs=epochs, max_influence_pairs=100_000)
    t0 = time.perf_counter()
    result = run_scoring(ds, spec, device="cpu")
    wall = time.perf_counter() - t0
    s, summary = result.scores, result.summary
    timings = summary.get("timings", {})
    return {
        "model": model,
        "models": models,
        "epochs": epochs or "recipe",
        "n_train": n_train,
        "n_test": n_test,
        "wall_s": round(wall, 1),
        "train_s": round(float(timings.get("train_seconds", float("nan"))), 1),
        "reduce_s": round(float(timings.get("reduce_seconds", float("nan"))), 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "in_sample_accuracy": round(float(np.nanmean(s["in_sample_accuracy"])), 4),
        "heldout_accuracy": round(float(np.nanmean(s["heldout_accuracy"])), 4),
        "test_accuracy": summary.get("mean_test_accuracy"),
        "reliability": ((summary.get("reliability") or {}).get("memorization") or {}).get("spearman_brown"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="linear:256,mlp:256:2", help="comma list of MODEL:MODELS[:EPOCHS]")
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--json", default="")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model, models, epochs = (args.child.split(":") + ["0"])[:3]
        print(json.dumps(child(model, int(models), int(epochs), args.n_train, args.n_test)))
        return
    rows = []
    for run in args.runs.split(","):
        cmd = [sys.executable, __file__, "--child", run, "--n-train", str(args.n_train), "--n-test", str(args.n_test)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{run} failed:\n{out.stderr[-4000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['model']:>8} x{row['models']:<4} epochs {row['epochs']!s:>6}: {row['wall_s']:8.1f} s "
            f"(train {row['train_s']} s, reduce {row['reduce_s']} s), peak {row['peak_rss_gb']:.2f} GB, "
            f"in-sample acc {row['in_sample_accuracy']:.3f}, held-out acc {row['heldout_accuracy']:.3f}, "
            f"test acc {row['test_accuracy']:.3f}, reliability {row['reliability']}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu_count": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
