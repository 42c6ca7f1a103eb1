"""The CLI's edge: every user error is one line and exit code 2, an interrupted submit cancels its
cells, says how to resume and exits 130, and none of them prints a traceback."""

import io
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import REPO, kill_session, write_spec

from orchestrator.cli import main
from orchestrator.store import RESULT_SCHEMA, Store
from workers.config import CellConfig, preset

CLI = [sys.executable, "-m", "orchestrator.cli"]


def environment() -> dict[str, str]:
    """This checkout's code first (PYTHONPATH also reaches Ray workers), then the test doubles."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "COLUMNS": "200"}


def one_line(text: str) -> str:
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def store_with_a_sweep(path: Path) -> tuple[Store, CellConfig]:
    store = Store(path)
    cell = CellConfig(model=preset("tiny"), format="int4", tokens=1000)
    store.put_cell(cell)
    store.put_sweep("s", "name: s\n", [cell.cell_id])
    return store, cell


@pytest.mark.parametrize(
    "command",
    [
        ["query", "select count(*) from results"],
        ["status", "s"],
        ["reduce", "s"],
        ["rerun", "s", "--failed"],
        ["cancel", "s"],
    ],
)
def test_reading_a_store_that_does_not_exist_is_an_error_not_an_empty_answer(
    tmp_path, capsys, command
):
    missing = tmp_path / "no-such-store"
    assert main([*command, "--store", str(missing)]) == 2
    assert f"no store at {missing}" in one_line(capsys.readouterr().err)
    assert not missing.exists()


def test_plan_and_submit_still_start_a_new_store(tmp_path, capsys):
    spec = write_spec(tmp_path / "new.yaml", "new", ["dense"])
    assert main(["plan", str(spec), "--store", str(tmp_path / "fresh")]) == 0
    assert "run 1" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["plan", "submit", "status", "query"])
def test_a_store_path_that_is_a_file_is_one_line(tmp_path, capsys, command):
    spec = write_spec(tmp_path / "s.yaml", "s", ["dense"])
    (tmp_path / "file").write_text("not a store\n")
    target = {"plan": [str(spec)], "submit": [str(spec)], "status": ["s"], "query": ["select 1"]}
    assert main([command, *target[command], "--store", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in one_line(capsys.readouterr().err)


def unwritable(tmp_path: Path) -> Path:
    """A store path no one may create: under a read-only folder (sysfs for root, whom file modes
    do not stop)."""
    if os.geteuid() == 0:
        return Path("/sys/compscale-test-store")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "store"


@pytest.mark.parametrize("where", ["read-only", "under a file"])
def test_submit_to_a_store_it_cannot_write_is_one_line(tmp_path, capsys, where):
    spec = write_spec(tmp_path / "s.yaml", "s", ["dense"])
    (tmp_path / "file").write_text("")
    store = unwritable(tmp_path) if where == "read-only" else tmp_path / "file" / "store"
    assert main(["submit", str(spec), "--store", str(store), "--cell-fn", "doubles:run_cell"]) == 2
    assert f"store {store}: cannot write there" in one_line(capsys.readouterr().err)


def test_a_query_failing_at_run_time_is_one_line(tmp_path, capsys):
    store, cell = store_with_a_sweep(tmp_path / "store")
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"cell_id": cell.cell_id}], schema=RESULT_SCHEMA), buffer)
    store.write_atomic(store.layout.cell(cell.cell_id).result, buffer.getvalue())
    sql = "select cell_id::int from results"  # binds, then fails on the first row
    assert main(["query", sql, "--store", store.uri]) == 2
    assert "Conversion Error" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("content", ['{"cell_id": "x", "sta', "", "[1, 2]"])
def test_a_corrupt_status_event_names_its_file(tmp_path, capsys, content):
    store, cell = store_with_a_sweep(tmp_path / "store")
    store.record(cell.cell_id, "pending", 0)
    event = store.layout.cell(cell.cell_id).event("29991231T000000.000000Z", 1, "running")
    Path(event).write_text(content)
    with pytest.raises(ValueError, match=event):
        store.status(cell.cell_id)
    for command in (["status", "s"], ["query", "select * from events"]):
        assert main([*command, "--store", store.uri]) == 2
        assert event in one_line(capsys.readouterr().err)


@pytest.mark.slow
def test_sigint_cancels_the_cells_in_flight_prints_the_resume_command_and_exits_130(tmp_path):
    spec = write_spec(tmp_path / "slow.yaml", "slow", ["dense", "int4", "int8"], max_in_flight=2)
    (tmp_path / "double").mkdir()
    (tmp_path / "double" / "sleep_s").write_text("60")
    store = Store(tmp_path / "store")
    command = [*CLI, "submit", str(spec), "--store", store.uri, "--cell-fn", "doubles:run_cell"]
    driver = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        running: list[str] = []
        while time.monotonic() < deadline and not running:
            time.sleep(0.2)
            if Path(store.layout.sweep("slow").manifest).exists():
                running = [c for c in store.manifest("slow") if store.status(c).state == "running"]
        assert running, "no cell started"
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
        out, err = driver.communicate(timeout=60)
    finally:
        kill_session(driver.pid)
    assert driver.returncode == 130, out + err
    assert "Traceback" not in out + err
    states = {c: store.status(c).state for c in store.manifest("slow")}
    assert states == dict.fromkeys(states, "cancelled"), states
    resume = next(line for line in err.splitlines() if "compscale submit" in line)
    resume_args = shlex.split(resume.split("resume with: ", 1)[1])
    assert resume_args[:2] == ["compscale", "submit"]

    (tmp_path / "double" / "sleep_s").write_text("0.2")
    again = subprocess.run(
        [*CLI, *resume_args[1:]],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 0, again.stderr
    assert {store.status(c).state for c in store.manifest("slow")} == {"done"}
