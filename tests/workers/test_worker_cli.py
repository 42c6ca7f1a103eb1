"""`compscale train-cell`: one cell from a YAML file, without Ray; bad files fail with one line."""

import json

import pytest

from orchestrator.cli import main
from workers.sink import read_result

pytestmark = pytest.mark.usefixtures("one_thread")


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_train_cell_runs_a_preset_cell_and_prints_its_result_row(tmp_path, capsys):
    cell = write(
        tmp_path / "cell.yaml",
        "model: {preset: tiny, seq_len: 32}\nformat: INT4\ntokens: 2048\n"
        "train: {batch_size: 4, eval_tokens: 256}\n",
    )
    assert main(["train-cell", cell, "--store", str(tmp_path / "store")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["format"] == "int4" and printed["steps"] == 16 and printed["model"] == "d32l4h2"
    stored = read_result(str(tmp_path / "store"), printed["cell_id"])
    assert stored["val_loss"] == printed["val_loss"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model: huge\nformat: dense\ntokens: 10\n",
            "unknown model preset 'huge'; known presets: tiny",
        ),
        ("model: tiny\nformat: dense\ntokens: 10\nsed: 1\n", "cell.yaml: sed: Extra inputs"),
        ("model: tiny\nformat: dense\ntokens: -5\n", "cell.yaml: tokens: Input should be greater"),
        ("model: tiny\nformat: dense\ntokens: 10\n", "tokens=10 is less than one global batch"),
        ("model: tiny\nformat: int9x\ntokens: 10\n", "int9x"),
        ("- a list\n", "expected a mapping of cell fields"),
    ],
)
def test_bad_cell_files_fail_with_one_clear_line(tmp_path, capsys, text, message):
    cell = write(tmp_path / "cell.yaml", text)
    assert main(["train-cell", cell, "--store", str(tmp_path / "store")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_a_missing_cell_file_is_one_clear_line(tmp_path, capsys):
    assert main(["train-cell", str(tmp_path / "nope.yaml"), "--store", str(tmp_path)]) == 2
    assert "nope.yaml' does not exist" in capsys.readouterr().err
