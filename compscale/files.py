"""Atomic local writes for the reducer's tables, figures and reports: a crash leaves the old file
or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

MODE = 0o644


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Write via `write(tmp_name)` beside `path`, then rename: readers see old or new, not half.
    The file ends world-readable (`MODE`): mkstemp makes it owner-only, and a report or table is
    meant to be served or shared."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(target: Path, text: str) -> Path:
    """Write `text` to `target` atomically, creating its folder; returns `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: Path(tmp).write_text(text))
    return target
