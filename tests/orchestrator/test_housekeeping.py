"""Sweep housekeeping: `sweeps` lists them, `delete` removes one sweep and only its own cells (and
refuses without --yes), `rerun --detach` starts the same rerun in the background, docs/cli.md's
cell file parses, Ray's token-auth warning becomes one line of ours, and `fit --help` reads."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import doc_block

from orchestrator.cli import main
from orchestrator.store import Store
from workers.cli import load_cell_file
from workers.config import CellConfig, TrainConfig, preset
from workers.ladder import trunk_id, with_horizon

REPO = Path(__file__).resolve().parents[2]


def two_sweeps(tmp_path) -> tuple[Store, list[str]]:
    """Sweeps `a` (cells 0, 1, 2) and `b` (cells 2, 3): cell 2 is shared; cell 0 is done."""
    store = Store(tmp_path / "store")
    cells = [CellConfig(model=preset("tiny"), format="int4", tokens=4096, seed=s) for s in range(4)]
    ids = [cell.cell_id for cell in cells]
    for cell in cells:
        store.put_cell(cell)
    store.put_sweep("a", "name: a\n", ids[:3])
    store.put_sweep("b", "name: b\n", ids[2:])
    store.record(ids[0], "done", 1)
    store.record(ids[1], "failed", 1, error_class="Diverged", message="nan")
    return store, ids


def test_sweeps_lists_cells_done_failed_and_last_activity(tmp_path, capsys):
    store, _ = two_sweeps(tmp_path)
    assert main(["sweeps", "--store", store.uri]) == 0
    out = capsys.readouterr().out
    rows = [line.replace("│", " ").split() for line in out.splitlines() if " UTC" in line]
    rows = {row[0]: row[1:4] for row in rows}
    assert rows == {"a": ["3", "1", "1"], "b": ["2", "0", "0"]}


def test_delete_refuses_without_yes_then_removes_only_the_sweeps_own_cells(tmp_path, capsys):
    store, ids = two_sweeps(tmp_path)
    assert main(["delete", "a", "--store", store.uri]) == 2
    assert "add --yes" in capsys.readouterr().err
    assert store.sweep_names() == ["a", "b"] and set(store.cell_ids()) == set(ids)

    assert main(["delete", "a", "--store", store.uri, "--yes"]) == 0
    assert "deleted sweep a and 2 cells (1 kept" in capsys.readouterr().out
    assert store.sweep_names() == ["b"]
    assert sorted(store.cell_ids()) == sorted(ids[2:])
    assert store.manifest("b") == ids[2:]


def test_delete_refuses_a_sweep_with_running_cells(tmp_path, capsys):
    store, ids = two_sweeps(tmp_path)
    store.record(ids[3], "running", 1)
    assert main(["delete", "b", "--store", store.uri, "--yes"]) == 2
    assert "compscale cancel b first" in capsys.readouterr().err


def test_rerun_detach_starts_the_same_rerun_in_the_background(tmp_path, capsys, monkeypatch):
    from orchestrator import cli_sweep

    store, ids = two_sweeps(tmp_path)
    started = []

    class Process:
        pid = 4242

        def __init__(self, command, **options):
            started.append((command, options))

    monkeypatch.setattr(cli_sweep.subprocess, "Popen", Process)
    assert main(["rerun", "a", "--cells", ids[1], "--detach", "--store", store.uri]) == 0
    ((command, options),) = started
    assert command[1:] == [
        "-m", "orchestrator.cli", "rerun", "a", "--cells", ids[1], "--store", store.uri,
    ]  # fmt: skip
    assert options["start_new_session"] is True
    assert "driver started in the background, pid 4242" in capsys.readouterr().out
    assert main(["rerun", "nope", "--failed", "--detach", "--store", store.uri]) == 2


def test_the_documented_cell_file_parses(tmp_path):
    example = doc_block("cli.md", "# cell.yaml", "yaml")
    path = tmp_path / "cell.yaml"
    path.write_text(example)
    cell = load_cell_file(path)
    assert (cell.format, cell.tokens, cell.model.seq_len) == ("sp50+int4", 262144, 64)


def test_rays_token_auth_warning_becomes_one_line_of_ours_for_a_remote_cluster(capsys):
    from ray._private.authentication import authentication_token_setup as ray_auth

    from orchestrator.raylog import AUTH_LOGGER, token_auth_notice

    assert ray_auth.logger.name == AUTH_LOGGER  # Ray still logs it where the filter listens
    with token_auth_notice(remote=False):
        ray_auth._warn_token_auth_enabled()
    assert capsys.readouterr().err == ""
    with token_auth_notice(remote=True):
        ray_auth._warn_token_auth_disabled()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ray: token authentication is off")
    other = logging.getLogger(AUTH_LOGGER)
    assert not any(type(f).__name__ == "_TokenAuthNotices" for f in other.filters)


@pytest.mark.parametrize("command", ["fit", "reduce", "report"])
def test_help_prints_percent_signs_once(command):
    text = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", command, "--help"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    assert "%%" not in text


def test_delete_removes_a_ladder_trunk_with_the_last_sweep_that_branches_from_it(tmp_path):
    store = Store(tmp_path / "store")
    train = TrainConfig(schedule="wsd", batch_size=4)
    cells = with_horizon(
        [CellConfig(model="tiny", format="int4", tokens=t * 4 * 128, train=train) for t in (10, 20)]
    )
    for cell in cells:
        store.put_cell(cell)
    store.put_sweep("short", "name: short\n", [cells[0].cell_id])
    store.put_sweep("long", "name: long\n", [cells[1].cell_id])
    trunk = store.layout.trunk(trunk_id(cells[0]))
    store.write_atomic(trunk.checkpoint(8), b"weights")
    store.delete_sweep("short")
    assert store.exists(trunk.checkpoint(8)), "the long budget still branches from it"
    store.delete_sweep("long")
    assert not store.exists(trunk.directory)
