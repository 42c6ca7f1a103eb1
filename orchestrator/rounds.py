"""The `rounds` table of adaptive sweeps: one row per round, append-only, one Parquet file each.

A round is two files under `sweeps/<name>/rounds/` (`workers.layout.SweepPaths`):
`round-<r>.json`, the cells the round adds, created exclusively before any of them runs (so a
restarted driver runs the same cells, never a second proposal), and `round-<r>.parquet`, its row,
written atomically once the round's cells are done and fitted. Round 0 adds the spec's own cells
and has no JSON. A round with cells and no row is the one a killed driver was in.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from workers import storage
from workers.config import CellConfig
from workers.schema import ROUND_SCHEMA

if TYPE_CHECKING:
    from orchestrator.store import Store


def write_row(store: Store, row: dict[str, Any]) -> None:
    """Write one round's row (atomic rename; a round's row is written once)."""
    row = row | {"recorded_at": datetime.now(timezone.utc)}
    table = pa.Table.from_pylist([row], schema=ROUND_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path = store.layout.sweep(row["sweep"]).round_row(row["round"])
    store.write_atomic(path, sink.getvalue().to_pybytes())


def added_cells(store: Store, sweep: str) -> dict[int, list[CellConfig]]:
    """The cells each round after 0 added, by round."""
    paths = store.layout.sweep(sweep)
    found = {}
    for r in store.round_indices(sweep, "json"):
        document = store.read_json(paths.round_cells(r))
        found[r] = [CellConfig.model_validate(cell) for cell in document["cells"]]
    return found


def create_round(store: Store, sweep: str, round_index: int, cells: list[CellConfig]) -> bool:
    """Record the cells round `round_index` adds, unless a round of that number exists (then its
    cells stand); True if this call created it."""
    document = {
        "sweep": sweep,
        "round": round_index,
        "cells": [json.loads(cell.model_dump_json()) for cell in cells],
    }
    data = json.dumps(document, indent=1, sort_keys=True).encode()
    path = store.layout.sweep(sweep).round_cells(round_index)
    return storage.create_exclusive(store.fs, path, data)
