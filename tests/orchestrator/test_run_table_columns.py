"""Every command that reads a table of runs reads it the same way: `fit` and `advise` share the
column flags and their defaults (`compscale.table`), and their help prints as written."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.cli import main

RHO = {"dense": 1.0, "int4": 0.85, "int3": 0.7, "int2": 0.45}


def loss_only_table(path):
    """A unified-law grid whose loss column is `loss`, with no `val_loss` (a published table's
    shape, not a sweep's)."""
    rng = np.random.default_rng(0)
    rows = []
    for name, rho in RHO.items():
        for params in (1e6, 3e6, 1e7, 3e7):
            for tokens_per_param in (10, 30):
                tokens = params * tokens_per_param
                loss = 406.4 * (params * rho) ** -0.34 + 410.7 * tokens**-0.28 + 1.69
                rows.append((params, tokens, name, loss * math.exp(rng.normal(0, 0.003))))
    pd.DataFrame(rows, columns=["params", "tokens", "format", "loss"]).to_csv(path, index=False)
    return path


def test_a_table_with_loss_but_no_val_loss_is_read_by_fit_and_by_advise(tmp_path, capsys):
    table = str(loss_only_table(tmp_path / "cells.csv"))
    assert main(["fit", table, "--law", "unified", "--bootstrap", "0", "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["cells"] == 32
    assert fitted["rho"]["int4"] == pytest.approx(0.85, rel=0.05)
    argv = ["advise", table, "--bootstrap", "5", "--jobs", "1", "--flops", "1e17", "--json"]
    assert main(argv) == 0
    rows = {row["format"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(RHO)
    assert rows["int4"]["rho"] == pytest.approx(fitted["rho"]["int4"], rel=1e-9)


def test_a_table_with_neither_loss_column_is_refused_naming_the_flag(tmp_path, capsys):
    path = tmp_path / "cells.csv"
    pd.read_csv(loss_only_table(path)).rename(columns={"loss": "nats"}).to_csv(path, index=False)
    for argv in (["fit", str(path), "--law", "unified"], ["advise", str(path), "--flops", "1e17"]):
        assert main([*argv, "--bootstrap", "0"]) == 2
        error = capsys.readouterr().err
        assert "no column 'loss'" in error and "--loss-col" in error


@pytest.mark.parametrize("command", ["fit", "advise"])
def test_help_prints_percent_signs_once(command, capsys):
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])
    assert raised.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # as read, whatever the terminal's width
    assert "95% " in text and "%%" not in text
    assert "--loss-col" in text and "default val_loss when present" in text
