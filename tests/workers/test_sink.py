"""The Parquet sink: atomic parts per flush, numbered attempts, one row per step to read back."""

import pyarrow.parquet as pq
import torch

from workers import storage
from workers.layout import Layout, resolve
from workers.sink import LOSS_SCHEMA, RESULT_SCHEMA, LossSink, read_losses, read_result

CELL = "tiny-dense-s0-000000000000"


def next_attempt(store_uri: str) -> int:
    location = resolve(store_uri)
    return storage.next_attempt(location.filesystem, Layout(location.root).cell(CELL))


def row(step: int, loss: float) -> dict:
    return dict(
        step=step,
        tokens=100 * (step + 1),
        train_loss=torch.tensor(loss),
        val_loss=None,
        lr=1e-3,
        grad_norm=torch.tensor(0.5),
        tokens_per_s=1e4,
        wall_time_s=0.1 * step,
    )


def test_each_flush_writes_one_numbered_part_with_the_contract_schema(tmp_path):
    sink = LossSink(str(tmp_path), CELL, attempt=1, flush_seconds=3600)
    for step in range(3):
        sink.append(**row(step, 2.0 - step / 10))
    assert not list((tmp_path / "cells" / CELL / "losses" / "attempt-1").iterdir())
    sink.flush()
    sink.append(**row(3, 1.5))
    sink.flush()
    parts = sorted((tmp_path / "cells" / CELL / "losses" / "attempt-1").iterdir())
    assert [p.name for p in parts] == ["part-000000.parquet", "part-000001.parquet"]
    table = pq.read_table(parts[0])
    assert table.schema.equals(LOSS_SCHEMA)
    assert table.column("train_loss").to_pylist() == [2.0, 1.899999976158142, 1.7999999523162842]
    assert table.column("val_loss").null_count == 3


def test_a_time_based_flush_happens_without_being_asked(tmp_path):
    sink = LossSink(str(tmp_path), CELL, attempt=1, flush_seconds=0.0)
    sink.append(**row(0, 2.0))
    assert len(list((tmp_path / "cells" / CELL / "losses" / "attempt-1").iterdir())) == 1


def test_attempts_count_up_and_the_read_view_keeps_the_latest_attempt_per_step(tmp_path):
    assert next_attempt(str(tmp_path)) == 1
    first = LossSink(str(tmp_path), CELL, attempt=next_attempt(str(tmp_path)))
    for step in range(5):
        first.append(**row(step, 3.0))
    first.flush()
    second = LossSink(str(tmp_path), CELL, attempt=next_attempt(str(tmp_path)))
    assert second.attempt == 2
    for step in range(3, 8):
        second.append(**row(step, 1.0))
    second.flush()
    view = read_losses(str(tmp_path), CELL)
    assert view.column("step").to_pylist() == list(range(8))
    assert view.column("attempt").to_pylist() == [1, 1, 1, 2, 2, 2, 2, 2]
    assert view.column("train_loss").to_pylist() == [3.0] * 3 + [1.0] * 5


def test_the_result_row_follows_the_contract_and_leaves_no_temp_files(tmp_path):
    sink = LossSink(str(tmp_path), CELL, attempt=1)
    sink.append(**row(0, 2.0))
    sink.write_result(
        dict(
            model="tiny",
            params=1,
            tokens=2,
            format="dense",
            seed=0,
            val_loss=1.5,
            train_loss=1.6,
            steps=1,
            wall_time_s=1.0,
            tokens_per_s=2.0,
            hardware="cpu",
            world_size=1,
            data_fingerprint="x",
        )
    )
    cell_dir = tmp_path / "cells" / CELL
    assert pq.read_schema(cell_dir / "result.parquet").equals(RESULT_SCHEMA)
    result = read_result(str(tmp_path), CELL)
    assert (
        result["val_loss"] == 1.5 and result["attempt"] == 1 and result["finished_at"] is not None
    )
    assert len(read_losses(str(tmp_path), CELL)) == 1
    assert not [p for p in cell_dir.rglob("*") if p.name.startswith(".tmp-")]
