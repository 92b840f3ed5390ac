"""Run as a script: peak RSS growth of training one shard of G models at once on the CPU, as
train_ensemble does on a GPU (all G at once, evaluation passes of cost.EVAL_BATCH examples),
printed as JSON beside engine.cost's estimate. A fresh process per measurement, so one peak
does not hide another (tests/engine/test_cost.py, bench/admission.py).

    python tests/engine/shard_memory.py ARCH '[shape]' N_TRAIN N_TEST CLASSES G EPOCHS
"""

from __future__ import annotations

import json
import resource
import sys


def peak_rss_bytes() -> int:
    """This process's peak resident set. Linux's VmHWM, which starts afresh with the exec'd
    program: getrusage's ru_maxrss is carried across fork and exec, so a child of a large
    process (the test suite's pytest, 1-2 GB) would report its parent's size as its own
    baseline and under-measure the shard's growth."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(arch: str, shape: tuple[int, ...], n: int, m: int, classes: int, g: int, epochs: int) -> dict:
    import numpy as np
    import torch

    from memscore.engine.cost import EVAL_BATCH, RUNTIME_BYTES, DatasetFacts, job_cost
    from memscore.engine.datasets import Dataset
    from memscore.engine.ensemble import make_recipe, train_ensemble
    from memscore.engine.spec import ScoringSpec

    rng = np.random.default_rng(0)
    kind = "vector" if arch == "mlp" else ("sequence" if len(shape) < 3 else "image")
    ds = Dataset(
        name="synthetic",
        x_train=rng.standard_normal((n, *shape)).astype(np.float32),
        y_train=rng.integers(0, classes, n),
        x_test=rng.standard_normal((m, *shape)).astype(np.float32),
        y_test=rng.integers(0, classes, m),
        num_classes=classes,
        kind=kind,
    )
    torch.set_num_threads(2)
    # one tiny run first: the framework's one-off allocations belong to the baseline
    tiny = make_recipe(arch, epochs=1, batch_size=8)
    train_ensemble(ds, arch, [0], 0.7, seed=0, recipe=tiny, device="cpu", group_size=1, eval_batch=8)
    base = peak_rss_bytes()
    recipe = make_recipe(arch, epochs=epochs)
    ids = list(range(g))
    train_ensemble(ds, arch, ids, 0.7, seed=0, recipe=recipe, device="cpu", group_size=g, eval_batch=EVAL_BATCH)
    peak = peak_rss_bytes()
    cost = job_cost(
        ScoringSpec(dataset="x", model=arch, models=g, epochs=epochs), DatasetFacts(n, m, classes, kind, shape)
    )
    return {
        "arch": arch,
        "shape": list(shape),
        "n_train": n,
        "n_test": m,
        "models": g,
        "measured_bytes": peak - base,
        "estimate_bytes": cost.shard_bytes(g),
        "estimate_without_runtime_bytes": cost.shard_bytes(g) - RUNTIME_BYTES,
    }


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(measure(a[0], tuple(json.loads(a[1])), *map(int, a[2:7]))))
