"""The format advisor on laws of known parameters: closed-form allocations, rankings by capacity
per stored bit, intervals from the ensemble, and the command on a table."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from compscale import laws
from compscale.advise import Budget, Ensemble, advise, allocate, compute_optimal_params, loss
from orchestrator.cli import main

BASE = {"A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28, "E": 1.69}
RHO = {"dense": 1.0, "int4": 0.85, "int3": 0.7, "int2": 0.4, "sp50": 0.9}
BITS = {"dense": 16.0, "int4": 4.0, "int3": 3.0, "int2": 2.0, "sp50": 9.0}


def known(draws: int = 40, spread: float = 0.01) -> Ensemble:
    """An ensemble around the known law: resamples jittered by `spread` (relative)."""
    rng = np.random.default_rng(0)
    names = (*laws.BASE_NAMES, *(f"rho[{name}]" for name in RHO))
    centre = np.array([*BASE.values(), *RHO.values()])
    samples = centre * np.exp(rng.normal(0, spread, (draws, len(centre))))
    samples[:, names.index("rho[dense]")] = 1.0
    fitted = laws.FittedLaw("unified", *BASE.values(), rho=dict(RHO))
    return Ensemble(fitted, samples, names, None, (1e6, 1e8), (1e7, 1e10), 0.01)


def test_compute_optimal_params_is_the_closed_form_and_the_minimum():
    a, b, A, B, flops = BASE["alpha"], BASE["beta"], BASE["A"], BASE["B"], 1e20
    g = (a * A / (b * B)) ** (1 / (a + b))
    assert compute_optimal_params(A, a, B, b, 1.0, flops) == pytest.approx(
        g * (flops / 6) ** (b / (a + b)), rel=1e-12
    )
    # with rho: the dense optimum of A' = A rho^-alpha, the effective count N rho of the law
    rho = 0.4
    n = compute_optimal_params(A, a, B, b, rho, flops)
    grid = np.geomspace(n / 10, n * 10, 20001)
    on_grid = loss(A, a, B, b, 0.0, rho, grid, 1.0) - B + B * (flops / (6 * grid)) ** -b
    assert grid[np.argmin(on_grid)] == pytest.approx(n, rel=1e-3)
    g_rho = (a * A * rho**-a / (b * B)) ** (1 / (a + b))
    assert n == pytest.approx(g_rho * (flops / 6) ** (b / (a + b)), rel=1e-12)


def test_memory_budget_ranks_formats_by_capacity_per_stored_bit():
    table = advise(known(), Budget(memory_bytes=1e7), bits_of=BITS.get)
    expected = sorted(RHO, key=lambda name: -RHO[name] / BITS[name])
    assert list(table["format"]) == expected  # int3 (0.233/bit) > int4 (0.2125) > int2 > ...
    for row in table.itertuples():
        assert row.params == pytest.approx(8e7 / BITS[row.format])
        assert row.effective_params == pytest.approx(row.params * RHO[row.format])
        assert math.isinf(row.tokens)  # nothing bounds D: the D -> infinity limit
        assert row.loss_ci_low < row.loss < row.loss_ci_high


def test_flops_budget_picks_the_compute_optimum_unless_memory_caps_it():
    ensemble, flops = known(), 1e20
    table = advise(ensemble, Budget(flops=flops), bits_of=BITS.get).set_index("format")
    for name, rho in RHO.items():
        n = compute_optimal_params(BASE["A"], BASE["alpha"], BASE["B"], BASE["beta"], rho, flops)
        assert table.loc[name, "params"] == pytest.approx(n)
        assert table.loc[name, "tokens"] == pytest.approx(flops / (6 * n))
        assert table.loc[name, "params_extrapolation"] == pytest.approx(n / 1e8)
    assert table["loss"].idxmin() == "dense"  # compute alone: the highest capacity wins
    capped = allocate(*(BASE[k] for k in ("A", "alpha", "B", "beta")), 1.0, 16, Budget(1e6, flops))
    assert capped == pytest.approx((5e5, flops / 3e6))
    fixed = allocate(1, 0.3, 1, 0.3, 1.0, 4, Budget(memory_bytes=1e9, flops=6e12, tokens=1e5))
    assert fixed == (pytest.approx(1e7), 1e5)  # D fixed: N is what the FLOPs then allow


def test_a_budget_needs_memory_or_flops():
    with pytest.raises(ValueError, match="memory bytes and/or FLOPs"):
        Budget(tokens=1e9)
    with pytest.raises(ValueError, match="positive"):
        Budget(flops=-1.0)


def sweep_table() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for name, rho in RHO.items():
        for params in (1e6, 3e6, 1e7, 3e7):
            for tokens_per_param in (10, 30):
                tokens = params * tokens_per_param
                value = float(loss(*BASE.values(), rho, params, tokens))
                rows.append((params, tokens, name, value * math.exp(rng.normal(0, 0.005))))
    return pd.DataFrame(rows, columns=["params", "tokens", "format", "loss"])


def test_advise_command_on_a_table_predicts_unseen_formats_by_the_capacity_law(tmp_path, capsys):
    path = tmp_path / "cells.csv"
    sweep_table().to_csv(path, index=False)
    argv = ["advise", str(path), "--loss-col", "loss", "--bootstrap", "20", "--jobs", "1"]
    assert main([*argv, "--flops", "1e18", "--formats", "int8", "--json"]) == 0
    rows = {row["format"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["int8"]["source"] == "capacity law" and rows["int4"]["source"] == "fitted"
    assert rows["int3"]["rho"] == pytest.approx(0.7, rel=0.05)
    assert rows["int8"]["loss_ci_low"] < rows["int8"]["loss"] < rows["int8"]["loss_ci_high"]
    assert rows["dense"]["params_extrapolation"] > 1  # 1e18 FLOPs are beyond 3e7 parameters
    assert main([*argv, "--memory-bytes", "1e6", "--tokens", "1e8"]) == 0
    text = capsys.readouterr().out
    assert "int3" in text.splitlines()[2] and "below the smallest fitted" in text
    assert main([*argv, "--tokens", "1e8"]) == 2
    assert "memory bytes and/or FLOPs" in capsys.readouterr().err
