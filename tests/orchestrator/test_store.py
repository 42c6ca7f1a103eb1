"""The results store: atomic append-only files, status from events, deduped loss view, any
pyarrow filesystem."""

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.store import LOSS_SCHEMA, RESULT_SCHEMA, Store
from workers.config import CellConfig, preset


def make_cell(seed: int = 0) -> CellConfig:
    return CellConfig(model=preset("tiny"), format="int4", tokens=1000, seed=seed)


def parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    return sink.getvalue()


def write_losses(store: Store, cell_id: str, attempt: int, steps: range, loss: float) -> None:
    rows = [
        {"cell_id": cell_id, "attempt": attempt, "step": s, "tokens": 10 * s, "train_loss": loss}
        for s in steps
    ]
    path = store.layout.cell(cell_id).loss_part(attempt, 0)
    store.write_atomic(path, parquet(rows, LOSS_SCHEMA))


def write_result(store: Store, cell: CellConfig, val_loss: float) -> None:
    row = {"cell_id": cell.cell_id, "params": cell.params, "tokens": cell.tokens}
    row |= {"format": cell.format, "seed": cell.seed, "val_loss": val_loss}
    store.write_atomic(store.layout.cell(cell.cell_id).result, parquet([row], RESULT_SCHEMA))


@pytest.fixture(params=["local", "mock"])
def store(request, tmp_path):
    """A local store and one on an in-memory pyarrow filesystem (stands in for s3:// or gs://)."""
    return Store(tmp_path / "store" if request.param == "local" else "mock:///stores/s1")


def test_each_state_change_is_a_new_file_and_status_is_the_latest(store):
    cell = make_cell()
    store.put_cell(cell)
    assert store.status(cell.cell_id).state == "pending"
    store.record(cell.cell_id, "pending", 0)
    store.record(cell.cell_id, "running", 1, host="h", pid=7)
    store.record(cell.cell_id, "failed", 1, error_class="ValueError", traceback="Traceback ...")
    names = store.events(cell.cell_id)
    assert [n.rsplit("-", 1)[1] for n in names] == ["pending.json", "running.json", "failed.json"]
    status = store.status(cell.cell_id)
    assert (status.state, status.attempt, status.event["error_class"]) == (
        "failed",
        1,
        "ValueError",
    )
    assert store.next_attempt(cell.cell_id) == 2
    listing = store.list_names(store.layout.cell(cell.cell_id).directory)
    assert not [n for n in listing if n.startswith(".tmp-")]  # temporaries were renamed away


def test_a_cell_with_a_result_and_no_events_is_done_but_a_new_attempt_takes_precedence(store):
    cell = make_cell()
    write_result(store, cell, 2.5)  # trained outside the orchestrator
    assert store.status(cell.cell_id).state == "done"
    store.record(cell.cell_id, "running", 1, host="h", pid=1)  # a forced rerun
    assert store.status(cell.cell_id).state == "running"


def test_a_running_cell_whose_heartbeat_is_older_than_the_lease_is_stale(store):
    cell_id = make_cell().cell_id
    store.record(cell_id, "running", 1, host="h", pid=1)
    store.heartbeat(cell_id, 1, "h", 1)
    assert not store.status(cell_id).is_stale(lease_s=30)
    old = {"attempt": 1, "host": "h", "pid": 1, "unix_time": time.time() - 100}
    store.write_json(store.layout.cell(cell_id).heartbeat, old)
    assert store.status(cell_id).is_stale(lease_s=30)


def test_loss_view_keeps_one_row_per_step_from_the_highest_attempt(store):
    cell_id = make_cell().cell_id
    write_losses(store, cell_id, 1, range(1, 7), loss=9.0)  # died after step 6
    write_losses(store, cell_id, 2, range(5, 9), loss=1.0)  # resumed from a step-4 checkpoint
    rows = store.query("select step, attempt, train_loss from losses order by step").fetchall()
    assert [r[0] for r in rows] == list(range(1, 9))
    assert [r[1] for r in rows] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert store.query("select train_loss from losses where step = 5").fetchall() == [(1.0,)]


def test_results_of_a_sweep_hold_only_its_finished_cells(store):
    cells = [make_cell(seed) for seed in range(3)]
    for cell in cells:
        store.put_cell(cell)
    store.put_sweep("a", "name: a\n", [c.cell_id for c in cells[:2]])
    store.put_sweep("b", "name: b\n", [c.cell_id for c in cells[1:]])
    for cell in cells:
        write_result(store, cell, 2.0 + cell.seed)
    assert sorted(store.results("a")["val_loss"]) == [2.0, 3.0]
    assert sorted(store.results("b")["seed"]) == [1, 2]
    query = "select sweep, count(*) from sweeps join results using (cell_id) group by 1 order by 1"
    assert store.query(query).fetchall() == [("a", 2), ("b", 2)]
    assert store.query("select count(*) from cells").fetchall() == [(3,)]


def test_an_unknown_sweep_is_one_line_naming_the_known_ones(store):
    store.put_sweep("a", "name: a\n", [])
    stray = store.layout.sweep("stray").directory
    store.write_json(f"{stray}/note.json", {})  # a folder with no manifest is not a sweep
    with pytest.raises(FileNotFoundError, match=r"no sweep 'zzz' in store .* \(sweeps: a\)"):
        store.results("zzz")


def test_cancel_requests_are_appended_and_seen_only_by_drivers_started_before(store):
    store.put_sweep("a", "name: a\n", [])
    before = "20000101T000000.000000Z"
    assert not store.cancel_requested_since("a", before)
    store.request_cancel("a")
    assert store.cancel_requested_since("a", before)
    assert not store.cancel_requested_since("a", "29991231T000000.000000Z")


def test_a_local_store_path_is_made_absolute_for_workers_in_other_directories(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    store = Store("relative/store")
    assert store.uri == str(tmp_path / "relative" / "store")
    store.put_sweep("a", "name: a\n", [])
    assert (tmp_path / "relative" / "store" / "sweeps" / "a" / "manifest.json").is_file()
