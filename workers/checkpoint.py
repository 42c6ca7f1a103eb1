"""Checkpoints of one cell under `<store>/cells/<cell_id>/checkpoints/step-<steps:09d>.pt`, atomic.

A checkpoint holds the model's state dict (sparsity masks are buffers, so they are in it), the
optimizer's state and the number of completed steps. Nothing else is needed for an exact resume:
the learning rate, the data batch and the random seed of each step are pure functions of the step.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from workers import storage

KEEP_LAST = 2


def _directory(store_uri: str, cell_id: str):
    filesystem, root = storage.resolve(store_uri)
    return filesystem, f"{root}/cells/{cell_id}/checkpoints"


def save(store_uri: str, cell_id: str, steps: int, state: dict[str, Any]) -> str:
    """Write `state` as the checkpoint after `steps` completed steps; keep the last KEEP_LAST."""
    filesystem, directory = _directory(store_uri, cell_id)
    buffer = io.BytesIO()
    torch.save(state | {"steps": steps}, buffer)
    path = f"{directory}/step-{steps:09d}.pt"
    storage.write_atomic(filesystem, path, buffer.getvalue())
    for old in storage.list_names(filesystem, directory)[:-KEEP_LAST]:
        filesystem.delete_file(f"{directory}/{old}")
    return path


def load_latest(store_uri: str, cell_id: str, device: torch.device) -> dict[str, Any] | None:
    """The newest checkpoint of the cell (tensors on `device`), or None when there is none."""
    filesystem, directory = _directory(store_uri, cell_id)
    names = [n for n in storage.list_names(filesystem, directory) if n.startswith("step-")]
    if not names:
        return None
    data = storage.read_bytes(filesystem, f"{directory}/{names[-1]}")
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def clear(store_uri: str, cell_id: str) -> None:
    """Delete a finished cell's checkpoints: they exist only to resume, and a forced rerun of a
    done cell must start from step 0, not from its last checkpoint."""
    filesystem, directory = _directory(store_uri, cell_id)
    for name in storage.list_names(filesystem, directory):
        filesystem.delete_file(f"{directory}/{name}")
