"""The reducer: synthetic sweeps of known capacities give back the paper's tables."""

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from helpers import GMSE, LAW, TRUTH, capacities, metrics, sweep

from compscale import capacity, laws
from compscale.laws import FitOptions
from compscale.reduce import TABLES, Reduction, ReductionMetrics, reduce


@pytest.fixture(scope="module")
def multiplicative():
    rho = capacities(1.0)
    results = sweep(rho)
    gmse = GMSE | {"sp50+int4": 0.0799}
    return (
        rho,
        results,
        reduce(results, FitOptions(bootstrap=50), gmse_of=gmse.get, bits_of=lambda name: 4.0),
    )


def test_capacities_of_every_format_come_back_with_cis(multiplicative):
    rho, _, reduction = multiplicative
    table = reduction.rho.set_index("format")
    for name, value in rho.items():
        assert table.loc[name, "rho"] == pytest.approx(value, rel=0.03), name
        assert table.loc[name, "ci_low"] <= table.loc[name, "rho"] <= table.loc[name, "ci_high"]
    assert table.loc["dense", "gmse"] == 0.0 and table.loc["dense", "effective_bits"] == np.inf
    assert table.loc["int4", "cells"] == 30
    law = reduction.law.set_index("parameter")["value"]
    assert law["alpha"] == pytest.approx(TRUTH["alpha"], rel=0.05)


def test_multiplicative_composition_reports_near_zero_error(multiplicative):
    _, _, reduction = multiplicative
    row = reduction.composition.set_index("format").loc["sp50+int4"]
    assert abs(row["rel_error"]) < 0.03
    assert row["ratio_ci_low"] < 1 < row["ratio_ci_high"]
    assert not row["flagged"]


def test_capacity_law_is_fitted_and_predicts_left_out_formats(multiplicative):
    _, _, reduction = multiplicative
    law = reduction.capacity.set_index("parameter")
    assert law.loc["L", "two_stage"] == pytest.approx(LAW["cap"], rel=0.05)
    assert law.loc["L", "joint"] == pytest.approx(LAW["cap"], rel=0.05)
    compare = reduction.capacity_rho.set_index("format")
    assert set(compare.index) == {"int2", "int3", "int4", "int8", "sp50", "sp50+int4"}
    assert compare.loc["int3", "rho_loo"] == pytest.approx(compare.loc["int3", "rho"], rel=0.05)


def test_heldout_cells_are_predicted_within_the_noise(multiplicative):
    _, results, reduction = multiplicative
    assert reduction.metrics.heldout_cells == len(reduction.heldout) > 0.15 * len(results)
    assert reduction.metrics.heldout_mean_abs_rel_error < 0.01
    assert reduction.metrics.seed_noise_log_loss == pytest.approx(0.005, rel=0.3)


def test_fitted_law_is_the_law_and_rho_tables_plus_the_capacity_law(multiplicative):
    _, _, reduction = multiplicative
    fitted = reduction.fitted
    law = reduction.law.set_index("parameter")["value"]
    for name in laws.BASE_NAMES:
        assert law[name] == getattr(fitted, name), name
    assert fitted.rho == dict(zip(reduction.rho["format"], reduction.rho["rho"], strict=True))
    capacity_law = reduction.capacity.set_index("parameter")["two_stage"]
    assert [capacity_law[name] for name in "LFC"] == fitted.capacity["all"]
    assert fitted.parts["int4"] == [["quantization", GMSE["int4"]]]
    untrained = replace(fitted, parts=fitted.parts | {"int5": [["quantization", 0.0029]]})
    expected = float(capacity.capacity(0.0029, *fitted.capacity["all"]))
    assert untrained.rho_of("int5") == pytest.approx(expected)


def test_written_reduction_reads_back_identically(multiplicative, tmp_path):
    _, _, reduction = multiplicative
    written = reduction.write(tmp_path / "reduce")
    assert {path.name for path in written} == {f"{name}.parquet" for name in TABLES} | {
        "reduction.json"
    }
    assert not list((tmp_path / "reduce").glob(".*"))
    back = Reduction.read(tmp_path / "reduce")
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(back, name), getattr(reduction, name))
    assert back.metrics == reduction.metrics
    assert back.fitted == reduction.fitted
    cells = reduction.heldout
    np.testing.assert_array_equal(
        back.fitted.predict(cells["params"], cells["tokens"], cells["format"]),
        reduction.fitted.predict(cells["params"], cells["tokens"], cells["format"]),
    )
    text = back.summary()
    assert "Capacity rho per format" in text and "sp50+int4" in text and "held-out" in text


