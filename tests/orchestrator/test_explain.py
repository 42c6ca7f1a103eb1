"""`compscale explain`: the cells an edit of a spec changes (with the fields that changed), adds and
removes, matched by their place on the spec's axes; what a cell's id hashes; bad input refused in
one line with exit code 2."""

import hashlib

import pytest

from orchestrator.cells import expand
from orchestrator.cli import main
from orchestrator.spec import load_spec

OLD = """name: s
models: [tiny]
tokens: [8000]
formats: [dense, int4]
seeds: [0, 1]
train:
  lr: 5.0e-3
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def explain(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_edited_learning_rate_changes_every_cell_and_names_the_field(tmp_path, capsys):
    old = write(tmp_path, "old.yaml", OLD)
    new = write(tmp_path, "new.yaml", OLD.replace("5.0e-3", "4.0e-3"))
    code, out, _ = explain(capsys, old, new)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "sweep s: 4 cells changed, 0 added, 0 removed, 0 unchanged"
    assert lines.count("  train.lr 0.005 -> 0.004") == 4
    old_ids = {c.cell_id for c in expand(load_spec(old))}
    new_ids = {c.cell_id for c in expand(load_spec(new))}
    changed = [line for line in lines if line.startswith("changed ")]
    assert {line.split(": ")[1].split(" -> ")[0] for line in changed} == old_ids
    assert {line.split(" -> ")[1] for line in changed} == new_ids
    assert "changed models[0] × tokens[0] × int4 × seed 1: tiny-int4-s1-" in out


def test_a_swapped_format_and_a_new_seed_are_added_and_removed_cells(tmp_path, capsys):
    old = write(tmp_path, "old.yaml", OLD)
    edited = OLD.replace("[dense, int4]", "[int8, dense]").replace("[0, 1]", "[0, 1, 2]")
    code, out, _ = explain(capsys, old, write(tmp_path, "new.yaml", edited))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "sweep s: 0 cells changed, 4 added, 2 removed, 2 unchanged"
    added = sorted(line.split(": ")[0] for line in lines if line.startswith("added "))
    assert added == [
        "added models[0] × tokens[0] × dense × seed 2",
        "added models[0] × tokens[0] × int8 × seed 0",
        "added models[0] × tokens[0] × int8 × seed 1",
        "added models[0] × tokens[0] × int8 × seed 2",
    ]
    removed = [line for line in lines if line.startswith("removed ")]
    assert [line.split(": ")[1][:13] for line in removed] == ["tiny-int4-s0-", "tiny-int4-s1-"]


def test_a_changed_token_budget_shows_as_the_same_place_with_a_new_tokens(tmp_path, capsys):
    old = write(tmp_path, "old.yaml", OLD)
    new = write(tmp_path, "new.yaml", OLD.replace("[8000]", "[9000]"))
    _, out, _ = explain(capsys, old, new)
    assert out.splitlines()[0] == "sweep s: 4 cells changed, 0 added, 0 removed, 0 unchanged"
    assert out.count("  tokens 8000 -> 9000") == 4


def test_cell_prints_the_canonical_json_its_id_is_the_hash_of(tmp_path, capsys):
    spec = write(tmp_path, "s.yaml", OLD)
    cell = expand(load_spec(spec))[3]
    code, out, _ = explain(capsys, spec, "--cell", cell.cell_id)
    assert code == 0
    header, canonical = out.splitlines()
    assert header.startswith(f"{cell.cell_id}: tiny-int4-s1 and ")
    assert cell.cell_id.endswith("-" + hashlib.sha256(canonical.encode()).hexdigest()[:12])
    assert '"lr":0.005' in canonical and "world_size" not in canonical


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cell", "tiny-int4-s0-000000000000"], "tiny-int4-s0-000000000000 is not a cell of "),
        (["OTHER"], "is sweep 's' but "),
        ([], "give NEW.yaml to compare SPEC with, or --cell ID"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    spec = write(tmp_path, "s.yaml", OLD)
    other = write(tmp_path, "t.yaml", OLD.replace("name: s", "name: t"))
    args = [other if arg == "OTHER" else arg for arg in args]
    code, out, err = explain(capsys, spec, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml", "t.yaml"]  # nothing written
