"""Per-model training time: the vectorised trainer vs a plain sequential PyTorch loop.

Same model, data, epochs, batch size and optimiser in both; one run, one machine, so the ratio
is what matters. Usage:

    .venv/bin/python bench/throughput.py                   # default mnist1d model (cnn1d)
    .venv/bin/python bench/throughput.py --arch mlp --shard-size 128
    .venv/bin/python bench/throughput.py --variants eager,fused,compile,bf16   # execution options

Prints one line per trainer and the ratio; with `--variants`, one line per execution option of
the vectorised trainer (engine/step_options.Speed): seconds per model, speedup over the plain loop,
compile time (separately: paid once per process and input shape), and the largest difference
of a true-class probability from the first variant's and from the plain loop's models (float
rounding alone moves a model that far: tests/engine/test_ensemble.py checks 2e-3 after 40
steps; it grows with training length). `--json FILE` also writes them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from memscore.engine.datasets import load_mnist1d
from memscore.engine.ensemble import CPU_GROUP_SIZE, Speed, make_recipe, resolve_arch, train_ensemble
from memscore.engine.reference import train_single

VARIANTS = {
    "eager": Speed(fused=False),  # the trainer before fused AdamW became its default
    "fused": Speed(fused=True),  # the default
    "compile": Speed(compile=True, fused=False),
    "compile+fused": Speed(compile=True, fused=True),
    "bf16": Speed(bf16=True, fused=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per model, both trainers")
    ap.add_argument("--shard-size", type=int, default=64, help="G, models trained at once")
    ap.add_argument("--group-size", type=int, default=0, help="models per vectorised pass; 0 = trainer default")
    ap.add_argument("--sequential-models", type=int, default=3, help="models timed with the plain loop")
    ap.add_argument("--variants", default="eager", help="comma list of " + " | ".join(VARIANTS))
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
    ids = list(range(args.shard_size))

    def vectorised(speed: Speed):
        return train_ensemble(
            ds, arch, ids, 0.7, 0, recipe, device=args.device, group_size=args.group_size, speed=speed
        ).trace

    # Warm-up, untimed: the first model in a process pays one-off costs (oneDNN primitive
    # creation, allocator growth) that would otherwise inflate the plain loop's time ~3x.
    warm = replace(recipe, epochs=1)
    train_single(ds, arch, 0, 0.7, 0, warm)
    train_ensemble(
        ds, arch, list(range(min(4, args.shard_size))), 0.7, 0, warm, device=args.device, group_size=args.group_size
    )

    t = time.perf_counter()
    singles = [train_single(ds, arch, k, 0.7, 0, recipe) for k in range(args.sequential_models)]
    seq = (time.perf_counter() - t) / args.sequential_models

    print(
        f"{arch} on mnist1d ({ds.n_train} train, {args.epochs} epochs, batch {recipe.batch_size}, "
        f"{torch.get_num_threads()} threads, {args.device})"
    )
    print(f"  sequential loop : {seq:8.3f} s/model  ({args.sequential_models} models)")
    group = args.group_size or (args.shard_size if args.device.startswith("cuda") else CPU_GROUP_SIZE)
    res = {**info, "sequential_s_per_model": seq, "shard_size": args.shard_size, "group_size": group, "variants": {}}
    reference = None
    for name in args.variants.split(","):
        speed = VARIANTS[name]
        t = time.perf_counter()
        trace = vectorised(speed)
        wall = time.perf_counter() - t
        compile_s = trace.meta.get("compile_seconds") or 0.0
        vec = (wall - compile_s) / args.shard_size  # compiling is paid once per process: reported apart
        reference = trace if reference is None else reference
        diff = float(np.abs(trace.train_prob - reference.train_prob).max())
        # the same models trained by the plain loop: how far float rounding alone moves them
        seq_diff = max(float(np.abs(trace.train_prob[k] - s["train_prob"]).max()) for k, s in enumerate(singles))
        res["variants"][name] = {
            "speed": speed.__dict__,
            "vectorised_s_per_model": vec,
            "speedup": seq / vec,
            "compile_s": compile_s,
            "compile_error": trace.meta.get("compile_error"),
            "max_abs_prob_diff_vs_first": diff,
            "max_abs_prob_diff_vs_plain_loop": seq_diff,
        }
        extra = f", compile {compile_s:.1f} s" if speed.compile else ""
        print(
            f"  vectorised {name:<14}: {vec:8.3f} s/model  ({args.shard_size} models, {group} at a time) "
            f"speedup {seq / vec:5.2f}x{extra}, max |dp| vs {args.variants.split(',')[0]} {diff:.1e}, "
            f"vs the plain loop {seq_diff:.1e}"
        )
    first = res["variants"][args.variants.split(",")[0]]
    res["vectorised_s_per_model"], res["speedup"] = first["vectorised_s_per_model"], first["speedup"]
    print(f"  speedup         : {first['speedup']:8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
