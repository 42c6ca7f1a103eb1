"""A stand-in for `workers.run_cell` that honours its contract without training anything.

It really sleeps, writes loss rows (layout and schema of docs/contracts.md) in flushes and then the
result row, and is steered by marker files in `<store>/../double/` ($COMPSCALE_DOUBLE_DIR for a
store on S3) so that tests in other processes
(Ray workers, a driver subprocess) can make one cell:
- `fail/<cell_id>`: raise every time (until the file is removed: "the cause is fixed");
- `misconfigured/<cell_id>`: raise FileNotFoundError for its data, as a cell with missing token
  shards does (a configuration error: never retried);
- `kill/<cell_id>`: SIGKILL its own process after the first flush, once (the file is consumed);
- `sleep_s`: total seconds a cell sleeps (default 0.2);
- `law.json`: the known law `law_cell` draws final losses from (default LAW, LAW_RHO).
A cell whose data are token shards loads them, as the real worker does, and reports their
fingerprint (the bundled corpus is not read: "double").
A cell of world size k > 1 checks that it runs in a torch process group of k ranks (all_reduce);
only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
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
    return _train(cell, store_uri, attempt, final_loss=None)


# A known unified law at the tiny presets' scale (N ~ 5e4-2e5 parameters, D ~ 1e4-1e5 tokens).
LAW = {"A": 50.0, "alpha": 0.34, "B": 16.0, "beta": 0.28, "E": 1.5}
LAW_RHO = {"dense": 1.0, "sp50": 0.85, "int4": 0.9, "sp50+int4": 0.765, "int2": 0.5, "int3": 0.75}
SHARED_SD, OWN_SD = 0.02, 0.003  # log-loss noise: a seed's luck (all formats of (N, D, seed)), own


def law_loss(cell: CellConfig, truth: dict | None = None) -> float:
    """The cell's validation loss under LAW and LAW_RHO with seeded noise: one draw shared by the
    (N, D, seed) group, as a real seed's initial weights and batches are, and one of its own.
    `truth` (a `law.json` in the control folder, for benchmarks) replaces any of law, rho,
    shared_sd, own_sd and adds a `salt` to the noise seeds."""
    truth = truth or {}
    law, rho = LAW | truth.get("law", {}), LAW_RHO | truth.get("rho", {})
    salt = int(truth.get("salt", 0))
    group = np.random.default_rng([cell.params, cell.tokens, cell.seed, salt])
    own = np.random.default_rng([cell.params, cell.tokens, cell.seed, salt, *cell.format.encode()])
    mean = (
        law["A"] * (cell.params * rho[cell.format]) ** -law["alpha"]
        + law["B"] * cell.tokens ** -law["beta"]
        + law["E"]
    )
    shared, own_sd = truth.get("shared_sd", SHARED_SD), truth.get("own_sd", OWN_SD)
    return float(mean * np.exp(group.normal(0, shared) + own.normal(0, own_sd)))


def law_cell(cell: CellConfig | dict, store_uri: str, attempt: int | None = None) -> dict:
    """`run_cell` whose final validation loss follows LAW (`law_loss`): for adaptive sweeps."""
    cell = cell if isinstance(cell, CellConfig) else CellConfig.model_validate(cell)
    truth_file = control_dir(store_uri) / "law.json"
    truth = json.loads(truth_file.read_text()) if truth_file.exists() else None
    return _train(cell, store_uri, attempt, final_loss=law_loss(cell, truth))


def _train(
    cell: CellConfig | dict, store_uri: str, attempt: int | None, final_loss: float | None
) -> dict:
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
        if final_loss is not None:
            loss = final_loss * (1 + STEPS) / (1 + step)
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
        "val_loss": 5.0 / (1 + STEPS) if final_loss is None else final_loss,
        "train_loss": 5.0 / (1 + STEPS) if final_loss is None else final_loss,
        "steps": STEPS,
        "wall_time_s": wall,
        "tokens_per_s": STEPS * tokens_per_step / wall,
        "hardware": platform.machine(),
        "world_size": cell.world_size,
        "attempt": attempt,
        "data_fingerprint": _data_fingerprint(cell),
        "finished_at": datetime.now(timezone.utc),
    }
    table = pa.Table.from_pylist([result], schema=RESULT_SCHEMA)
    store.write_atomic(paths.result, _parquet_bytes(table))
    return result


def _data_fingerprint(cell: CellConfig) -> str:
    """ "double" for the bundled corpus, which it does not read; the fingerprint of token shards
    it loads as the real worker does (a remote folder through this node's cache)."""
    if cell.data.source == "bundled":
        return "double"
    from workers.data import load_tokens

    return load_tokens(cell.data).fingerprint


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
