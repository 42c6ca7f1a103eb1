"""Law fits: synthetic truth comes back, the Chinchilla replication holds, bad input fails."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from compscale import laws

CHINCHILLA_CSV = Path(__file__).resolve().parents[1] / "data" / "chinchilla_svg_extracted.csv"
TRUTH = {"A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28, "E": 1.69}
NO_BOOTSTRAP = laws.FitOptions(bootstrap=0)
RHO = {"dense": 1.0, "int8": 0.97, "int4": 0.8, "int3": 0.62, "int2": 0.35, "sp50": 0.7}


def synthetic_cells(rho: dict[str, float], seed: int, noise: float = 0.005) -> pd.DataFrame:
    """A grid of N x tokens-per-parameter per format, loss from TRUTH with log-normal noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, capacity in rho.items():
        for params in (1e6, 3e6, 1e7, 3e7, 1e8):
            for tokens_per_param in (10, 20, 50, 100):
                tokens = params * tokens_per_param
                loss = (
                    TRUTH["A"] * (params * capacity) ** -TRUTH["alpha"]
                    + TRUTH["B"] * tokens ** -TRUTH["beta"]
                    + TRUTH["E"]
                )
                rows.append((params, tokens, name, loss * math.exp(rng.normal(0, noise))))
    return pd.DataFrame(rows, columns=["params", "tokens", "format", "loss"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unified_fit_recovers_every_rho_within_3_percent_and_exponents_within_5(seed):
    cells = synthetic_cells(RHO, seed)
    result = laws.fit(
        cells.params, cells.tokens, cells.loss, cells.format, law="unified", options=NO_BOOTSTRAP
    )
    for name, capacity in RHO.items():
        assert result.rho[name] == pytest.approx(capacity, rel=0.03), name
    assert result.params["alpha"] == pytest.approx(TRUTH["alpha"], rel=0.05)
    assert result.params["beta"] == pytest.approx(TRUTH["beta"], rel=0.05)
    assert result.rho["dense"] == 1.0


def chinchilla_cells() -> pd.DataFrame:
    table = pd.read_csv(CHINCHILLA_CSV)
    table = table.sort_values("loss").iloc[:-5]
    params = table["Model Size"].to_numpy()
    return pd.DataFrame(
        {"params": params, "tokens": table["Training FLOP"] / (6 * params), "loss": table["loss"]}
    )


def test_chinchilla_fit_reproduces_besiroglu_replication_with_bootstrap_cis():
    cells = chinchilla_cells()
    result = laws.fit(cells.params, cells.tokens, cells.loss, options=laws.FitOptions(bootstrap=50))
    published = {"A": 482.0, "B": 2085.0, "E": 1.817, "alpha": 0.348, "beta": 0.366}
    tolerance = {"A": 0.10, "B": 0.10, "E": 0.005, "alpha": 0.02, "beta": 0.02}
    for name, value in published.items():
        assert result.params[name] == pytest.approx(value, rel=tolerance[name]), name
        low, high = result.ci[name]
        assert low < result.params[name] < high, name
    assert result.bootstrap_samples.shape == (50, 5)
    assert result.rho == {}
    predicted = result.predict(cells.params, cells.tokens)
    np.testing.assert_allclose(predicted, cells.loss * np.exp(result.residuals), rtol=1e-12)
    assert 0 < result.fit_error["rmse_log_loss"] < 0.02
    assert "A" in result.summary() and "RMSE of log loss" in result.summary()


def test_lbfgs_and_trust_region_polish_agree_on_chinchilla_minimum():
    cells = chinchilla_cells()
    options = laws.FitOptions(bootstrap=0, top_starts=2)
    trf = laws.fit(cells.params, cells.tokens, cells.loss, options=options)
    lbfgs_options = replace(options, method="lbfgs")
    lbfgs = laws.fit(cells.params, cells.tokens, cells.loss, options=lbfgs_options)
    assert lbfgs.objective >= trf.objective * (1 - 1e-6)
    assert lbfgs.params["E"] == pytest.approx(trf.params["E"], rel=0.01)


@pytest.mark.parametrize("law", ["unified", "unified-gmse"])
def test_analytic_jacobian_matches_finite_differences(law):
    cells = synthetic_cells(RHO, seed=0)
    obs = laws.observations(cells.params, cells.tokens, cells.loss, cells.format)
    parts = {name: (("quantization", 4.0 ** -(8 * capacity)),) for name, capacity in RHO.items()}
    parts["sp50"] = (("sparsity", 0.07), ("quantization", 0.02))  # a product of parts
    law_object = laws.make_law(law, obs, parts)
    law_object.check(obs)
    problem = laws.Problem(law_object, obs, 1e-3)
    theta = np.concatenate([[6.0, 0.3, 6.0, 0.3, 0.5], law_object.extra_starts()[0] + 0.1])
    step = 1e-6
    numeric = np.column_stack(
        [
            (problem.residuals(theta + step * unit) - problem.residuals(theta - step * unit))
            / (2 * step)
            for unit in np.eye(len(theta))
        ]
    )
    np.testing.assert_allclose(problem.jacobian(theta), numeric, atol=1e-6)


GMSE_LAW = {"cap": 0.95, "slope": 0.6, "power": 1.5}
GMSE = {f"q{bits}": 4.0**-bits for bits in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)}
GMSE_RHO = {"dense": 1.0} | {
    name: GMSE_LAW["cap"]
    * math.tanh(GMSE_LAW["slope"] * -math.log(g) / math.log(4)) ** GMSE_LAW["power"]
    for name, g in GMSE.items()
}
HELD_OUT = "q2.0"


@pytest.fixture(scope="module")
def gmse_fit() -> laws.FitResult:
    """The unified-gmse law fitted to every format but HELD_OUT."""
    cells = synthetic_cells({k: v for k, v in GMSE_RHO.items() if k != HELD_OUT}, seed=3)
    return laws.fit(
        cells.params,
        cells.tokens,
        cells.loss,
        cells.format,
        law="unified-gmse",
        parts={name: (("quantization", g),) for name, g in GMSE.items()},
        options=NO_BOOTSTRAP,
    )


def test_unified_gmse_law_predicts_an_unfitted_format_from_its_gmse(gmse_fit):
    assert gmse_fit.rho_of(HELD_OUT) == pytest.approx(GMSE_RHO[HELD_OUT], rel=0.03)
    assert gmse_fit.params["L"] == pytest.approx(GMSE_LAW["cap"], rel=0.05)
    with pytest.raises(ValueError, match="'q9' was not fitted and has no GMSE"):
        gmse_fit.rho_of("q9")


def test_fitted_law_survives_json_and_predicts_identically(gmse_fit):
    fitted = gmse_fit.fitted
    back = laws.FittedLaw.from_dict(json.loads(json.dumps(fitted.to_dict(), allow_nan=False)))
    assert back == fitted
    params, tokens = np.array([1e6, 3e7, 2e8]), np.array([2e7, 1e9, 4e10])
    formats = ["dense", "q1.0", HELD_OUT]
    np.testing.assert_array_equal(
        back.predict(params, tokens, formats), fitted.predict(params, tokens, formats)
    )
    assert back.rho_of(HELD_OUT) == fitted.rho_of(HELD_OUT)


def test_prediction_is_the_law_in_natural_units(gmse_fit):
    """The log-space formula the fit minimises is L = A (N rho)^-alpha + B D^-beta + E."""
    p = gmse_fit.params
    rho = gmse_fit.rho_of("q1.5")
    expected = p["A"] * (3e7 * rho) ** -p["alpha"] + p["B"] * 6e8 ** -p["beta"] + p["E"]
    assert gmse_fit.predict([3e7], [6e8], ["q1.5"])[0] == pytest.approx(expected, rel=1e-12)


def cells_with(**overrides) -> dict:
    cells = synthetic_cells({"dense": 1.0, "int4": 0.8}, seed=0)
    fields = {"params": cells.params, "tokens": cells.tokens, "loss": cells.loss}
    return fields | {"formats": cells.format} | overrides


@pytest.mark.parametrize(
    ("overrides", "law", "message"),
    [
        ({"formats": None}, "unified", "needs the dense reference and at least one other"),
        ({"params": np.full(40, 1e7)}, "chinchilla", "params: only one distinct model size"),
        ({"loss": np.r_[np.nan, np.ones(39)]}, "unified", r"loss: 1 value\(s\) are NaN"),
        ({"loss": np.r_[-1.0, 0.0, np.ones(38)]}, "unified", "non-positive"),
        ({"formats": ["int4"] * 20 + ["int8"] * 20}, "unified", "no cells of the dense reference"),
        ({"formats": ["dense"] * 20 + ["int4"] * 20}, "unified-gmse", "needs parts of >= 3"),
    ],
)
def test_degenerate_input_fails_with_a_clear_error(overrides, law, message):
    fields = cells_with(**overrides)
    if law == "chinchilla":
        fields["formats"] = None
    with pytest.raises(ValueError, match=message):
        laws.fit(**fields, law=law, options=NO_BOOTSTRAP)


def test_fewer_cells_than_parameters_is_an_error():
    cells = synthetic_cells({"dense": 1.0, "int4": 0.8, "int2": 0.4}, seed=0).iloc[::10]
    with pytest.raises(ValueError, match="cells: 6 cells for 7 law parameters"):
        laws.fit(
            cells.params,
            cells.tokens,
            cells.loss,
            cells.format,
            law="unified",
            options=NO_BOOTSTRAP,
        )


def test_a_grid_near_one_tokens_per_parameter_ratio_warns_instead_of_false_precision():
    rng = np.random.default_rng(0)
    params = np.geomspace(1e6, 1e8, 12)
    tokens = 20 * params
    loss = TRUTH["A"] * params ** -TRUTH["alpha"] + TRUTH["B"] * tokens ** -TRUTH["beta"]
    loss = (loss + TRUTH["E"]) * np.exp(rng.normal(0, 0.005, len(params)))
    result = laws.fit(
        params * rng.uniform(0.98, 1.02, 12), tokens, loss, options=laws.FitOptions(bootstrap=30)
    )
    assert any("weakly identified" in text for text in result.warnings)
