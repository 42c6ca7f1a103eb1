"""`compscale data prepare`: text files, jsonl or Parquet -> nanoGPT-style shards, in parallel.

The main process reads the documents in order (`workers.documents`), hashes their text and groups
their pieces into parts of about `part_bytes`; a pool of processes tokenizes the parts, each
written to its own file under `OUT_DIR/.partial/parts/` (temp + rename). Parts are numbered by
their place in the stream, so the tokens do not depend on the number of workers, and a killed run
resumes: parts on disk are kept when the job (inputs, tokenizer, sizes) is the same. Then the parts
are joined into train.bin and val.bin (the last `val_fraction` of the tokens), and meta.json is
written last. An error removes the partial state, so no half output is left behind. A BPE is
trained in a first streaming pass and kept with the parts for a resume.

Inputs may be URIs (`s3://bucket/prefix`, read through `workers.documents.open_input`), and so may
OUT_DIR: then all of the above happens in a local staging folder, `$COMPSCALE_CACHE/prepare/`
(where a killed run resumes), and only the finished files are uploaded, meta.json last, so a
reader never trusts a half-uploaded folder.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from workers import documents, shardcache
from workers import tokenizer as tokenizers
from workers.data import SHARD_META
from workers.documents import InputError, InputFile, Piece
from workers.layout import resolve

CHUNK_BYTES = 1 << 20
PART_BYTES = 8 << 20
TOKENIZER_FILE = "tokenizer.json"
PARTIAL_DIR = ".partial"
IN_FLIGHT_PER_WORKER = 2  # parts queued per worker: keeps each busy, bounds memory


def default_workers() -> int:
    """The cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class Part:
    """The pieces one worker tokenizes into one file, and which start a separated document."""

    index: int
    pieces: list[bytes] = field(default_factory=list)
    separated: list[bool] = field(default_factory=list)


@dataclass
class Totals:
    """What meta.json says of the text: documents, UTF-8 bytes and their sha256."""

    documents: int = 0
    text_bytes: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


def _parts(pieces: Iterator[Piece], part_bytes: int, totals: Totals) -> Iterator[Part]:
    """Pieces grouped into parts of at least `part_bytes` (the last may be smaller), counted."""
    part, size = Part(0), 0
    for piece in pieces:
        part.pieces.append(piece.data)
        part.separated.append(piece.starts and totals.documents > 0)
        totals.documents += piece.starts
        totals.text_bytes += len(piece.data)
        totals.digest.update(piece.data)
        size += len(piece.data)
        if size >= part_bytes:
            yield part
            part, size = Part(part.index + 1), 0
    if part.pieces:
        yield part


class PartialState:
    """`OUT_DIR/.partial`: the job it belongs to, a trained tokenizer, and the encoded parts. A
    different job (other inputs, tokenizer or sizes) starts it afresh."""

    def __init__(self, out_dir: Path, job: dict):
        self.root = out_dir / PARTIAL_DIR
        job_file = self.root / "job.json"
        if self.root.exists() and not (
            job_file.is_file() and json.loads(job_file.read_text()) == job
        ):
            shutil.rmtree(self.root)
        (self.root / "parts").mkdir(parents=True, exist_ok=True)
        _write_atomic(job_file, json.dumps(job))

    def part(self, index: int) -> Path:
        return self.root / "parts" / f"{index:08d}.bin"

    def parts_done(self) -> int:
        return len(list((self.root / "parts").glob("*.bin")))


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


_worker_encoder: tokenizers.Encoder | None = None


def _start_worker(tokenizer: tokenizers.Tokenizer) -> None:
    """Pool initializer: one single-threaded encoder per process (the processes are the
    parallelism; a thread pool in each would only contend for the same cores)."""
    global _worker_encoder
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_encoder = tokenizers.encoder(tokenizer)


