"""Figures: every paper figure is written as a real PNG; composition only when a pair was fitted."""

from dataclasses import replace

import matplotlib.image
import numpy as np
import pytest
from test_reduce import GMSE, capacities, sweep

from compscale.plots import write_figures
from compscale.reduce import reduce


@pytest.fixture(scope="module")
def results():
    return sweep(capacities(1.0), seeds=(0,))


def test_all_four_figures_are_written_as_png(results, tmp_path):
    gmse = GMSE | {"sp50+int4": 0.0799}
    reduction = reduce(results, gmse_of=gmse.get, bits_of=len, bootstrap=20)
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
    reduction = reduce(plain, gmse_of=GMSE.get, bits_of=len, bootstrap=0, holdout_fraction=0)
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
    reduction = reduce(results, gmse_of=gmse.get, bits_of=len, bootstrap=0, holdout_fraction=0)
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
