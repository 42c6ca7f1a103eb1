"""Checkpoints of one cell (`workers.layout.CellPaths.checkpoint`), written atomically.

A checkpoint holds the model's state dict (sparsity masks are buffers, so they are in it), the
optimizer's state and the number of completed steps. Nothing else is needed for an exact resume:
the learning rate, the data batch and the random seed of each step are pure functions of the step.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow.fs as pafs
import torch

from workers import storage
from workers.layout import CHECKPOINT_NAME, CellPaths, Layout, resolve

KEEP_LAST = 2


def _cell(store_uri: str, cell_id: str) -> tuple[pafs.FileSystem, CellPaths]:
    location = resolve(store_uri)
    return location.filesystem, Layout(location.root).cell(cell_id)


def _checkpoints(filesystem: pafs.FileSystem, cell: CellPaths) -> list[str]:
    """The cell's checkpoint files, oldest first (their names sort by step)."""
    return [
        path
        for path in storage.list_paths(filesystem, cell.checkpoints)
        if CHECKPOINT_NAME.match(path.rsplit("/", 1)[1])
    ]


def _trunk(store_uri: str, trunk_id: str) -> tuple[pafs.FileSystem, CellPaths]:
    location = resolve(store_uri)
    return location.filesystem, Layout(location.root).trunk(trunk_id)


def _save(filesystem: pafs.FileSystem, cell: CellPaths, steps: int, state: dict[str, Any]) -> str:
    buffer = io.BytesIO()
    torch.save(state | {"steps": steps}, buffer)
    path = cell.checkpoint(steps)
    storage.write_atomic(filesystem, path, buffer.getvalue())
    return path


def _load(filesystem: pafs.FileSystem, path: str, device: torch.device) -> dict[str, Any]:
    data = storage.read_bytes(filesystem, path)
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def save(store_uri: str, cell_id: str, steps: int, state: dict[str, Any]) -> str:
    """Write `state` as the checkpoint after `steps` completed steps; keep the last KEEP_LAST."""
    filesystem, cell = _cell(store_uri, cell_id)
    path = _save(filesystem, cell, steps, state)
    for old in _checkpoints(filesystem, cell)[:-KEEP_LAST]:
        filesystem.delete_file(old)
    return path


def load_latest(store_uri: str, cell_id: str, device: torch.device) -> dict[str, Any] | None:
    """The newest checkpoint of the cell (tensors on `device`), or None when there is none."""
    filesystem, cell = _cell(store_uri, cell_id)
    paths = _checkpoints(filesystem, cell)
    return _load(filesystem, paths[-1], device) if paths else None


def save_trunk(store_uri: str, trunk_id: str, steps: int, state: dict[str, Any]) -> str:
    """A trunk's checkpoint at a fork step; all are kept, since each is a branch's start."""
    return _save(*_trunk(store_uri, trunk_id), steps, state)


def trunk_steps(store_uri: str, trunk_id: str) -> list[int]:
    """The steps at which the trunk has a checkpoint, ascending."""
    filesystem, trunk = _trunk(store_uri, trunk_id)
    names = [path.rsplit("/", 1)[1] for path in _checkpoints(filesystem, trunk)]
    return [int(CHECKPOINT_NAME.match(name)["steps"]) for name in names]


def load_trunk(
    store_uri: str, trunk_id: str, steps: int, device: torch.device
) -> dict[str, Any] | None:
    """The trunk's checkpoint after `steps` steps, or None when it has none there."""
    filesystem, trunk = _trunk(store_uri, trunk_id)
    path = trunk.checkpoint(steps)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    return _load(filesystem, path, device)


def clear(store_uri: str, cell_id: str) -> None:
    """Delete a finished cell's checkpoints: they exist only to resume, and a forced rerun of a
    done cell must start from step 0, not from its last checkpoint."""
    filesystem, cell = _cell(store_uri, cell_id)
    for path in storage.list_paths(filesystem, cell.checkpoints):
        filesystem.delete_file(path)
