"""Paper figures from a reduction: loss vs N per format with the fitted law, rho vs effective bits
with the tanh(GMSE) law, predicted vs observed loss, and composition of capacities.

Every curve and predicted point comes from the reduction's fitted law (`Reduction.fitted`), the
same object that predicts held-out cells. PNG through matplotlib's `Figure` API (rendered by Agg,
never pyplot), so no display is needed and no global figure state leaks between calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from compscale.files import atomic_write
from compscale.reduce import Reduction

MAX_CURVES = 8


def _label_formats(axis, names: pd.Series, x: pd.Series, y: pd.Series) -> None:
    """Name each point by its format, just above and right of it."""
    for name, x_value, y_value in zip(names, x, y, strict=True):
        axis.annotate(
            name, (x_value, y_value), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=130))
    return path


def _curve_groups(results: pd.DataFrame) -> tuple[str, pd.Series] | None:
    """How to draw law curves: at fixed D, or at fixed tokens per parameter (grids that scale D
    with N); None when either has more than MAX_CURVES values."""
    if results["tokens"].nunique() <= MAX_CURVES:
        return "D", results["tokens"].astype(float)
    ratio = (results["tokens"] / results["params"]).round(decimals=6)
    if ratio.nunique() <= MAX_CURVES:
        return "D/N", ratio
    return None


def _loss_vs_params(reduction: Reduction, results: pd.DataFrame, path: Path) -> Path:
    from matplotlib.figure import Figure

    fitted = reduction.fitted
    formats = list(fitted.rho)
    columns = min(4, len(formats))
    rows = -(-len(formats) // columns)
    figure = Figure(figsize=(3.6 * columns, 3.0 * rows))
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel()
    groups = _curve_groups(results)
    grid = np.geomspace(results["params"].min(), results["params"].max(), 100)
    for axis, name in zip(axes, formats, strict=False):
        mask = results["format"] == name
        cells = results[mask]
        if groups is None:
            axis.scatter(cells["params"], cells["val_loss"], s=12, label="observed")
            predicted = fitted.predict(cells["params"], cells["tokens"], cells["format"])
            axis.scatter(cells["params"], predicted, marker="x", s=14, color="k", label="law")
        else:
            label, key = groups
            values = np.sort(key.unique())
            for colour, value in zip(_colours(len(values)), values, strict=True):
                group = cells[key[mask] == value]
                axis.scatter(group["params"], group["val_loss"], s=12, color=colour)
                tokens = np.full_like(grid, value) if label == "D" else grid * value
                loss = fitted.predict(grid, tokens, [name] * len(grid))
                axis.plot(grid, loss, color=colour, lw=1, label=f"{label}={value:.3g}")
        axis.set_xscale("log")
        axis.set_title(f"{name} (rho={fitted.rho_of(name):.3g})", fontsize=9)
        axis.set_xlabel("N (non-embedding parameters)")
        axis.set_ylabel("validation loss (nats)")
    for axis in axes[len(formats) :]:
        axis.set_visible(False)
    axes[0].legend(fontsize=7)
    figure.suptitle("Loss vs model size per format; lines: fitted unified law")
    return _save(figure, path)


def _colours(count: int) -> list:
    from matplotlib import colormaps

    return [colormaps["viridis"](value) for value in np.linspace(0, 0.9, max(count, 1))][:count]


def _rho_vs_gmse(reduction: Reduction, path: Path) -> Path:
    """Fitted rho at each format's effective bits, the capacity law, and the compression lower
    bound: the law at each format's bits per parameter (hollow), the best a format of that
    storage could do, joined to the format by a dotted line."""
    from matplotlib.figure import Figure

    from compscale.capacity import log_capacity

    figure = Figure(figsize=(6.4, 4.4))
    axis = figure.subplots()
    table = reduction.rho[(reduction.rho["gmse"] > 0) & reduction.rho["rho"].notna()]
    error = [table["rho"] - table["ci_low"], table["ci_high"] - table["rho"]]
    error = None if table["ci_low"].isna().all() else np.abs(np.array(error, dtype=float))
    axis.errorbar(
        table["effective_bits"], table["rho"], yerr=error, fmt="o", capsize=3, label="fitted rho"
    )
    _label_formats(axis, table["format"], table["effective_bits"], table["rho"])
    law = reduction.fitted.capacity_law
    if law is not None:
        top = max(table["effective_bits"].max(), table["bits_per_param"].max(), 1.0) * 1.05
        bits = np.linspace(0.05, top, 200)
        for colour, (group, (cap, slope, power)) in enumerate(law.params.items()):
            axis.plot(
                bits,
                np.exp(log_capacity(bits, cap, slope, power)),
                "-",
                color=f"C{colour + 1}",
                lw=1,
                label=f"{group}: L={cap:.3g}, F={slope:.3g}, C={power:.3g}",
            )
        bound = reduction.bound.set_index("format")
        shown = table[table["format"].isin(bound.index)]
        x = shown["bits_per_param"].to_numpy(dtype=float)
        y = bound.loc[shown["format"], "rho_bound"].to_numpy(dtype=float)
        axis.scatter(x, y, facecolors="none", edgecolors="k", s=30, label="bound at bits/param")
        for x0, y0, x1, y1 in zip(shown["effective_bits"], shown["rho"], x, y, strict=True):
            axis.plot([x0, x1], [y0, y1], "k:", lw=0.7)
        axis.legend(fontsize=7)
    axis.set_xlabel("effective bits b = log_1/4(GMSE)  (bound: bits per parameter)")
    axis.set_ylabel("capacity rho (95% CI)")
    axis.set_title("Capacity vs Gaussian MSE, and the lower bound")
    return _save(figure, path)


def _predicted_vs_observed(reduction: Reduction, results: pd.DataFrame, path: Path) -> Path:
    from matplotlib.figure import Figure

    predicted = reduction.fitted.predict(results["params"], results["tokens"], results["format"])
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    axis.scatter(results["val_loss"], predicted, s=10, alpha=0.6, label="fit on all cells")
    if not reduction.heldout.empty:
        held = reduction.heldout
        axis.scatter(
            held["observed"],
            held["predicted"],
            s=18,
            marker="x",
            color="C3",
            label="held out (fit on the rest)",
        )
    low = min(results["val_loss"].min(), np.min(predicted))
    high = max(results["val_loss"].max(), np.max(predicted))
    axis.plot([low, high], [low, high], "k--", lw=1)
    axis.set_xlabel("observed loss (nats)")
    axis.set_ylabel("predicted loss (nats)")
    axis.set_title("Unified law: predicted vs observed")
    axis.legend(fontsize=8)
    return _save(figure, path)


def _composition(reduction: Reduction, path: Path) -> Path:
    from matplotlib.figure import Figure

    table = reduction.composition
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    error = None
    if not table["ratio_ci_low"].isna().all():
        low = table["ratio_ci_low"] * table["rho_product"]
        high = table["ratio_ci_high"] * table["rho_product"]
        error = np.abs(np.array([table["rho"] - low, high - table["rho"]], dtype=float))
    colours = ["C3" if flagged else "C0" for flagged in table["flagged"]]
    axis.errorbar(table["rho_product"], table["rho"], yerr=error, fmt="none", ecolor="grey")
    axis.scatter(table["rho_product"], table["rho"], c=colours, zorder=3)
    _label_formats(axis, table["format"], table["rho_product"], table["rho"])
    axis.plot([0, 1], [0, 1], "k--", lw=1)
    axis.set_xlabel("rho(A) x rho(B)")
    axis.set_ylabel("rho(A+B) fitted (95% CI)")
    axis.set_title("Composition of capacities (red: flagged)")
    return _save(figure, path)


def write_figures(reduction: Reduction, results: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write the figures as PNG into `out_dir`; the composition figure only if a pair was fitted."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = results.assign(format=results["format"].astype(str))
    paths = [
        _loss_vs_params(reduction, results, out / "loss_vs_params.png"),
        _rho_vs_gmse(reduction, out / "rho_vs_gmse.png"),
        _predicted_vs_observed(reduction, results, out / "predicted_vs_observed.png"),
    ]
    if not reduction.composition.empty:
        paths.append(_composition(reduction, out / "composition.png"))
    return paths
