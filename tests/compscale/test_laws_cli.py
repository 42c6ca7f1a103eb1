"""`compscale fit`: any CSV/Parquet table of cells, mapped columns, JSON for machines."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.cli import main

CHINCHILLA_CSV = Path(__file__).resolve().parents[1] / "data" / "chinchilla_svg_extracted.csv"
CHINCHILLA_FLAGS = ["--params-col", "Model Size", "--flops-col", "Training FLOP"]


def test_fit_json_on_the_chinchilla_csv_in_a_real_process():
    command = [sys.executable, "-m", "orchestrator.cli", "fit", str(CHINCHILLA_CSV)]
    command += [*CHINCHILLA_FLAGS, "--drop-highest-loss", "5", "--bootstrap", "20", "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    document = json.loads(completed.stdout)
    assert document["E"] == pytest.approx(1.817, rel=0.005)
    assert document["alpha"] == pytest.approx(0.348, rel=0.02)
    assert "rho" not in document
    assert set(document["ci"]) == {"A", "alpha", "B", "beta", "E"}
    assert document["ci"]["E"][0] < document["E"] < document["ci"]["E"][1]
    assert document["fit_error"]["rmse_log_loss"] > 0
    assert document["cells"] == 240


def unified_table(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for name, rho in {"dense": 1.0, "int4": 0.8, "int2": 0.4}.items():
        for params in (1e6, 1e7, 1e8):
            for tokens_per_param in (10, 50):
                tokens = params * tokens_per_param
                loss = 406.4 * (params * rho) ** -0.34 + 410.7 * tokens**-0.28 + 1.69
                rows.append((params, tokens, name, loss * math.exp(rng.normal(0, 0.002))))
    frame = pd.DataFrame(rows, columns=["N", "D", "Representation", "Loss"])
    frame.to_parquet(path)
    return path


def test_unified_fit_on_parquet_with_mapped_columns_prints_rho_per_format(tmp_path, capsys):
    table = unified_table(tmp_path / "cells.parquet")
    flags = ["--params-col", "N", "--tokens-col", "D", "--loss-col", "Loss"]
    flags += ["--format-col", "Representation", "--law", "unified", "--bootstrap", "10"]
    assert main(["fit", str(table), *flags, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["rho"]["dense"] == 1.0
    assert document["rho"]["int4"] == pytest.approx(0.8, rel=0.05)
    assert "rho[int2]" in document["ci"]
    assert main(["fit", str(table), *flags, "--bootstrap", "0"]) == 0
    assert "rho[int4]" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no column 'params'"),
        ([*CHINCHILLA_FLAGS, "--law", "unified"], "no column 'format'"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(extra, message, capsys):
    assert main(["fit", str(CHINCHILLA_CSV), *extra, "--bootstrap", "0"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_unknown_table_type_and_missing_file_are_errors(tmp_path, capsys):
    (tmp_path / "cells.txt").write_text("x")
    assert main(["fit", str(tmp_path / "cells.txt")]) == 2
    assert main(["fit", str(tmp_path / "absent.csv")]) == 2
    error = capsys.readouterr().err
    assert "give a .csv or .parquet file" in error and "no such file" in error


def external_table(path: Path) -> Path:
    """Formats compscale's grammar does not know (a forward and a backward NVFP4 recipe), with
    on_n / on_d columns saying which multiplier each scales, and a GMSE column."""
    rng = np.random.default_rng(0)
    truth = {"dense": (1.0, 1.0, 0.0), "fwd:nvfp4-1x16": (0.8, 1.0, 0.01)}
    truth |= {"bwd:nvfp4-sr": (1.0, 0.6, 0.02), "bwd:nvfp4-eden": (1.0, 0.85, 0.005)}
    rows = []
    for name, (eff_n, eff_d, gmse) in truth.items():
        for params in (1e6, 1e7, 1e8):
            for tokens_per_param in (10, 30, 100):
                tokens = params * tokens_per_param
                loss = 406.4 * (params * eff_n) ** -0.34 + 410.7 * (tokens * eff_d) ** -0.28 + 1.69
                loss *= math.exp(rng.normal(0, 0.001))
                on = (name.startswith("fwd"), name.startswith("bwd"))
                rows.append((params, tokens, name, loss, *on, gmse))
    columns = ["params", "tokens", "format", "loss", "on_n", "on_d", "gmse"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def test_formats_the_grammar_lacks_fit_under_unified_and_unified_effd(tmp_path, capsys):
    table = str(external_table(tmp_path / "cells.csv"))
    assert main(["fit", table, "--law", "unified", "--bootstrap", "0", "--json"]) == 0
    unified = json.loads(capsys.readouterr().out)
    assert unified["rho"]["fwd:nvfp4-1x16"] == pytest.approx(0.8, abs=0.03)
    assert "eff_d" not in unified
    assert main(["fit", table, "--law", "unified-effd", "--bootstrap", "0", "--json"]) == 0
    effd = json.loads(capsys.readouterr().out)
    assert effd["eff_d"]["bwd:nvfp4-sr"] == pytest.approx(0.6, abs=0.03)
    assert effd["eff_d"]["bwd:nvfp4-eden"] == pytest.approx(0.85, abs=0.03)
    assert set(effd["eff_d"]) == {"bwd:nvfp4-sr", "bwd:nvfp4-eden"}  # on_d from the table
    assert effd["rho"]["bwd:nvfp4-sr"] == 1.0 and effd["fitted"]["eff_d"] == effd["eff_d"]
    assert effd["eff_d_capacity"].startswith("not identified")  # 2 backward formats
    assert effd["objective"] < 0.2 * unified["objective"]


def test_unified_gmse_on_formats_the_grammar_lacks_needs_their_gmse_column(tmp_path, capsys):
    table = str(external_table(tmp_path / "cells.csv"))
    flags = ["--law", "unified-gmse", "--bootstrap", "0"]
    assert main(["fit", table, *flags]) == 2
    error = capsys.readouterr().err
    assert "format 'bwd:nvfp4-eden' is not in compscale's grammar" in error
    assert "--gmse-col" in error and error.count("\n") == 1
    assert main(["fit", table, *flags, "--gmse-col", "mse"]) == 2
    error = capsys.readouterr().err
    assert "no column 'mse'" in error and "--gmse-col" in error and error.count("\n") == 1
    assert main(["fit", table, *flags, "--gmse-col", "gmse", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["fitted"]["parts"]["fwd:nvfp4-1x16"] == [["quantization", 0.01]]