def _encode_part(path: str, pieces: list[bytes], separated: list[bool], dtype: str) -> None:
    ids = _worker_encoder(pieces, separated).astype(dtype)
    temporary = f"{path}.tmp"
    ids.tofile(temporary)
    os.replace(temporary, path)


def _encode(
    parts: Iterator[Part],
    state: PartialState,
    tokenizer: tokenizers.Tokenizer,
    dtype: str,
    workers: int,
) -> int:
    """Tokenize every part not already on disk; returns the number of parts."""
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(tokenizer,),
    )
    pending, count = set(), 0
    try:
        for part in parts:
            count += 1
            path = state.part(part.index)
            if path.exists():
                continue
            pending.add(pool.submit(_encode_part, str(path), part.pieces, part.separated, dtype))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
        for future in wait(pending).done:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return count


def _join_parts(state: PartialState, count: int, val_fraction: float, itemsize: int) -> int:
    """Write the parts, in order, to `.partial/train.bin` and `val.bin`; returns the tokens."""
    paths = [state.part(index) for index in range(count)]
    tokens = sum(path.stat().st_size for path in paths) // itemsize
    split_bytes = int(tokens * (1 - val_fraction)) * itemsize
    offset = 0
    with open(state.root / "train.bin", "wb") as train, open(state.root / "val.bin", "wb") as val:
        for path in paths:
            data = memoryview(path.read_bytes())
            head = min(max(split_bytes - offset, 0), len(data))
            train.write(data[:head])
            val.write(data[head:])
            offset += len(data)
    return tokens


def _publish(state: PartialState, out_dir: Path, tokenizer: tokenizers.Tokenizer, meta: dict):
    """Move the shards into place, meta.json last (a reader trusts a folder by its meta.json)."""
    (out_dir / SHARD_META).unlink(missing_ok=True)
    for split in ("train.bin", "val.bin"):
        os.replace(state.root / split, out_dir / split)
    if tokenizer.serialized is None:
        (out_dir / TOKENIZER_FILE).unlink(missing_ok=True)
    else:
        _write_atomic(out_dir / TOKENIZER_FILE, tokenizer.serialized)
    _write_atomic(out_dir / SHARD_META, json.dumps(meta, indent=1) + "\n")


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


def _job(inputs: list[InputFile], spec: str, text_field: str, chunk_bytes: int, part_bytes: int):
    """What the parts on disk depend on; a resume reuses them only for the same job."""
    return {
        "inputs": [[source.path, source.size, source.mtime_ns] for source in inputs],
        "tokenizer": spec,
        "text_field": text_field,
        "chunk_bytes": chunk_bytes,
        "part_bytes": part_bytes,
    }


