"""Paper figures from a reduction: loss vs N per format with the fitted law, rho vs effective bits
with the tanh(GMSE) law, predicted vs observed loss, and composition of capacities; and from the
loss rows, every cell's training curve. Without a reduction (the law could not be fitted) only
the observed points and the training curves are drawn.

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
MAX_TICKS = 6
# Mantissas of tick candidates, sparsest ladder first: the densest ladder that gives at most
# MAX_TICKS ticks in the range is used, so log axes over a narrow range still get labels.
_LADDERS = (
    (1.0,),
    (1.0, 3.0),
    (1.0, 2.0, 5.0),
    (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
    (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0),
)


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


def _short(value: float) -> str:
    """A tick label in at most 4 characters where possible: 0.5, 2, 150, 30K, 1.5M, 2B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _log_ticks(low: float, high: float) -> list[float]:
    """Tick values for a log axis over [low, high]: the densest ladder with <= MAX_TICKS ticks."""
    decades = np.arange(np.floor(np.log10(low)), np.ceil(np.log10(high)) + 1)
    best: list[float] = []
    for ladder in _LADDERS:
        ticks = [m * 10**d for d in decades for m in ladder]
        ticks = [float(t) for t in ticks if low <= t * (1 + 1e-9) and t <= high * (1 + 1e-9)]
        if len(ticks) > MAX_TICKS:
            break
        best = ticks
    return best or [float(np.sqrt(low * high))]


