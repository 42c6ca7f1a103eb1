"""Paired seeds: a seed's shared luck (same weights, same batches in every format) drops out of
the rho contrasts when the fit profiles out one offset per (N, D, seed)."""

import itertools

import numpy as np
import pandas as pd
import pytest

from compscale import laws
from compscale.reduce import pairable

RHO = {"dense": 1.0, "int4": 0.8, "sp75": 0.5}


def shared_noise_cells(shared: float = 0.02, own: float = 0.002) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    grid = itertools.product([1e5, 3e5, 1e6, 3e6], [1e7, 3e7, 1e8], range(3))
    for n, d, seed in grid:
        luck = rng.normal(0, shared)
        for name, rho in RHO.items():
            loss = 400 * (n * rho) ** -0.3 + 1000 * d**-0.3 + 1.5
            loss *= np.exp(luck + rng.normal(0, own))
            rows.append({"params": n, "tokens": d, "seed": seed, "format": name, "val_loss": loss})
    return pd.DataFrame(rows)


def test_paired_fit_recovers_rho_with_tighter_intervals_than_the_plain_fit():
    cells = shared_noise_cells()
    assert pairable(cells) and not pairable(cells[cells["seed"] == 0])
    columns = (cells["params"], cells["tokens"], cells["val_loss"], cells["format"])
    common = dict(law="unified", options=laws.FitOptions(bootstrap=40, seed=0))
    plain = laws.fit(*columns, **common)
    paired = laws.fit(*columns, paired_seeds=cells["seed"], **common)
    for name in ("int4", "sp75"):
        key = f"rho[{name}]"
        low, high = paired.ci[key]
        assert low <= RHO[name] <= high
        assert paired.rho[name] == pytest.approx(RHO[name], abs=0.02)
        assert high - low < 0.75 * (plain.ci[key][1] - plain.ci[key][0])
