"""A scoring job from spec to result files: the steps the workers and `memscore run` share.

    plan = make_plan(ds, spec)                       # arch, recipe, shards
    out = train_shard(ds, spec, plan, s)             # one shard of G models -> TrainOutput
    reducer = Reducer(ds, spec, plan); reducer.add(out.trace) ...
    result = reducer.result()                        # scores, influence, summary
    files = result.to_files()                        # {"scores.parquet": bytes, ...}

The engine writes bytes, never to a store: the services decide where bytes go.
"""

from __future__ import annotations

import io
import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable

import numpy as np

from .catalog import MEMORIZED_AT, SCORE_COLUMNS
from .datasets import Dataset
from .ensemble import Recipe, TrainOutput, make_recipe, resolve_arch, train_ensemble
from .estimators import ScoreAccumulator
from .influence import InfluenceAccumulator, InfluenceResult
from .intervals import count_lower_ge
from .membership import MembershipBank
from .privacy_level import PrivacyLevels, dp_shards, is_dp_shard, train_level
from .privacy_level import shard_model_ids as dp_model_ids
from .reliability import SplitHalf, next_growth
from .spec import ScoringSpec
from .subsets import shard_model_ids, subset_size

MEM_THRESHOLDS = (MEMORIZED_AT, 0.5)  # fractions reported in the summary
HIST_EDGES = np.round(np.linspace(-1.0, 1.0, 21), 2)


@dataclass(frozen=True)
class Plan:
    arch: str
    recipe: Recipe
    shard_size: int
    num_shards: int  # of the FZ models, 0..num_shards-1
    subset_size: int
    dp_shards: tuple[int, ...] = ()  # the DP levels' shards (privacy_level.dp_shards), with `--metrics dp`

    def model_ids(self, shard: int, total_models: int) -> list[int]:
        if is_dp_shard(shard):
            return dp_model_ids(shard)
        return shard_model_ids(total_models, self.shard_size, shard)

    def shards(self) -> list[int]:
        """Every shard of the job: the FZ models', then the DP levels'."""
        return [*range(self.num_shards), *self.dp_shards]


def prepare_dataset(ds: Dataset, spec: ScoringSpec) -> tuple[Dataset, np.ndarray]:
    """The dataset the job trains on: with `label_noise`, a seeded fraction of training labels
    flipped (returns their indices; empty otherwise)."""
    if spec.label_noise <= 0:
        return ds, np.zeros(0, np.int64)
    from .datasets import flip_labels

    return flip_labels(ds, spec.label_noise, spec.seed)


def make_plan(ds: Dataset, spec: ScoringSpec) -> Plan:
    problems = spec.validate()
    if problems:
        raise ValueError("; ".join(f"{f}: {m}" for f, m in problems))
    arch = resolve_arch(spec.model, ds)
    return Plan(
        arch=arch,
        recipe=make_recipe(arch, spec.epochs, spec.batch_size, spec.lr, kind=ds.kind),
        shard_size=spec.effective_shard_size,
        num_shards=spec.num_shards,
        subset_size=subset_size(ds.n_train, spec.ratio),
        dp_shards=tuple(dp_shards(spec.metrics)),
    )