def _readable_log(axis, which: str, values) -> None:
    """Log scale on one axis with a few short labels and no minor labels, so none overlap."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    target = axis.xaxis if which == "x" else axis.yaxis
    (axis.set_xscale if which == "x" else axis.set_yscale)("log")
    if values.size:
        target.set_major_locator(FixedLocator(_log_ticks(values.min(), values.max())))
    target.set_major_formatter(FuncFormatter(lambda value, _: _short(value)))
    target.set_minor_formatter(NullFormatter())


def _curve_groups(results: pd.DataFrame) -> tuple[str, pd.Series] | None:
    """How to draw law curves: at fixed tokens per parameter when the grid scales D with N (fewer
    ratios than budgets), else at fixed D; None when the grouping has over MAX_CURVES values."""
    tokens = results["tokens"].astype(float)
    ratio = (results["tokens"] / results["params"]).round(decimals=6)
    options = [("D/N", ratio), ("D", tokens)]
    if tokens.nunique() <= ratio.nunique():
        options.reverse()
    for label, key in options:
        if key.nunique() <= MAX_CURVES:
            return label, key
    return None


def _grid(count: int, width: float = 3.6, height: float = 3.0):
    """A figure of `count` panels, at most 4 a row, sharing axes; unused panels hidden."""
    from matplotlib.figure import Figure

    columns = min(4, max(count, 1))
    rows = -(-max(count, 1) // columns)
    figure = Figure(figsize=(width * columns, height * rows))
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel()
    for axis in axes[count:]:
        axis.set_visible(False)
    return figure, axes[:count]


def _loss_vs_params(reduction: Reduction | None, results: pd.DataFrame, path: Path) -> Path:
    """Observed loss against N per format, one colour per D (or D/N) group, with the fitted law's
    curve for each group when there is a fitted law."""
    fitted = reduction.fitted if reduction is not None else None
    formats = list(fitted.rho) if fitted else list(dict.fromkeys(results["format"]))
    figure, axes = _grid(len(formats))
    groups = _curve_groups(results)
    grid = np.geomspace(results["params"].min(), results["params"].max(), 100)
    for axis, name in zip(axes, formats, strict=True):
        mask = results["format"] == name
        cells = results[mask]
        if groups is None:
            axis.scatter(cells["params"], cells["val_loss"], s=12, label="observed")
            if fitted:
                predicted = fitted.predict(cells["params"], cells["tokens"], cells["format"])
                axis.scatter(cells["params"], predicted, marker="x", s=14, color="k", label="law")
        else:
            label, key = groups
            values = np.sort(key.unique())
            for colour, value in zip(_colours(len(values)), values, strict=True):
                group = cells[key[mask] == value]
                text = f"{label}={value:.3g}" if label == "D/N" else f"D={_short(value)}"
                axis.scatter(
                    group["params"], group["val_loss"], s=12, color=colour,
                    label=None if fitted else text,
                )  # fmt: skip
                if fitted:
                    tokens = np.full_like(grid, value) if label == "D" else grid * value
                    loss = fitted.predict(grid, tokens, [name] * len(grid))
                    axis.plot(grid, loss, color=colour, lw=1, label=text)
        _readable_log(axis, "x", results["params"])
        title = f"{name} (rho={fitted.rho_of(name):.3g})" if fitted else name
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("N (non-embedding parameters)")
        axis.set_ylabel("validation loss (nats)")
    axes[0].legend(fontsize=7)
    figure.suptitle(
        "Loss vs model size per format; lines: fitted unified law"
        if fitted
        else "Loss vs model size per format (no law fitted)"
    )
    return _save(figure, path)


def _training_curves(losses: pd.DataFrame, path: Path, order: list[str] | None = None) -> Path:
    """Every cell's validation (points and line) and training loss (faint, a running mean over
    1/25 of its steps) against tokens seen,
    one panel per format, one colour per model size, both axes logarithmic."""
    present = set(losses["format"])
    formats = [name for name in order or [] if name in present]
    formats += [name for name in dict.fromkeys(losses["format"]) if name not in formats]
    figure, axes = _grid(len(formats))
    sizes = np.sort(losses["params"].unique())
    colour_of = dict(zip(sizes, _colours(len(sizes)), strict=True))
    for axis, name in zip(axes, formats, strict=True):
        for _, rows in losses[losses["format"] == name].groupby("cell_id", sort=False):
            rows = rows.sort_values("tokens")
            colour = colour_of[rows["params"].iloc[0]]
            window = max(1, len(rows) // 25)  # per-step loss is noisy: a running mean
            smooth = rows["train_loss"].rolling(window, min_periods=1).mean()
            axis.plot(rows["tokens"], smooth, color=colour, lw=0.8, alpha=0.45)
            val = rows[rows["val_loss"].notna()]
            axis.plot(val["tokens"], val["val_loss"], "o-", color=colour, ms=2.5, lw=1.2)
        _readable_log(axis, "x", losses["tokens"])
        _readable_log(axis, "y", losses[["train_loss", "val_loss"]].to_numpy().ravel())
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("tokens seen (D)")
        axis.set_ylabel("loss (nats)")
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colour_of[size], marker="o", ms=3, label=f"N={_short(size)}")
        for size in sizes
    ] + [Line2D([], [], color="grey", lw=0.6, alpha=0.5, label="training loss (running mean)")]
    axes[0].legend(handles=handles, fontsize=7)
    figure.suptitle("Training curves: validation loss (points), training loss (faint)")
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
    """rho(A+B) fitted against the product rho(A) rho(B), with the diagonal where they agree.
    Error bars are rho(A+B)'s own 95% interval, clipped to [0, 1] (and the caption says so);
    the ratio's interval is in the composition table."""
    from matplotlib.figure import Figure

    table = reduction.composition
    own = reduction.rho.set_index("format").reindex(table["format"])
    low = own["ci_low"].to_numpy(dtype=float)
    high = own["ci_high"].to_numpy(dtype=float)
    rho = table["rho"].to_numpy(dtype=float)
    clipped = bool(np.any(low < 0) or np.any(high > 1))
    low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
    error = np.abs(np.array([rho - low, high - rho]))
    error = None if np.isnan(error).all() else np.nan_to_num(error)
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    colours = ["C3" if flagged else "C0" for flagged in table["flagged"]]
    axis.errorbar(table["rho_product"], rho, yerr=error, fmt="none", ecolor="grey", capsize=3)
    axis.scatter(table["rho_product"], rho, c=colours, zorder=3)
    _label_formats(axis, table["format"], table["rho_product"], table["rho"])
    axis.plot([0, 1], [0, 1], "k--", lw=1, label=r"$\rho(A{+}B) = \rho(A)\,\rho(B)$")
    axis.set_xlim(0, 1.05)
    axis.set_ylim(0, 1.05)
    axis.set_xlabel(r"$\rho(A)\,\rho(B)$: product of the parts' fitted capacities")
    interval = "95% CI, clipped to [0, 1]" if clipped else "95% CI"
    axis.set_ylabel(rf"$\rho(A{{+}}B)$ fitted ({interval})")
    axis.set_title("Composition of capacities (red: flagged)")
    axis.legend(fontsize=7, loc="upper left")
    return _save(figure, path)


def write_figures(
    reduction: Reduction | None,
    results: pd.DataFrame,
    out_dir: str | Path,
    losses: pd.DataFrame | None = None,
) -> list[Path]:
    """Write the figures as PNG into `out_dir`: training curves when `losses` has rows, loss vs
    N, and with a reduction the law's figures (composition only if a pair was fitted)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = results.assign(format=results["format"].astype(str))
    paths = []
    if losses is not None and not losses.empty:
        losses = losses.assign(format=losses["format"].astype(str))
        order = list(dict.fromkeys(results["format"]))  # the sweep's order, as in loss vs N
        paths.append(_training_curves(losses, out / "training_curves.png", order))
    paths.append(_loss_vs_params(reduction, results, out / "loss_vs_params.png"))
    if reduction is None:
        return paths
    paths += [
        _rho_vs_gmse(reduction, out / "rho_vs_gmse.png"),
        _predicted_vs_observed(reduction, results, out / "predicted_vs_observed.png"),
    ]
    if not reduction.composition.empty:
        paths.append(_composition(reduction, out / "composition.png"))
    return paths
