"""GPU throughput of the vectorised trainer, in one device call of under 8 minutes.

    PYTHONPATH=services PYTHONUNBUFFERED=1 python3 bench/gpu_bench.py --out $OUT/gpu_bench.json

(a) `mlp`: 2,000 MNIST-scale MLP subset models (synthetic 28x28x1, 60,000 train / 10,000 test),
    `--group` at a time.
(b) `cnn`: an airbench-class CIFAR-10 CNN (Jordan 2024's airbench94 layout, GroupNorm for
    BatchNorm so that it trains under vmap) on synthetic 32x32x3 tensors, 50,000 train /
    10,000 test: first a few timed steps of each execution variant (eager or torch.compile'd,
    NCHW or channels-last; compiled in the faster layout), then as many whole models as fit in
    `--cnn-seconds` with the fastest.
(c) `match`: a small job trained on the GPU and on the CPU: the GPU's true-class probabilities
    and memorization scores must agree with the CPU's within the stated tolerance (bf16
    autocast on the GPU).

Each part reports models/s, achieved TFLOP/s (3 x forward FLOPs per training example, counted
by hooks on Linear/Conv layers, plus the trace's forward passes) against the device's dense
bf16 peak, and peak memory. Synthetic tensors are enough for timing: the work per step does not
depend on pixel values. `--smoke` runs a tiny plan of every part on the CPU (the suite runs it:
tests/test_bench_scripts.py).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from memscore.engine.datasets import Dataset
from memscore.engine.ensemble import Speed, make_recipe, total_steps, train_ensemble
from memscore.engine.models import build_model, count_params, forward_flops, register_model
from memscore.engine.recipes import Recipe
from memscore.engine.subsets import subset_size

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
BF16_PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
RATIO = 0.7
# (c): a GPU model agrees with the CPU's when 99% of its true-class probabilities are within
# MATCH_P99 and 99% of its 0/1 predictions equal; the memorization scores' Spearman >= MATCH_RHO.
MATCH_P99, MATCH_AGREE, MATCH_RHO = 0.05, 0.99, 0.95


def bf16_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


class AirbenchNet(nn.Module):
    """airbench94's network (github.com/KellerJordan/airbench): a 2x2 whitening conv, three
    blocks of conv-pool-norm-GELU-conv-norm-GELU (64, 256, 256 channels), max-pool, linear
    head scaled by 1/9; GroupNorm in place of BatchNorm (no running statistics under vmap)."""

    def __init__(self, in_channels: int, num_classes: int, widths=(64, 256, 256), whiten: int = 24):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.GroupNorm(min(16, cout), cout),
                nn.GELU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.GroupNorm(min(16, cout), cout),
                nn.GELU(),
            )

        self.net = nn.Sequential(
            nn.Conv2d(in_channels, whiten, 2, bias=True),
            nn.GELU(),
            block(whiten, widths[0]),
            block(widths[0], widths[1]),
            block(widths[1], widths[2]),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[2], num_classes, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / 9.0


def synthetic(n: int, m: int, shape: tuple[int, ...], classes: int = 10, seed: int = 0) -> Dataset:
    g = np.random.default_rng(seed)
    return Dataset(
        name="synthetic-" + "x".join(map(str, shape)),
        x_train=g.random((n, *shape), dtype=np.float32),
        y_train=g.integers(0, classes, n).astype(np.int64),
        x_test=g.random((m, *shape), dtype=np.float32),
        y_test=g.integers(0, classes, m).astype(np.int64),
        num_classes=classes,
        kind="image",
    )


def quadrant_task(n: int, m: int, noise: float = 0.2, seed: int = 1) -> Dataset:
    """16x16 images labelled by their brightest quadrant, `noise` of the training labels
    redrawn at random: a learnable task with memorized examples, so scores have a spread."""
    ds = synthetic(n, m, (1, 16, 16), classes=4, seed=seed)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        quads = x[:, 0].reshape(len(x), 2, 8, 2, 8).mean((2, 4)).reshape(len(x), 4)
        y[:] = quads.argmax(1)
    g = np.random.default_rng(seed + 1)
    flip = g.random(n) < noise
    ds.y_train[flip] = g.integers(0, 4, int(flip.sum()))
    return ds


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def model_flops(ds: Dataset, arch: str, recipe: Recipe) -> tuple[float, float, int]:
    """(training FLOPs of one model, its trace's evaluation FLOPs, parameters)."""
    model = build_model(arch, ds.feature_shape, ds.num_classes)
    fwd = forward_flops(model, ds.feature_shape)
    s = subset_size(ds.n_train, RATIO)
    train = 3.0 * fwd * total_steps(recipe, s) * min(recipe.batch_size, s)
    return train, fwd * (ds.n_train + ds.n_test), count_params(model)


def whole_models(ds, arch, recipe, group, device, speed, max_models, seconds, peak) -> dict:
    """Groups of `group` models until `max_models` or `seconds` have passed (after one warm-up
    group that compiles kernels); models/s and TFLOP/s over the timed groups."""
    train_f, eval_f, params = model_flops(ds, arch, recipe)
    warm = train_ensemble(ds, arch, list(range(group)), RATIO, 0, recipe, device=device, group_size=group, speed=speed)
    _sync(device)
    _reset_peak(device)
    done, t0 = 0, time.perf_counter()
    while done < max_models and time.perf_counter() - t0 < seconds:
        ids = list(range(group + done, group + done + min(group, max_models - done)))
        t = time.perf_counter()
        train_ensemble(ds, arch, ids, RATIO, 0, recipe, device=device, group_size=len(ids), speed=speed)
        _sync(device)
        done += len(ids)
        print(f"  {arch}: {done} models, group in {time.perf_counter() - t:.1f} s", flush=True)
    wall = time.perf_counter() - t0
    tflops = done * (train_f + eval_f) / wall / 1e12
    res = {
        "arch": arch,
        "params_per_model": params,
        "models": done,
        "group": group,
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "steps_per_model": total_steps(recipe, subset_size(ds.n_train, RATIO)),
        "speed": speed.__dict__,
        "wall_s": wall,
        "models_per_s": done / wall,
        "tflops": tflops,
        "fraction_of_bf16_peak": tflops / peak if peak else None,
        "peak_mem_gib": _peak_gib(device),
        "warmup_compile_s": warm.trace.meta.get("compile_seconds"),
        "compile_error": warm.trace.meta.get("compile_error"),
    }
    print(json.dumps(res), flush=True)
    return res


def step_variants(ds, arch, recipe, group, device, steps, variants, peak) -> list[dict]:
    """`steps` training steps of one group in each execution variant: ms per step (after the
    compiling first steps), TFLOP/s of the training step, peak memory."""
    fwd = forward_flops(build_model(arch, ds.feature_shape, ds.num_classes), ds.feature_shape)
    out = []
    for name, speed in variants:
        short = replace(recipe, epochs=0, min_steps=steps)
        _reset_peak(device)
        first = train_ensemble(
            ds, arch, list(range(group)), RATIO, 0, short, device=device, group_size=group, speed=speed
        )
        again = train_ensemble(
            ds, arch, list(range(group)), RATIO, 0, short, device=device, group_size=group, speed=speed
        )
        _sync(device)
        per_step = again.trace.meta["train_seconds"] / steps
        tflops = 3.0 * fwd * recipe.batch_size * group / per_step / 1e12
        res = {
            "variant": name,
            "speed": speed.__dict__,
            "ms_per_step": 1e3 * per_step,
            "tflops": tflops,
            "fraction_of_bf16_peak": tflops / peak if peak else None,
            "compile_s": first.trace.meta.get("compile_seconds"),
            "compile_error": first.trace.meta.get("compile_error"),
            "peak_mem_gib": _peak_gib(device),
        }
        print(json.dumps(res), flush=True)
        out.append(res)
    return out


def cpu_match(ds, arch, recipe, models: int, device: str) -> dict:
    """The same models trained on `device` and on the CPU: do they agree within the tolerance?"""
    from memscore.engine.reliability import spearman

    ids = list(range(models))
    runs = [train_ensemble(ds, arch, ids, RATIO, 3, recipe, device=d).trace for d in (device, "cpu")]
    diff = np.abs(runs[0].train_prob - runs[1].train_prob)
    agree = float((runs[0].train_correct == runs[1].train_correct).mean())

    def mem(t):
        m = t.masks
        with np.errstate(invalid="ignore", divide="ignore"):
            return (t.train_prob * m).sum(0) / m.sum(0) - (t.train_prob * ~m).sum(0) / (~m).sum(0)

    a, b = mem(runs[0]), mem(runs[1])
    both = np.isfinite(a) & np.isfinite(b)
    rho = spearman(a[both], b[both])
    p99 = float(np.quantile(diff, 0.99))
    res = {
        "device": device,
        "models": models,
        "p99_abs_prob_diff": p99,
        "max_abs_prob_diff": float(diff.max()),
        "prediction_agreement": agree,
        "memorization_spearman": rho,
        "tolerance": {"p99_abs_prob_diff": MATCH_P99, "prediction_agreement": MATCH_AGREE, "spearman": MATCH_RHO},
        "within_tolerance": bool(p99 <= MATCH_P99 and agree >= MATCH_AGREE and (rho or 0) >= MATCH_RHO),
    }
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="mlp,cnn,match")
    ap.add_argument("--models", type=int, default=2000, help="(a) MLP models")
    ap.add_argument("--group", type=int, default=500, help="(a) MLP models trained at once")
    ap.add_argument(
        "--cnn-group", type=int, default=16, help="(b) CNN models trained at once (~1.5 GB each at batch 512)"
    )
    ap.add_argument("--cnn-epochs", type=int, default=2, help="(b) epochs per CNN model")
    ap.add_argument("--cnn-seconds", type=float, default=200, help="(b) whole CNN models for this long")
    ap.add_argument("--variant-steps", type=int, default=20, help="(b) timed steps per execution variant")
    ap.add_argument("--smoke", action="store_true", help="a tiny plan on the CPU, to test the script")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    n_mlp, n_cnn, m = (600, 128, 64) if args.smoke else (60_000, 50_000, 10_000)
    if args.smoke:
        args.models, args.group, args.cnn_group, args.cnn_seconds, args.variant_steps = 4, 2, 2, 1.0, 2
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = bf16_peak(name)
    info = {"device": name, "bf16_peak_tflops": peak, "torch": torch.__version__, "smoke": args.smoke}
    print(json.dumps(info), flush=True)
    results: dict = {"info": info}
    parts = args.parts.split(",")
    t0 = time.perf_counter()

    if "mlp" in parts:  # (a)
        ds = synthetic(n_mlp, m, (1, 28, 28))
        recipe = replace(make_recipe("mlp"), epochs=2, min_steps=0)
        results["mlp"] = whole_models(ds, "mlp", recipe, args.group, device, Speed(), args.models, 1e9, peak)
    if "cnn" in parts:  # (b); the smoke plan's network is 1/16 as wide: the real one takes seconds a step on a CPU
        widths, whiten = ((4, 16, 16), 4) if args.smoke else ((64, 256, 256), 24)
        register_model("airbench", lambda shape, classes: AirbenchNet(shape[0], classes, widths, whiten))
        ds = synthetic(n_cnn, m, (3, 32, 32))
        recipe = Recipe(
            epochs=1 if args.smoke else args.cnn_epochs, min_steps=0, batch_size=32 if args.smoke else 512,
            lr=2e-3, weight_decay=5e-4, warmup=0.1, augment=True, flip=True,
        )  # fmt: skip
        eager = [("eager", Speed()), ("eager, channels-last", Speed(channels_last=True))]
        timed = step_variants(ds, "airbench", recipe, args.cnn_group, device, args.variant_steps, eager, peak)
        if not args.smoke:  # compiling a CNN on 2 CPU cores takes minutes: the smoke run checks the rest
            layout = min(timed, key=lambda v: v["ms_per_step"])["speed"]["channels_last"]
            name = "compiled" + (", channels-last" if layout else "")
            compiled = [(name, Speed(compile=True, channels_last=layout))]
            timed += step_variants(ds, "airbench", recipe, args.cnn_group, device, args.variant_steps, compiled, peak)
        best = min((v for v in timed if not v["compile_error"]), key=lambda v: v["ms_per_step"])
        speed = Speed(**best["speed"])
        whole = whole_models(ds, "airbench", recipe, args.cnn_group, device, speed, 10**9, args.cnn_seconds, peak)
        results["cnn"] = {"variants": timed, "best": best["variant"], "whole_models": whole}
    if "match" in parts:  # (c)
        ds = quadrant_task(200 if args.smoke else 2000, 50 if args.smoke else 200)
        recipe = replace(
            make_recipe("resnet"), epochs=0, min_steps=4 if args.smoke else 300, batch_size=16 if args.smoke else 64
        )
        results["match"] = cpu_match(ds, "resnet", recipe, 4 if args.smoke else 16, device)
    results["total_s"] = time.perf_counter() - t0
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
