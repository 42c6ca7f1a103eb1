"""The store as the worker sees it: a local path or any pyarrow filesystem URI, written atomically.

A reader (or a restarted worker) sees either the old state or the new one, never half a file:
- on a disk (local, or any filesystem with a real rename) a file is written under a `.tmp-` name
  and then moved into place; names starting with `.tmp-` are invisible to `list_names`;
- on an object store (S3, GCS, Azure) the whole object is written by one PUT (pyarrow uploads a
  large one as a multipart upload, which S3 and GCS also publish all at once on completion), so
  there is no temporary object and no rename, which an object store does as a copy and a delete.
  Folders are implicit there: no marker objects are created.
"""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs

from workers import objectstore
from workers.config import CellConfig
from workers.layout import CellPaths, Layout, attempt_number, claim_number, event_attempt

TEMP_PREFIX = ".tmp-"
OBJECT_STORES = ("s3", "gcs", "abfs")  # pyarrow's `type_name`s of filesystems without rename


def _unwrapped(filesystem: pafs.FileSystem, path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem a wrapper stands for, and `path` on it: a `SubTreeFileSystem` (its base
    path prefixed), or a `PyFileSystem` whose handler names its `inner` filesystem (as
    benchmarks/store_ops.py does to count calls)."""
    base = getattr(filesystem, "base_fs", None)
    if base is not None:
        return _unwrapped(base, f"{filesystem.base_path.rstrip('/')}/{path.lstrip('/')}")
    inner = getattr(getattr(filesystem, "handler", None), "inner", None)
    if inner is not None:
        return _unwrapped(inner, path)
    return filesystem, path


def is_object_store(filesystem: pafs.FileSystem) -> bool:
    """Whether `filesystem` is an object store (no atomic rename, folders implicit); a wrapper
    is judged by the filesystem it wraps."""
    return _unwrapped(filesystem, "")[0].type_name in OBJECT_STORES


def is_s3(filesystem: pafs.FileSystem) -> bool:
    return _unwrapped(filesystem, "")[0].type_name == "s3"


def exact_creates(filesystem: pafs.FileSystem) -> bool:
    """Whether `create_exclusive` has exactly one winner here: on a disk (local or shared) and
    on S3; elsewhere (GCS, Azure, ...) it is a write re-read, which two racers can both win."""
    inner = _unwrapped(filesystem, "")[0]
    return isinstance(inner, pafs.LocalFileSystem) or inner.type_name == "s3"


def is_file(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type == pafs.FileType.File


def read_bytes(filesystem: pafs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def write_atomic(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see all of it or none: one PUT on an object store,
    a temporary sibling and a rename elsewhere."""
    if is_object_store(filesystem):
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)  # buffered whole, uploaded at close: nothing visible before
        return
    parent, name = path.rsplit("/", 1)
    filesystem.create_dir(parent, recursive=True)
    temp = f"{parent}/{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
    with filesystem.open_output_stream(temp) as stream:
        stream.write(data)
    filesystem.move(temp, path)


def create_exclusive(filesystem: pafs.FileSystem, path: str, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; True if this call created it.

    Exact where `exact_creates`: on a disk a finished temporary file is hard-linked to the name,
    which fails if the name exists (POSIX `link`, atomic on local disks and NFS); on S3 one PUT
    with `If-None-Match: *` (`workers.objectstore`). Either way exactly one of any number of
    racing callers wins, and nobody sees a partial file. Elsewhere (GCS, Azure: pyarrow offers
    no conditional create there) it is a create-if-absent re-read to confirm `data` landed, and
    two callers that both find the name absent, each re-reading before the other's write lands,
    both win: the commands that claim refuse such a store unless told `--unsafe-claims`.
    """
    inner, inner_path = _unwrapped(filesystem, path)
    if isinstance(inner, pafs.LocalFileSystem):
        parent, name = inner_path.rsplit("/", 1)
        inner.create_dir(parent, recursive=True)
        temp = f"{parent}/{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
        with open(temp, "wb") as stream:
            stream.write(data)
        try:
            os.link(temp, inner_path)
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
        return True
    if inner.type_name == "s3":
        return objectstore.create_exclusive(f"s3://{inner_path}", data)
    if is_file(filesystem, path):
        return False
    write_atomic(filesystem, path, data)
    return read_bytes(filesystem, path) == data


def list_names(filesystem: pafs.FileSystem, directory: str) -> list[str]:
    """Sorted base names directly under `directory` ([] if it is absent), temp files hidden."""
    selector = pafs.FileSelector(directory, allow_not_found=True)
    names = (info.base_name for info in filesystem.get_file_info(selector))
    return sorted(name for name in names if not name.startswith(TEMP_PREFIX))


def list_paths(filesystem: pafs.FileSystem, directory: str) -> list[str]:
    """Full paths of the finished entries directly under `directory`, sorted by name."""
    return [f"{directory}/{name}" for name in list_names(filesystem, directory)]


def next_attempt(filesystem: pafs.FileSystem, cell: CellPaths) -> int:
    """The number of the cell's next attempt: 1 + the highest one it started anywhere.

    The one who starts an attempt decides its number with this (the driver's task wrapper, or
    `train-cell` outside the orchestrator) and hands it to the worker, so status events, loss rows
    and the result row all carry the same k. An attempt shows as a `running` event (the wrapper
    records it first, before anything can fail) or as a `losses/attempt-<k>` folder (a run outside
    the orchestrator), so a new attempt never writes into an old attempt's folder. A driver's
    task claims its number first (`claims/attempt-<k>.json`), so a claim counts too.
    """
    events = [event_attempt(name) for name in list_names(filesystem, cell.status)]
    folders = [attempt_number(name) for name in list_names(filesystem, cell.losses)]
    claims = [claim_number(name) for name in list_names(filesystem, cell.claims)]
    return 1 + max((k for k in events + folders + claims if k is not None), default=0)


def write_cell_config(filesystem: pafs.FileSystem, layout: Layout, cell: CellConfig) -> None:
    """The one writer of `cell.json` (the canonical config): written once, an existing one kept,
    whether the orchestrator registers the cell or a worker trains it outside the orchestrator.
    Its trackers are left out: they belong to the run that started it, not to the cell."""
    path = layout.cell(cell.cell_id).config
    if not is_file(filesystem, path):
        write_atomic(
            filesystem, path, cell.model_dump_json(indent=1, exclude={"tracking"}).encode()
        )
