"""What the metrics that need no extra training cost a job: LiRA on the job's own models
(engine/membership.py) and the prototypicality metrics (engine/prototypes.py: the per-group
sums in the evaluation pass, the jackknife in the reduce). Issue target: < 20% of a job's wall
time. The table of docs/performance.md, "Metrics without extra training".

    .venv/bin/python bench/metrics_overhead.py [--dataset mnist1d] [--models 32] [--epochs 10] [--repeats 2]

Runs the same job alternately as memscore runs it and as a baseline with those metrics switched
off (the evaluation pass computes only the held-out sums label_quality needs, as before them;
no attack; no jackknife), in one process, and prints the median wall times and their ratio.
Fewer epochs than the recipe's make the training shorter and the overhead's share larger: the
default is a pessimistic setting."""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from unittest import mock

import numpy as np
import torch

from memscore.engine import ensemble, membership, prototypes
from memscore.engine.datasets import load_dataset
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec


def _heldout_only(p: torch.Tensor, inside: torch.Tensor, onehot: torch.Tensor) -> dict[str, torch.Tensor]:
    """The evaluation pass before the group sums: the held-out sums only (in group 0)."""
    held = torch.einsum("gec,ge->ec", p, (~inside).to(p.dtype)).cpu()
    zero = torch.zeros(held.shape[0])
    return {"group_prob_in": torch.zeros_like(held)[None], "group_prob_out": held[None],
            "group_entropy": zero[None], "group_maxprob": zero[None]}  # fmt: skip


@contextmanager
def baseline():
    names = [
        f"{m}{s}" for m in ("model_confidence", "holdout_retraining", "ensemble_agreement") for s in ("", "_stderr")
    ]

    def n_nan(self):
        return {c: np.full(self.n, np.nan) for c in names}

    with (
        mock.patch.object(ensemble, "_group_sums", _heldout_only),
        mock.patch.object(prototypes.PrototypeSums, "add", lambda self, trace: None),
        mock.patch.object(prototypes.PrototypeSums, "scores", n_nan),
        mock.patch.object(membership.MembershipBank, "add", lambda self, *a: None),
    ):
        yield


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument("--model", default="auto")
    ap.add_argument("--models", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    ds = load_dataset(args.dataset)
    spec = ScoringSpec(dataset=args.dataset, model=args.model, models=args.models, epochs=args.epochs)
    run_scoring(ds, spec, device="cpu")  # warm-up: first-call costs (allocator, kernels) in neither
    walls: dict[str, list[float]] = {"baseline": [], "memscore": []}
    for _ in range(args.repeats):
        for name in ("baseline", "memscore"):
            t0 = time.perf_counter()
            if name == "baseline":
                with baseline():
                    result = run_scoring(ds, spec, device="cpu")
            else:
                result = run_scoring(ds, spec, device="cpu")
            walls[name].append(time.perf_counter() - t0)
            if name == "memscore":
                timings = result.summary["timings"]
    base, full = statistics.median(walls["baseline"]), statistics.median(walls["memscore"])
    print(f"job: {args.dataset}, {result.summary['arch']}, {args.models} models, {args.epochs} epochs, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"baseline (no LiRA, no prototypicality metrics): {base:.1f} s (runs: {walls['baseline']})")
    print(f"memscore: {full:.1f} s (runs: {walls['memscore']}); of it membership {timings['membership_seconds']:.2f} s")
    print(f"overhead {100 * (full / base - 1):.1f}% (target < 20%)")


if __name__ == "__main__":
    main()
