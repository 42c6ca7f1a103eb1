"""One attempt number per attempt: the driver's task wrapper numbers it, and the status events,
the loss rows (and their folder) and the result row all carry that number, also when an attempt
dies before the worker wrote anything and when a done cell is forced to rerun."""

import pyarrow.parquet as pq
import pytest

from orchestrator.driver import drive, plan
from orchestrator.spec import Resources
from orchestrator.store import Store
from workers.config import CellConfig, DataConfig, TrainConfig, preset
from workers.prepare import prepare_shards
from workers.sink import read_result

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def run(store: Store, cell: CellConfig, **plan_options) -> dict[str, int]:
    planned = plan([cell], store, **plan_options)
    return drive("attempts", planned, store, resources=Resources(), retries=0)


def attempts_recorded(store: Store, cell: CellConfig) -> tuple[int, int, list[int], list[int]]:
    """(status attempt, result row attempt, attempts of the loss rows, loss folders' numbers)."""
    paths = store.layout.cell(cell.cell_id)
    rows = store.query(f"select distinct attempt from losses where cell_id = '{cell.cell_id}'")
    folders = [int(name.split("-")[1]) for name in store.list_names(paths.losses)]
    return (
        store.status(cell.cell_id).attempt,
        read_result(store.uri, cell.cell_id)["attempt"],
        sorted(row[0] for row in rows.fetchall()),
        folders,
    )


def test_status_losses_and_result_agree_after_a_first_attempt_dies_before_the_worker_wrote(
    tmp_path,
):
    shards = tmp_path / "shards"  # missing at first: the worker fails before its sink exists
    cell = CellConfig(
        model=preset("tiny").model_copy(update={"seq_len": 32}),
        format="int4",
        tokens=4 * 32 * 6,
        train=TrainConfig(batch_size=4, eval_tokens=256),
        data=DataConfig(source=str(shards)),
    )
    store = Store(tmp_path / "store")
    store.put_cell(cell)
    assert run(store, cell)["failed"] == 1
    assert store.status(cell.cell_id).attempt == 1
    assert not store.list_names(store.layout.cell(cell.cell_id).losses)

    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    prepare_shards(text, shards)
    assert run(store, cell, rerun_failed=True)["done"] == 1
    assert attempts_recorded(store, cell) == (2, 2, [2], [2])

    assert run(store, cell, force=[cell.cell_id])["done"] == 1
    status, result, rows, folders = attempts_recorded(store, cell)
    assert (status, result, rows) == (3, 3, [3]) and folders == [2, 3]
    raw = pq.read_table(store.layout.cell(cell.cell_id).loss_part(3, 0))
    assert set(raw.column("attempt").to_pylist()) == {3}
