"""Rank 0's Parquet writer: per-step loss rows, flushed every few seconds, and the result row last.

Each flush writes one loss part (`workers.layout.CellPaths.loss_part`) atomically, so a crash loses
at most the rows since the last flush and never leaves a torn file. The attempt number is given by
whoever started the attempt (`workers.storage.next_attempt`); the sink never chooses one. Loss and
gradient norm may be handed in as 0-d tensors: they are converted only at flush time, so logging
costs no device sync per step.
Each flushed batch also goes to the attempt's experiment trackers, if any (`workers.trackers`).
The schemas are the ones in docs/contracts.md.
"""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from workers import storage
from workers.layout import CellPaths, Layout, resolve
from workers.schema import LOSS_SCHEMA, RESULT_SCHEMA
from workers.trackers import Trackers


def table_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    return buffer.getvalue()


class LossSink:
    """Buffers loss rows of one attempt and writes them as numbered Parquet parts."""

    def __init__(
        self,
        store_uri: str,
        cell_id: str,
        attempt: int,
        flush_seconds: float = 5.0,
        paths: CellPaths | None = None,
        trackers: Trackers | None = None,
    ):
        location = resolve(store_uri)
        self.filesystem = location.filesystem
        self.paths = paths or Layout(location.root).cell(cell_id)
        self.filesystem.create_dir(self.paths.attempt(attempt), recursive=True)
        self.cell_id, self.attempt = cell_id, attempt
        self.flush_seconds = flush_seconds
        self.rows: list[dict[str, Any]] = []
        self.parts_written = 0
        self.last_flush = time.monotonic()
        self.trackers = trackers

    def append(self, **row: Any) -> None:
        """Add one step's row (LOSS_SCHEMA less cell_id and attempt); flush when it is time."""
        self.rows.append(row)
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.rows:
            return
        columns = {name: [row.get(name) for row in self.rows] for name in LOSS_SCHEMA.names[2:]}
        for name, values in columns.items():
            if any(isinstance(value, torch.Tensor) for value in values):
                columns[name] = _floats(values)
        count = len(self.rows)
        rows = [
            {"cell_id": self.cell_id, "attempt": self.attempt}
            | {name: values[i] for name, values in columns.items()}
            for i in range(count)
        ]
        path = self.paths.loss_part(self.attempt, self.parts_written)
        storage.write_atomic(self.filesystem, path, table_bytes(rows, LOSS_SCHEMA))
        if self.trackers is not None:
            self.trackers.log(rows)
        self.parts_written += 1
        self.rows = []

    def write_result(self, row: dict[str, Any]) -> None:
        """Flush pending losses, then write the cell's one-row `result.parquet`: the attempt has
        succeeded, so its trackers are closed."""
        self.flush()
        row = row | {"cell_id": self.cell_id, "attempt": self.attempt}
        row.setdefault("finished_at", datetime.now(timezone.utc))
        data = table_bytes([row], RESULT_SCHEMA)
        storage.write_atomic(self.filesystem, self.paths.result, data)
        if self.trackers is not None:
            self.trackers.close()


def _floats(values: list[Any]) -> list[float | None]:
    """Convert a column of 0-d tensors / numbers / None with one device transfer."""
    tensors = [value for value in values if isinstance(value, torch.Tensor)]
    converted = iter(torch.stack([t.detach().float() for t in tensors]).cpu().tolist())
    return [next(converted) if isinstance(value, torch.Tensor) else value for value in values]


def read_losses(store_uri: str, cell_id: str, paths: CellPaths | None = None) -> pa.Table:
    """All loss rows of a cell (or of the trunk at `paths`), one per step: the row from the
    highest attempt wins."""
    location = resolve(store_uri)
    filesystem = location.filesystem
    losses = (paths or Layout(location.root).cell(cell_id)).losses
    tables = []
    for attempt in storage.list_paths(filesystem, losses):
        for part in storage.list_paths(filesystem, attempt):
            tables.append(pq.read_table(io.BytesIO(storage.read_bytes(filesystem, part))))
    if not tables:
        return LOSS_SCHEMA.empty_table()
    table = pa.concat_tables(tables).sort_by([("step", "ascending"), ("attempt", "descending")])
    steps = table.column("step").to_numpy()
    keep = [0, *[i for i in range(1, len(steps)) if steps[i] != steps[i - 1]]]
    return table.take(keep)


def read_result(store_uri: str, cell_id: str) -> dict[str, Any]:
    location = resolve(store_uri)
    data = storage.read_bytes(location.filesystem, Layout(location.root).cell(cell_id).result)
    return pq.read_table(io.BytesIO(data)).to_pylist()[0]
