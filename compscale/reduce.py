"""From a sweep's result rows to the paper's tables: the unified law, every format's capacity rho,
the tanh(GMSE) capacity law, the composition check, and the error on held-out cells.

Pure function of a DataFrame (never touches the store); `Reduction.write` puts Parquet and JSON
beside the sweep, `Reduction.read` loads them back so reports can be regenerated without refitting.
Every prediction downstream (held-out cells, figures) goes through the reduction's `FittedLaw`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd

from compscale import capacity, laws
from compscale.files import atomic_write, write_text_atomic

REQUIRED_COLUMNS = ("params", "tokens", "format", "seed", "val_loss")
TABLES = ("law", "rho", "capacity", "capacity_rho", "composition", "heldout")
JSON_NAME = "reduction.json"


@dataclass(frozen=True)
class ReductionMetrics:
    """The reduction's scalars: what was fitted to how many cells, how well, and its warnings.

    NaN means not measured (one seed per cell, or no held-out cells); JSON holds it as null.
    """

    law: str
    cells: int
    formats: int
    seeds: int
    bootstrap: int
    delta: float
    objective: float
    rmse_log_loss: float
    mean_abs_rel_error: float
    seed_noise_log_loss: float
    tolerance: float
    holdout_fraction: float
    heldout_cells: int
    heldout_rmse_log_loss: float
    heldout_mean_abs_rel_error: float
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Strict JSON (no NaN or infinity): such floats become null."""
        document = {item.name: getattr(self, item.name) for item in fields(self)}
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in document.items()
        } | {"warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, document: Mapping) -> ReductionMetrics:
        values = {key: math.nan if value is None else value for key, value in document.items()}
        return cls(**values | {"warnings": tuple(document.get("warnings", ()))})


@dataclass(frozen=True)
class Reduction:
    """The reducer's tables (pandas), its fitted law and its metrics; see `reduce`."""

    law: pd.DataFrame
    rho: pd.DataFrame
    capacity: pd.DataFrame
    capacity_rho: pd.DataFrame
    composition: pd.DataFrame
    heldout: pd.DataFrame
    fitted: laws.FittedLaw
    metrics: ReductionMetrics

    def write(self, out_dir: str | Path) -> list[Path]:
        """Each table as `<name>.parquet`, everything as `reduction.json`; atomic renames."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in TABLES:
            path = out / f"{name}.parquet"
            atomic_write(path, getattr(self, name).to_parquet)
            written.append(path)
        document = {"metrics": self.metrics.to_dict(), "fitted": self.fitted.to_dict()} | {
            name: json.loads(getattr(self, name).to_json(orient="records")) for name in TABLES
        }
        path = out / JSON_NAME
        write_text_atomic(path, json.dumps(document, indent=2, allow_nan=False))
        written.append(path)
        return written

    @classmethod
    def read(cls, out_dir: str | Path) -> Reduction:
        out = Path(out_dir)
        if not (out / JSON_NAME).exists():
            raise FileNotFoundError(f"{out / JSON_NAME}: no reduction here; run the reducer first")
        document = json.loads((out / JSON_NAME).read_text())
        if "fitted" not in document:
            raise ValueError(
                f"{out / JSON_NAME}: written before reductions kept their fitted law; "
                "refit (`compscale reduce`, or `compscale report --refit`)"
            )
        tables = {name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES}
        return cls(
            **tables,
            fitted=laws.FittedLaw.from_dict(document["fitted"]),
            metrics=ReductionMetrics.from_dict(document["metrics"]),
        )

    def summary(self) -> str:
        """The tables as text (rich), with the warnings last."""
        from rich.console import Console
        from rich.table import Table

        buffer = StringIO()
        console = Console(
            file=buffer, width=120, force_terminal=False, color_system=None, markup=False
        )
        m = self.metrics
        console.print(
            f"{m.law} law over {m.cells} cells, {m.formats} formats; "
            f"Huber delta {m.delta} on log loss; {m.bootstrap} bootstrap resamples "
            "(cells resampled within each format), 95% percentile CIs"
        )
        for name, title in (
            ("law", "Law parameters"),
            ("rho", "Capacity rho per format"),
            ("capacity", "Capacity law rho = L tanh(F log_1/4 GMSE)^C"),
            ("capacity_rho", "Capacity law: fitted vs predicted rho (loo = law fitted without it)"),
            ("composition", "Composition: rho(A+B) vs rho(A) rho(B)"),
        ):
            frame = getattr(self, name)
            if frame.empty:
                continue
            if name == "composition":
                frame = frame[["format", "rho", "rho_product", "ratio", "ratio_ci_low"]].assign(
                    ratio_ci_high=frame["ratio_ci_high"], flagged=frame["flagged"]
                )
            table = Table(title=title)
            for column in frame.columns:
                table.add_column(str(column), justify="right")
            for row in frame.itertuples(index=False):
                table.add_row(*(_cell_text(value) for value in row))
            console.print(table)
        console.print(
            f"fit error over all cells: RMSE of log loss {_cell_text(m.rmse_log_loss)}, "
            f"mean |pred/obs - 1| {_cell_text(m.mean_abs_rel_error)}; seed-to-seed std of "
            f"log loss {_cell_text(m.seed_noise_log_loss)}"
        )
        console.print(
            f"held-out ({m.heldout_cells} cells, fit on the rest): RMSE of log loss "
            f"{_cell_text(m.heldout_rmse_log_loss)}, mean |pred/obs - 1| "
            f"{_cell_text(m.heldout_mean_abs_rel_error)}"
        )
        for text in m.warnings:
            console.print(f"warning: {text}")
        return buffer.getvalue()


def _cell_text(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _default_gmse(name: str) -> float:
    from compscale.gmse import gmse

    return gmse(name)


def _default_bits(name: str) -> float:
    from compscale.formats import parse

    return float(parse(name).bits_per_param)


def _heldout_split(results: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows: `fraction` of each format's cells, at random, >= 2 kept."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(results), dtype=bool)
    for _, rows in results.groupby("format").indices.items():
        count = min(round(fraction * len(rows)), len(rows) - 2)
        if count > 0:
            held[rng.choice(rows, size=count, replace=False)] = True
    return held


def _seed_noise(results: pd.DataFrame) -> float:
    """Pooled std of log loss between seeds of the same (N, D, format); NaN with one seed each."""
    log_loss = np.log(results["val_loss"])
    groups = log_loss.groupby([results["params"], results["tokens"], results["format"]])
    dof = int((groups.count() - 1).clip(lower=0).sum())
    if dof == 0:
        return math.nan
    return float(math.sqrt(float(groups.var(ddof=1).fillna(0) @ (groups.count() - 1)) / dof))


def reduce(
    results: pd.DataFrame,
    gmse_of: Callable[[str], float] | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    bootstrap: int = 200,
    *,
    bits_of: Callable[[str], float] | None = None,
    dense: str = laws.DENSE,
    delta: float = 1e-3,
    tolerance: float = 0.02,
) -> Reduction:
    """Fit the unified law to result rows (one per cell) and derive every table of the paper.

    Tables: `law` (A, alpha, B, beta, E with CIs), `rho` (per format: rho, CI, GMSE, effective
    bits, bits per parameter, cells), `capacity` (L, F, C with CIs refitted on every bootstrap
    draw of the rhos), `capacity_rho` (fitted rho vs the capacity law's, and the law's prediction
    with the format left out), `composition` (`capacity.composition_table`, pairs flagged when the
    ratio's CI misses 1 by more than `tolerance`), `heldout` (each held-out cell's observed and
    predicted loss from a fit to the other cells; `holdout_fraction` of each format, at random).
    `fitted`: the unified law with every format's GMSE and, when fitted, the capacity law's L, F, C,
    so it predicts formats that were never trained too.
    `gmse_of(format) -> GMSE` defaults to `compscale.gmse.gmse`; `bits_of(format) -> bits per
    parameter` to the format's storage cost.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in results.columns]
    if missing:
        raise ValueError(f"results: missing column(s) {', '.join(missing)}")
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction: must be in [0, 1), got {holdout_fraction}")
    results = results.reset_index(drop=True)
    results = results.assign(format=results["format"].astype(str))
    gmse_of = gmse_of or _default_gmse
    bits_of = bits_of or _default_bits
    fit = laws.fit(
        results["params"],
        results["tokens"],
        results["val_loss"],
        results["format"],
        law="unified",
        dense=dense,
        delta=delta,
        bootstrap=bootstrap,
        seed=seed,
    )
    warnings = list(fit.warnings)
    no_ci = (math.nan, math.nan)
    law_table = pd.DataFrame(
        [(name, value, *fit.ci.get(name, no_ci)) for name, value in fit.params.items()],
        columns=["parameter", "value", "ci_low", "ci_high"],
    )
    formats = list(fit.rho)
    gmse = {name: 0.0 if name == dense else float(gmse_of(name)) for name in formats}
    cells = results["format"].value_counts()
    rho_table = pd.DataFrame(
        {
            "format": formats,
            "rho": [fit.rho[name] for name in formats],
            "ci_low": [fit.ci.get(f"rho[{name}]", no_ci)[0] for name in formats],
            "ci_high": [fit.ci.get(f"rho[{name}]", no_ci)[1] for name in formats],
            "gmse": [gmse[name] for name in formats],
            "effective_bits": [float(capacity.effective_bits(gmse[name])) for name in formats],
            "bits_per_param": [float(bits_of(name)) for name in formats],
            "cells": [int(cells[name]) for name in formats],
        }
    )
    samples = {name: fit.bootstrap_samples[:, fit.names.index(f"rho[{name}]")] for name in formats}
    capacity_law, capacity_table, capacity_rho = _capacity_tables(
        rho_table[rho_table["format"] != dense], samples, bootstrap, seed, warnings
    )
    fitted = replace(fit.fitted, gmse=gmse)
    if capacity_law is not None:
        fitted = replace(fitted, L=capacity_law.L, F=capacity_law.F, C=capacity_law.C)
    composition = capacity.composition_table(
        fit.rho, samples if bootstrap else None, tolerance=tolerance
    )
    for row in composition[composition["flagged"]].itertuples():
        warnings.append(
            f"composition {row.format}: rho {row.rho:.4g} vs product {row.rho_product:.4g} "
            f"(ratio CI [{row.ratio_ci_low:.4g}, {row.ratio_ci_high:.4g}]) is not multiplicative"
        )
    heldout = _heldout(results, holdout_fraction, seed, dense, delta, warnings)
    heldout_rmse, heldout_error = _heldout_errors(heldout)
    metrics = ReductionMetrics(
        law=fit.law,
        cells=len(results),
        formats=len(formats),
        seeds=int(results["seed"].nunique()),
        bootstrap=bootstrap,
        delta=delta,
        objective=fit.objective,
        rmse_log_loss=fit.fit_error["rmse_log_loss"],
        mean_abs_rel_error=fit.fit_error["mean_abs_rel_error"],
        seed_noise_log_loss=_seed_noise(results),
        tolerance=tolerance,
        holdout_fraction=holdout_fraction,
        heldout_cells=len(heldout),
        heldout_rmse_log_loss=heldout_rmse,
        heldout_mean_abs_rel_error=heldout_error,
        warnings=tuple(warnings),
    )
    return Reduction(
        law=law_table,
        rho=rho_table,
        capacity=capacity_table,
        capacity_rho=capacity_rho,
        composition=composition,
        heldout=heldout,
        fitted=fitted,
        metrics=metrics,
    )


def _heldout_errors(heldout: pd.DataFrame) -> tuple[float, float]:
    """RMSE of log(predicted / observed) and mean |predicted / observed - 1|; NaN without cells."""
    if heldout.empty:
        return math.nan, math.nan
    ratio = heldout["predicted"].to_numpy(dtype=float) / heldout["observed"].to_numpy(dtype=float)
    return float(np.sqrt(np.mean(np.log(ratio) ** 2))), float(np.mean(np.abs(ratio - 1)))


def _capacity_tables(
    compressed: pd.DataFrame,
    samples: dict[str, np.ndarray],
    bootstrap: int,
    seed: int,
    warnings: list[str],
) -> tuple[capacity.CapacityFit | None, pd.DataFrame, pd.DataFrame]:
    """Capacity law over compressed formats with 0 < GMSE < 1; None, empty tables if too few."""
    usable = compressed[(compressed["gmse"] > 0) & (compressed["gmse"] < 1)]
    empty = (
        None,
        pd.DataFrame(columns=["parameter", "value", "ci_low", "ci_high"]),
        pd.DataFrame(columns=["format", "gmse", "effective_bits", "rho", "rho_law", "rho_loo"]),
    )
    if usable["gmse"].nunique() < 4:
        warnings.append(
            f"capacity law not fitted: {usable['gmse'].nunique()} compressed formats with distinct "
            "GMSE in (0, 1); it needs 4"
        )
        return empty
    names = list(usable["format"])
    draws = np.column_stack([samples[name] for name in names]) if bootstrap else None
    law = capacity.fit_capacity(
        usable["gmse"], usable["rho"], names, rho_samples=draws, bootstrap=bootstrap, seed=seed
    )
    table = pd.DataFrame(
        [(name, getattr(law, name), *law.ci.get(name, (math.nan, math.nan))) for name in "LFC"],
        columns=["parameter", "value", "ci_low", "ci_high"],
    )
    comparison = pd.DataFrame(
        {
            "format": names,
            "gmse": usable["gmse"].to_numpy(),
            "effective_bits": usable["effective_bits"].to_numpy(),
            "rho": usable["rho"].to_numpy(),
            "rho_law": law.predict(usable["gmse"].to_numpy()),
            "rho_loo": capacity.leave_one_out(usable["gmse"], usable["rho"]),
        }
    )
    return law, table, comparison


def _heldout(
    results: pd.DataFrame,
    fraction: float,
    seed: int,
    dense: str,
    delta: float,
    warnings: list[str],
) -> pd.DataFrame:
    """Held-out cells with the loss predicted by the law fitted to the other cells."""
    columns = ["params", "tokens", "format", "seed", "observed", "predicted", "rel_error"]
    held = _heldout_split(results, fraction, seed)
    if not held.any():
        return pd.DataFrame(columns=columns)
    train, test = results[~held], results[held]
    try:
        fit = laws.fit(
            train["params"],
            train["tokens"],
            train["val_loss"],
            train["format"],
            law="unified",
            dense=dense,
            delta=delta,
            bootstrap=0,
        )
    except ValueError as error:
        warnings.append(f"held-out check skipped: the cells left for fitting fail: {error}")
        return pd.DataFrame(columns=columns)
    predicted = fit.fitted.predict(test["params"], test["tokens"], test["format"])
    observed = test["val_loss"].to_numpy()
    return pd.DataFrame(
        {
            "params": test["params"].to_numpy(),
            "tokens": test["tokens"].to_numpy(),
            "format": test["format"].to_numpy(),
            "seed": test["seed"].to_numpy(),
            "observed": observed,
            "predicted": predicted,
            "rel_error": predicted / observed - 1,
        }
    )
