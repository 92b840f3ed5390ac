"""A trace: what one shard of G subset models left behind, and all the estimators need.

For each member g (global model id `model_ids[g]`) and every training example i / test
example j: whether i was in its subset (`masks`), whether it predicts the true label
(`train_correct`, `test_correct`), and the probability it gives the true label
(`train_prob`, `test_prob`). Traces serialise to a single `.npz` blob so a store can write
them atomically with one put.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

TRACE_FORMAT = 1


@dataclass
class Trace:
    model_ids: np.ndarray  # int64 (G,)
    masks: np.ndarray  # bool (G, n)
    train_correct: np.ndarray  # bool (G, n)
    train_prob: np.ndarray  # float32 (G, n)
    test_correct: np.ndarray  # bool (G, m)
    test_prob: np.ndarray  # float32 (G, m)
    meta: dict = field(default_factory=dict)  # spec fingerprint, timings, recipe

    @property
    def num_models(self) -> int:
        return int(self.model_ids.shape[0])

    @property
    def test_accuracy(self) -> np.ndarray:
        """Per-member test accuracy, float64 (G,)."""
        return self.test_correct.mean(axis=1)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            model_ids=self.model_ids.astype(np.int64),
            masks=np.packbits(self.masks, axis=1),
            train_correct=np.packbits(self.train_correct, axis=1),
            train_prob=self.train_prob.astype(np.float32),
            test_correct=np.packbits(self.test_correct, axis=1),
            test_prob=self.test_prob.astype(np.float32),
            shape=np.array([self.masks.shape[1], self.test_correct.shape[1]], dtype=np.int64),
            meta=np.frombuffer(json.dumps({"format": TRACE_FORMAT, **self.meta}).encode(), dtype=np.uint8),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Trace":
        with np.load(io.BytesIO(blob)) as z:
            n, m = (int(v) for v in z["shape"])
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.pop("format", None) != TRACE_FORMAT:
                raise ValueError("trace was written by an incompatible memscore version")
            return cls(
                model_ids=z["model_ids"],
                masks=np.unpackbits(z["masks"], axis=1, count=n).astype(bool),
                train_correct=np.unpackbits(z["train_correct"], axis=1, count=n).astype(bool),
                train_prob=z["train_prob"],
                test_correct=np.unpackbits(z["test_correct"], axis=1, count=m).astype(bool),
                test_prob=z["test_prob"],
                meta=meta,
            )
