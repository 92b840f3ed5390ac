"""A trace: what one shard of G subset models left behind, and all the estimators need.

For each member g (global model id `model_ids[g]`) and every training example i / test
example j: whether i was in its subset (`masks`), whether it predicts the true label
(`train_correct`, `test_correct`), the predicted class (`train_pred`, `test_pred`) and the
true-class **margin** (`train_margin`, `test_margin`)

    φ = logit_y − logsumexp_{c≠y} logit_c  =  log p_y − log(1 − p_y),

the logit-scaled confidence LiRA uses (Carlini et al. 2022). A float32 probability saturates at
1 once φ > ~17; the margin keeps that information, and p_y = sigmoid(φ) is derived from it.
`heldout_prob_sum[i]` is the sum of the predicted distributions of this shard's models that
held training example i out (n × C), so a reducer only adds them up to get the mean held-out
distribution (cleanlab's out-of-sample `pred_probs`). The `group_*` arrays are the same kind of
sums per jackknife group (model id mod J, engine/prototypes.py): of the predicted distributions of
the members that trained on / held out each training example, of their entropies and of their max
probabilities, from which the prototypicality metrics and their standard errors are computed.

Traces serialise to a single `.npz` blob so a store can write them atomically with one put.
Format 1 (probabilities, no predicted class, no held-out distributions) stays readable: its
margins are the logits of its probabilities, its predicted classes -1 (unknown).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

TRACE_FORMAT = 2
READABLE_FORMATS = (1, 2)
# Largest p_y below 1 and smallest above 0 in float32: the margins a format-1 probability maps to.
_P_MAX, _P_MIN = float(np.float32(1) - np.finfo(np.float32).epsneg), float(np.finfo(np.float32).tiny)


# Per-group sums (engine/prototypes.py): (J, n, C), (J, n, C), (J, n), (J, n) float32; absent in
# traces written before them (their metrics are then NaN).
GROUP_FIELDS = ("group_prob_in", "group_prob_out", "group_entropy", "group_maxprob")
# Per member and training example, float32 (G, n), only in jobs that opt into them: the distance to
# the nearest adversarial example (engine/adversarial.py; eps_max where none was found within it).
ADV_FIELDS = ("adv_l2", "adv_linf")
# Learning dynamics (engine/dynamics.py), only in jobs that opt into them, bool: per snapshot,
# member and training example whether it was classified correctly (S, G, n); per snapshot, member
# and CSR-sample example whether it was critical (S, G, s); at the end, critical (G, n).
SNAP_FIELDS = ("snap_correct", "snap_critical", "critical_final")


def margin_of_prob(p: np.ndarray) -> np.ndarray:
    """φ = log p − log(1 − p), float32, with p clipped into float32's open interval (0, 1)."""
    p = np.clip(np.asarray(p, np.float64), _P_MIN, _P_MAX)
    return (np.log(p) - np.log1p(-p)).astype(np.float32)


