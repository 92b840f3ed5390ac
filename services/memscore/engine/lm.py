"""Character language models for the Secret Sharer test: training, batched log-perplexity
of canary candidates, and greedy / beam extraction.

Two architectures: `lstm`, the paper's setting (embedding → 2-layer LSTM → linear, Carlini
et al. 2019 §5 train 2-layer LSTMs on PTB), and `transformer`, a small causal (GPT-style,
pre-norm) transformer. Both map (B, T) token ids to (B, T, V) next-token logits.

Log-perplexity convention (what the exposure ranks): for a context c (the format's prefix,
normally preceded by a newline because canaries are inserted as lines) and a candidate
secret s = s_1..s_L,

    Px(s | c) = sum_{i=1..L} -log2 p(s_i | c, s_1..s_{i-1})      (bits)

i.e. the paper's log-perplexity of the whole canary minus the prefix's own term, which is the
same for every candidate of a format and so cannot change any rank.

Reproducibility: on the CPU a seed fixes the initial weights (built on the CPU under a forked
RNG) and every training window, so two runs give identical models. On a GPU cuDNN's LSTM
kernels may differ in the last bits.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .corpus import CharTokenizer
from .ensemble import Cancelled, resolve_device
from .recipes import LM_BATCH_SIZE, LM_DEFAULT_EPOCHS, LM_SEQ_LEN, LM_STEPS_RANGE, lm_steps

ARCHS = ("lstm", "transformer")
LN2 = math.log(2.0)
# Training length: recipes.lm_steps (the gateway sizes exposure jobs with it, without torch).
DEFAULT_EPOCHS, DEFAULT_STEPS_RANGE, resolve_steps = LM_DEFAULT_EPOCHS, LM_STEPS_RANGE, lm_steps


@dataclass(frozen=True)
class LMConfig:
    arch: str  # "lstm" | "transformer"
    vocab_size: int
    embed_dim: int = 64  # lstm: token embedding width (transformer uses `hidden`)
    hidden: int = 256  # lstm: units per layer; transformer: model width
    layers: int = 2
    heads: int = 4  # transformer only
    block_size: int = 128  # transformer only: the longest context it has positions for


class LSTMLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size)

    def forward(self, tokens: torch.Tensor, state=None):
        out, state = self.lstm(self.embed(tokens), state)
        return self.head(out), state


class TransformerLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos = nn.Embedding(cfg.block_size, cfg.hidden)
        layer = nn.TransformerEncoderLayer(
            cfg.hidden, cfg.heads, 4 * cfg.hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size)

    def forward(self, tokens: torch.Tensor, state=None):
        t = tokens.shape[1]
        if t > self.cfg.block_size:
            raise ValueError(
                f"sequence of {t} tokens is longer than the transformer's block size {self.cfg.block_size}"
            )
        x = self.embed(tokens) + self.pos(torch.arange(t, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        return self.head(self.norm(self.blocks(x, mask=mask, is_causal=True))), None


def build_lm(cfg: LMConfig) -> nn.Module:
    if cfg.arch == "lstm":
        return LSTMLM(cfg)
    if cfg.arch == "transformer":
        return TransformerLM(cfg)
    raise ValueError(f"unknown language model {cfg.arch!r}; choose one of {', '.join(ARCHS)}")


def lm_checkpoint(model: nn.Module) -> dict:
    """Everything needed to rebuild `model` with `load_lm` (config, vocabulary, weights)."""
    return {"config": asdict(model.cfg), "chars": model.tokenizer.chars, "state_dict": model.state_dict()}


def load_lm(checkpoint: dict, device: str = "cpu") -> nn.Module:
    model = build_lm(LMConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.tokenizer = CharTokenizer(checkpoint["chars"])
    return model.to(resolve_device(device)).eval()


def train_lm(
    text: str,
    arch: str = "lstm",
    steps: int = 0,
    epochs: float = 0.0,
    seq_len: int = LM_SEQ_LEN,
    batch_size: int = LM_BATCH_SIZE,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    tokenizer: CharTokenizer | None = None,
    hidden: int = 256,
    layers: int = 2,
    embed_dim: int = 64,
    heads: int = 4,
) -> nn.Module:
    """A character LM trained on `text` by Adam on random windows of seq_len+1 characters
    (seq_len next-character predictions each), batch_size windows a step.

    Training length: `resolve_steps` (steps, else epochs, else the default). The learning rate warms
    up linearly over the first 5% of steps, then decays by a cosine to 10% of `lr`. No
    dropout or weight decay: the test measures what unregularised training memorises.

    The returned model is in eval mode on `device`, with `.tokenizer` (built from `text` if
    not given) and `.train_summary` (steps, final loss in bits/char, seconds)."""
    tokenizer = tokenizer or CharTokenizer.build(text)
    data_np = tokenizer.encode(text)
    if len(data_np) < seq_len + 1:
        raise ValueError(f"corpus of {len(data_np)} characters is too short for windows of seq_len={seq_len}")
    steps = resolve_steps(len(data_np), steps, epochs, batch_size, seq_len)
    dev = resolve_device(device)
    cfg = LMConfig(
        arch=arch,
        vocab_size=tokenizer.vocab_size,
        embed_dim=embed_dim,
        hidden=hidden,
        layers=layers,
        heads=heads,
        block_size=max(seq_len, 128),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_lm(cfg)
    model = model.to(dev).train()
    data = torch.from_numpy(data_np).to(dev)
    gen = torch.Generator().manual_seed(seed + 1)
    offsets = torch.arange(seq_len + 1, device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

    t0 = time.perf_counter()
    check_every = max(1, steps // 100)
    running, n_running, last_loss = torch.zeros((), device=dev), 0, float("nan")
    for step in range(steps):
        if should_stop is not None and step % check_every == 0 and should_stop():
            raise Cancelled(f"language model training stopped at step {step}/{steps}")
        starts = torch.randint(0, len(data_np) - seq_len, (batch_size,), generator=gen).to(dev)
        window = data[starts[:, None] + offsets]
        logits, _ = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), window[:, 1:].reshape(-1))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.detach()
        n_running += 1
        if step % check_every == check_every - 1 or step == steps - 1:
            last_loss = (running / n_running).item()  # one host sync per interval
            running.zero_()
            n_running = 0
            if progress is not None:
                progress(step + 1, steps)
    model.eval()
    model.tokenizer = tokenizer
    model.train_summary = {
        "arch": arch,
        "steps": steps,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "lr": lr,
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss_bits_per_char": last_loss / LN2,
        "train_seconds": time.perf_counter() - t0,
        "device": str(dev),
    }
    return model


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _context_ids(model: nn.Module, prefix: str | Sequence[int], room: int) -> torch.Tensor:
    """The prefix as (T,) ids on the model's device; for a transformer, its last `room`
    tokens at most (the positions left once the candidate is appended)."""
    ids = model.tokenizer.encode(prefix) if isinstance(prefix, str) else np.asarray(prefix, dtype=np.int64)
    if len(ids) == 0:
        raise ValueError("the prefix must not be empty; use '\\n' for 'at the start of a line'")
    if isinstance(model, TransformerLM):
        if room < 1:
            raise ValueError(f"candidates are too long for the transformer's block size {model.cfg.block_size}")
        ids = ids[-room:]
    return torch.as_tensor(ids, dtype=torch.long, device=_device_of(model))


@torch.no_grad()
def _score_equal_length(model: nn.Module, prefix, cand: np.ndarray, batch_size: int) -> np.ndarray:
    n, length = cand.shape
    out = np.empty(n, dtype=np.float64)
    if length == 0:
        out[:] = 0.0
        return out
    dev = _device_of(model)
    if isinstance(model, LSTMLM):
        # Run the shared prefix once; every candidate starts from its final state.
        ctx = _context_ids(model, prefix, room=0)
        logits, (h, c) = model(ctx[None])
        first = torch.log_softmax(logits[0, -1].float(), dim=-1)
        for lo in range(0, n, batch_size):
            x = torch.as_tensor(cand[lo : lo + batch_size], device=dev)
            b = x.shape[0]
            total = first[x[:, 0]]
            if length > 1:
                state = (h.expand(-1, b, -1).contiguous(), c.expand(-1, b, -1).contiguous())
                logits, _ = model(x[:, :-1], state)
                logp = torch.log_softmax(logits.float(), dim=-1)
                total = total + logp.gather(-1, x[:, 1:, None])[..., 0].sum(dim=1)
            out[lo : lo + b] = (-total.double() / LN2).cpu().numpy()
        return out
    ctx = _context_ids(model, prefix, room=model.cfg.block_size - (length - 1))
    t = len(ctx)
    for lo in range(0, n, batch_size):
        x = torch.as_tensor(cand[lo : lo + batch_size], device=dev)
        b = x.shape[0]
        seq = torch.cat([ctx[None].expand(b, -1), x[:, :-1]], dim=1)
        logits, _ = model(seq)
        logp = torch.log_softmax(logits[:, t - 1 :].float(), dim=-1)
        total = logp.gather(-1, x[..., None])[..., 0].sum(dim=1)
        out[lo : lo + b] = (-total.double() / LN2).cpu().numpy()
    return out


def log_perplexity(
    model: nn.Module,
    prefix: str | Sequence[int],
    candidates: Sequence[str] | np.ndarray | torch.Tensor,
    batch_size: int = 4096,
) -> np.ndarray:
    """Px(s | prefix) in bits for every candidate s (module docstring), float64 (N,).

    `candidates` are strings (any lengths; grouped by length) or an (N, L) array of token
    ids. Scored `batch_size` candidates per forward pass; for the LSTM the prefix is run once
    and its state reused for every candidate."""
    model.eval()
    if isinstance(candidates, (np.ndarray, torch.Tensor)):
        cand = torch.as_tensor(candidates).cpu().numpy().astype(np.int64)
        if cand.ndim != 2:
            raise ValueError("token candidates must be an (N, L) array")
        return _score_equal_length(model, prefix, cand, batch_size)
    candidates = list(candidates)
    out = np.empty(len(candidates), dtype=np.float64)
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(candidates):
        by_length.setdefault(len(s), []).append(i)
    for _, idx in sorted(by_length.items()):
        ids = model.tokenizer.encode_batch([candidates[i] for i in idx])
        out[idx] = _score_equal_length(model, prefix, ids, batch_size)
    return out


@torch.no_grad()
def _next_logprobs(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    """log p(next token | each row of seqs), (B, V); a transformer sees its last block_size tokens."""
    if isinstance(model, TransformerLM):
        seqs = seqs[:, -model.cfg.block_size :]
    logits, _ = model(seqs)
    return torch.log_softmax(logits[:, -1].float(), dim=-1)


def _allowed_masks(model: nn.Module, length: int, allowed: Sequence[str] | None) -> list[torch.Tensor | None]:
    """Per position, a (V,) bool mask of the tokens decoding may choose (None: any)."""
    if allowed is None:
        return [None] * length
    if len(allowed) != length:
        raise ValueError(f"`allowed` has {len(allowed)} entries for {length} positions")
    masks = []
    for chars in allowed:
        mask = torch.zeros(model.tokenizer.vocab_size, dtype=torch.bool, device=_device_of(model))
        mask[torch.as_tensor(model.tokenizer.encode(chars), device=mask.device)] = True
        masks.append(mask)
    return masks


def greedy_complete(model: nn.Module, prefix: str, length: int, allowed: Sequence[str] | None = None) -> str:
    """The `length` characters that greedy decoding appends to `prefix`. `allowed` (one string
    of permitted characters per position, e.g. `CanaryFormat.allowed_chars()`) constrains
    decoding to a canary format, as the paper's extraction search does."""
    return beam_complete(model, prefix, length, beam=1, allowed=allowed)


def beam_complete(
    model: nn.Module, prefix: str, length: int, beam: int = 5, allowed: Sequence[str] | None = None
) -> str:
    """The most likely `length`-character continuation of `prefix` found by beam search
    keeping `beam` hypotheses (beam=1 is greedy decoding)."""
    model.eval()
    masks = _allowed_masks(model, length, allowed)
    ctx = _context_ids(model, prefix, room=10**9)
    seqs = ctx[None]  # (beams, T)
    scores = torch.zeros(1, device=ctx.device)
    for mask in masks:
        logp = _next_logprobs(model, seqs)
        if mask is not None:
            logp = logp.masked_fill(~mask, -math.inf)
        total = (scores[:, None] + logp).reshape(-1)
        k = min(beam, int(torch.isfinite(total).sum()))
        scores, flat = torch.topk(total, k)
        v = logp.shape[1]
        seqs = torch.cat([seqs[flat // v], (flat % v)[:, None]], dim=1)
    return model.tokenizer.decode(seqs[0, len(ctx) :].tolist())
