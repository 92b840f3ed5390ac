"""How each model of the zoo is trained (its recipe), as plain data: the gateway sizes a job
from these without importing torch (engine/cost.py), and the trainer (ensemble.py) follows
them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .catalog import DEFAULT_ARCH


@dataclass(frozen=True)
class Recipe:
    """How one subset model is trained. Training length is max(epochs, min_steps): small
    subsets get enough optimisation steps to fit their data (labels noise included), as the
    paper's models do (mean in-sample accuracy near 100%)."""

    epochs: int  # passes over the model's own subset
    min_steps: int  # at least this many optimisation steps, whatever the subset size
    batch_size: int  # examples per model per step
    lr: float  # peak learning rate (AdamW), after linear warm-up
    weight_decay: float  # AdamW decoupled decay
    warmup: float  # fraction of steps with linear warm-up; then linear decay to 0
    augment: bool  # images of 16 px and more: random translation by size/8 px (reflect pad), optional flip
    flip: bool  # horizontal flips (off for digits, where a flip changes meaning)
    # Stop a model once it fits its subset: every example of one epoch's worth of consecutive
    # batches has true-class probability above 1/2 (step_options.FitStop). A group ends when all
    # its models have stopped.
    stop_when_fit: bool = False
    # Every model of a group steps on one shared batch of round(batch_size / ratio) examples of the
    # whole training set, each counting only its own subset's members (engine/shared_batches.py):
    # no per-model gather, one matrix product for all the models of a linear head. Vectors only.
    shared_batches: bool = False


RECIPES = {
    "mlp": Recipe(
        epochs=60, min_steps=1500, batch_size=64, lr=2e-3, weight_decay=0.0, warmup=0.05, augment=False, flip=False
    ),
    "cnn1d": Recipe(
        epochs=100, min_steps=1500, batch_size=64, lr=3e-3, weight_decay=0.0, warmup=0.05, augment=False, flip=False
    ),
    "resnet": Recipe(
        epochs=40, min_steps=1000, batch_size=64, lr=2e-3, weight_decay=0.0, warmup=0.05, augment=True, flip=False
    ),
    # Multinomial logistic regression is convex: the recipe only has to reach its optimum, and
    # large batches get there in fewer, cheaper steps (what makes 256 heads on 50,000 embeddings
    # affordable on a CPU). Mean in-sample accuracy at r = 0.7 (CPU; tests/engine/test_models.py
    # checks the first two): 1.000 on 2000 Gaussian-blob 512-d embeddings of 10 classes (held
    # out 0.165: memorized), 0.996 on digits, 0.387 on mnist1d (a linear model's ceiling: 60
    # epochs of 64 reach 0.389); on 50,000 × 512 blobs (class means 0.06·N(0, 1) per
    # dimension, unit noise) 0.4863 after these 2740 steps, against 0.4870 after 30 epochs of
    # 512 and 0.4839 after 10 epochs of 64. lr 1e-2 stopped short (digits 0.985 at batch 64).
    # (Measured with per-model batches; on shared batches, since, the tests' figures hold and
    # bench/embeddings.py's 50,000 × 512 set gives 0.910 in-sample, 0.852 held out.)
    "linear": Recipe(
        epochs=20,
        min_steps=1000,
        batch_size=256,
        lr=3e-2,
        weight_decay=0.0,
        warmup=0.05,
        augment=False,
        flip=False,
        shared_batches=True,
    ),
}


def base_recipe(arch: str, kind: str = "") -> Recipe:
    """The default recipe of `arch` on data of `kind` (vector, sequence, image). A model the zoo
    does not have (torchvision/<name>, plugins) gets the recipe of the zoo's model for the data's
    kind (catalog.DEFAULT_ARCH: images get the resnet's), its builder's `recipe` attribute on top."""
    if arch in RECIPES:
        return RECIPES[arch]
    from .registry import recipe_overrides  # loads a plugin's builder: its `recipe` attribute

    return replace(RECIPES[DEFAULT_ARCH.get(kind, "mlp")], **recipe_overrides(arch))


def make_recipe(arch: str, epochs: int = 0, batch_size: int = 0, lr: float = 0.0, kind: str = "") -> Recipe:
    """The arch's default recipe (`base_recipe`) with the user's non-zero overrides. An explicit
    `epochs` drops the min_steps floor: the user asked for exactly that much training."""
    r = base_recipe(arch, kind)
    if epochs:
        r = replace(r, epochs=epochs, min_steps=0)
    if batch_size:
        r = replace(r, batch_size=batch_size)
    if lr:
        r = replace(r, lr=lr)
    return r


def total_steps(recipe: Recipe, subset_size: int) -> int:
    batch = min(recipe.batch_size, subset_size)
    return max(recipe.epochs * math.ceil(subset_size / batch), recipe.min_steps)


# The character language model of an exposure job (lm.train_lm, as exposure.py calls it):
# Adam on random windows of LM_SEQ_LEN + 1 characters, LM_BATCH_SIZE windows a step. Default
# length: LM_DEFAULT_EPOCHS passes' worth of windows, within LM_STEPS_RANGE steps. On the
# built-in corpus (~325 steps) this gives the paper's picture, exposure rising with insertions:
# `the pin is {dddd}` at t = 0/1/4/16/64 -> 1.6/1.3/4.5/10.7/13.3 bits (one seed, measured at
# 300 steps, 2x256 LSTM, 40 s on 2 CPU threads). Training to convergence (1000 steps, 0.5
# bits/char) memorises the corpus and every canary: even t = 1 reaches 11 bits.
LM_BATCH_SIZE = 32
LM_SEQ_LEN = 64
LM_DEFAULT_EPOCHS = 15
LM_STEPS_RANGE = (200, 20_000)


def lm_steps(
    corpus_chars: int, steps: int, epochs: float, batch_size: int = LM_BATCH_SIZE, seq_len: int = LM_SEQ_LEN
) -> int:
    """`steps` if given, else `epochs` passes' worth of windows (epochs·chars/(batch·seq_len)),
    else LM_DEFAULT_EPOCHS' worth clipped to LM_STEPS_RANGE."""
    if steps > 0:
        return steps
    if epochs > 0:
        return max(1, math.ceil(epochs * corpus_chars / (batch_size * seq_len)))
    lo, hi = LM_STEPS_RANGE
    return min(hi, max(lo, math.ceil(LM_DEFAULT_EPOCHS * corpus_chars / (batch_size * seq_len))))


# The adversarial metrics' search (engine/adversarial.py), here so the gateway sizes a job that
# opts into them without importing torch (engine/cost.py): per norm, one PGD at eps_max and
# ADV_SEARCH_STEPS bisection steps, each ADV_PGD_STEPS forward+backward passes over every
# (model, training example) pair.
ADV_PGD_STEPS = 10  # enough for a step of 2.5·ε/steps to cross the ball 2.5 times
ADV_SEARCH_STEPS = 8  # bisection steps: resolution eps_max / 256
ADV_NORMS = ("l2", "linf")
ADV_BATCH = 256  # examples per chunk: each PGD step runs G × ADV_BATCH inputs forward and backward


def adversarial_passes() -> int:
    """Forward+backward passes per (model, training example) of the adversarial metrics."""
    return len(ADV_NORMS) * (1 + ADV_SEARCH_STEPS) * ADV_PGD_STEPS
