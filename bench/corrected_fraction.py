"""Noise-corrected memorization fractions against planted truth (engine/intervals.py).

True (p_in, p_out) per example from a known mixture (the one tests/engine/test_intervals.py
plants): 70% typical (p_in ≈ p_out ≈ 0.9), 15% memorized (p_in ≈ 1, p_out in 0.2..0.5), 15%
hard (p_out ≈ 0.4, p_in a little above). K models on 70% subsets give n_in ~ Bin(K, 0.7),
n_out = K − n_in and binomial counts. For each K and seed: the true fraction with
p_in − p_out ≥ t, the raw fraction (mem_hat ≥ t), `corrected_fractions` with its interval, and
the count of Newcombe lower bounds ≥ 0.25 against the true count; then the runtime at n = 50,000.
First, the coverage of the per-example intervals: exact for Newcombe's (0/1), simulated for
Welch's (soft) over betas and saturated mixtures.

    .venv/bin/python bench/corrected_fraction.py --seeds 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from memscore.engine.intervals import corrected_fractions, count_lower_ge, mean_difference_interval, newcombe_interval

# Values in [0, 1] for the soft score's coverage: betas, and saturated mixtures (a share of
# models at probability exactly 1, as float32 softmax gives) with their means.
SOFT_DISTRIBUTIONS = {
    "Beta(2,2)": (lambda r, k: r.beta(2, 2, k), 0.5),
    "Beta(20,1)": (lambda r, k: r.beta(20, 1, k), 20 / 21),
    "Beta(5,1)": (lambda r, k: r.beta(5, 1, k), 5 / 6),
    "Beta(.5,.5)": (lambda r, k: r.beta(0.5, 0.5, k), 0.5),
    "Beta(1,9)": (lambda r, k: r.beta(1, 9, k), 0.1),
    "Beta(50,.2)": (lambda r, k: r.beta(50, 0.2, k), 50 / 50.2),
    "95% at 1, else Beta(2,2)": (lambda r, k: np.where(r.random(k) < 0.95, 1.0, r.beta(2, 2, k)), 0.975),
    "80% at 1, else Beta(1,3)": (lambda r, k: np.where(r.random(k) < 0.8, 1.0, r.beta(1, 3, k)), 0.85),
}


def planted(K: int, seed: int, n: int):
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.7, 0.15, 0.15])
    p_in, p_out = np.empty(n), np.empty(n)
    sel = kind == 0
    p_out[sel] = rng.beta(18, 2, sel.sum())
    p_in[sel] = p_out[sel] + (1 - p_out[sel]) * rng.beta(2, 8, sel.sum())
    sel = kind == 1
    p_out[sel] = rng.uniform(0.2, 0.5, sel.sum())
    p_in[sel] = rng.beta(40, 1, sel.sum())
    sel = kind == 2
    p_out[sel] = rng.beta(2, 3, sel.sum())
    p_in[sel] = p_out[sel] + (1 - p_out[sel]) * rng.beta(1.5, 4, sel.sum())
    n_in = rng.binomial(K, 0.7, n)
    n_out = K - n_in
    return p_in, p_out, rng.binomial(n_in, p_in), n_in, rng.binomial(n_out, p_out), n_out


def accuracy_table(Ks, n, seeds, thresholds=(0.25, 0.5)):
    print(f"\nn = {n}, {seeds} seeds per K (means over seeds; covered = truth inside the interval)\n")
    print(
        "| K | t | truth | raw | corrected | interval (mean) | covered | mean abs error raw / corrected "
        "| lower ≥ 0.25 / true ≥ 0.25 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for K in Ks:
        rows = {t: [] for t in thresholds}
        counts = []
        for seed in range(seeds):
            p_in, p_out, s_in, n_in, s_out, n_out = planted(K, seed, n)
            r = corrected_fractions(s_in, n_in, s_out, n_out, thresholds, seed=seed)
            for t, f in r["fractions"].items():
                truth = np.mean(p_in - p_out >= t)
                rows[t].append((truth, f["raw"], f["estimate"], f["lower"], f["upper"]))
            lo, _ = newcombe_interval(s_in, n_in, s_out, n_out)
            counts.append((count_lower_ge(lo, 0.25), int(np.sum(p_in - p_out >= 0.25))))
        for t, v in rows.items():
            truth, raw, est, lo, hi = np.array(v).T
            covered = int(np.sum((lo <= truth) & (truth <= hi)))
            c = np.mean(counts, 0)
            print(
                f"| {K} | {t} | {truth.mean():.4f} | {raw.mean():.4f} | {est.mean():.4f} | "
                f"[{lo.mean():.4f}, {hi.mean():.4f}] | {covered}/{len(v)} | "
                f"{np.abs(raw - truth).mean():.4f} / {np.abs(est - truth).mean():.4f} | "
                f"{c[0]:.0f} / {c[1]:.0f} |"
            )


def runtime(Ks, n=50_000):
    print(f"\nruntime of corrected_fractions (defaults: 41×41 grid, 100 EM steps, 50 bootstrap refits), n = {n}\n")
    print("| K | distinct observations | wall s | CPU s | newcombe + count, s |")
    print("|---|---|---|---|---|")
    for K in Ks:
        _, _, s_in, n_in, s_out, n_out = planted(K, 0, n)
        t0, c0 = time.perf_counter(), time.process_time()
        corrected_fractions(s_in, n_in, s_out, n_out)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        count_lower_ge(newcombe_interval(s_in, n_in, s_out, n_out)[0], 0.25)
        distinct = len(np.unique(np.stack([s_in, n_in, s_out, n_out]), axis=1).T)
        print(f"| {K} | {distinct} | {wall:.2f} | {cpu:.2f} | {time.perf_counter() - t0:.3f} |")


def coverage(pairs=((11, 5), (22, 10), (45, 19), (3, 2)), reps=10_000):
    print("\ncoverage of the 95% per-example intervals (n_in, n_out models)\n")
    print("| n_in, n_out | 0/1 Newcombe: mean / min | soft Welch: mean / min / share < 0.90 |")
    print("|---|---|---|")
    ps = np.linspace(0.025, 0.975, 20)
    rng = np.random.default_rng(0)
    for n1, n2 in pairs:
        s1, s2 = np.meshgrid(np.arange(n1 + 1), np.arange(n2 + 1), indexing="ij")
        lo, hi = newcombe_interval(s1, n1, s2, n2)
        exact = [  # every outcome weighted by its binomial probability, over a 20×20 grid of (p_in, p_out)
            (stats.binom.pmf(s1, n1, a) * stats.binom.pmf(s2, n2, b))[(lo <= a - b) & (a - b <= hi)].sum()
            for a in ps
            for b in ps
        ]
        soft = []
        for draw1, m1 in SOFT_DISTRIBUTIONS.values():
            for draw2, m2 in SOFT_DISTRIBUTIONS.values():
                x1, x2 = draw1(rng, reps * n1).reshape(reps, n1), draw2(rng, reps * n2).reshape(reps, n2)
                lo_s, hi_s = mean_difference_interval(x1.sum(1), (x1 * x1).sum(1), n1, x2.sum(1), (x2 * x2).sum(1), n2)
                soft.append(np.mean((lo_s <= m1 - m2) & (m1 - m2 <= hi_s)))
        soft = np.array(soft)
        print(
            f"| {n1}, {n2} | {np.mean(exact):.4f} / {np.min(exact):.4f} | "
            f"{soft.mean():.4f} / {soft.min():.4f} / {np.mean(soft < 0.9):.3f} |"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--ks", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--large-seeds", type=int, default=2, help="seeds at n = 50,000")
    args = ap.parse_args()
    coverage()
    accuracy_table(args.ks, 4000, args.seeds)
    if args.large_seeds:
        accuracy_table([32, 64], 50_000, args.large_seeds)
    runtime([64, 128, 512])


if __name__ == "__main__":
    main()
