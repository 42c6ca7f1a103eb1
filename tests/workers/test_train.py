"""Training one cell: it learns, formats stay finite and rank by GMSE, bad input fails fast."""

import math

import pytest

from compscale.formats import STANDARD_FORMATS
from workers import run_cell
from workers.config import CellConfig, DataConfig, ModelConfig, TrainConfig, preset
from workers.data import load_tokens, unigram_entropy
from workers.sink import read_losses, read_result

TINY = preset("tiny").model_copy(update={"seq_len": 64})


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cell(fmt: str = "dense", steps: int = 100, batch: int = 16, **train) -> CellConfig:
    train = {"batch_size": batch, "eval_tokens": 8192} | train
    return CellConfig(model=TINY, format=fmt, tokens=steps * batch * 64, train=TrainConfig(**train))


@pytest.mark.slow
def test_a_tiny_dense_cell_falls_well_below_the_unigram_entropy_within_a_minute(tmp_path):
    entropy = unigram_entropy(load_tokens(DataConfig()).train)  # about 3.11 nats per byte
    cell = tiny_cell(steps=300, eval_every=100)
    result = run_cell(cell, str(tmp_path))
    assert result["val_loss"] < entropy - 0.5
    assert result["wall_time_s"] < 60
    stored = read_result(str(tmp_path), cell.cell_id)
    assert stored["val_loss"] == result["val_loss"] and stored["params"] == cell.params
    assert stored["data_fingerprint"].startswith("cpython311-stdlib:sha256:")
    losses = read_losses(str(tmp_path), cell.cell_id)
    assert losses.column("step").to_pylist() == list(range(300))
    evaluated = [row["step"] for row in losses.to_pylist() if row["val_loss"] is not None]
    assert evaluated == [99, 199, 299]
    assert losses.column("val_loss").to_pylist()[-1] == result["val_loss"]
    assert (tmp_path / "cells" / cell.cell_id / "cell.json").is_file()


@pytest.mark.slow
def test_every_standard_format_trains_without_nan(tmp_path):
    model = TINY.model_copy(update={"seq_len": 32})
    train = TrainConfig(batch_size=4, eval_tokens=1024)
    for fmt in STANDARD_FORMATS:
        cell = CellConfig(model=model, format=fmt, tokens=100 * 4 * 32, train=train)
        run_cell(cell, str(tmp_path))
        losses = read_losses(str(tmp_path), cell.cell_id)
        assert all(math.isfinite(x) for x in losses.column("train_loss").to_pylist()), fmt
        assert math.isfinite(losses.column("val_loss").to_pylist()[-1]), fmt


@pytest.mark.slow
def test_loss_order_at_equal_n_and_d_follows_gmse(tmp_path):
    # A longer warm-up than the default keeps these 300-step tiny runs out of early loss spikes,
    # which otherwise swing the final loss by ~0.1 nats from seed to seed.
    train = {"warmup_fraction": 0.2, "min_lr_ratio": 0.0}
    loss = {
        fmt: run_cell(tiny_cell(fmt, steps=300, **train), str(tmp_path))["val_loss"]
        for fmt in ("dense", "int4", "int2", "sp50", "sp90")
    }
    # GMSE: int4 ~0.01 < sp50 ~0.07 < int2 ~0.12 < sp90 ~0.55. Gaps of 0.1 or more show at N ~ 54K;
    # int4's ~0.01 nat cost is below seed noise here (measured within 0.01 of dense on seeds 0, 1).
    assert loss["dense"] < loss["int2"] and loss["int4"] < loss["int2"]
    assert loss["dense"] < loss["sp50"] < loss["sp90"]
    assert abs(loss["dense"] - loss["int4"]) < 0.03


def test_fewer_tokens_than_one_batch_is_one_clear_error(tmp_path):
    cell = CellConfig(model=TINY, format="dense", tokens=1000, train=TrainConfig(batch_size=16))
    with pytest.raises(ValueError, match=r"tokens=1000 is less than one global batch \(16 x 64"):
        run_cell(cell, str(tmp_path))


def test_a_world_size_the_machine_cannot_host_is_one_clear_error(tmp_path):
    cell = tiny_cell().model_copy(update={"world_size": 4096})
    with pytest.raises(ValueError, match="world_size=4096 puts 4096 CPU processes"):
        run_cell(cell, str(tmp_path))


def test_a_world_size_without_a_launcher_says_how_to_launch(tmp_path):
    cell = tiny_cell().model_copy(update={"world_size": 2})
    with pytest.raises(ValueError, match=r"torchrun --nproc_per_node=2"):
        run_cell(cell, str(tmp_path))


def test_a_missing_shard_path_is_one_clear_error(tmp_path):
    cell = tiny_cell().model_copy(update={"data": DataConfig(source=str(tmp_path / "none"))})
    with pytest.raises(FileNotFoundError, match=r"no meta\.json"):
        run_cell(cell, str(tmp_path))


def test_a_model_too_small_for_the_data_vocabulary_is_refused(tmp_path):
    small_vocab = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=100, seq_len=64)
    cell = tiny_cell().model_copy(update={"model": small_vocab})
    with pytest.raises(ValueError, match="vocabulary 256 exceeds model vocab_size=100"):
        run_cell(cell, str(tmp_path))
