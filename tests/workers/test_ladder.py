"""WSD schedule and ladders: cell ids of cosine cells are unchanged, and a ladder's branch is the
independently trained WSD cell of its budget, bit for bit on CPU."""

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from workers import run_cell
from workers.config import CellConfig, TrainConfig, preset
from workers.ladder import (
    fork_step,
    ladder_savings,
    ladder_tokens,
    ladders,
    trunk_id,
    with_horizon,
)
from workers.layout import Layout
from workers.schedule import learning_rate
from workers.sink import read_losses
from workers.train import run_ladder

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
COMPARED = ["step", "tokens", "train_loss", "val_loss", "lr", "grad_norm"]


def test_committed_cells_still_hash_to_their_folder_names():
    files = sorted(RESULTS.glob("stores/*/cells/*/cell.json"))
    assert files
    for file in files:
        assert CellConfig.model_validate(json.loads(file.read_text())).cell_id == file.parent.name


def test_wsd_rate_is_constant_until_the_cooldown_whatever_the_budget():
    config = TrainConfig(schedule="wsd", horizon_steps=100, warmup_fraction=0.1, lr=1.0)
    short = [learning_rate(step, 100, config) for step in range(100)]
    long = [learning_rate(step, 300, config) for step in range(300)]
    assert short[:80] == long[:80] and long[10:240] == [1.0] * 230
    assert long[-1] == pytest.approx(config.min_lr_ratio) and long[240] < 1.0
    assert learning_rate(5, 100, TrainConfig()) != learning_rate(5, 300, TrainConfig())


def _cells(format: str = "sp50") -> list[CellConfig]:
    model = preset("tiny").model_copy(update={"seq_len": 32})
    train = TrainConfig(batch_size=4, eval_tokens=1024, eval_every=10, schedule="wsd", lr=5e-3)
    budgets = [steps * 4 * 32 for steps in (30, 50, 80)]
    cells = [CellConfig(model=model, format=format, tokens=t, train=train) for t in budgets]
    return with_horizon(cells)


def test_wsd_fields_join_the_id_only_under_wsd():
    cosine = CellConfig(model="tiny", format="dense", tokens=10**5)
    assert "schedule" not in cosine.canonical_json()
    wsd = _cells()
    assert {cell.train.horizon_steps for cell in wsd} == {30}
    assert len({cell.cell_id for cell in wsd}) == 3 and cosine.cell_id not in wsd
    assert ladders([cosine, *wsd]) == [[cosine], wsd]
    assert [fork_step(cell) for cell in wsd] == [24, 40, 64]
    assert ladder_tokens(wsd) == (64 + 6 + 10 + 16) * 4 * 32  # vs (30 + 50 + 80) * 4 * 32


def test_a_ladder_branch_equals_the_independently_trained_cell(tmp_path, one_thread):
    cells = _cells()
    ladder_store, alone_store = str(tmp_path / "ladder"), str(tmp_path / "alone")
    branches = run_ladder(cells, ladder_store)
    for cell, branch in zip(cells, branches, strict=True):
        alone = run_cell(cell, alone_store)
        assert branch["cell_id"] == alone["cell_id"] == cell.cell_id
        assert branch["val_loss"] == alone["val_loss"]
        assert branch["train_loss"] == alone["train_loss"]
        ours = read_losses(ladder_store, cell.cell_id)
        theirs = read_losses(alone_store, cell.cell_id)
        assert ours.select(COMPARED).equals(theirs.select(COMPARED))
        assert ours.column("step").to_pylist() == list(range(branch["steps"]))

    # the trunk ran once, to the last fork, and is not retrained when its forks exist
    trunk = Layout(str(tmp_path / "ladder")).trunk(trunk_id(cells[0]))
    rows = read_losses(ladder_store, "", paths=trunk)
    assert rows.num_rows == fork_step(cells[-1])
    run_ladder(cells[:1], ladder_store)
    rows = read_losses(ladder_store, "", paths=trunk)
    assert pc.max(rows["attempt"]).as_py() == 1


def test_savings_count_each_trunk_once():
    cosine = CellConfig(model="tiny", format="dense", tokens=10**5)
    assert ladder_savings([cosine]) == (0, 0)
    assert ladder_savings([cosine, *_cells()]) == ((30 + 50 + 80) * 128, (64 + 6 + 10 + 16) * 128)
