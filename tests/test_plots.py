"""Figures: every paper figure is written as a real PNG; composition only when a pair was fitted."""

import matplotlib.image
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
