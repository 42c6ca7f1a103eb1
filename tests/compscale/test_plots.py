"""Figures: every paper figure is written as a real PNG; composition only when a pair was fitted."""

from dataclasses import replace

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from helpers import GMSE, capacities, sweep

from compscale.laws import FitOptions
from compscale.plots import write_figures
from compscale.reduce import reduce


@pytest.fixture(scope="module")
def results():
    return sweep(capacities(1.0), seeds=(0,))


def test_all_four_figures_are_written_as_png(results, tmp_path):
    gmse = GMSE | {"sp50+int4": 0.0799}
    reduction = reduce(results, FitOptions(bootstrap=20), gmse_of=gmse.get, bits_of=len)
    paths = write_figures(reduction, results, tmp_path / "figures")
    names = [path.name for path in paths]
    assert names == [
        "loss_vs_params.png",
        "rho_vs_gmse.png",
        "predicted_vs_observed.png",
        "composition.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 300 and width > 300
    assert not list((tmp_path / "figures").glob(".*"))


def test_without_composite_formats_there_is_no_composition_figure(results, tmp_path):
    plain = results[results["format"] != "sp50+int4"]
    reduction = reduce(
        plain, FitOptions(bootstrap=0, holdout_fraction=0), gmse_of=GMSE.get, bits_of=len
    )
    paths = write_figures(reduction, plain, tmp_path)
    assert [path.name for path in paths] == [
        "loss_vs_params.png",
        "rho_vs_gmse.png",
        "predicted_vs_observed.png",
    ]


def test_law_curves_are_the_fitted_laws_predictions(results, tmp_path, monkeypatch):
    """Curves come from `reduction.fitted`, not from the law and rho tables (emptied here)."""
    from compscale import plots

    gmse = GMSE | {"sp50+int4": 0.0799}
    reduction = reduce(
        results, FitOptions(bootstrap=0, holdout_fraction=0), gmse_of=gmse.get, bits_of=len
    )
    reduction = replace(reduction, law=reduction.law.iloc[:0], rho=reduction.rho.iloc[:0])
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.setdefault(path.stem, figure))
    plots._loss_vs_params(reduction, results, tmp_path / "loss_vs_params.png")
    axes = [axis for axis in figures["loss_vs_params"].axes if axis.get_visible()]
    assert [axis.get_title().split()[0] for axis in axes] == list(reduction.fitted.rho)
    for axis, name in zip(axes, reduction.fitted.rho, strict=True):
        lines = axis.get_lines()
        assert [line.get_label() for line in lines] == ["D/N=10", "D/N=30", "D/N=100"]
        for line in lines:
            params, loss = line.get_xydata().T
            tokens = params * float(line.get_label().removeprefix("D/N="))
            expected = reduction.fitted.predict(params, tokens, [name] * len(params))
            np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_training_curves_are_one_panel_per_format_on_log_axes(tmp_path, monkeypatch):
    from compscale import plots

    steps = np.arange(1, 41)
    losses = pd.concat(
        pd.DataFrame(
            {
                "cell_id": f"{fmt}-{n}", "format": fmt, "params": n, "tokens": steps * 1000,
                "train_loss": 5.0 / steps**0.3, "val_loss": np.where(steps % 10 == 0, 4.0, np.nan),
            }
        )
        for fmt in ("dense", "int4")
        for n in (50_000, 200_000)
    )  # fmt: skip
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.setdefault(path.stem, figure))
    plots._training_curves(losses, tmp_path / "training_curves.png")
    axes = [axis for axis in figures["training_curves"].axes if axis.get_visible()]
    assert [axis.get_title() for axis in axes] == ["dense", "int4"]
    for axis in axes:
        assert axis.get_xscale() == axis.get_yscale() == "log"
        assert len(axis.get_lines()) == 4  # two cells, training and validation each
        labels = [tick.get_text() for tick in axis.get_xticklabels()]
        assert 1 <= len(labels) <= plots.MAX_TICKS
    legend = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert legend[:2] == ["N=50K", "N=200K"]


def test_loss_vs_n_is_drawn_per_tokens_per_parameter_when_d_scales_with_n(results):
    """Two budgets per size but tied to N: few D values, yet the lines are per D/N."""
    from compscale.plots import _curve_groups

    tied = results[results["tokens"] / results["params"] <= 30]
    tied = tied[tied["params"] <= 3e6]  # 2 sizes x 2 ratios: 4 distinct D, 2 ratios
    label, key = _curve_groups(tied)
    assert label == "D/N" and sorted(key.unique()) == [10, 30]
    fixed = tied.assign(tokens=10**7)  # one D for every size: lines at fixed D
    assert _curve_groups(fixed)[0] == "D"


def test_composition_error_bars_stay_in_zero_one(results, tmp_path, monkeypatch):
    from compscale import plots

    gmse = GMSE | {"sp50+int4": 0.0799}
    reduction = reduce(
        results, FitOptions(bootstrap=20, holdout_fraction=0), gmse_of=gmse.get, bits_of=len
    )
    wide = reduction.rho.assign(ci_low=-0.5, ci_high=1.7)
    reduction = replace(reduction, rho=wide)
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.setdefault(path.stem, figure))
    plots._composition(reduction, tmp_path / "composition.png")
    (axis,) = figures["composition"].axes
    assert "clipped to [0, 1]" in axis.get_ylabel() and r"\rho" in axis.get_ylabel()
    from matplotlib.collections import LineCollection

    (bars,) = [c for c in axis.collections if isinstance(c, LineCollection)]
    ends = np.concatenate([segment[:, 1] for segment in bars.get_segments()])
    assert ends.min() >= 0 and ends.max() <= 1
