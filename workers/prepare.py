"""`compscale data prepare`: a folder of text files -> nanoGPT-style shards, streamed.

Files are read in sorted order in chunks cut at line ends, encoded a batch of chunks at a time and
appended to disk, so a corpus larger than memory works (a BPE is trained in a first streaming pass).
The last `val_fraction` of the tokens becomes `val.bin`. `meta.json` records the tokenizer, its
fingerprint and vocabulary size; the data fingerprint includes the tokenizer's, so every result
trained on the shards names its tokenization. Progress goes to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from workers import tokenizer as tokenizers
from workers.data import SHARD_META

CHUNK_BYTES = 1 << 20
BATCH_CHUNKS = 16
TOKENIZER_FILE = "tokenizer.json"


def text_files(text_dir: Path) -> list[Path]:
    if not text_dir.is_dir():
        raise FileNotFoundError(f"text directory {str(text_dir)!r} does not exist")
    files = sorted(path for path in text_dir.rglob("*") if path.is_file())
    if not files:
        raise ValueError(f"text directory {str(text_dir)!r} holds no files")
    return files


def _cut(buffer: bytes) -> int:
    """Where to end a chunk: after the last newline, else before a possibly incomplete UTF-8
    character at the end (its lead byte is at most 3 bytes back)."""
    newline = buffer.rfind(b"\n")
    if newline >= 0:
        return newline + 1
    start = len(buffer) - 1
    while start > 0 and buffer[start] & 0xC0 == 0x80 and len(buffer) - start < 4:
        start -= 1
    return start if buffer[start] >= 0xC0 else len(buffer)


def read_chunks(files: list[Path], chunk_bytes: int, advance=None) -> Iterator[bytes]:
    """Chunks of at most about `chunk_bytes`, each within one file and ending at a line end where
    the file has one; their concatenation is the files' concatenation. `advance(n)` is told of
    every n bytes read."""
    for path in files:
        with open(path, "rb") as file:
            carry = b""
            while block := file.read(chunk_bytes):
                if advance is not None:
                    advance(len(block))
                buffer = carry + block
                cut = _cut(buffer)
                if cut:
                    yield buffer[:cut]
                carry = buffer[cut:]
            if carry:
                yield carry


def _batches(chunks: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _split_tail(path: Path, train: Path, val: Path, split_bytes: int) -> None:
    """Move the bytes of `path` after `split_bytes` to `val`, the rest to `train`, in blocks."""
    with open(path, "r+b") as source, open(val, "wb") as target:
        source.seek(split_bytes)
        shutil.copyfileobj(source, target, 1 << 24)
        source.truncate(split_bytes)
    os.replace(path, train)


def prepare_shards(
    text_dir: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.05,
    tokenizer: str = "bytes",
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = False,
) -> dict:
    """Tokenize every file under `text_dir` into `out_dir` (train.bin, val.bin, meta.json, and
    tokenizer.json unless the tokenizer is `bytes`). Returns the written meta.json content."""
    text_dir, out_dir = Path(text_dir), Path(out_dir)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    kind, argument = tokenizers.parse_spec(tokenizer)
    files = text_files(text_dir)
    total_bytes = sum(path.stat().st_size for path in files)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _progress(progress) as bar:

        def tracker(description: str):
            if bar is None:
                return None
            task = bar.add_task(description, total=total_bytes)
            return lambda n: bar.advance(task, n)

        if kind == "bpe":
            chunks = read_chunks(files, chunk_bytes, tracker(f"training {tokenizer}"))
            encoder = tokenizers.train_bpe(tokenizer, argument, chunks)
        elif kind == "json":
            encoder = tokenizers.load_json(argument)
        else:
            encoder = tokenizers.byte_tokenizer()
        # uint16 keeps the nanoGPT layout; a vocabulary beyond it needs uint32.
        dtype = np.uint16 if encoder.vocab_size <= 1 << 16 else np.uint32
        digest, tokens = hashlib.sha256(), 0
        staging = out_dir / "tokens.partial"
        with open(staging, "wb") as output:
            chunks = read_chunks(files, chunk_bytes, tracker("encoding"))
            for batch in _batches(chunks, BATCH_CHUNKS):
                for chunk, ids in zip(batch, encoder.encode(batch), strict=True):
                    digest.update(chunk)
                    ids.astype(dtype).tofile(output)
                    tokens += len(ids)
    split = int(tokens * (1 - val_fraction))
    itemsize = np.dtype(dtype).itemsize
    _split_tail(staging, out_dir / "train.bin", out_dir / "val.bin", split * itemsize)
    if encoder.serialized is not None:
        (out_dir / TOKENIZER_FILE).write_text(encoder.serialized)
    meta = {
        "dtype": np.dtype(dtype).name,
        "vocab_size": encoder.vocab_size,
        "tokenizer": encoder.name,
        "tokenizer_fingerprint": encoder.fingerprint,
        "files": len(files),
        "bytes": total_bytes,
        "tokens": tokens,
        "fingerprint": f"{text_dir.name}:sha256:{digest.hexdigest()[:16]}:{encoder.fingerprint}"
        f":val{val_fraction:g}",
    }
    (out_dir / SHARD_META).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
