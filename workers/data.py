"""Token streams: a bundled byte-level corpus or nanoGPT-style memmap shards, and batches.

A batch is a pure function of (seed, step): the offsets of the global batch come from a generator
seeded with both, and rank r takes its own disjoint slice. So the position in the stream is the step
number, a resumed run sees exactly the batches it would have seen, and world size k sees the same
global batch as world size 1. Validation uses a fixed set of held-out windows from the start of the
validation split, the same for every cell of one data source.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from workers import shardcache, storage
from workers.config import DataConfig
from workers.layout import resolve

CORPUS_DIR = Path(__file__).parent / "corpus"
# The corpora shipped in workers/corpus/, by the `data.source` that names them.
BUNDLED = {"bundled": "cpython311-stdlib", "bundled-kjv": "kjv-bible"}
SHARD_META = "meta.json"
SHARD_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}


@dataclass(frozen=True)
class TokenSource:
    """Train and validation token arrays (memmaps or in memory), vocabulary and fingerprint."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    fingerprint: str


def load_tokens(config: DataConfig) -> TokenSource:
    """The token source a cell names: a bundled corpus (`BUNDLED`) or a shard directory (local
    path or URI)."""
    if config.source in BUNDLED:
        return _bundled(BUNDLED[config.source], config.val_fraction)
    return load_shards(config.source)


def _bundled_meta(name: str) -> dict:
    return json.loads((CORPUS_DIR / f"{name}.json").read_text())


@functools.lru_cache(maxsize=2)
def _bundled_bytes(name: str) -> tuple[np.ndarray, str]:
    meta = _bundled_meta(name)
    with gzip.open(CORPUS_DIR / f"{name}.txt.gz", "rb") as file:
        text = file.read()
    if hashlib.sha256(text).hexdigest() != meta["sha256"]:
        raise ValueError(f"bundled corpus {name}: sha256 does not match its JSON; reinstall")
    tokens = np.frombuffer(text, dtype=np.uint8)
    return tokens, f"{name}:sha256:{meta['sha256'][:16]}"


def _train_split(tokens: int, val_fraction: float) -> int:
    """Where a bundled corpus's validation split starts: its last `val_fraction`."""
    return int(tokens * (1 - val_fraction))


@functools.lru_cache(maxsize=4)
def _bundled(name: str, val_fraction: float) -> TokenSource:
    tokens, fingerprint = _bundled_bytes(name)
    split = _train_split(len(tokens), val_fraction)
    return TokenSource(tokens[:split], tokens[split:], 256, f"{fingerprint}:val{val_fraction:g}")


@dataclass(frozen=True)
class DataShape:
    """What a spec is checked against: the vocabulary and the validation split's length."""

    vocab_size: int
    val_tokens: int