def test_non_multiplicative_composition_is_flagged():
    rho = capacities(0.8)
    gmse = GMSE | {"sp50+int4": 0.0799}
    reduction = reduce(
        sweep(rho, seeds=(0,)), FitOptions(bootstrap=30), gmse_of=gmse.get, bits_of=len
    )
    row = reduction.composition.set_index("format").loc["sp50+int4"]
    assert row["rel_error"] == pytest.approx(-0.2, abs=0.05)
    assert row["flagged"]
    assert any("sp50+int4" in text for text in reduction.metrics.warnings)


def test_default_gmse_comes_from_the_format_library(tmp_path):
    names = ["dense", "int2", "int3", "int4", "int8", "sp50"]
    from compscale.gmse import gmse

    rho = {
        name: 1.0 if name == "dense" else float(capacity.capacity(gmse(name), **LAW))
        for name in names
    }
    reduction = reduce(sweep(rho, seeds=(0,)), FitOptions(bootstrap=0, holdout_fraction=0))
    table = reduction.rho.set_index("format")
    assert math.isnan(reduction.metrics.seed_noise_log_loss)  # one seed per cell
    reduction.write(tmp_path)
    assert '"heldout_rmse_log_loss": null' in (tmp_path / "reduction.json").read_text()
    assert math.isnan(Reduction.read(tmp_path).metrics.heldout_rmse_log_loss)
    assert table.loc["int4", "bits_per_param"] == pytest.approx(4.0, abs=0.01)
    assert table.loc["int4", "gmse"] == pytest.approx(gmse("int4"))
    assert reduction.metrics.heldout_cells == 0


def test_missing_columns_and_missing_dense_fail_clearly():
    results = sweep({"dense": 1.0, "int4": 0.8}, seeds=(0,))
    with pytest.raises(ValueError, match="results: missing column"):
        reduce(results.drop(columns=["val_loss"]), gmse_of=GMSE.get)
    with pytest.raises(ValueError, match="no cells of the dense reference"):
        reduce(results[results["format"] != "dense"], FitOptions(bootstrap=0), gmse_of=GMSE.get)


def test_metrics_survive_json_with_nan_as_null():
    text = json.dumps(metrics(cells=3, warnings=("a",)).to_dict(), allow_nan=False)
    back = ReductionMetrics.from_dict(json.loads(text))
    assert back.cells == 3 and back.warnings == ("a",) and math.isnan(back.objective)


def test_summary_prints_bracketed_names_verbatim():
    """Warnings name parameters like `rho[int4]`; the text tables must not eat them as markup."""
    empty = pd.DataFrame()
    reduction = Reduction(
        law=empty, rho=empty, capacity=empty, capacity_rho=empty, bound=empty, composition=empty,
        heldout=empty, fitted=laws.FittedLaw("unified", 1.0, 0.3, 1.0, 0.3, 1.0),
        metrics=metrics(warnings=("rho[sp75+int2] is weakly identified",)),
    )  # fmt: skip
    assert "warning: rho[sp75+int2] is weakly identified" in reduction.summary()


def test_a_reduction_written_before_the_fitted_law_asks_for_a_refit(multiplicative, tmp_path):
    _, _, reduction = multiplicative
    reduction.write(tmp_path)
    document = json.loads((tmp_path / "reduction.json").read_text())
    del document["fitted"]
    (tmp_path / "reduction.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="refit"):
        Reduction.read(tmp_path)


@pytest.mark.slow
def test_select_adds_every_law_forms_held_out_error_and_it_reads_back(tmp_path):
    results = sweep({"dense": 1.0, "int4": 0.8, "int2": 0.4}, seeds=(0,))
    reduction = reduce(
        results, FitOptions(bootstrap=0, select=True), gmse_of=GMSE.get, bits_of=lambda _: 4.0
    )
    selection = reduction.selection.set_index("law")
    assert set(selection.index) == {"unified", "unified-effd", "unified-gamma", "unified-gmse"}
    fitted = selection.loc[["unified", "unified-effd", "unified-gamma"]]
    assert (fitted["folds"] == 5).all() and (fitted["cells"] == len(results)).all()
    assert selection.loc["unified", "rmse_log_loss"] < 0.02  # the law the cells came from
    assert "leave-one-size-out" in reduction.summary()
    reduction.write(tmp_path)
    pd.testing.assert_frame_equal(Reduction.read(tmp_path).selection, reduction.selection)
    assert reduce(results, FitOptions(bootstrap=0), gmse_of=GMSE.get).selection.empty