def train_shard(
    ds: Dataset,
    spec: ScoringSpec,
    plan: Plan,
    shard: int,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainOutput:
    """Train shard `shard`'s models; the trace's meta records the shard and dataset."""
    if shard in plan.dp_shards:  # a DP level (privacy_level.py): private models, no weights kept
        trace = train_level(
            ds, plan.arch, plan.recipe, spec.ratio, spec.seed, spec.plan, shard, device, progress, should_stop
        )
        trace.meta.update(shard=shard, dataset=ds.fingerprint())
        return TrainOutput(trace, None)
    if not 0 <= shard < plan.num_shards:
        raise ValueError(f"shard {shard} out of range 0..{plan.num_shards - 1}")
    out = train_ensemble(
        ds,
        plan.arch,
        plan.model_ids(shard, spec.models),
        spec.ratio,
        spec.seed,
        plan.recipe,
        device=device,
        progress=progress,
        should_stop=should_stop,
        keep_weights=spec.keep_checkpoints,
        plan=spec.plan,
        metrics=tuple(spec.metrics),
    )
    out.trace.meta.update(shard=shard, dataset=ds.fingerprint())
    return out


@dataclass
class ScoringResult:
    scores: dict[str, np.ndarray]  # catalog.SCORE_COLUMNS (+ label_flipped with label noise)
    influence: InfluenceResult | None
    summary: dict
    y_train: np.ndarray = field(repr=False, default=None)
    y_test: np.ndarray = field(repr=False, default=None)
    heldout_probs: np.ndarray | None = field(repr=False, default=None)  # (n, C) float32, cleanlab's pred_probs

    def scores_table(self):
        import pyarrow as pa

        return pa.table({k: self.scores[k] for k in self.scores})

    def influence_table(self):
        """One row per (train, test) pair kept: each test example's top-k training examples
        (`topk_rank` 1..k), every pair at or above the threshold (`above_threshold`, the paper's
        raw cut, at most max_influence_pairs) and the pairs significant at the spec's false
        discovery rate (`significant`; `influence_pvalue` is every row's p-value of H0: influence
        ≤ threshold, see engine/significance.py)."""
        import pyarrow as pa

        inf = self.influence
        if inf is None:
            return pa.table({c: pa.array([], t) for c, t in _INFLUENCE_SCHEMA})
        m, k = inf.topk_train.shape
        ok = inf.topk_train.ravel() >= 0
        parts = [  # (train, test, influence, stderr, p-value, topk rank, above threshold) per source
            (inf.topk_train.ravel(), np.repeat(np.arange(m), k), inf.topk_value.ravel(), inf.topk_stderr.ravel(),
             inf.topk_pvalue.ravel(), np.tile(np.arange(1, k + 1), m), np.zeros(m * k, bool)),
            (inf.pairs_train, inf.pairs_test, inf.pairs_value, inf.pairs_stderr, inf.pairs_pvalue,
             np.zeros(len(inf.pairs_train), np.int64), np.ones(len(inf.pairs_train), bool)),
            (inf.sig_train, inf.sig_test, inf.sig_value, inf.sig_stderr, inf.sig_pvalue,
             np.zeros(len(inf.sig_train), np.int64), np.zeros(len(inf.sig_train), bool)),
        ]  # fmt: skip
        parts[0] = tuple(v[ok] for v in parts[0])
        tr, te, val, se, pv, rank, above = (np.concatenate([p[c] for p in parts]) for c in range(7))
        keys, first, inverse = np.unique(tr.astype(np.int64) * m + te, return_index=True, return_inverse=True)
        rank_of, above_of = np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        np.maximum.at(rank_of, inverse, rank)
        np.logical_or.at(above_of, inverse, above)
        tr, te, val, se, pv = (v[first] for v in (tr, te, val, se, pv))
        order = np.lexsort((tr, -val, te))  # by test example, most influential first
        tr, te, pv = tr[order].astype(np.int64), te[order].astype(np.int64), pv[order].astype(np.float64)
        return pa.table(
            {
                "train_index": tr,
                "test_index": te,
                "influence": val[order].astype(np.float32),
                "influence_stderr": se[order].astype(np.float32),
                "topk_rank": rank_of[order].astype(np.int32),
                "above_threshold": above_of[order],
                "significant": pv <= inf.pvalue_cutoff,
                "influence_pvalue": pv,
                "train_label": self.y_train[tr] if len(tr) else np.zeros(0, np.int64),
                "test_label": self.y_test[te] if len(te) else np.zeros(0, np.int64),
            }
        )

    def to_files(self) -> dict[str, bytes]:
        import pyarrow.parquet as pq

        out = {}
        for name, table in (("scores.parquet", self.scores_table()), ("influence.parquet", self.influence_table())):
            buf = io.BytesIO()
            pq.write_table(table, buf)
            out[name] = buf.getvalue()
        if self.heldout_probs is not None:  # loads with np.load; rows in training order
            buf = io.BytesIO()
            np.save(buf, self.heldout_probs.astype(np.float32))
            out["heldout_probs.npy"] = buf.getvalue()
        out["summary.json"] = json.dumps(self.summary, indent=2, sort_keys=True, default=_json_default).encode()
        return out

    def most_memorized(self, top: int = 10) -> list[dict]:
        """Highest memorization first; ties (many examples reach 1.0) by soft memorization."""
        mem = np.nan_to_num(self.scores["memorization"], nan=-np.inf)
        soft = np.nan_to_num(self.scores["memorization_soft"], nan=-np.inf)
        order = np.lexsort((-soft, -mem))[:top]
        return [{c: _py(self.scores[c][i]) for c in self.scores} for i in order]


_INFLUENCE_SCHEMA = (
    ("train_index", "int64"),
    ("test_index", "int64"),
    ("influence", "float32"),
    ("influence_stderr", "float32"),
    ("topk_rank", "int32"),
    ("above_threshold", "bool"),
    ("significant", "bool"),
    ("influence_pvalue", "float64"),
    ("train_label", "int64"),
    ("test_label", "int64"),
)


def _py(v):
    return v.item() if hasattr(v, "item") else v


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


class Reducer:
    """Merges traces one at a time (FZ estimators) and produces the job's results. Works on any
    subset of shards, so running jobs can serve anytime estimates."""

    def __init__(self, ds: Dataset, spec: ScoringSpec, plan: Plan, flipped: np.ndarray | None = None):
        self.ds, self.spec, self.plan = ds, spec, plan
        self.flipped = np.zeros(0, np.int64) if flipped is None else flipped
        self.scores = ScoreAccumulator(ds.n_train, ds.n_test)
        self.influence = InfluenceAccumulator(ds.n_train, ds.n_test)
        self.split_half = SplitHalf(ds.n_train, ds.n_test)  # even vs odd model ids: the job's reliability
        self.membership = MembershipBank(ds.n_train)  # LiRA over the job's own models
        self.privacy = PrivacyLevels(ds.n_train)  # the DP levels (--metrics dp), apart from all of the above
        self.train_seconds = 0.0
        self.adversarial_seconds = 0.0  # part of train_seconds
        self.shards: set[int] = set()
        self.devices: set[str] = set()

    def add(self, trace) -> None:
        fp = trace.meta.get("dataset")
        if fp is not None and fp != self.ds.fingerprint():
            raise ValueError("trace was computed on a different dataset than this job's")
        self.devices.add(str(trace.meta.get("device", "")))
        if "dp_level" in trace.meta:
            self.privacy.add(trace)
            self.shards.add(int(trace.meta["shard"]))
            return
        self.scores.add(trace)
        self.influence.add(trace)
        self.split_half.add(trace)
        self.membership.add(trace.model_ids, trace.masks, trace.train_margin)
        self.train_seconds += float(trace.meta.get("total_seconds", 0.0))
        self.adversarial_seconds += float(trace.meta.get("adversarial_seconds", 0.0))
        if "shard" in trace.meta:
            self.shards.add(int(trace.meta["shard"]))

    def result(self, with_influence: bool = True) -> ScoringResult:
        t0 = time.perf_counter()
        s = self.scores.scores(self.ds.y_train)
        s.update(index=np.arange(self.ds.n_train, dtype=np.int64), label=self.ds.y_train.astype(np.int64))
        t_attack = time.perf_counter()
        membership, risk = self.membership.result(seed=self.spec.seed)
        attack_seconds = time.perf_counter() - t_attack
        s.update(risk)
        s.update(self.privacy.columns(seed=self.spec.seed))
        scores = {c: s[c] for c in SCORE_COLUMNS}
        if len(self.flipped):
            flipped = np.zeros(self.ds.n_train, bool)
            flipped[self.flipped] = True
            scores["label_flipped"] = flipped
        infl = None
        if with_influence and self.spec.influence_top_k + self.spec.max_influence_pairs > 0:
            infl = self.influence.compute(
                self.spec.influence_top_k,
                self.spec.influence_threshold,
                self.spec.max_influence_pairs,
                fdr=self.spec.influence_fdr,
            )
        test_acc = np.array(list(self.scores.test_accuracy.values()))
        summary = {
            "spec": self.spec.to_dict(),
            "arch": self.plan.arch,
            "recipe": asdict(self.plan.recipe),
            "dataset": {
                "name": self.ds.name,
                "fingerprint": self.ds.fingerprint(),
                "n_train": self.ds.n_train,
                "n_test": self.ds.n_test,
                "num_classes": self.ds.num_classes,
                "feature_shape": list(self.ds.feature_shape),
                "kind": self.ds.kind,
                "labels_flipped": int(len(self.flipped)),
            },
            "models_done": self.scores.num_models,
            "models_total": self.spec.models,
            "shards_done": len(self.shards),
            "shards_total": len(self.plan.shards()),
            "final": self.scores.num_models == self.spec.models,
            "mean_test_accuracy": float(test_acc.mean()) if len(test_acc) else None,
            "std_test_accuracy": float(test_acc.std()) if len(test_acc) else None,
            "mean_in_sample_accuracy": _nanmean(s["in_sample_accuracy"]),
            "mean_heldout_accuracy": _nanmean(s["heldout_accuracy"]),
            **memorization_population(self.scores, s, self.spec.seed),
            "influence_pairs_above_threshold": infl.num_above_threshold if infl is not None else 0,
            "influence_pairs_significant": infl.num_significant if infl is not None else 0,
            "influence_fdr": self.spec.influence_fdr,
            "influence_test": infl.test if infl is not None else None,
            "timings": {"train_seconds": self.train_seconds, "reduce_seconds": time.perf_counter() - t0},
            "environment": {
                "devices": sorted(self.devices),
                "python": platform.python_version(),
                "torch": _torch_version(),
            },
        }
        summary["reliability"] = self.split_half.report()
        summary["membership_inference"] = membership
        csr = self.scores.dynamics.summary(self.flipped)
        if csr is not None:
            summary["critical_sample_ratio"] = csr
        adversarial = self.scores.prototypes.adversarial_summary()
        if adversarial is not None:
            summary["adversarial"] = adversarial
            summary["timings"]["adversarial_seconds"] = self.adversarial_seconds
        summary["timings"]["membership_seconds"] = attack_seconds
        dp = self.privacy.summary(scores["privacy_level"])
        if dp is not None:
            summary["dp"] = dp
            summary["timings"]["dp_seconds"] = self.privacy.seconds
        return ScoringResult(scores, infl, summary, self.ds.y_train, self.ds.y_test, self.scores.heldout_probs())


def memorization_population(acc: ScoreAccumulator, s: dict[str, np.ndarray], seed: int = 0) -> dict:
    """The summary's population figures, each beside its honest version: the raw fraction with
    mem >= t (inflated by sampling noise at small K), the noise-corrected fraction with its 95%
    interval (NPMLE deconvolution, engine/intervals.py), and the count whose interval's lower
    end clears 0.25."""
    mem = s["memorization"]
    finite = mem[np.isfinite(mem)]
    hist, _ = np.histogram(finite, bins=HIST_EDGES)
    corrected = acc.corrected_fractions(MEM_THRESHOLDS, seed=seed) if len(finite) else None
    return {
        "mean_memorization": _nanmean(mem),
        "fraction_memorization_ge": {
            str(t): float((finite >= t).mean()) if len(finite) else None for t in MEM_THRESHOLDS
        },
        "fraction_memorization_ge_corrected": {
            str(t): (
                {k: _finite_or_none(corrected["fractions"][t][k]) for k in ("estimate", "lower", "upper")}
                if corrected
                else None
            )
            for t in MEM_THRESHOLDS
        },
        "fraction_memorization_ge_corrected_method": corrected["method"] if corrected else None,
        "count_memorization_lower_ge_0_25": count_lower_ge(s["memorization_lower"], MEMORIZED_AT),
        "examples_without_estimate": int((~np.isfinite(mem)).sum()),
        "memorization_histogram": {"edges": HIST_EDGES.tolist(), "counts": hist.tolist()},
    }


def _finite_or_none(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _nanmean(a: np.ndarray):
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else None


def _torch_version() -> str:
    import torch

    return torch.__version__


def run_scoring(
    ds: Dataset,
    spec: ScoringSpec,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    traces_out: list | None = None,
) -> ScoringResult:
    """The whole job in-process: train every shard, merge, reduce. A self-stopping spec
    (`until_reliability`) then adds shards while `reliability.next_growth` says so, as the
    distributed reduce does; the summary's spec has the models trained, `stopped_because` why
    it ended, `reliability_history` the reliability and time at each reduce.
    `progress(models_done, models_total)`; the total grows with the job."""
    t0 = time.perf_counter()
    ds, flipped = prepare_dataset(ds, spec)
    plan = make_plan(ds, spec)
    if spec.until_reliability:  # fixed at the start, as the gateway does: model k's shard never changes
        spec = replace(spec, shard_size=plan.shard_size)
    reducer = Reducer(ds, spec, plan, flipped)
    first, history = 0, []
    while True:
        for shard in range(first, plan.num_shards):
            out = train_shard(ds, spec, plan, shard, device, _shard_progress(progress, reducer, plan, spec, shard))
            reducer.add(out.trace)
            if traces_out is not None:
                traces_out.append(out.trace)
        for shard in plan.dp_shards if first == 0 else ():  # the DP levels, once
            out = train_shard(ds, spec, plan, shard, device, _shard_progress(progress, reducer, plan, spec, shard))
            reducer.add(out.trace)
            if traces_out is not None:
                traces_out.append(out.trace)
        growth = next_growth(spec, reducer.split_half.report())
        history.append({"models": spec.models, "reliability": growth.reliability, "seconds": time.perf_counter() - t0})
        if not growth.add_models:
            break
        first = plan.num_shards
        spec = replace(spec, models=spec.models + growth.add_models)
        plan = make_plan(ds, spec)
        reducer.spec, reducer.plan = spec, plan
    result = reducer.result()
    result.summary["stopped_because"] = growth.stopped_because
    if spec.until_reliability:  # each reduce: models, the stopping score's reliability, seconds since the start
        result.summary["reliability_history"] = history
    result.summary["timings"]["wall_seconds"] = time.perf_counter() - t0
    return result


def _shard_progress(progress, reducer: "Reducer", plan: Plan, spec: ScoringSpec, shard: int):
    """Progress in models, the DP levels' models (`--metrics dp`) counted with the job's."""
    dp_done = sum(len(lv.test_accuracy) for lv in reducer.privacy.levels.values())
    done, g = reducer.scores.num_models + dp_done, len(plan.model_ids(shard, spec.models))
    total = spec.models + sum(len(plan.model_ids(s, spec.models)) for s in plan.dp_shards)

    def report(step: int, steps: int) -> None:
        if progress is not None:
            progress(done + g * step / steps, total)

    return report


def merge_traces(ds: Dataset, spec: ScoringSpec, traces: Iterable, flipped=None) -> ScoringResult:
    """Reduce already-computed traces (any order, each once)."""
    plan = make_plan(ds, spec)
    reducer = Reducer(ds, spec, plan, flipped)
    for t in traces:
        reducer.add(t)
    return reducer.result()
