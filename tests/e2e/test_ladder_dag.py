"""WSD ladders run by the driver: one trunk in segments (a chain of Ray tasks) and one branch task
per budget, each budget still its own cell. Real training of tiny cells on a real local Ray."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch

from orchestrator.driver import drive, plan
from orchestrator.spec import Resources
from orchestrator.store import Store
from orchestrator.tasks import execute_trunk
from workers import run_cell
from workers.config import CellConfig, TrainConfig, preset
from workers.ladder import Ladder, fork_step, trunk_id, with_horizon
from workers.sink import read_losses, read_result
from workers.train import build_model

pytestmark = pytest.mark.slow


def _cells(**train: object) -> list[CellConfig]:
    model = preset("tiny").model_copy(update={"seq_len": 32})
    config = TrainConfig(
        batch_size=4, eval_tokens=1024, eval_every=10, schedule="wsd", lr=5e-3, **train
    )
    budgets = [steps * 4 * 32 for steps in (30, 50, 80)]  # forks at steps 24, 40 and 64
    return with_horizon(
        [CellConfig(model=model, format="sp50", tokens=t, train=config) for t in budgets]
    )


def _drive(cells: list[CellConfig], store: Store, cell_fn=None, **plan_options) -> dict:
    options = {"cell_fn": cell_fn} if cell_fn else {}
    planned = plan(cells, store, **plan_options)
    return drive("ladder", planned, store, resources=Resources(cpus=1), retries=1, **options)


def _segments(store: Store, trunk: str, state: str) -> list[int]:
    return [event["fork"] for event in store.trunk_events(trunk) if event["state"] == state]


def _running_event(store: Store, cell_id: str) -> dict:
    paths = [path for path in store.events(cell_id) if path.endswith("-running.json")]
    return store.read_json(paths[-1])


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> dict[str, float]:
    """Each budget trained as an independent WSD cell: its final validation loss by cell id."""
    root = str(tmp_path_factory.mktemp("alone"))
    torch.set_num_threads(1)
    return {cell.cell_id: run_cell(cell, root)["val_loss"] for cell in _cells()}


@pytest.fixture(scope="module")
def laddered(tmp_path_factory, ray_local) -> Store:
    store = Store(tmp_path_factory.mktemp("ladder") / "store")
    assert _drive(_cells(), store)["done"] == 3
    return store


def test_a_ladder_runs_its_trunk_once_in_segments_and_each_budget_as_its_own_cell(laddered, alone):
    cells, store = _cells(), laddered
    trunk = trunk_id(cells[0])
    assert _segments(store, trunk, "running") == _segments(store, trunk, "done") == [24, 40, 64]
    rows = read_losses(store.uri, "", paths=store.layout.trunk(trunk))
    assert rows.column("step").to_pylist() == list(range(64))  # to the last fork, once
    pending = store.read_json(store.events(cells[-1].cell_id)[0])
    assert (pending["state"], pending["trunk_id"], pending["fork_step"]) == ("pending", trunk, 64)
    for cell in cells:
        assert store.status(cell.cell_id).state == "done"
        assert read_result(store.uri, cell.cell_id)["val_loss"] == alone[cell.cell_id]
        running = _running_event(store, cell.cell_id)
        assert (running["trunk_id"], running["fork_step"]) == (trunk, fork_step(cell))
        steps = read_losses(store.uri, cell.cell_id).column("step").to_pylist()
        assert steps == list(range(cell.tokens // (4 * 32)))


def test_a_branch_starts_once_its_fork_exists_not_when_the_whole_trunk_is_done(laddered):
    cells, store = _cells(), laddered
    first_branch = _running_event(store, cells[0].cell_id)["at"]
    last_segment = next(
        event["at"]
        for event in store.trunk_events(trunk_id(cells[0]))
        if event["state"] == "done" and event["fork"] == 64
    )
    assert first_branch < last_segment


def test_a_rerun_of_one_branch_does_not_retrain_the_trunk(laddered, alone):
    cells, store = _cells(), laddered
    trunk = trunk_id(cells[0])
    events_before = store.trunk_events(trunk)
    middle = cells[1].cell_id
    counts = _drive(cells, store, force=[middle])
    assert counts["done"] == 1
    assert store.trunk_events(trunk) == events_before
    assert store.status(middle).attempt == 2
    assert read_result(store.uri, middle)["val_loss"] == alone[middle]
    losses = read_losses(store.uri, middle)
    assert pc.unique(losses["attempt"]).to_pylist() == [2]  # the trunk's rows, copied again


def kill_once_in_the_trunk(
    cell: CellConfig, store_uri: str, attempt: int, ladder: Ladder | None = None
) -> dict:
    """`workers.run_cell`, except that with a marker file beside the store, the trunk segment
    that stops at step 40 SIGKILLs its own process right after its checkpoint at step 30."""
    from workers import checkpoint

    marker = Path(store_uri).parent / "kill-trunk"
    if ladder and ladder.forks and ladder.forks[-1] == 40 and marker.exists():
        marker.unlink()
        save = checkpoint.save_trunk

        def save_then_die(store_uri: str, trunk: str, steps: int, state: dict) -> str:
            path = save(store_uri, trunk, steps, state)
            if steps == 30:
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        checkpoint.save_trunk = save_then_die
    return run_cell(cell, store_uri, attempt, ladder)


def test_a_killed_trunk_segment_resumes_from_its_checkpoint(tmp_path, ray_local, alone):
    cells = _cells(checkpoint_every=10)
    store = Store(tmp_path / "store")
    (tmp_path / "kill-trunk").touch()
    assert _drive(cells, store, cell_fn=kill_once_in_the_trunk)["done"] == 3
    assert not (tmp_path / "kill-trunk").exists(), "the segment was killed"
    trunk = trunk_id(cells[0])
    assert _segments(store, trunk, "running") == [24, 40, 40, 64]  # Ray retried the killed one
    assert _segments(store, trunk, "done") == [24, 40, 64]
    rows = read_losses(store.uri, "", paths=store.layout.trunk(trunk))
    retry = rows.filter(pc.equal(rows["attempt"], 3))  # attempts: 24, killed 40, its retry
    assert pc.min(retry["step"]).as_py() == 30, "the retry resumed at the step-30 checkpoint"
    assert rows.column("step").to_pylist() == list(range(64))
    for cell in cells:  # ids leave out checkpoint_every: these are the cells trained alone
        assert read_result(store.uri, cell.cell_id)["val_loss"] == alone[cell.cell_id]


def slow_after_the_first_fork(
    cell: CellConfig, store_uri: str, attempt: int, ladder: Ladder | None = None
) -> dict:
    """`workers.run_cell`, but a trunk segment past the first fork waits 5 s before training:
    time for a cancel to land while the trunk is unfinished."""
    if ladder and ladder.forks and ladder.forks[-1] > 24:
        time.sleep(5)
    return run_cell(cell, store_uri, attempt, ladder)


def test_a_cancelled_ladder_resumes_where_its_trunk_stopped(tmp_path, ray_local, alone):
    cells = _cells(checkpoint_every=10)
    store = Store(tmp_path / "store")
    store.put_sweep("ladder", "name: ladder\n", [cell.cell_id for cell in cells])
    trunk = trunk_id(cells[0])
    driver = threading.Thread(target=_drive, args=(cells, store, slow_after_the_first_fork))
    driver.start()
    deadline = time.monotonic() + 120
    while 24 not in _segments(store, trunk, "done"):
        assert driver.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    store.request_cancel("ladder")
    driver.join(timeout=60)
    assert not driver.is_alive()
    assert 64 not in _segments(store, trunk, "done"), "cancelled before the trunk's end"
    states = {store.status(cell.cell_id).state for cell in cells}
    assert "cancelled" in states
    _drive(cells, store)
    assert {store.status(cell.cell_id).state for cell in cells} == {"done"}
    done = _segments(store, trunk, "done")
    assert done.count(24) == 1 and done[-1] == 64, "the kept fork was not trained again"
    for cell in cells:
        assert read_result(store.uri, cell.cell_id)["val_loss"] == alone[cell.cell_id]


@pytest.mark.parametrize("format", ["int4", "sp50", "sp50+int4", "w:int4-had,a:int4-had", "int2"])
def test_every_format_of_one_seed_starts_from_the_same_weights(format):
    """The paired design: weights are drawn from the seed alone, never from the format (batches
    already are: `data.batch_windows` takes the seed and the step, nothing else)."""
    dense = CellConfig(model="tiny", format="dense", tokens=10**5, seed=3)
    other = dense.model_copy(update={"format": format})
    ours = build_model(other, torch.device("cpu")).state_dict()
    theirs = build_model(dense, torch.device("cpu")).state_dict()
    shared = set(ours) & set(theirs)
    assert {name for name in theirs if name.endswith("weight")} <= shared
    assert all(torch.equal(ours[name], theirs[name]) for name in shared)


def test_a_segment_whose_fork_is_trained_already_trains_nothing(tmp_path):
    def must_not_train(*args, **kwargs) -> dict:
        raise AssertionError("the fork's checkpoint exists: nothing to train")

    store = Store(tmp_path / "store")
    top = _cells()[-1]
    trunk = trunk_id(top)
    store.write_atomic(store.layout.trunk(trunk).checkpoint(40), b"trained by another driver")
    summary = execute_trunk(top.model_dump_json(), store.uri, must_not_train, trunk, (24, 40))
    assert summary == {"trunk_id": trunk, "fork": 40} and store.trunk_events(trunk) == []
