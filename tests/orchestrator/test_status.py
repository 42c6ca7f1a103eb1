"""`compscale status`: a caption says what each column means; a running cell shows its step, last
loss and ETA from its newest loss row; a failed one the first line of its error."""

import io

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.cli import main
from orchestrator.store import LOSS_SCHEMA, Store
from workers.config import CellConfig, preset


def test_status_shows_step_loss_and_eta_of_running_cells_and_first_error_lines(tmp_path, capsys):
    store = Store(tmp_path / "store")
    running, failed = (
        CellConfig(model=preset("tiny"), format=fmt, tokens=100_000) for fmt in ("int4", "sp50")
    )
    for cell in (running, failed):
        store.put_cell(cell)
    store.put_sweep("s", "name: s\n", [running.cell_id, failed.cell_id])
    store.record(running.cell_id, "running", 1, host="h", pid=1)
    store.heartbeat(running.cell_id, 1, "h", 1)
    for part, step in enumerate((10, 20)):  # the newest part's last row is what status shows
        rows = [
            {"cell_id": running.cell_id, "attempt": 1, "step": step, "tokens": 1000 * step,
             "train_loss": 3.0 - step / 100, "tokens_per_s": 100.0}
        ]  # fmt: skip
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=LOSS_SCHEMA), sink)
        store.write_atomic(store.layout.cell(running.cell_id).loss_part(1, part), sink.getvalue())
    store.record(failed.cell_id, "failed", 1, error_class="Diverged", message="nan at 7\nmore")

    assert main(["status", "s", "--store", store.uri]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if running.cell_id[:20] in line)
    assert "20" in row and "2.8000" in row and "13.3 min" in row  # 80,000 tokens at 100/s
    assert "Diverged: nan at 7" in out and "more" not in out.split("Diverged")[1][:40]
    assert "ETA: its tokens left / its tokens per second" in " ".join(out.split())


def test_a_pending_ladder_branch_shows_its_trunks_step_loss_and_the_eta_of_its_fork(
    tmp_path, capsys
):
    store = Store(tmp_path / "store")
    branch = CellConfig(model=preset("tiny"), format="int4", tokens=100_000)
    store.put_cell(branch)
    store.put_sweep("s", "name: s\n", [branch.cell_id])
    store.record(branch.cell_id, "pending", 0, trunk_id="trunk-x", fork_step=80)
    rows = [
        {"cell_id": "", "attempt": 1, "step": 39, "tokens": 40 * 1000, "train_loss": 2.5,
         "tokens_per_s": 100.0}
    ]  # fmt: skip
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=LOSS_SCHEMA), sink)
    store.write_atomic(store.layout.trunk("trunk-x").loss_part(1, 0), sink.getvalue())

    assert main(["status", "s", "--store", store.uri]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "trunk 39" in out and "2.5000" in out and "6.7 min" in out  # 40 steps x 1,000 at 100/s
    assert "waits for its ladder's trunk to reach step 80" in out
