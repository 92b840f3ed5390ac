"""Embedding mode at CIFAR-10 size: K classifier heads (`linear` or `mlp`) on frozen 512-d
embeddings, the whole job in one process (train, reduce, influence), timed, with its peak memory.

The data are synthetic embeddings of the size the issue names: 50,000 training and 10,000 test
vectors of 512 float32, 10 classes, each class a Gaussian blob (means `--separation`·N(0, 1) per
dimension, unit noise): a linear head fits about half of them (0.486 in-sample at the default),
so there is memorization to measure. Usage:

    .venv/bin/python bench/embeddings.py --model linear --models 256 --threads 2
    .venv/bin/python bench/embeddings.py --model mlp --models 256 --threads 2 --json mlp.json
    .venv/bin/python bench/embeddings.py --model linear --models 16 --n-train 5000   # a quick look

Prints seconds for training and for the reduce step (scores, influence over every train × test
pair in blocks), the wall time and the process's peak resident memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from memscore.engine.datasets import Dataset
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec


def embeddings(n_train: int, n_test: int, dim: int, classes: int, separation: float, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim), dtype=np.float32) * separation
    y = rng.integers(0, classes, n_train + n_test)
    x = centers[y] + rng.standard_normal((n_train + n_test, dim), dtype=np.float32)
    return Dataset("embeddings", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes, "vector")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="linear", help="linear | mlp | any model name")
    ap.add_argument("--models", type=int, default=256)
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--separation", type=float, default=0.06, help="class means: this × N(0, 1) per dimension")
    ap.add_argument("--epochs", type=int, default=0, help="0 = the model's recipe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = embeddings(args.n_train, args.n_test, args.dim, args.classes, args.separation)
    spec = ScoringSpec(dataset="embeddings", model=args.model, models=args.models, epochs=args.epochs)
    t0 = time.perf_counter()
    result = run_scoring(ds, spec, device="cpu")
    wall = time.perf_counter() - t0
    s = result.summary
    out = {
        "model": args.model,
        "models": args.models,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "threads": args.threads,
        "train_seconds": s["timings"]["train_seconds"],
        "reduce_seconds": s["timings"]["reduce_seconds"],
        "wall_seconds": wall,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "in_sample_accuracy": s["mean_in_sample_accuracy"],
        "heldout_accuracy": s["mean_heldout_accuracy"],
        "test_accuracy": s["mean_test_accuracy"],
    }
    print(
        f"{args.models} {args.model} on {args.n_train:,} x {args.dim} ({args.threads} threads): train "
        f"{out['train_seconds']:.0f} s, reduce {out['reduce_seconds']:.0f} s, wall {wall:.0f} s, peak RSS "
        f"{out['peak_rss_bytes'] / 2**30:.2f} GiB; in-sample {out['in_sample_accuracy']:.3f}, held-out "
        f"{out['heldout_accuracy']:.3f}, test {out['test_accuracy']:.3f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
