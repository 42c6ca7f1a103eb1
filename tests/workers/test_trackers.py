"""Experiment trackers: a spec's `trackers` mirror each cell's loss rows to TensorBoard event files
and to W&B (offline), beside the cell in the store; off by default, never part of a cell's id, and
a tracker that breaks never breaks the cell. Checked with the real packages and their files."""

import gc
import json
import math
import re
import struct
from pathlib import Path

import pytest
from s3 import moto_s3, unique_prefix

import workers.train
from orchestrator.cells import expand
from orchestrator.spec import SpecError, parse_spec
from orchestrator.tasks import execute_cell
from workers import run_cell, trackers
from workers.layout import Layout
from workers.sink import read_losses
from workers.train import Diverged

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """\
name: watched
models: [{preset: tiny, seq_len: 32}]
tokens: [3840]  # 30 steps of 4 x 32 tokens
formats: [dense, int4]
train: {batch_size: 4, eval_tokens: 256, eval_every: 25, checkpoint_every: 10}
"""
# The ids of SPEC's cells before trackers existed: stores written then must stay valid.
IDS = ["d32l4h2-dense-s0-6799a7bd3f1e", "d32l4h2-int4-s0-1dd0ef0715e6"]


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """W&B as the tests run it: offline, silent, its own folders in tmp, no account."""
    home = tmp_path / "wandb-home"
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def scalars(directory: Path) -> dict[str, dict[int, float]]:
    """Every scalar in a folder of event files, by tag and step, read by TensorBoard's reader
    (which hides the steps a later attempt logged again, as the TensorBoard UI does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {
        tag: {event.step: event.value for event in events.Scalars(tag)}
        for tag in events.Tags()["scalars"]
    }


def wandb_runs(folder: Path) -> list[dict]:
    """The offline runs under a `wandb/` folder, oldest first: name, group, project, config,
    history by step, exit code. W&B keeps no Python reader of its `.wandb` files (wandb-core
    reads them), so this undoes their framing (LevelDB's log format: 32 KiB blocks of records
    with a 7-byte header) and decodes each record with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    runs = []
    for path in sorted(folder.glob("offline-run-*/run-*.wandb")):
        data, position, pending = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        run = {"history": {}, "exit_code": None}
        while position + 7 <= len(data):
            if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
                position += 32768 - position % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[position : position + 7])
            pending += data[position + 7 : position + 7 + length]
            position += 7 + length
            if kind not in (1, 4):  # a record continues (FIRST, MIDDLE) until FULL or LAST
                continue
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            which = record.WhichOneof("record_type")
            if which == "run":
                run |= {
                    "name": record.run.display_name,
                    "group": record.run.run_group,
                    "project": record.run.project,
                    "config": {
                        item.key: json.loads(item.value_json) for item in record.run.config.update
                    },
                }
            elif which == "history":
                items = {item.nested_key[0]: item.value_json for item in record.history.item}
                run["history"][int(items["_step"])] = {
                    key: json.loads(value) for key, value in items.items() if key[0] != "_"
                }  # W&B's own keys (_step, _runtime, _timestamp) left out
            elif which == "exit":
                run["exit_code"] = record.exit.exit_code
        runs.append(run)
    return runs


def test_trackers_are_off_by_default_and_change_no_cell_id(tmp_path):
    plain = expand(parse_spec(SPEC))
    watched = expand(parse_spec(SPEC + "trackers: [tensorboard, wandb]\n"))
    assert [cell.cell_id for cell in plain] == [cell.cell_id for cell in watched] == IDS
    assert all(cell.tracking.trackers == () for cell in plain)
    assert "tracking" not in plain[0].model_dump()  # dumps read as before trackers existed
    assert watched[0].tracking.trackers == ("tensorboard", "wandb")
    assert watched[0].tracking.sweep == "watched"
    cell = plain[0].model_copy(update={"tokens": 5 * 4 * 32})
    run_cell(cell, str(tmp_path))
    assert sorted(path.name for path in (tmp_path / "cells" / cell.cell_id).iterdir()) == [
        "cell.json",
        "losses",
        "result.parquet",
    ]


def test_an_unknown_tracker_is_one_line_naming_the_field():
    with pytest.raises(SpecError) as raised:
        parse_spec(SPEC + "trackers: [tensorboard, nonsense]\n", "spec.yaml")
    assert str(raised.value) == (
        "spec.yaml: trackers[1]: Input should be 'tensorboard' or 'wandb', got 'nonsense'"
    )