def prob_of_margin(phi: np.ndarray) -> np.ndarray:
    """p_y = sigmoid(φ), float32."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-np.asarray(phi, np.float64)))).astype(np.float32)


def _unpack_bits(z, name: str) -> np.ndarray | None:
    if name not in z.files:
        return None
    shape = tuple(int(v) for v in z[name + "_shape"])
    return np.unpackbits(z[name], count=int(np.prod(shape))).astype(bool).reshape(shape)


@dataclass
class Trace:
    model_ids: np.ndarray  # int64 (G,)
    masks: np.ndarray  # bool (G, n)
    train_correct: np.ndarray  # bool (G, n)
    train_margin: np.ndarray  # float32 (G, n), φ of the true class
    test_correct: np.ndarray  # bool (G, m)
    test_margin: np.ndarray  # float32 (G, m)
    train_pred: np.ndarray | None = None  # int32 (G, n), predicted class; -1 = unknown
    test_pred: np.ndarray | None = None  # int32 (G, m)
    heldout_prob_sum: np.ndarray | None = None  # float32 (n, C): Σ over members with i held out
    group_prob_in: np.ndarray | None = None  # float32 (J, n, C), GROUP_FIELDS
    group_prob_out: np.ndarray | None = None
    group_entropy: np.ndarray | None = None  # float32 (J, n)
    group_maxprob: np.ndarray | None = None
    adv_l2: np.ndarray | None = None  # float32 (G, n), ADV_FIELDS
    adv_linf: np.ndarray | None = None
    snap_correct: np.ndarray | None = None  # bool (S, G, n), SNAP_FIELDS
    snap_critical: np.ndarray | None = None  # bool (S, G, s)
    critical_final: np.ndarray | None = None  # bool (G, n)
    meta: dict = field(default_factory=dict)  # spec fingerprint, timings, recipe

    @classmethod
    def from_probs(cls, model_ids, masks, train_correct, train_prob, test_correct, test_prob, meta=None) -> "Trace":
        """A trace from true-class probabilities (format 1's content): margins from their logits."""
        return cls(
            model_ids=np.asarray(model_ids, np.int64),
            masks=masks,
            train_correct=train_correct,
            train_margin=margin_of_prob(train_prob),
            test_correct=test_correct,
            test_margin=margin_of_prob(test_prob),
            meta=dict(meta or {}),
        )

    @property
    def num_models(self) -> int:
        return int(self.model_ids.shape[0])

    @property
    def train_prob(self) -> np.ndarray:
        """True-class probability per member and training example, float32 (G, n)."""
        return prob_of_margin(self.train_margin)

    @property
    def test_prob(self) -> np.ndarray:
        return prob_of_margin(self.test_margin)

    @property
    def test_accuracy(self) -> np.ndarray:
        """Per-member test accuracy, float64 (G,)."""
        return self.test_correct.mean(axis=1)

    def select(self, rows: np.ndarray) -> "Trace":
        """The trace of members `rows` only (indices or a bool mask over the G members).
        `heldout_prob_sum` and the group sums are sums over all members, so they are dropped
        unless every member is kept."""
        rows = np.arange(self.num_models)[rows]
        keep_all = len(rows) == self.num_models and (rows == np.arange(self.num_models)).all()

        def pick(a):
            return None if a is None else a[rows]

        return Trace(
            model_ids=self.model_ids[rows],
            masks=self.masks[rows],
            train_correct=self.train_correct[rows],
            train_margin=self.train_margin[rows],
            test_correct=self.test_correct[rows],
            test_margin=self.test_margin[rows],
            train_pred=pick(self.train_pred),
            test_pred=pick(self.test_pred),
            **{k: pick(getattr(self, k)) for k in (*ADV_FIELDS, "critical_final")},
            **{k: None if getattr(self, k) is None else getattr(self, k)[:, rows] for k in SNAP_FIELDS[:2]},
            heldout_prob_sum=self.heldout_prob_sum if keep_all else None,
            **{k: getattr(self, k) if keep_all else None for k in GROUP_FIELDS},
            meta=dict(self.meta),
        )

    def to_bytes(self) -> bytes:
        G, n = self.masks.shape
        m = self.test_correct.shape[1]
        arrays = dict(
            model_ids=self.model_ids.astype(np.int64),
            masks=np.packbits(self.masks, axis=1),
            train_correct=np.packbits(self.train_correct, axis=1),
            train_margin=self.train_margin.astype(np.float32),
            test_correct=np.packbits(self.test_correct, axis=1),
            test_margin=self.test_margin.astype(np.float32),
            shape=np.array([n, m], dtype=np.int64),
            meta=np.frombuffer(json.dumps({"format": TRACE_FORMAT, **self.meta}).encode(), dtype=np.uint8),
        )
        for name in ("train_pred", "test_pred"):
            v = getattr(self, name)
            if v is not None:
                arrays[name] = v.astype(np.int32)
        for name in ("heldout_prob_sum", *GROUP_FIELDS, *ADV_FIELDS):
            v = getattr(self, name)
            if v is not None:
                arrays[name] = v.astype(np.float32)
        for name in SNAP_FIELDS:  # bits, with their shape
            v = getattr(self, name)
            if v is not None:
                arrays[name] = np.packbits(v.astype(bool).ravel())
                arrays[name + "_shape"] = np.array(v.shape, np.int64)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Trace":
        with np.load(io.BytesIO(blob)) as z:
            n, m = (int(v) for v in z["shape"])
            meta = json.loads(z["meta"].tobytes().decode())
            fmt = meta.pop("format", None)
            if fmt not in READABLE_FORMATS:
                raise ValueError(f"trace format {fmt!r} was written by an incompatible memscore version")
            masks = np.unpackbits(z["masks"], axis=1, count=n).astype(bool)
            train_correct = np.unpackbits(z["train_correct"], axis=1, count=n).astype(bool)
            test_correct = np.unpackbits(z["test_correct"], axis=1, count=m).astype(bool)
            if fmt == 1:
                return cls.from_probs(
                    z["model_ids"], masks, train_correct, z["train_prob"], test_correct, z["test_prob"], meta
                )
            return cls(
                model_ids=z["model_ids"],
                masks=masks,
                train_correct=train_correct,
                train_margin=z["train_margin"],
                test_correct=test_correct,
                test_margin=z["test_margin"],
                train_pred=z["train_pred"] if "train_pred" in z.files else None,
                test_pred=z["test_pred"] if "test_pred" in z.files else None,
                **{k: z[k] if k in z.files else None for k in ("heldout_prob_sum", *GROUP_FIELDS, *ADV_FIELDS)},
                **{k: _unpack_bits(z, k) for k in SNAP_FIELDS},
                meta=meta,
            )
