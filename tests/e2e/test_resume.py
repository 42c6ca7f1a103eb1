"""Resume: a cell SIGKILLed after a checkpoint and restarted ends where an unbroken run ends."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.compute as pc
import pytest
import torch
import yaml

from workers import checkpoint, run_cell
from workers.config import CellConfig, TrainConfig, preset
from workers.sink import read_losses, read_result

STEPS, CHECKPOINT_EVERY = 600, 100


def train_cell_command(cell_file, store) -> list[str]:
    return [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "train-cell",
        str(cell_file),
        "--store",
        store,
    ]


@pytest.mark.slow
def test_a_killed_cell_resumes_from_its_checkpoint_to_the_same_final_loss(tmp_path):
    model = preset("tiny").model_copy(update={"seq_len": 32})
    train = TrainConfig(batch_size=4, eval_tokens=1024, checkpoint_every=CHECKPOINT_EVERY)
    cell = CellConfig(model=model, format="sp50", tokens=STEPS * 4 * 32, train=train)
    cell_file = tmp_path / "cell.yaml"
    cell_file.write_text(yaml.safe_dump(cell.model_dump(mode="json")))
    store = str(tmp_path / "store")
    checkpoints = tmp_path / "store" / "cells" / cell.cell_id / "checkpoints"
    environment = os.environ | {"OMP_NUM_THREADS": "1"}

    victim = subprocess.Popen(train_cell_command(cell_file, store), env=environment)
    deadline = time.monotonic() + 120
    while not (checkpoints.is_dir() and any(checkpoints.glob("step-*.pt"))):
        assert victim.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "store" / "cells" / cell.cell_id / "result.parquet").exists()

    restarted = subprocess.run(train_cell_command(cell_file, store), env=environment, timeout=300)
    assert restarted.returncode == 0
    assert not any(checkpoints.iterdir()), "a finished cell keeps no checkpoints"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        unbroken = run_cell(cell, str(tmp_path / "unbroken"))
    finally:
        torch.set_num_threads(threads)

    resumed = read_result(store, cell.cell_id)
    assert resumed["attempt"] == 2
    assert resumed["val_loss"] == pytest.approx(unbroken["val_loss"], abs=1e-4)
    assert resumed["train_loss"] == pytest.approx(unbroken["train_loss"], abs=1e-4)
    losses = read_losses(store, cell.cell_id)
    assert losses.column("step").to_pylist() == list(range(STEPS))
    second = losses.filter(pc.equal(losses.column("attempt"), 2)).column("step").to_pylist()
    assert second[0] > 0 and second[0] % CHECKPOINT_EVERY == 0  # resumed, not restarted


def test_checkpoints_are_atomic_files_of_which_the_newest_two_are_kept(tmp_path):
    store = f"file://{tmp_path}"
    for steps in (10, 20, 30):
        checkpoint.save(store, "cell", steps, {"model": {"w": torch.full((2,), float(steps))}})
    directory = tmp_path / "cells" / "cell" / "checkpoints"
    assert sorted(p.name for p in directory.iterdir()) == ["step-000000020.pt", "step-000000030.pt"]
    latest = checkpoint.load_latest(store, "cell", torch.device("cpu"))
    assert latest["steps"] == 30 and latest["model"]["w"].tolist() == [30.0, 30.0]
    assert checkpoint.load_latest(store, "other", torch.device("cpu")) is None
