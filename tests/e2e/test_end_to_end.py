"""The README's first command, as a newcomer runs it: the smoke sweep with the real worker on an
embedded Ray, then the report; resubmitting runs nothing and the reducer reproduces its tables."""

import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.store import Store

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def test_readme_first_command_runs_the_smoke_sweep_and_prints_the_report(smoke_sweep):
    done, cwd = smoke_sweep.done, smoke_sweep.cwd  # the README's first command, run once
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (report,) = re.findall(r"^report: (\S+)$", done.stdout, re.MULTILINE)
    assert Path(report).is_file() and Path(report).stat().st_size > 20_000

    store = Store(cwd / "store")
    results = store.results("smoke")
    assert len(results) == 36 and set(results["format"]) == {"dense", "int4", "int2", "int1"}
    assert results["val_loss"].between(0.5, 5.0).all()  # byte-level chance is ln 256 = 5.55
    # the science the smoke sweep is there to show: loss falls with N at every budget for every
    # format, the unified law is identified (alpha's interval well away from 0), and the
    # capacities follow GMSE
    for _, cells in results.groupby(["format", "tokens"]):
        assert cells.sort_values("params")["val_loss"].is_monotonic_decreasing, cells
    reduction = cwd / "store" / "sweeps" / "smoke" / "reduction"
    law = pd.read_parquet(reduction / "law.parquet").set_index("parameter")
    assert law.loc["alpha", "ci_low"] > 0.05 and not law.loc["alpha", "note"], law
    rho = pd.read_parquet(reduction / "rho.parquet").set_index("format")["rho"]
    assert rho["dense"] >= rho["int4"] > rho["int2"] > rho["int1"], rho
    duplicates = store.query("SELECT count(*) - count(DISTINCT (cell_id, step)) FROM losses")
    assert duplicates.fetchall() == [(0,)]

    again = smoke_sweep.run(f"{BIN}/compscale submit sweeps/smoke.yaml")
    assert again.returncode == 0 and "nothing to run" in again.stdout

    tables = cwd / "store" / "sweeps" / "smoke" / "reduction"
    before = pd.read_parquet(tables / "rho.parquet")
    reduced = smoke_sweep.run(f"{BIN}/compscale reduce smoke")
    assert reduced.returncode == 0, reduced.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(tables / "rho.parquet"), before)
