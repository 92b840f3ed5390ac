"""LiRA (engine/membership.py) on planted leakage, at several bank sizes: the table of
docs/validation.md, "Membership inference (LiRA) on planted leakage".

    .venv/bin/python bench/membership.py [--n 2000] [--models 16,32,64,128]

Each example is in half of the models; 10% of the examples leak (members' margins shifted by
2 in units of about one noise SD). Prints, per bank size, the pooled AUC with its interval, the
chance AUC, TPR at 0.1% and 1% FPR, the leaky examples found by Benjamini–Hochberg at 5%, the
false finds, the mean privacy_risk of leaky and safe examples, and the time. Then the null
banks' calibration (no leakage at all)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from memscore.engine.membership import membership_inference, planted_bank
from memscore.engine.significance import benjamini_hochberg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--models", default="16,32,64,128")
    args = ap.parse_args()
    print(
        "| K | variance | AUC [95%] | chance AUC | TPR @ 0.1% FPR | TPR @ 1% FPR | leaky found (BH 5%) "
        "| false finds | mean privacy_risk, leaky / safe | time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in (int(v) for v in args.models.split(",")):
        masks, margins, delta, _, _ = planted_bank(k, args.n, 2.0, 0.1, seed=11)
        t0 = time.perf_counter()
        mi = membership_inference(masks, margins)
        took = time.perf_counter() - t0
        leaky = delta > 0
        p = mi.privacy_risk_pvalue
        cut = benjamini_hochberg(p[np.isfinite(p)], 0.05)
        found = p <= cut if np.isfinite(cut) else np.zeros(args.n, bool)
        s = mi.summary()
        print(
            f"| {k} | {s['variance']} | {s['auc']:.3f} [{s['auc_interval'][0]:.3f}, {s['auc_interval'][1]:.3f}] "
            f"| {s['chance_auc']:.3f} | {s['tpr_at_fpr_0_001']:.3f} | {s['tpr_at_fpr_0_01']:.3f} "
            f"| {int(found[leaky].sum())} / {int(leaky.sum())} | {int(found[~leaky].sum())} "
            f"| {np.nanmean(mi.privacy_risk[leaky]):.2f} / {np.nanmean(mi.privacy_risk[~leaky]):.3f} | {took:.1f} s |"
        )
    for k in (16, 64):
        masks, margins, *_ = planted_bank(k, args.n, 0.0, 0.0, seed=7)
        mi = membership_inference(masks, margins)
        p = mi.privacy_risk_pvalue
        print(
            f"null K={k}: p<0.05 {np.mean(p < 0.05):.3f}, p<0.01 {np.mean(p < 0.01):.3f}, BH finds "
            f"{mi.significant_examples()}, AUC {mi.auc:.4f}, chance {mi.chance_auc:.4f}"
        )


if __name__ == "__main__":
    main()
