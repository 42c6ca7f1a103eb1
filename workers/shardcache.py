"""A node's one local copy of remote token shards, which every worker on the node memory-maps.

A shard folder on an object store (`s3://...`) is read by every cell, and a node runs several
cells at once: were each to read `train.bin` into memory, a node would hold (and fetch) it once per
worker, which at billions of tokens it has neither the memory nor the bandwidth for. So the first
worker on a node downloads each shard into `$COMPSCALE_CACHE/shards/` (default: the system temp
folder's `compscale-cache/`) and the others wait for it, then all of them map the same files.

- One download: workers take an exclusive `flock` on the folder's `.lock` (released by the kernel
  if the holder dies, so a killed download never blocks the next) and look again once they hold it.
- No half file: a shard is written under a `.tmp-` name, checked against the size the store
  reports, flushed and renamed into place; the folder's `meta.json` is written last, and a folder
  is used only when its `meta.json` and sizes match the remote ones.
- No stale copy: the folder is named by the URI and a hash of the remote `meta.json` (whose
  fingerprint names the text and tokenizer), so re-prepared shards land in a new folder, and a
  folder republished while it was downloading is refused rather than cached.

Nothing is evicted: a folder lives until someone deletes it (never while cells use it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from workers import storage

CACHE_ENV = "COMPSCALE_CACHE"
SPLITS = ("train", "val")
META_NAME = "meta.json"
COPY_BUFFER = 64 << 20  # bytes per read from the store: one ranged GET each


def cache_root() -> Path:
    """Where this node keeps its copies: `$COMPSCALE_CACHE`, or `compscale-cache` in the system
    temp folder."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    return Path(tempfile.gettempdir()) / "compscale-cache"


def local_copy(filesystem: pafs.FileSystem, root: str, uri: str, meta: dict) -> Path:
    """The local folder holding `train.bin` and `val.bin` of the remote shard folder `root` on
    `filesystem` (named `uri`) whose meta.json reads `meta`; downloaded by the first caller on
    this node, waited for by the others."""
    sizes = {split: filesystem.get_file_info(f"{root}/{split}.bin").size for split in SPLITS}
    folder = cache_root() / "shards" / _folder_name(uri, meta)
    if _complete(folder, meta, sizes):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):
        if _complete(folder, meta, sizes):  # another worker finished it while we waited
            return folder
        (folder / META_NAME).unlink(missing_ok=True)
        for split in SPLITS:
            _download(filesystem, f"{root}/{split}.bin", folder / f"{split}.bin", sizes[split])
        now = json.loads(storage.read_bytes(filesystem, f"{root}/{META_NAME}"))
        if now != meta:
            raise OSError(f"data.source {uri!r}: its meta.json changed while it was downloading")
        _write_atomic(folder / META_NAME, json.dumps(meta, indent=1).encode())
    return folder


def _folder_name(uri: str, meta: dict) -> str:
    """`<last part of the URI>-<16 hex of the URI and meta.json>`: readable, and new whenever the
    shards behind the URI are re-prepared."""
    digest = hashlib.sha256(f"{uri}\n{json.dumps(meta, sort_keys=True)}".encode()).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", uri.rstrip("/").rsplit("/", 1)[-1]) or "shards"
    return f"{name}-{digest[:16]}"


def _complete(folder: Path, meta: dict, sizes: dict[str, int]) -> bool:
    """Whether `folder` is a finished copy: its meta.json (written last) is `meta`, and each
    shard has the remote size."""
    try:
        if json.loads((folder / META_NAME).read_bytes()) != meta:
            return False
        return all((folder / f"{split}.bin").stat().st_size == sizes[split] for split in SPLITS)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block's duration."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(filesystem: pafs.FileSystem, path: str, target: Path, size: int) -> None:
    """Copy `path` to `target` through a temporary sibling; its size must be `size`."""
    temporary = target.with_name(f"{storage.TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        with filesystem.open_input_stream(path) as source, open(temporary, "wb") as sink:
            shutil.copyfileobj(source, sink, COPY_BUFFER)
            sink.flush()
            os.fsync(sink.fileno())
        if temporary.stat().st_size != size:
            raise OSError(f"{path}: downloaded {temporary.stat().st_size} bytes of {size}")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{storage.TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    temporary.write_bytes(data)
    os.replace(temporary, path)