def describe(config: DataConfig) -> DataShape | None:
    """The data's shape from metadata alone (a bundled corpus's JSON; a shard folder's meta.json
    and val.bin size), so a spec is checked without reading tokens; None for a remote source,
    which would cost round trips and credentials to look at. A missing local source raises."""
    if config.source in BUNDLED:
        tokens = _bundled_meta(BUNDLED[config.source])["bytes"]
        return DataShape(256, tokens - _train_split(tokens, config.val_fraction))
    if config.source.startswith("bundled") and not Path(config.source).exists():
        raise ValueError(
            f"data.source {config.source!r}: no such bundled corpus (one of {', '.join(BUNDLED)})"
        )
    if "://" in config.source and not config.source.startswith("file://"):
        return None  # even resolving an s3:// URI asks the network for the bucket's region
    location = resolve(config.source, what="data.source")
    filesystem, root = location.filesystem, location.root
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"data.source {config.source!r}: no such folder ({root})")
    meta, dtype = _shard_meta(filesystem, root, config.source)
    val = _shard_path(filesystem, root, config.source, "val")
    size = filesystem.get_file_info(val).size
    return DataShape(int(meta["vocab_size"]), size // np.dtype(dtype).itemsize)


def _shard_meta(filesystem: pafs.FileSystem, root: str, uri: str) -> tuple[dict, type]:
    """A shard folder's meta.json and its token dtype."""
    meta_path = f"{root}/{SHARD_META}"
    if not storage.is_file(filesystem, meta_path):
        raise FileNotFoundError(
            f"data.source {uri!r}: no {SHARD_META} there "
            "(make shards with `compscale data prepare SOURCE OUT_DIR`)"
        )
    meta = json.loads(storage.read_bytes(filesystem, meta_path))
    dtype = SHARD_DTYPES.get(meta.get("dtype"))
    if dtype is None:
        raise ValueError(f"{meta_path}: dtype must be one of {', '.join(SHARD_DTYPES)}")
    return meta, dtype


def _shard_path(filesystem: pafs.FileSystem, root: str, uri: str, split: str) -> str:
    path = f"{root}/{split}.bin"
    if not storage.is_file(filesystem, path):
        raise FileNotFoundError(f"data.source {uri!r}: {split}.bin is missing")
    return path


def load_shards(uri: str) -> TokenSource:
    """Memory-map `train.bin` and `val.bin` of the shard folder at `uri` (a local path or a
    pyarrow filesystem URI), checked against its `meta.json`.

    A remote folder is mapped from this node's one local copy (`workers.shardcache`), so no
    worker holds a remote shard in its own memory and a node downloads each shard once.
    """
    location = resolve(uri, what="data.source")
    filesystem, root = location.filesystem, location.root
    meta, dtype = _shard_meta(filesystem, root, uri)
    paths = {split: _shard_path(filesystem, root, uri, split) for split in shardcache.SPLITS}
    if not isinstance(filesystem, pafs.LocalFileSystem):
        local = shardcache.local_copy(filesystem, root, uri, meta)
        paths = {split: str(local / f"{split}.bin") for split in shardcache.SPLITS}
    arrays = {split: np.memmap(path, dtype=dtype, mode="r") for split, path in paths.items()}
    return TokenSource(arrays["train"], arrays["val"], int(meta["vocab_size"]), meta["fingerprint"])


def batch_windows(
    tokens: np.ndarray,
    *,
    seed: int,
    step: int,
    batch_size: int,
    seq_len: int,
    rank: int = 0,
    world_size: int = 1,
) -> np.ndarray:
    """This rank's slice of the global batch at `step`: int64 windows (B / world, seq_len + 1).

    Inputs are `windows[:, :-1]`, targets `windows[:, 1:]`.
    """
    if len(tokens) <= seq_len + 1:
        raise ValueError(f"training split has {len(tokens)} tokens, fewer than one sequence")
    generator = np.random.default_rng([seed, step])
    offsets = generator.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    per_rank = batch_size // world_size
    mine = offsets[rank * per_rank : (rank + 1) * per_rank]
    return np.asarray(tokens[mine[:, None] + np.arange(seq_len + 1)], dtype=np.int64)


def validation_tokens_needed(eval_tokens: int, seq_len: int) -> int:
    """Validation tokens that `eval_tokens` takes: whole windows of seq_len targets, plus one."""
    return max(1, eval_tokens // seq_len) * seq_len + 1


def validation_windows(
    tokens: np.ndarray, *, eval_tokens: int, seq_len: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """This rank's share of the fixed held-out windows covering `eval_tokens` target tokens."""
    count = max(1, eval_tokens // seq_len)
    if validation_tokens_needed(eval_tokens, seq_len) > len(tokens):
        raise ValueError(
            f"eval_tokens={eval_tokens} needs {validation_tokens_needed(eval_tokens, seq_len)} "
            f"validation tokens; the split has {len(tokens)}"
        )
    starts = np.arange(count)[rank::world_size] * seq_len
    return np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy of the token frequency distribution, in nats per token."""
    counts = np.bincount(np.asarray(tokens)).astype(np.float64)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())