def prepare_shards(
    source: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.05,
    tokenizer: str = "bytes",
    text_field: str = "text",
    workers: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    part_bytes: int | None = None,
    progress: bool = False,
) -> dict:
    """Tokenize the documents at `source` (a text file or jsonl/Parquet, or a folder of them;
    a path or a URI) into `out_dir` (train.bin, val.bin, meta.json, and tokenizer.json unless
    the tokenizer is `bytes`; a path or a URI) with `workers` processes (default: every core),
    in parts of `part_bytes` of text (default `PART_BYTES`). Returns the meta.json content. The
    workers are spawned, so a script calling this needs the `if __name__ == "__main__":` guard."""
    out_uri = os.fspath(out_dir)
    remote = "://" in out_uri
    out_dir = staging_folder(out_uri) if remote else Path(out_uri)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    workers = workers or default_workers()
    part_bytes = part_bytes or PART_BYTES
    kind, argument = tokenizers.parse_spec(tokenizer)
    given = tokenizers.load_json(argument) if kind == "json" else None
    inputs = documents.list_inputs(str(source))
    job_tokenizer = given.fingerprint if given else tokenizer
    job = _job(inputs, job_tokenizer, text_field, chunk_bytes, part_bytes)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    state = None
    try:
        state = PartialState(out_dir, job)
        with _progress(progress) as bar:

            def tracker(description: str) -> Callable[[int], None]:
                if bar is None:
                    return lambda n: None
                task = bar.add_task(description, total=sum(f.size for f in inputs))
                return lambda n: bar.advance(task, n)

            def pieces(description: str) -> Iterator[Piece]:
                return documents.pieces(inputs, text_field, chunk_bytes, tracker(description))

            encoder = given or _trained_or_bytes(kind, argument, tokenizer, state, pieces)
            if bar is not None and state.parts_done():
                bar.console.print(f"resuming: {state.parts_done()} parts already encoded")
            # uint16 keeps the nanoGPT layout; a vocabulary beyond it needs uint32.
            dtype = np.dtype(np.uint16 if encoder.vocab_size <= 1 << 16 else np.uint32)
            totals = Totals()
            parts = _parts(pieces("encoding"), part_bytes, totals)
            count = _encode(parts, state, encoder, dtype.name, workers)
        tokens = _join_parts(state, count, val_fraction, dtype.itemsize)
        if tokens == 0:
            raise InputError(f"input {str(source)!r}: no text (no documents, or only empty ones)")
        meta = {
            "dtype": dtype.name,
            "vocab_size": encoder.vocab_size,
            "tokenizer": encoder.name,
            "tokenizer_fingerprint": encoder.fingerprint,
            "files": len(inputs),
            "documents": totals.documents,
            "bytes": totals.text_bytes,
            "tokens": tokens,
            "fingerprint": f"{Path(source).name}:sha256:{totals.digest.hexdigest()[:16]}"
            f":{encoder.fingerprint}:val{val_fraction:g}",
        }
        _publish(state, out_dir, encoder, meta)
    except Exception:
        if state is not None:
            shutil.rmtree(state.root, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    shutil.rmtree(state.root)
    if remote:
        upload(out_dir, out_uri)
        shutil.rmtree(out_dir)
    return meta


def staging_folder(out_uri: str) -> Path:
    """Where the shards for a remote OUT_DIR are made (and a killed run resumed) before their
    upload: `prepare/<last part of the URI>-<16 hex of it>` in the node's cache folder."""
    digest = hashlib.sha256(out_uri.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", out_uri.rstrip("/").rsplit("/", 1)[-1]) or "shards"
    return shardcache.cache_root() / "prepare" / f"{name}-{digest}"


def upload(staged: Path, out_uri: str) -> None:
    """Copy finished shards from `staged` to `out_uri`: the old meta.json removed first (readers
    stop trusting the folder before its shards change), each file a whole object (a multipart
    upload appears only on completion), meta.json last."""
    location = resolve(out_uri, what="OUT_DIR")
    filesystem, root = location.filesystem, location.root
    local = pafs.LocalFileSystem()
    for name in (SHARD_META, TOKENIZER_FILE):
        if filesystem.get_file_info(f"{root}/{name}").type == pafs.FileType.File:
            filesystem.delete_file(f"{root}/{name}")
    for name in ("train.bin", "val.bin", TOKENIZER_FILE, SHARD_META):
        if (staged / name).exists():
            pafs.copy_files(str(staged / name), f"{root}/{name}", local, filesystem)


def _trained_or_bytes(
    kind: str,
    vocab: int | None,
    spec: str,
    state: PartialState,
    pieces: Callable[[str], Iterator[Piece]],
) -> tokenizers.Tokenizer:
    """The byte tokenizer, or a BPE trained on the documents (once: a resume reloads it)."""
    if kind == "bytes":
        return tokenizers.byte_tokenizer()
    saved = state.root / TOKENIZER_FILE
    if saved.is_file():
        return tokenizers.load_json(saved, name=spec)
    texts = (piece.data.decode("utf-8", errors="replace") for piece in pieces(f"training {spec}"))
    trained = tokenizers.train_bpe(spec, vocab, texts)
    _write_atomic(saved, trained.serialized)
    return trained
