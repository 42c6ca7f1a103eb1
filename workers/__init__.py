"""workers: one cell = one training run over a compressed representation (no Ray here).

`run_cell` is imported lazily so that importing this package (the `compscale` CLI does, on every
start) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.config import CellConfig
    from workers.ladder import Ladder


def run_cell(
    cell: CellConfig | dict,
    store_uri: str,
    attempt: int | None = None,
    ladder: Ladder | None = None,
) -> dict[str, Any]:
    """Train one cell into the store at `store_uri` (path or URI) as attempt `attempt` (None: the
    cell's next one), or its `ladder` part (a trunk segment or a branch); returns its result
    row."""
    from workers.train import run_cell as train_cell

    return train_cell(cell, store_uri, attempt, ladder)
