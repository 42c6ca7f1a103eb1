"""Tokenizers for `compscale data prepare`: bytes, a byte-level BPE trained on the corpus, or a
user's `tokenizer.json` (Hugging Face `tokenizers`).

Each is a `Tokenizer`: a batch encoder of byte chunks, its vocabulary size and a fingerprint that
names the exact vocabulary and merges (a hash of the serialized tokenizer), so shards and the cells
trained on them say which tokenization they used.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BYTE_VOCAB = 256
_BPE = re.compile(r"bpe:(\d+)")


@dataclass(frozen=True)
class Tokenizer:
    """How `data prepare` turns text into token ids."""

    name: str  # as given: "bytes", "bpe:2048" or a path
    vocab_size: int
    fingerprint: str  # "bytes" or "<model><vocab>:sha256:<16 hex>"
    encode: Callable[[list[bytes]], list[np.ndarray]]  # a batch of chunks -> their ids
    serialized: str | None = None  # tokenizer.json content, saved beside the shards


def parse_spec(spec: str) -> tuple[str, int | Path | None]:
    """("bytes", None), ("bpe", vocab) or ("json", path) for a --tokenizer value."""
    if spec == "bytes":
        return "bytes", None
    if match := _BPE.fullmatch(spec):
        vocab = int(match.group(1))
        if vocab <= BYTE_VOCAB:
            raise ValueError(f"--tokenizer {spec}: a byte-level BPE needs vocab > {BYTE_VOCAB}")
        return "bpe", vocab
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"--tokenizer {spec!r}: expected bytes, bpe:{{vocab}} (e.g. bpe:32000) or the path "
            "of an existing tokenizer.json"
        )
    return "json", path


def byte_tokenizer() -> Tokenizer:
    return Tokenizer(
        "bytes", BYTE_VOCAB, "bytes", lambda chunks: [np.frombuffer(c, np.uint8) for c in chunks]
    )


def _wrap(name: str, tokenizer) -> Tokenizer:
    """A `tokenizers.Tokenizer` as a `Tokenizer`. Chunks are cut at line ends (never inside a
    UTF-8 character); bytes that are not UTF-8 become U+FFFD."""
    serialized = tokenizer.to_str()
    kind = type(tokenizer.model).__name__.lower()
    vocab = tokenizer.get_vocab_size()
    digest = hashlib.sha256(serialized.encode()).hexdigest()[:16]

    def encode(chunks: list[bytes]) -> list[np.ndarray]:
        texts = [chunk.decode("utf-8", errors="replace") for chunk in chunks]
        return [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(texts)]

    return Tokenizer(name, vocab, f"{kind}{vocab}:sha256:{digest}", encode, serialized)


def train_bpe(name: str, vocab_size: int, chunks: Iterable[bytes]) -> Tokenizer:
    """A byte-level BPE (GPT-2 style: every byte is a token, merges on top) trained on `chunks`,
    streamed: memory grows with the number of distinct words, not with the corpus."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts: Iterator[str] = (chunk.decode("utf-8", errors="replace") for chunk in chunks)
    tokenizer.train_from_iterator(texts, trainer)
    return _wrap(name, tokenizer)


def load_json(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    return _wrap(str(path), HFTokenizer.from_file(str(path)))
