"""Text corpora for the Secret Sharer test, and the character tokenizer its models use.

The built-in corpus (`load_corpus("builtin")`) is the dataset descriptions that scikit-learn
ships inside its wheel (`sklearn/datasets/descr/*.rst`, 14 files, about 43,000 characters of
English prose with reStructuredText tables and numbers), concatenated in file-name order.
scikit-learn is a dependency of memscore, so the corpus is on every machine memscore runs on
and needs no network. Its digits matter: a model trained on it has a real (non-uniform)
prior over numbers, as in the paper's setting.

Tokens are characters: the vocabulary is every character of the corpus plus every character
any canary format can produce (so all |R| candidates are encodable), plus a newline.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .canaries import CanaryFormat

MIN_CORPUS_CHARS = 200  # below this a language model has nothing to learn beyond the canaries
BUILTIN = "builtin"


class CorpusError(ValueError):
    """A corpus cannot be used; the message says why."""


def builtin_corpus() -> str:
    """scikit-learn's dataset descriptions, concatenated (see the module docstring)."""
    root = resources.files("sklearn.datasets.descr")
    files = sorted((p for p in root.iterdir() if p.name.endswith(".rst")), key=lambda p: p.name)
    parts = [p.read_text(encoding="utf-8") for p in files]
    return "".join(part if part.endswith("\n") else part + "\n" for part in parts)


def corpus_from_bytes(data: bytes, source: str = "corpus") -> str:
    """UTF-8 text from raw bytes (e.g. an object fetched from the store), validated."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{source} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    return check_corpus(text, source)


def check_corpus(text: str, source: str = "corpus") -> str:
    if not text.strip():
        raise CorpusError(f"{source} is empty")
    if len(text) < MIN_CORPUS_CHARS:
        raise CorpusError(f"{source} is too short: {len(text)} characters, need at least {MIN_CORPUS_CHARS}")
    return text


def load_corpus(ref: str) -> str:
    """ "builtin" (see the module docstring) or the path of a local UTF-8 text file."""
    if ref == BUILTIN:
        return check_corpus(builtin_corpus(), "built-in corpus")
    path = Path(ref).expanduser()
    if not path.is_file():
        raise CorpusError(f"corpus {ref!r} is neither {BUILTIN!r} nor an existing text file")
    return corpus_from_bytes(path.read_bytes(), source=f"corpus file {ref!r}")


@dataclass(frozen=True)
class CharTokenizer:
    """Characters ↔ token ids 0..V-1, ids in code-point order."""

    chars: str  # the vocabulary, sorted by code point, no duplicates

    @classmethod
    def build(cls, text: str, formats: Iterable[CanaryFormat | str] = ()) -> "CharTokenizer":
        charset = set(text) | {"\n"}
        for fmt in formats:
            charset |= (CanaryFormat.parse(fmt) if isinstance(fmt, str) else fmt).charset()
        return cls("".join(sorted(charset)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def _codes(self) -> np.ndarray:
        return np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)

    def _lookup(self, codes: np.ndarray, what: str) -> np.ndarray:
        table = self._codes
        ids = np.minimum(np.searchsorted(table, codes), len(table) - 1)
        bad = table[ids] != codes
        if bad.any():
            missing = sorted({chr(c) for c in codes[bad].tolist()})
            raise ValueError(f"{what} has characters outside the vocabulary: {''.join(missing)!r}")
        return ids.astype(np.int64)

    def encode(self, text: str) -> np.ndarray:
        """int64 token ids of `text`, shape (len(text),)."""
        return self._lookup(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32), "text")

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """(N, L) int64 ids of N strings of equal length L, in one numpy pass."""
        if not len(texts):
            return np.zeros((0, 0), dtype=np.int64)
        length = len(texts[0])
        if any(len(t) != length for t in texts):
            raise ValueError("encode_batch needs strings of equal length")
        if length == 0:
            return np.zeros((len(texts), 0), dtype=np.int64)
        codes = np.asarray(texts, dtype=f"<U{length}").view(np.uint32).reshape(len(texts), length)
        return self._lookup(codes, "candidate")

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)
