"""The store as the worker sees it: a local path or any pyarrow filesystem URI, written atomically.

Every file is written under a `.tmp-` name and then moved into place, so a reader (or a restarted
worker) sees either the old state or the new one, never half a file. Names starting with `.tmp-`
are invisible to `list_names`.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pyarrow.fs as pafs

TEMP_PREFIX = ".tmp-"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and a root path for a URI (`s3://...`, `file:///...`) or a local path."""
    if "://" in uri:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        return filesystem, root.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def is_file(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type == pafs.FileType.File


def read_bytes(filesystem: pafs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def write_atomic(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling and a rename."""
    parent, name = path.rsplit("/", 1)
    filesystem.create_dir(parent, recursive=True)
    temp = f"{parent}/{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
    with filesystem.open_output_stream(temp) as stream:
        stream.write(data)
    filesystem.move(temp, path)


def list_names(filesystem: pafs.FileSystem, directory: str) -> list[str]:
    """Sorted base names directly under `directory` ([] if it is absent), temp files hidden."""
    selector = pafs.FileSelector(directory, allow_not_found=True)
    names = (info.base_name for info in filesystem.get_file_info(selector))
    return sorted(name for name in names if not name.startswith(TEMP_PREFIX))


def highest_number(names: list[str], pattern: str) -> int:
    """The largest integer captured by `pattern` (one group) among `names`; 0 when none matches."""
    numbers = [int(match.group(1)) for name in names if (match := re.fullmatch(pattern, name))]
    return max(numbers, default=0)
