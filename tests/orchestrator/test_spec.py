"""The sweep spec: typos and bad values fail early with the file, the field path and what was
expected; good specs resolve presets and per-size training settings."""

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec, parse_spec

GOOD = """
name: demo
models:
  - tiny
  - {preset: 100k, train: {lr: 2.0e-3}}
  - {d_model: 64, n_layers: 2, n_heads: 4}
tokens: [10000]
tokens_per_param: [2]
formats: [dense, INT4]
seeds: [0, 1]
train: {batch_size: 4}
retries: 1
extra_cells:
  - {model: tiny, format: sp50+int4, tokens: 5000, train: {lr: 1.0e-3}}
"""

BAD = {
    "unknown format": (
        GOOD.replace("[dense, INT4]", "[dense, INT4, int9]"),
        "formats[2]: bad format 'int9'",
    ),
    "negative tokens": (
        GOOD.replace("[10000]", "[-10]"),
        "tokens[0]: Input should be greater than 0",
    ),
    "typo in a field name": (GOOD.replace("seeds:", "seed:"), "seed: unknown field (a typo?)"),
    "typo in a nested field": (
        GOOD.replace("{lr: 2.0e-3}", "{lrate: 2.0e-3}"),
        "models[1].train.lrate: unknown field",
    ),
    "unknown preset": (GOOD.replace("- tiny", "- huge"), "models[0]: unknown model preset 'huge'"),
    "duplicate cells": (
        GOOD.replace("seeds: [0, 1]", "seeds: [0, 0]"),
        "models[0] × tokens[0] × formats[0] × seeds[1]: duplicates cell tiny-dense-s0-",
    ),
    "an extra cell that repeats a grid cell": (
        GOOD + "  - {model: tiny, format: dense, tokens: 10000, seed: 1}\n",
        "extra_cells[1]: duplicates cell tiny-dense-s1-",
    ),
    "invalid yaml": (GOOD.replace("[dense, INT4]", "[dense, INT4"), "not valid YAML"),
}


def test_a_good_spec_resolves_presets_formats_and_per_size_settings():
    spec = parse_spec(GOOD)
    assert spec.formats == ["dense", "int4"]  # canonical spelling: cell ids hash it
    assert spec.models[1].resolve().d_model == 48
    assert spec.train_for(spec.models[1].train).lr == 2.0e-3
    assert spec.train_for(spec.models[1].train).batch_size == 4  # sweep default kept
    assert spec.train_for(spec.models[0].train).lr == 3e-3  # TrainConfig default


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_spec_gives_one_line_naming_file_and_field_and_submits_nothing(
    case, tmp_path, capsys
):
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    store = tmp_path / "store"
    assert main(["validate", str(path)]) == 2
    assert main(["submit", str(path), "--store", str(store)]) == 2
    assert main(["plan", str(path), "--store", str(store)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3
    for command, line in zip(("validate", "submit", "plan"), errors, strict=True):
        assert line.startswith(f"compscale {command}: error: {path}")
        assert expected in line
    assert not store.exists()  # nothing submitted, nothing written


def test_a_missing_spec_file_is_named(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(missing)]) == 2
    assert f"{missing}: no such spec file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        load_spec(missing)


def test_a_grid_without_formats_or_budgets_says_what_it_lacks():
    with pytest.raises(SpecError, match=r"formats: expected at least one format"):
        parse_spec("name: x\nmodels: [tiny]\ntokens: [100]\n")
    with pytest.raises(SpecError, match=r"tokens: expected tokens and/or tokens_per_param"):
        parse_spec("name: x\nmodels: [tiny]\nformats: [dense]\n")
    with pytest.raises(SpecError, match=r"extra_cells\[0\]: expected exactly one of tokens"):
        parse_spec("name: x\nextra_cells: [{model: tiny, format: dense}]\n")


def test_the_smoke_sweep_is_valid(capsys):
    smoke = Path(__file__).resolve().parents[2] / "sweeps" / "smoke.yaml"
    assert main(["validate", str(smoke)]) == 0
    assert "is valid" in capsys.readouterr().out
