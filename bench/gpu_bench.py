"""GPU throughput of the vectorised trainer: thousands of MNIST-scale subset models.

One device call, well under 8 minutes on one H200 (the default plan below):

    PYTHONPATH=services PYTHONUNBUFFERED=1 python3 bench/gpu_bench.py --out $OUT/gpu_bench.json

Synthetic tensors (28×28×1, 10 classes, 60 000 train / 10 000 test) are enough for timing:
the work per step does not depend on pixel values. For each architecture it trains `--models`
subset models in groups of `--group` at once, times each group (after one warm-up group that
also compiles kernels), and reports seconds per model and achieved TFLOP/s, counting
3 × forward FLOPs per training example (forward + backward) plus the forward passes of the
trace evaluation. `--smoke` runs a tiny plan on the CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from memscore.engine.datasets import Dataset
from memscore.engine.ensemble import make_recipe, total_steps, train_ensemble
from memscore.engine.models import build_model, count_params, forward_flops
from memscore.engine.subsets import subset_size


def synthetic_mnist(n: int, m: int, seed: int = 0) -> Dataset:
    g = np.random.default_rng(seed)
    return Dataset(
        name="synthetic-mnist",
        x_train=g.random((n, 1, 28, 28), dtype=np.float32),
        y_train=g.integers(0, 10, n).astype(np.int64),
        x_test=g.random((m, 1, 28, 28), dtype=np.float32),
        y_test=g.integers(0, 10, m).astype(np.int64),
        num_classes=10,
        kind="image",
    )


def bench(ds: Dataset, arch: str, models: int, group: int, epochs: int, device: str) -> dict:
    recipe = make_recipe(arch, epochs=epochs)
    s = subset_size(ds.n_train, 0.7)
    steps = total_steps(recipe, s)
    fwd = forward_flops(build_model(arch, ds.feature_shape, ds.num_classes), ds.feature_shape)
    params = count_params(build_model(arch, ds.feature_shape, ds.num_classes))
    # warm-up group: allocator, cuDNN autotuning, lazy init
    train_ensemble(ds, arch, list(range(group)), 0.7, 0, recipe, device=device, group_size=group)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times = []
    t0 = time.perf_counter()
    for start in range(0, models, group):
        t = time.perf_counter()
        ids = list(range(start, min(models, start + group)))
        train_ensemble(ds, arch, ids, 0.7, 0, recipe, device=device, group_size=group)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        print(f"  {arch}: models {start}-{ids[-1]} in {times[-1]:.1f}s", flush=True)
    wall = time.perf_counter() - t0
    train_flops = 3 * fwd * steps * recipe.batch_size * models
    eval_flops = fwd * (ds.n_train + ds.n_test) * models
    res = {
        "arch": arch,
        "params_per_model": params,
        "forward_flops_per_example": fwd,
        "models": models,
        "group": group,
        "epochs": epochs,
        "steps_per_model": steps,
        "batch_size": recipe.batch_size,
        "wall_s": wall,
        "s_per_model": wall / models,
        "tflops": (train_flops + eval_flops) / wall / 1e12,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
    }
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="mlp,resnet")
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--group", type=int, default=500, help="models trained at once")
    ap.add_argument("--epochs", default="mlp:2,resnet:1", help="per arch")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU plan to test the script")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    n, m = (600, 100) if args.smoke else (60_000, 10_000)
    if args.smoke:
        args.models, args.group = 4, 2
    epochs = dict(kv.split(":") for kv in args.epochs.split(","))
    ds = synthetic_mnist(n, m)
    info = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "n_train": n,
        "n_test": m,
    }
    print(json.dumps(info), flush=True)
    results = [bench(ds, a, args.models, args.group, int(epochs.get(a, 1)), device) for a in args.archs.split(",")]
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
