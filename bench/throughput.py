"""Per-model training time: the vectorised trainer vs a plain sequential PyTorch loop.

Same model, data, epochs, batch size and optimiser in both; one run, one machine, so the ratio
is what matters. Usage:

    .venv/bin/python bench/throughput.py                   # default mnist1d model (cnn1d)
    .venv/bin/python bench/throughput.py --arch mlp --shard-size 128

Prints one line per trainer and the ratio; `--json FILE` also writes them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from memscore.engine.datasets import load_mnist1d
from memscore.engine.ensemble import CPU_GROUP_SIZE, make_recipe, resolve_arch, train_ensemble
from memscore.engine.reference import train_single


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per model, both trainers")
    ap.add_argument("--shard-size", type=int, default=64, help="G, models trained at once")
    ap.add_argument("--group-size", type=int, default=0, help="models per vectorised pass; 0 = trainer default")
    ap.add_argument("--sequential-models", type=int, default=3, help="models timed with the plain loop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    ds = load_mnist1d()
    arch = resolve_arch(args.arch, ds)
    recipe = replace(make_recipe(arch, epochs=args.epochs))
    info = {
        "arch": arch,
        "epochs": args.epochs,
        "batch_size": recipe.batch_size,
        "n_train": ds.n_train,
        "threads": torch.get_num_threads(),
        "device": args.device,
    }

    # Warm-up, untimed: the first model in a process pays one-off costs (oneDNN primitive
    # creation, allocator growth) that would otherwise inflate the plain loop's time ~3x.
    warm = replace(recipe, epochs=1)
    train_single(ds, arch, 0, 0.7, 0, warm)
    train_ensemble(
        ds, arch, list(range(min(4, args.shard_size))), 0.7, 0, warm, device=args.device, group_size=args.group_size
    )

    t = time.perf_counter()
    for k in range(args.sequential_models):
        train_single(ds, arch, k, 0.7, 0, recipe)
    seq = (time.perf_counter() - t) / args.sequential_models

    t = time.perf_counter()
    train_ensemble(
        ds, arch, list(range(args.shard_size)), 0.7, 0, recipe, device=args.device, group_size=args.group_size
    )
    vec = (time.perf_counter() - t) / args.shard_size

    res = {
        **info,
        "sequential_s_per_model": seq,
        "vectorised_s_per_model": vec,
        "shard_size": args.shard_size,
        "speedup": seq / vec,
    }
    print(
        f"{arch} on mnist1d ({ds.n_train} train, {args.epochs} epochs, batch {recipe.batch_size}, "
        f"{torch.get_num_threads()} threads, {args.device})"
    )
    print(f"  sequential loop : {seq:8.3f} s/model  ({args.sequential_models} models)")
    group = args.group_size or (args.shard_size if args.device.startswith("cuda") else CPU_GROUP_SIZE)
    res["group_size"] = group
    print(f"  vectorised      : {vec:8.3f} s/model  ({args.shard_size} models, {group} at a time)")
    print(f"  speedup         : {seq / vec:8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