def test_a_tracker_whose_extra_is_missing_fails_validation_naming_the_extra(monkeypatch):
    monkeypatch.setitem(trackers.MODULES, "wandb", "compscale_no_such_module")
    with pytest.raises(SpecError) as raised:
        parse_spec(SPEC + "trackers: [wandb]\n", "spec.yaml")
    assert str(raised.value) == (
        "spec.yaml: trackers[0]: wandb is not installed: pip install 'compscale[wandb]'"
    )


def test_a_tracker_that_raises_is_dropped_with_one_warning_and_the_others_go_on():
    class Broken:
        def log(self, rows):
            raise OSError("disk full")

        def close(self, failed):
            raise AssertionError("a dropped tracker is not closed")

    class Recorder:
        rows, closed = [], None

        def log(self, rows):
            self.rows += rows

        def close(self, failed):
            self.closed = failed

    recorder = Recorder()
    opened = trackers.Trackers("c", {"tensorboard": Broken(), "wandb": recorder})
    with pytest.warns(UserWarning, match="tensorboard tracker of c stopped logging: disk full"):
        opened.log([{"step": 0}])
    opened.log([{"step": 1}])
    opened.close()
    assert recorder.rows == [{"step": 0}, {"step": 1}] and recorder.closed is False


@pytest.mark.slow
def test_a_failed_then_resumed_cell_shows_its_stored_rows_in_tensorboard_and_wandb(
    tmp_path, monkeypatch, wandb_offline
):
    (cell, _) = expand(parse_spec(SPEC + "trackers: [tensorboard, wandb]\n"))
    store = str(tmp_path / "store")
    paths = Layout(store).cell(cell.cell_id)
    # Attempt 1 fails at step 24 (a non-finite evaluation), after its checkpoint at step 20 and
    # with its rows to step 24 flushed; attempt 2 resumes from step 20 and finishes, run as the
    # driver's task runs it: the trackers travel in the cell's JSON.
    evaluate = workers.train.evaluate
    monkeypatch.setattr(workers.train, "evaluate", lambda *args, **kwargs: math.inf)
    with pytest.raises(Diverged, match="at step 24"):
        run_cell(cell, store)
    gc.collect()  # the failed attempt's trackers close once it is let go
    monkeypatch.setattr(workers.train, "evaluate", evaluate)
    execute_cell(cell.model_dump_json(), store, run_cell, "resume", heartbeat_s=60)

    rows = read_losses(store, cell.cell_id).to_pylist()  # the store's view: latest attempt wins
    assert [row["attempt"] for row in rows] == [1] * 20 + [2] * 10
    logged = scalars(Path(paths.tensorboard))
    assert sorted(logged) == sorted(trackers.SCALARS)
    for name in trackers.SCALARS:
        stored = {row["step"]: row[name] for row in rows if row[name] is not None}
        assert logged[name] == pytest.approx(stored, rel=1e-6), name  # float32 in event files
    assert set(logged["val_loss"]) == {24, 29}  # attempt 1's inf at step 24 is hidden

    failed, resumed = wandb_runs(Path(paths.wandb))
    for run, attempt in ((failed, 1), (resumed, 2)):
        assert (run["name"], run["group"], run["project"]) == (cell.cell_id, "watched", "compscale")
        assert run["config"]["cell_id"] == cell.cell_id and run["config"]["attempt"] == attempt
        assert run["config"]["train"] == cell.train.model_dump(mode="json")
    assert (failed["exit_code"], resumed["exit_code"]) == (1, 0)
    assert sorted(failed["history"]) == list(range(25))
    assert sorted(resumed["history"]) == list(range(20, 30))
    for row in rows[20:]:
        stored = {name: row[name] for name in trackers.SCALARS if row[name] is not None}
        assert resumed["history"][row["step"]] == stored
    assert "tracking" not in json.loads(Path(paths.config).read_text())  # cell.json: the cell's


@pytest.mark.slow
def test_the_cells_of_a_remote_store_write_their_tracker_files_to_a_local_folder(
    tmp_path, monkeypatch
):
    (cell, _) = expand(parse_spec(SPEC + "trackers: [tensorboard]\n"))
    local = tmp_path / "trackers"
    monkeypatch.setenv("COMPSCALE_TRACKER_DIR", str(local))
    with moto_s3() as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        store = f"s3://{env['COMPSCALE_TEST_BUCKET']}/{unique_prefix()}"
        notice = f"store {store} is remote: tracker files go to {local} on this machine"
        with pytest.warns(UserWarning, match=re.escape(notice)):
            run_cell(cell, store)
        rows = read_losses(store, cell.cell_id).to_pylist()
    logged = scalars(Path(Layout(str(local)).cell(cell.cell_id).tensorboard))
    assert logged["train_loss"] == pytest.approx({row["step"]: row["train_loss"] for row in rows})
