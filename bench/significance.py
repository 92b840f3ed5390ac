"""Significant influence pairs (engine/significance.py): how exact the test is, and how well
Benjamini–Hochberg over all n·m pairs separates planted influence from noise. Numbers are in
docs/validation.md, "Significant influence pairs".

    .venv/bin/python bench/significance.py tables      # grid error, size on the H0 boundary, build time
    .venv/bin/python bench/significance.py simulate    # planted pairs / null data from random masks
    .venv/bin/python bench/significance.py longtail    # planted near-copies, trained MLPs (a few minutes)

Each prints a table and writes `significance_<name>.json` under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import binom

from memscore.engine.influence import InfluenceAccumulator
from memscore.engine.significance import GRID_POINTS, exact_pvalue_table, wald_statistic


def _save(args, name: str, payload: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"significance_{name}.json").write_text(json.dumps(payload, indent=2))


def _reference_table(n_in: int, n_out: int, delta: float, points: int) -> np.ndarray:
    """The same test with a plain `points`-point grid and no refinement."""
    t = wald_statistic(n_in, n_out, delta).ravel()
    _, group = np.unique(-t, return_inverse=True)
    order = np.argsort(group, kind="stable")
    last = np.cumsum(np.bincount(group)) - 1
    s_in, s_out = np.divmod(order, n_out + 1)
    best = np.zeros(len(last))
    for p in np.linspace(max(0, -delta), min(1, 1 - delta), points):
        pmf = binom.pmf(s_in, n_in, min(1.0, p + delta)) * binom.pmf(s_out, n_out, p)
        np.maximum(best, np.cumsum(pmf)[last], out=best)
    return np.minimum(best, 1)[group].reshape(n_in + 1, n_out + 1)


def tables(args) -> dict:
    rows = []
    for K in args.ks:
        n_in, n_out, delta = round(0.7 * K), K - round(0.7 * K), args.threshold
        t0 = time.perf_counter()
        table = exact_pvalue_table(n_in, n_out, delta)
        seconds = time.perf_counter() - t0
        ref = _reference_table(n_in, n_out, delta, 2049)
        small = ref <= 0.05
        rel = np.abs(table[small] - ref[small]) / ref[small]
        p_out = np.linspace(max(0, -delta), min(1, 1 - delta), 1001)[1:-1]
        b_in = binom.pmf(np.arange(n_in + 1)[None], n_in, np.clip(p_out + delta, 0, 1)[:, None])
        b_out = binom.pmf(np.arange(n_out + 1)[None], n_out, p_out[:, None])
        size = {a: float(np.einsum("ga,ab,gb->g", b_in, table <= a, b_out).max() / a) for a in (1e-3, 0.05)}
        rows.append(
            {"K": K, "n_in": n_in, "n_out": n_out, "build_seconds": seconds, "max_rel_error": float(rel.max()),
             "max_size_over_alpha_1e-3": size[1e-3], "max_size_over_alpha_0.05": size[0.05]}
        )  # fmt: skip
        print(rows[-1])
    payload = {"grid_points": GRID_POINTS, "threshold": args.threshold, "rows": rows}
    _save(args, "tables", payload)
    return payload


def _simulate(rng, K, n, m, planted, effect):
    masks = np.argsort(rng.random((K, n)), axis=1) < round(0.7 * n)
    correct = rng.random((K, m)) < rng.uniform(0.05, 0.95, m)
    for i, j in planted:
        correct[:, j] = rng.random(K) < np.where(masks[:, i], 0.5 + effect / 2, 0.5 - effect / 2)
    return masks, correct


def _significant(masks, correct, threshold, q):
    acc = InfluenceAccumulator(masks.shape[1], correct.shape[1])
    acc.add_models(masks, correct)
    res = acc.compute(top_k=0, threshold=threshold, max_pairs=100_000, fdr=q)
    return set(zip(res.sig_train.tolist(), res.sig_test.tolist())), res.num_above_threshold


def simulate(args) -> dict:
    """Random 70% subsets; test example j right with its own probability; `--planted` pairs with
    influence `--effect` (P(right) = ½ ± effect/2); everything else without influence."""
    rows = []
    n, m = args.n, args.m
    for K in args.ks:
        stats = {"precision": [], "recall": [], "fdp_null": [], "above": [], "significant": []}
        for rep in range(args.reps):
            rng = np.random.default_rng([args.seed, K, rep])
            planted = {(int(i), j) for j, i in enumerate(rng.choice(n, args.planted, replace=False))}
            masks, correct = _simulate(rng, K, n, m, planted, args.effect)
            found, above = _significant(masks, correct, args.threshold, args.fdr)
            stats["precision"].append(len(found & planted) / len(found) if found else 1.0)
            stats["recall"].append(len(found & planted) / len(planted))
            stats["above"].append(above)
            stats["significant"].append(len(found))
            null, _ = _significant(masks[rng.permutation(K)], correct, args.threshold, args.fdr)
            stats["fdp_null"].append(float(bool(null)))  # every pair reported on null data is false
        row = {"K": K, **{k: float(np.mean(v)) for k, v in stats.items()}}
        row["fdp_mixed"] = 1 - row["precision"]
        rows.append(row)
        print(row)
    payload = {"config": vars(args) | {"func": None}, "rows": rows}
    _save(args, "simulate", payload)
    return payload


def longtail(args) -> dict:
    """bench/validate.py's planted near-copies of rare longtail test examples, MLPs trained by the
    engine; significant pairs at K = each of --ks (prefixes of one run), and on the same traces
    with the masks permuted across models (no influence left)."""
    import torch
    from validate import plant_near_copies

    from memscore.engine.datasets import load_longtail
    from memscore.engine.ensemble import make_recipe, train_ensemble

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_longtail(seed=args.seed, n_train=args.n_train, n_test=args.n_test, rare_train=(1, 2))
    ds, test_idx, copy_idx = plant_near_copies(base, args.plant, args.seed, 0.03)
    t0 = time.perf_counter()
    recipe = make_recipe("mlp", epochs=args.epochs)
    trace = train_ensemble(ds, "mlp", list(range(max(args.ks))), 0.7, args.seed, recipe, device=args.device).trace
    seconds = time.perf_counter() - t0
    planted = set(zip(copy_idx.tolist(), test_idx.tolist()))
    sub_tr, sub_te = ds.extras["train_subgroup"], ds.extras["test_subgroup"]
    rng, rows = np.random.default_rng(args.seed), []
    for K in args.ks:
        masks, correct = trace.masks[:K], trace.test_correct[:K]
        found, above = _significant(masks, correct, args.threshold, args.fdr)
        same_group = {(i, j) for i, j in found if sub_tr[i] >= 0 and sub_tr[i] == sub_te[j]}
        nulls = [len(_significant(masks[rng.permutation(K)], correct, args.threshold, args.fdr)[0]) for _ in range(5)]
        rows.append(
            {"K": K, "above_threshold": above, "significant": len(found), "planted_found": len(found & planted),
             "planted": len(planted), "precision_planted": len(found & planted) / max(len(found), 1),
             "precision_planted_or_same_subgroup": len(found & (planted | same_group)) / max(len(found), 1),
             "significant_on_permuted_masks": nulls}
        )  # fmt: skip
        print(rows[-1])
    payload = {"config": vars(args) | {"func": None}, "train_seconds": seconds, "rows": rows}
    _save(args, "longtail", payload)
    return payload


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, func, ks in (("tables", tables, "16,32,64,128,256,512"), ("simulate", simulate, "32,64,96,128"),
                           ("longtail", longtail, "32,64,128")):  # fmt: skip
        s = sub.add_parser(name)
        s.add_argument("--out", default="out/validate")
        s.add_argument("--ks", type=_ints, default=_ints(ks))
        s.add_argument("--threshold", type=float, default=0.15)
        s.add_argument("--fdr", type=float, default=0.05)
        s.add_argument("--seed", type=int, default=0)
        s.set_defaults(func=func)
    s = sub.choices["simulate"]
    s.add_argument("--n", type=int, default=400)
    s.add_argument("--m", type=int, default=80)
    s.add_argument("--planted", type=int, default=20)
    s.add_argument("--effect", type=float, default=0.9)
    s.add_argument("--reps", type=int, default=20)
    s = sub.choices["longtail"]
    s.add_argument("--n-train", type=int, default=1000)
    s.add_argument("--n-test", type=int, default=300)
    s.add_argument("--plant", type=int, default=10)
    s.add_argument("--epochs", type=int, default=40)
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
