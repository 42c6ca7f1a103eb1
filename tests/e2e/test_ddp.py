"""DDP: gloo processes under torchrun match one plain process on the same global batch, per step.

A world of one under torchrun runs the DDP path too (the group, the wrapper, the collectives), as
a single GPU does under NCCL."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from workers import run_cell
from workers.config import CellConfig, TrainConfig, preset
from workers.sink import read_losses, read_result

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("world", [1, 2])
def test_torchrun_matches_one_plain_process_step_by_step(tmp_path, world):
    train = TrainConfig(batch_size=8, micro_batch_size=2, eval_tokens=1024, lr=3e-3)
    model = preset("tiny").model_copy(update={"seq_len": 32})
    single = CellConfig(model=model, format="sp50+int4", tokens=40 * 8 * 32, train=train)
    double = single.model_copy(update={"world_size": world})
    assert double.cell_id == single.cell_id  # world size is how, not what

    cell_file = tmp_path / "cell.yaml"
    cell_file.write_text(yaml.safe_dump(double.model_dump(mode="json")))
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [
        f"--nproc_per_node={world}",
        "-m",
        "orchestrator.cli",
        "train-cell",
        str(cell_file),
        "--store",
        str(tmp_path / "ddp"),
    ]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_cell(single, str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)

    ddp, one = (read_losses(str(tmp_path / store), single.cell_id) for store in ("ddp", "one"))
    assert ddp.column("step").to_pylist() == one.column("step").to_pylist() == list(range(40))
    for column in ("train_loss", "grad_norm"):
        torch.testing.assert_close(
            torch.tensor(ddp.column(column).to_pylist()),
            torch.tensor(one.column(column).to_pylist()),
            rtol=1e-4,
            atol=1e-5,
        )
    ddp_result, one_result = (
        read_result(str(tmp_path / s), single.cell_id) for s in ("ddp", "one")
    )
    assert ddp_result["world_size"] == world and one_result["world_size"] == 1
    assert ddp_result["val_loss"] == pytest.approx(one_result["val_loss"], abs=1e-4)


def test_a_process_group_set_up_by_the_caller_is_used_and_left_open(tmp_path):
    store = torch.distributed.FileStore(str(tmp_path / "rendezvous"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        cell = CellConfig(
            model=preset("tiny").model_copy(update={"seq_len": 32}),
            format="dense",
            tokens=4 * 4 * 32,
            train=TrainConfig(batch_size=4, eval_tokens=256),
        )
        assert run_cell(cell, str(tmp_path / "store"))["world_size"] == 1
        assert torch.distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()
