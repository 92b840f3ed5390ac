"""Canaries for the Secret Sharer test (Carlini et al. 2019, §3): a format with a random
secret, its randomness space R, and insertion into a text corpus.

A format is literal text with slots in braces, e.g. ``my social security number is
{ddd-dd-dddd}`` or ``the pin is {dddd}``. Inside braces ``d`` is one digit (0-9), ``a`` one
lowercase letter (a-z), and any other character that is not a letter or digit (``-``, ``.``,
space, ...) is literal. Outside braces everything is literal. |R| is the product of the
placeholders' radices (10 per ``d``, 26 per ``a``).

Candidates are numbered by mixed radix, last placeholder least significant, so index order
is lexicographic order of the secrets: ``the pin is {dddd}`` renders 0 as ``0000`` and 9999 as
``9999``. `render` and `index_of` are inverse bijections between 0..|R|-1 and the secrets.

Vocabulary of this module: the *prefix* is the format's text before the first brace (shared
by every candidate); the *secret* is the rest with slots filled (placeholders, literals
inside and after the slots). The canary is prefix + secret, inserted as one line.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

PLACEHOLDERS = {"d": string.digits, "a": string.ascii_lowercase}
MAX_SPACE_SIZE = 2**62  # indices must fit int64 with room for arithmetic


@dataclass(frozen=True)
class CanaryFormat:
    """A parsed canary format. Build with `CanaryFormat.parse`.

    `template` is the secret part as a tuple of (alphabet or None, char) per character: an
    alphabet for a placeholder, None for a literal `char`."""

    text: str  # the format as written
    prefix: str  # literal text before the first slot
    template: tuple[tuple[str | None, str], ...]  # the secret part, one entry per character

    @classmethod
    def parse(cls, fmt: str) -> "CanaryFormat":
        if not isinstance(fmt, str):
            raise ValueError(f"canary format must be a string, got {type(fmt).__name__}")
        if "\n" in fmt or "\r" in fmt:
            raise ValueError(f"canary format {fmt!r} must be one line (it is inserted as a line)")
        if "{" not in fmt and "}" not in fmt:
            raise ValueError(f"canary format {fmt!r} has no slot: put the secret in braces, e.g. 'the pin is {{dddd}}'")
        prefix_end = fmt.find("{")
        if prefix_end < 0 or ("}" in fmt[:prefix_end]):
            raise ValueError(f"canary format {fmt!r} has unbalanced braces ('}}' before '{{')")
        template: list[tuple[str | None, str]] = []
        inside = False
        slot_start = 0
        slot_has_placeholder = False
        for pos, ch in enumerate(fmt[prefix_end:], start=prefix_end):
            if ch == "{":
                if inside:
                    raise ValueError(f"canary format {fmt!r} has unbalanced braces (nested '{{' at {pos})")
                inside, slot_start, slot_has_placeholder = True, pos, False
            elif ch == "}":
                if not inside:
                    raise ValueError(f"canary format {fmt!r} has unbalanced braces (stray '}}' at {pos})")
                if pos == slot_start + 1:
                    raise ValueError(f"canary format {fmt!r} has an empty slot '{{}}' at {slot_start}")
                if not slot_has_placeholder:
                    raise ValueError(
                        f"canary format {fmt!r}: slot at {slot_start} has no placeholder ('d' digit, 'a' letter)"
                    )
                inside = False
            elif inside and ch in PLACEHOLDERS:
                template.append((PLACEHOLDERS[ch], ch))
                slot_has_placeholder = True
            elif inside and ch.isalnum():
                raise ValueError(
                    f"canary format {fmt!r}: unknown placeholder {ch!r} at {pos}; "
                    "inside braces use 'd' (digit), 'a' (lowercase letter) or punctuation"
                )
            else:
                template.append((None, ch))
        if inside:
            raise ValueError(f"canary format {fmt!r} has unbalanced braces ('{{' at {slot_start} never closed)")
        out = cls(text=fmt, prefix=fmt[:prefix_end], template=tuple(template))
        size = 1
        for alphabet in out._alphabets:
            size *= len(alphabet)
        if size > MAX_SPACE_SIZE:
            raise ValueError(
                f"canary format {fmt!r} has a randomness space of {size} (about 2^{size.bit_length() - 1}) "
                f"candidates, more than 2^62 can be indexed; use fewer placeholders"
            )
        return out

    @property
    def _alphabets(self) -> list[str]:
        return [a for a, _ in self.template if a is not None]

    @property
    def space_size(self) -> int:
        """|R|, the number of possible secrets."""
        size = 1
        for alphabet in self._alphabets:
            size *= len(alphabet)
        return size

    @property
    def secret_length(self) -> int:
        """Characters in the secret part (placeholders and the literals from the first slot on)."""
        return len(self.template)

    def allowed_chars(self) -> list[str]:
        """Per character of the secret part, the characters it may take (for constrained
        decoding in extraction)."""
        return [a if a is not None else ch for a, ch in self.template]

    def charset(self) -> set[str]:
        """Every character a canary of this format can contain."""
        return set(self.prefix) | {c for chars in self.allowed_chars() for c in chars}

    def _digits(self, indices: np.ndarray) -> np.ndarray:
        """(N, P) placeholder values of the candidates `indices` (mixed radix, last placeholder
        least significant)."""
        radices = [len(a) for a in self._alphabets]
        out = np.empty((len(indices), len(radices)), dtype=np.int64)
        rest = indices.astype(np.int64).copy()
        for j in range(len(radices) - 1, -1, -1):
            rest, out[:, j] = np.divmod(rest, radices[j])
        return out

    def _check_indices(self, indices: np.ndarray) -> None:
        if indices.size and (indices.min() < 0 or indices.max() >= self.space_size):
            raise ValueError(f"candidate index out of range 0..{self.space_size - 1} for format {self.text!r}")

    def render_secrets(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        """The secret parts of candidates `indices`, vectorised (one numpy pass per character)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        self._check_indices(idx)
        digits = self._digits(idx)
        codes = np.empty((len(idx), self.secret_length), dtype=np.uint32)
        p = 0
        for col, (alphabet, ch) in enumerate(self.template):
            if alphabet is None:
                codes[:, col] = ord(ch)
            else:
                table = np.frombuffer(alphabet.encode("utf-32-le"), dtype=np.uint32)
                codes[:, col] = table[digits[:, p]]
                p += 1
        # A row of L uint32 code points is exactly one numpy '<U{L}' string.
        return codes.view(f"<U{self.secret_length}").reshape(-1).tolist()

    def render_secret(self, index: int) -> str:
        return self.render_secrets([index])[0]

    def render(self, index: int) -> str:
        """The whole canary (prefix + secret) for candidate `index`."""
        return self.prefix + self.render_secret(index)

    def index_of(self, secret: str) -> int:
        """Inverse of `render` (also accepts the secret part alone, without the prefix)."""
        if secret.startswith(self.prefix) and len(secret) == len(self.prefix) + self.secret_length:
            secret = secret[len(self.prefix) :]
        if len(secret) != self.secret_length:
            raise ValueError(f"{secret!r} does not match canary format {self.text!r}")
        index = 0
        for ch, (alphabet, literal) in zip(secret, self.template):
            if alphabet is None:
                if ch != literal:
                    raise ValueError(f"{secret!r} does not match canary format {self.text!r}")
                continue
            value = alphabet.find(ch)
            if value < 0:
                raise ValueError(f"{secret!r} does not match canary format {self.text!r} ({ch!r} not allowed)")
            index = index * len(alphabet) + value
        return index

    def sample_indices(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """k distinct candidate indices drawn uniformly from R by `rng`."""
        if not 0 <= k <= self.space_size:
            raise ValueError(f"cannot draw {k} distinct secrets from a space of {self.space_size}")
        if 4 * k >= self.space_size:
            return rng.permutation(self.space_size)[:k].astype(np.int64)
        chosen: dict[int, None] = {}  # insertion-ordered set: the draw order is kept
        while len(chosen) < k:
            for i in rng.integers(0, self.space_size, size=k - len(chosen), dtype=np.int64).tolist():
                chosen.setdefault(i)
        return np.fromiter(chosen, dtype=np.int64, count=k)

    def sample(self, rng: np.random.Generator, k: int) -> list[str]:
        """k distinct whole canaries drawn uniformly from R by `rng`."""
        return [self.prefix + s for s in self.render_secrets(self.sample_indices(rng, k))]

    def enumerate(self, start: int = 0, stop: int | None = None, batch_size: int = 65_536) -> Iterator[list[str]]:
        """The secret parts of candidates start..stop-1 (default: all of R), in batches."""
        stop = self.space_size if stop is None else min(stop, self.space_size)
        for lo in range(start, stop, batch_size):
            yield self.render_secrets(np.arange(lo, min(lo + batch_size, stop), dtype=np.int64))


def insert_canaries(corpus_text: str, canaries: Sequence[tuple[str, int]], seed: int) -> str:
    """`corpus_text` with each (canary, t) inserted t times as its own line, each copy at a
    line boundary drawn uniformly (with replacement) by a generator seeded with `seed`.
    Copies that land on the same boundary appear in a random order. Original lines are kept
    intact and in order."""
    for text, times in canaries:
        if "\n" in text:
            raise ValueError(f"canary {text!r} must be one line")
        if times < 0:
            raise ValueError(f"canary {text!r}: insertion count must be >= 0, got {times}")
    lines = corpus_text.split("\n") if corpus_text else []
    # With a trailing newline the last element is "" and "before it" already means "at the end".
    boundaries = len(lines) if corpus_text.endswith("\n") else len(lines) + 1
    copies = [text for text, times in canaries for _ in range(times)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(copies))
    where = rng.integers(0, boundaries, size=len(copies))
    at: dict[int, list[str]] = {}
    for i in order.tolist():
        at.setdefault(int(where[i]), []).append(copies[i])
    out: list[str] = []
    for b in range(boundaries):
        out.extend(at.get(b, ()))
        if b < len(lines):
            out.append(lines[b])
    return "\n".join(out)
