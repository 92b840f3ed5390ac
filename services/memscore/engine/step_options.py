"""How the trainer's vectorised step runs, beside what it computes: per-model early stopping
(`FitStop`, Recipe.stop_when_fit), and the execution options of `Speed` (fused AdamW,
torch.compile through `Compiled`, bf16 autocast, channels-last) that leave every model what it
is (bench/throughput.py measures each; docs/performance.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

FIT_LOSS = 0.6931471805599453  # ln 2: an example is fit when its true-class probability is above 1/2


class FitStop:
    """Per-model early stopping (`Recipe.stop_when_fit`): model g stops, with the weights it
    has at that step, once every example of `patience` consecutive batches (one epoch) was
    fit; the plain loop (reference.py) stops the same model at the same step, so a model does
    not depend on its group. Stopped models' rows are put back after each optimiser step (the
    group's kernels still run on them) until the whole group has stopped and training ends."""

    def __init__(self, params: dict[str, torch.Tensor], patience: int):
        g = next(iter(params.values())).shape[0]
        dev = next(iter(params.values())).device
        self.params, self.patience = params, patience
        self.streak = torch.zeros(g, dtype=torch.int64, device=dev)
        self.stopped = torch.zeros(g, dtype=torch.bool, device=dev)
        self.kept = {k: torch.zeros_like(v) for k, v in params.items()}
        self.stop_steps = [None] * g

    def see(self, per_example_loss: torch.Tensor, step: int) -> None:
        """Before step `step`'s update, with its (G, B) training losses."""
        fit = per_example_loss.detach().amax(1) < FIT_LOSS
        self.streak = (self.streak + 1) * fit
        new = (self.streak >= self.patience) & ~self.stopped
        if new.any():
            with torch.no_grad():
                for k, v in self.params.items():
                    self.kept[k][new] = v[new]
            self.stopped |= new
            for g in new.nonzero().flatten().tolist():
                self.stop_steps[g] = step

    def hold(self) -> None:
        """After an update: the stopped models keep their weights."""
        if self.stopped.any():
            with torch.no_grad():
                for k, v in self.params.items():
                    v[self.stopped] = self.kept[k][self.stopped]

    @property
    def all_stopped(self) -> bool:
        return bool(self.stopped.all())


@dataclass(frozen=True)
class Speed:
    """How the vectorised step is executed; none of it changes what a model is (the scores
    agree within the vectorised == sequential tolerances, tests/engine/test_ensemble.py).
    bench/throughput.py measures each option (docs/performance.md)."""

    # torch.compile the vmapped forward (its backward through AOTAutograd) and evaluation; off:
    # on the CPU it made steps slower (docs/performance.md)
    compile: bool = False
    fused: bool = True  # AdamW's fused kernel over the stacked parameters (CPU: 1.07x cnn1d, 1.3x MLP)
    channels_last: bool = False  # image data resident in channels-last layout
    bf16: bool | None = None  # bf16 autocast of forward passes; None: on GPUs only

    def amp(self, dev: torch.device) -> bool:
        return dev.type == "cuda" if self.bf16 is None else self.bf16


class Compiled:
    """`torch.compile(fn)`, and `fn` itself for good once compiling or running the compiled
    code fails (an eager step is always correct); `seconds` is the wall time of the calls that
    compiled (the first of each input shape), `error` what made it fall back."""

    def __init__(self, fn):
        self.fn, self.compiled, self.seconds, self.error = fn, torch.compile(fn, dynamic=False), 0.0, None
        self.shapes: set = set()

    def __call__(self, *args):
        if self.compiled is None:
            return self.fn(*args)
        shape = tuple(a.shape for a in args if isinstance(a, torch.Tensor))
        t = time.perf_counter()
        try:
            out = self.compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure: run eager from now on
            self.compiled, self.error = None, f"{type(e).__name__}: {e}"[:500]
            return self.fn(*args)
        if shape not in self.shapes:
            self.shapes.add(shape)
            self.seconds += time.perf_counter() - t
        return out
