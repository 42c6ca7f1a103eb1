"""A stand-in for `workers.run_cell` that honours its contract without training anything.

It really sleeps, writes loss rows (layout and schema of docs/contracts.md) in flushes and then the
result row, and is steered by marker files in `<store>/../double/` ($COMPSCALE_DOUBLE_DIR for a
store on S3) so that tests in other processes
(Ray workers, a driver subprocess) can make one cell:
- `fail/<cell_id>`: raise every time (until the file is removed: "the cause is fixed");
- `misconfigured/<cell_id>`: raise FileNotFoundError for its data, as a cell with missing token
  shards does (a configuration error: never retried);
- `kill/<cell_id>`: SIGKILL its own process after the first flush, once (the file is consumed);
- `sleep_s`: total seconds a cell sleeps (default 0.2).
A cell of world size k > 1 checks that it runs in a torch process group of k ranks (all_reduce);
only rank 0 writes.
"""

from __future__ import annotations

import os
import platform
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.store import LOSS_SCHEMA, RESULT_SCHEMA, Store
from workers.config import CellConfig

STEPS = 8
FLUSH_EVERY = 3


class InjectedFailure(RuntimeError):
    """The error a cell marked `fail` raises."""


def control_dir(store_uri: str) -> Path:
    """`<store>/../double/`, or $COMPSCALE_DOUBLE_DIR (a store on S3 has no local parent)."""
    return Path(os.environ.get("COMPSCALE_DOUBLE_DIR") or Path(store_uri).parent / "double")


def run_cell(cell: CellConfig | dict, store_uri: str, attempt: int | None = None) -> dict:
    cell = cell if isinstance(cell, CellConfig) else CellConfig.model_validate(cell)
    control = control_dir(store_uri)
    store = Store(store_uri)
    paths = store.layout.cell(cell.cell_id)
    attempt = attempt if attempt is not None else store.next_attempt(cell.cell_id)
    sleep_file = control / "sleep_s"
    sleep_s = float(sleep_file.read_text()) if sleep_file.exists() else 0.2
    if (control / "fail" / cell.cell_id).exists():
        time.sleep(sleep_s / 4)
        raise InjectedFailure(f"injected failure of {cell.cell_id}")
    if (control / "misconfigured" / cell.cell_id).exists():
        raise FileNotFoundError(f"data source {cell.data.source!r}: train.bin is missing")

    if cell.world_size > 1 and _rank_in_process_group(cell.world_size) != 0:
        return {}  # like the real worker, only rank 0 writes rows and the result
    started = time.perf_counter()
    tokens_per_step = max(cell.tokens // STEPS, 1)
    rows: list[dict] = []
    part = 0
    for step in range(1, STEPS + 1):
        time.sleep(sleep_s / STEPS)
        elapsed = time.perf_counter() - started
        loss = 5.0 / (1 + step) + 1e-7 * cell.seed
        rows.append(
            {
                "cell_id": cell.cell_id,
                "attempt": attempt,
                "step": step,
                "tokens": step * tokens_per_step,
                "train_loss": loss,
                "val_loss": loss if step == STEPS else None,
                "lr": cell.train.lr,
                "grad_norm": 1.0,
                "tokens_per_s": step * tokens_per_step / elapsed,
                "wall_time_s": elapsed,
            }
        )
        if step % FLUSH_EVERY == 0 or step == STEPS:
            table = pa.Table.from_pylist(rows, schema=LOSS_SCHEMA)
            store.write_atomic(paths.loss_part(attempt, part), _parquet_bytes(table))
            rows, part = [], part + 1
            kill_marker = control / "kill" / cell.cell_id
            if kill_marker.exists():
                kill_marker.unlink()
                os.kill(os.getpid(), signal.SIGKILL)

    wall = time.perf_counter() - started
    result = {
        "cell_id": cell.cell_id,
        "model": cell.model_label,
        "params": cell.params,
        "tokens": STEPS * tokens_per_step,
        "format": cell.format,
        "seed": cell.seed,
        "val_loss": 5.0 / (1 + STEPS),
        "train_loss": 5.0 / (1 + STEPS),
        "steps": STEPS,
        "wall_time_s": wall,
        "tokens_per_s": STEPS * tokens_per_step / wall,
        "hardware": platform.machine(),
        "world_size": cell.world_size,
        "attempt": attempt,
        "data_fingerprint": "double",
        "finished_at": datetime.now(timezone.utc),
    }
    table = pa.Table.from_pylist([result], schema=RESULT_SCHEMA)
    store.write_atomic(paths.result, _parquet_bytes(table))
    return result


def _rank_in_process_group(world_size: int) -> int:
    """This process's rank, after proving the group of `world_size` processes really talks."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() != world_size:
        raise RuntimeError(f"expected a torch process group of {world_size} processes")
    total = torch.ones(1)
    dist.all_reduce(total)
    if int(total.item()) != world_size:
        raise RuntimeError(f"all_reduce over {world_size} ranks gave {total.item()}")
    return dist.get_rank()


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
