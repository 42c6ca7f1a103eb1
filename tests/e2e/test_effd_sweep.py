"""Quantized training end to end: a 2-size cut of sweeps/cpu-effd.yaml (dense, g:int8, g:int4,
g:int3) submitted as a user would, on the embedded local Ray. Every cell finishes; a `g:` cell
starts from dense's first loss (same forward pass, same initialisation) and then parts from it,
because its backward GEMMs are quantized."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_shell

from orchestrator.store import Store

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def test_a_cut_of_the_effd_sweep_finishes_and_its_g_cells_part_from_dense(tmp_path):
    spec = yaml.safe_load((REPO / "sweeps" / "cpu-effd.yaml").read_text())
    spec["models"] = spec["models"][:2]
    spec["tokens_per_param"] = spec["tokens_per_param"][:1]
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(spec))

    done = run_shell(f"{BIN}/compscale submit cut.yaml --store store", tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    store = Store(tmp_path / "store")
    results = store.results("cpu-effd")
    formats = {"dense", "g:int8", "g:int4", "g:int3"}
    assert len(results) == 8 and set(results["format"]) == formats
    assert results["val_loss"].between(0.5, 5.0).all()  # byte-level chance is ln 256 = 5.55

    curves = store.losses("cpu-effd")
    for params, cells in curves.groupby("params"):
        by_format = {fmt: rows.sort_values("step") for fmt, rows in cells.groupby("format")}
        dense = by_format.pop("dense")
        assert set(by_format) == formats - {"dense"}, params
        for fmt, rows in by_format.items():
            first, dense_first = rows["train_loss"].iloc[0], dense["train_loss"].iloc[0]
            assert first == pytest.approx(dense_first, rel=1e-5), (params, fmt)
            final = results.query("params == @params and format == @fmt")["val_loss"].item()
            dense_final = results.query("params == @params and format == 'dense'")["val_loss"]
            assert final != dense_final.item(), (params, fmt)
