"""Anytime estimates: the scores of a running job from the shards finished so far.

One streaming accumulator per job (engine `ScoreAccumulator`, with a `SplitHalf` beside it for
the reliability and a `MembershipBank` for LiRA), to which each newly finished shard's trace is
added once, and the snapshot of the scores it gives, kept until a new shard arrives: asking
again costs only the new shards' traces, and nothing when there are none.

LiRA runs here only up to membership.ANYTIME_MAX_CELLS (model, example) margins and with fewer
resamplings than the reduce's (its intervals are wider, never narrower); a larger job gets its
attack at the reduce. The critical sample ratio is over all sampled examples (the planted-noise
split needs the job's flipped labels, which only the reduce rebuilds).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..engine import dynamics, membership
from ..engine.catalog import MEMORIZED_AT
from ..engine.estimators import ScoreAccumulator
from ..engine.intervals import count_lower_ge
from ..engine.privacy_level import is_dp_shard
from ..engine.reliability import SplitHalf, anytime_fields
from ..engine.traces import Trace
from ..runtime import Runtime
from ..store import layout
from ..store.jobs import JobRecord


@dataclass(frozen=True)
class Snapshot:
    """Per-example scores over a fixed set of finished shards."""

    scores: dict[str, np.ndarray]
    mean_test_accuracy: float
    shards: frozenset
    models: int
    heldout_probs: np.ndarray | None = None  # (n, C) mean held-out distributions (label quality)
    reliability: dict = field(default_factory=dict)  # engine.reliability.SplitHalf.report()
    membership: dict = field(default_factory=dict)  # summary.json's membership_inference, so far
    csr: dict | None = None  # summary.json's critical_sample_ratio (all examples), so far


class AnytimeEstimates:
    def __init__(self, rt: Runtime, max_jobs: int = 16):
        self.rt = rt
        self.max_jobs = max_jobs
        # job_id -> (ScoreAccumulator, SplitHalf, MembershipBank, shards, Snapshot)
        self._jobs: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def shards_available(self, rec: JobRecord) -> list[int]:
        keys = self.rt.objects.list(layout.shard_prefix(rec.job_id))
        shards = (layout.shard_of_trace_key(k) for k in keys)
        # the DP levels' shards (privacy_level.py) are the reduce's alone
        return sorted(s for s in shards if s is not None and s < rec.shards_total and not is_dp_shard(s))

    def snapshot(self, rec: JobRecord) -> Snapshot | None:
        """The scores over every stored trace of the job, or None before the first shard."""
        shards = self.shards_available(rec)
        with self._lock:  # one reader per process folds in new shards; the others wait for it
            acc, halves, bank, seen, snap = self._jobs.pop(rec.job_id, (None, None, None, set(), None))
            try:
                for s in shards:
                    if s in seen:
                        continue
                    t = Trace.from_bytes(self.rt.objects.get_bytes(layout.trace_key(rec.job_id, s)))
                    if acc is None:
                        acc = ScoreAccumulator(t.masks.shape[1], t.test_correct.shape[1])
                        halves = SplitHalf(acc.n, acc.m)
                        bank = membership.MembershipBank(
                            acc.n,
                            membership.ANYTIME_MAX_CELLS,
                            membership.ANYTIME_BOOTSTRAP,
                            membership.ANYTIME_PERMUTATIONS,
                        )
                    acc.add(t)
                    halves.add(t)
                    bank.add(t.model_ids, t.masks, t.train_margin)
                    seen.add(s)
                if acc is not None and (snap is None or snap.shards != seen):
                    test_acc = float(np.mean(list(acc.test_accuracy.values())))
                    mi, risk = bank.result(seed=int(rec.spec.get("seed") or 0))
                    if bank.too_large:
                        mi["skipped"] = "too many margins for an anytime attack; the reduce runs it"
                    snap = Snapshot(
                        {**acc.scores(), **risk},
                        test_acc,
                        frozenset(seen),
                        acc.num_models,
                        acc.heldout_probs(),
                        halves.report(),
                        mi,
                        acc.dynamics.summary(np.zeros(0, np.int64)),
                    )
            finally:
                if acc is not None:
                    self._jobs[rec.job_id] = (acc, halves, bank, seen, snap)
                    while len(self._jobs) > self.max_jobs:
                        self._jobs.popitem(last=False)
            return snap

    def summary(self, rec: JobRecord) -> dict:
        """The job's anytime summary: models so far, mean member test accuracy and, once some
        example has an estimate, mean memorization and the fraction with mem >= 0.25, and the
        split-half reliability once each half has two models. A figure that has no estimate yet
        is absent, never a made-up 0."""
        snap = self.snapshot(rec)
        if snap is None:
            return {}
        mem = snap.scores["memorization"]
        finite = mem[np.isfinite(mem)]
        out = {"models_done": snap.models, "mean_test_accuracy": snap.mean_test_accuracy}
        if len(finite):
            out["mean_memorization"] = float(finite.mean())
            out["fraction_memorized"] = float((finite >= MEMORIZED_AT).mean())
            out["count_memorization_lower_ge_0_25"] = count_lower_ge(snap.scores["memorization_lower"], MEMORIZED_AT)
        out.update(anytime_fields(snap.reliability))
        out.update(membership.anytime_fields(snap.membership))
        out.update(dynamics.anytime_fields(snap.csr))
        return out
