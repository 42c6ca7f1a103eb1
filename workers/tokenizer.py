"""Tokenizers for `compscale data prepare`: bytes, a byte-level BPE trained on the corpus, or a
user's `tokenizer.json` (Hugging Face `tokenizers`).

A `Tokenizer` is plain data (name, vocabulary size, fingerprint, serialized form, end-of-text id)
so it crosses to the encoding processes, which each build their own encoder from it. The
fingerprint names the exact vocabulary and merges (a hash of the serialized tokenizer), so shards
and the cells trained on them say which tokenization they used.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BYTE_VOCAB = 256
_BPE = re.compile(r"bpe:(\d+)")
END_OF_TEXT = "<|endoftext|>"
# Special tokens that end a document, by family: GPT-2 and ours, Llama 3, T5/Llama 2, Gemma.
END_OF_TEXT_NAMES = (END_OF_TEXT, "<|end_of_text|>", "</s>", "<eos>")

Encoder = Callable[[list[bytes], list[bool]], np.ndarray]


@dataclass(frozen=True)
class Tokenizer:
    """How `data prepare` turns text into token ids."""

    name: str  # as given: "bytes", "bpe:2048" or a path
    vocab_size: int
    fingerprint: str  # "bytes" or "<model><vocab>:sha256:<16 hex>"
    serialized: str | None = None  # tokenizer.json content, saved beside the shards
    end_of_text: int | None = None  # the id put between documents; bytes have none


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
    return Tokenizer("bytes", BYTE_VOCAB, "bytes")


def _describe(name: str, tokenizer) -> Tokenizer:
    """A `tokenizers.Tokenizer` as plain data; its end-of-text id is the first special token
    named in `END_OF_TEXT_NAMES`."""
    serialized = tokenizer.to_str()
    kind = type(tokenizer.model).__name__.lower()
    vocab = tokenizer.get_vocab_size()
    digest = hashlib.sha256(serialized.encode()).hexdigest()[:16]
    special = {
        token.content: index
        for index, token in tokenizer.get_added_tokens_decoder().items()
        if token.special
    }
    end_of_text = next((special[name] for name in END_OF_TEXT_NAMES if name in special), None)
    return Tokenizer(name, vocab, f"{kind}{vocab}:sha256:{digest}", serialized, end_of_text)


def train_bpe(name: str, vocab_size: int, texts: Iterable[str]) -> Tokenizer:
    """A byte-level BPE (GPT-2 style: every byte is a token, merges on top, `<|endoftext|>` as
    id 0) trained on `texts`, streamed: memory grows with the distinct words, not the corpus."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[END_OF_TEXT],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return _describe(name, tokenizer)


def load_json(path: Path, name: str | None = None) -> Tokenizer:
    """A tokenizer.json (named `name`, else its path); one line naming the file if `tokenizers`
    cannot load it."""
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tokenizer = HFTokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for every parse error
        reason = " ".join(str(error).split())
        raise ValueError(
            f"--tokenizer {str(path)!r}: not a loadable tokenizer.json ({reason})"
        ) from None
    return _describe(name or str(path), tokenizer)


def encoder(tokenizer: Tokenizer) -> Encoder:
    """A function of (pieces, separated) -> ids: the pieces' tokens in order, with the end-of-text
    id before each piece flagged as starting a new document. Special tokens of a post-processor
    (BOS, CLS) are left out: pieces are parts of documents. Bytes that are not UTF-8 become U+FFFD
    for a `tokenizers` model; the byte tokenizer takes them as they are."""
    if tokenizer.serialized is None:
        return lambda pieces, separated: np.frombuffer(b"".join(pieces), np.uint8)
    from tokenizers import Tokenizer as HFTokenizer

    model = HFTokenizer.from_str(tokenizer.serialized)
    end_of_text = tokenizer.end_of_text

    def encode(pieces: list[bytes], separated: list[bool]) -> np.ndarray:
        texts = [piece.decode("utf-8", errors="replace") for piece in pieces]
        ids: list[int] = []
        encodings = model.encode_batch_fast(texts, add_special_tokens=False)
        for encoding, separate in zip(encodings, separated, strict=True):
            if separate and end_of_text is not None:
                ids.append(end_of_text)
            ids.extend(encoding.ids)
        return np.array(ids, dtype=np.int64)

    return encode
