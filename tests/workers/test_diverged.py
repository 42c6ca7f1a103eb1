"""A run whose loss stops being finite fails as `Diverged`, naming the step, instead of storing a
NaN result; the driver records it `failed`, so `rerun --failed` picks it up."""

import math

import pytest

import workers.train
from orchestrator.driver import plan
from orchestrator.store import Store
from orchestrator.tasks import execute_cell
from workers.config import CellConfig, ModelConfig
from workers.sink import read_losses
from workers.train import DIVERGENCE_CHECK_EVERY, Diverged, run_cell

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ModelConfig(d_model=32, n_layers=2, n_heads=2, seq_len=32)


def cell(steps: int, **train) -> CellConfig:
    """A cell of `steps` optimiser steps of 4 x 32 tokens."""
    train = {"batch_size": 4, "eval_tokens": 256, "warmup_fraction": 0.0} | train
    return CellConfig(model=MODEL, format="dense", tokens=steps * 4 * 32, train=train)


def test_an_absurd_learning_rate_fails_as_diverged_early_with_the_step(tmp_path):
    steps = DIVERGENCE_CHECK_EVERY * 3
    diverging = cell(steps, lr=1e6)  # the loss is NaN within a few steps
    with pytest.raises(Diverged, match=r"training loss became nan at step (\d+)") as raised:
        run_cell(diverging, str(tmp_path))
    first = int(raised.value.args[0].split("at step ")[1].split()[0])
    assert first < DIVERGENCE_CHECK_EVERY
    paths = Store(tmp_path).layout.cell(diverging.cell_id)
    assert not (tmp_path / paths.result).exists()  # no NaN result row for the reducer
    losses = read_losses(str(tmp_path), diverging.cell_id).to_pylist()
    assert losses[-1]["step"] < 2 * DIVERGENCE_CHECK_EVERY  # stopped at a check, not the end
    assert math.isnan(losses[first]["train_loss"])  # the rows up to it are kept as evidence
    assert all(math.isfinite(row["train_loss"]) for row in losses[:first])


def test_a_non_finite_validation_loss_fails_as_diverged(tmp_path, monkeypatch):
    monkeypatch.setattr(workers.train, "evaluate", lambda *args, **kwargs: math.inf)
    with pytest.raises(Diverged, match="validation loss became inf at step 4"):
        run_cell(cell(10, eval_every=5), str(tmp_path))


def test_the_driver_records_diverged_so_rerun_failed_sees_it(tmp_path):
    store = Store(tmp_path / "store")
    diverging = cell(20, lr=1e6)
    store.put_cell(diverging)
    with pytest.raises(Diverged):
        execute_cell(diverging.model_dump_json(), store.uri, run_cell, "t1", heartbeat_s=60)
    status = store.status(diverging.cell_id)
    assert (status.state, status.event["error_class"]) == ("failed", "Diverged")
    assert "at step" in status.event["message"]
    assert [item.action for item in plan([diverging], store, rerun_failed=True)] == ["rerun"]


def test_a_healthy_run_is_not_flagged(tmp_path):
    result = run_cell(cell(DIVERGENCE_CHECK_EVERY + 5, eval_every=10), str(tmp_path))
    assert math.isfinite(result["val_loss"])
