"""How close `memscore plan`'s calibrated wall time comes to the measured one.

For each small job (a dataset, a model, K models, a few epochs) the plan's estimator
(engine/calibrate.py: a measured burst on this machine) runs first, then the job itself with
`run_scoring` in the same process (its one-time start-up already paid, as the plan assumes), and
the table prints the estimate, its parts, the FLOP-based estimate at the measured FLOP/s, the
measured time and estimate / measured. Each job is run `--repeats` times (the machine may be
shared: the spread shows how much). Usage (a few minutes on 2 CPU cores):

    OMP_NUM_THREADS=1 .venv/bin/python bench/plan_accuracy.py [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

from memscore.engine.calibrate import calibrate
from memscore.engine.datasets import load_dataset
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec

# (dataset, model, models, epochs): every model of the zoo on the built-in data it takes
JOBS = (
    ("digits", "mlp", 16, 10),
    ("mnist1d", "mlp", 8, 5),
    ("mnist1d", "cnn1d", 16, 5),
    ("digits", "resnet", 8, 3),
    ("mnist1d", "cnn1d", 20, 3),  # two groups on the CPU (16 + 4)
)


def measure(name: str, model: str, models: int, epochs: int, device: str) -> dict:
    ds = load_dataset(name)
    spec = ScoringSpec(dataset=name, model=model, models=models, epochs=epochs)
    cal = calibrate(ds, spec, device)
    t = time.perf_counter()
    run_scoring(ds, spec, device=device)
    measured = time.perf_counter() - t
    return {
        "job": f"{name} {model} K={models} {epochs} ep",
        "steps": cal.steps,
        "groups": "+".join(str(g) for g in cal.group_sizes),
        "calibration_s": cal.calibration_seconds,
        "estimate_s": cal.seconds,
        "train_s": cal.train_seconds,
        "eval_s": cal.eval_seconds,
        "reduce_s": cal.reduce_seconds,
        "flop_estimate_s": cal.flop_seconds(),
        "measured_s": measured,
        "ratio": cal.seconds / measured,
    }


def print_table(rows: list[dict]) -> None:
    print("| job | steps | groups | calibration | estimate (train + eval + reduce) | FLOP-based | measured | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        flop = f"{r['flop_estimate_s']:.1f} s" if r["flop_estimate_s"] is not None else "n/a"
        print(
            f"| {r['job']} | {r['steps']} | {r['groups']} | {r['calibration_s']:.1f} s | {r['estimate_s']:.1f} s "
            f"({r['train_s']:.1f} + {r['eval_s']:.1f} + {r['reduce_s']:.1f}) | {flop} | {r['measured_s']:.1f} s "
            f"| {r['ratio']:.2f} |"
        )
    ratios = [r["ratio"] for r in rows]
    print(f"estimate / measured: {min(ratios):.2f} to {max(ratios):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows = [measure(*job, args.device) for job in JOBS for _ in range(args.repeats)]
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
