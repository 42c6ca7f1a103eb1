"""A reducer a researcher can trust: per-tensor capacities multiply, bounds and non-identified
parameters are said as such, duplicate minima are one minimum, and `fit` on a table gives what
`reduce` gives on the same rows."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from compscale import capacity, laws
from compscale.gmse import parts_of
from compscale.laws import FitOptions
from compscale.reduce import reduce
from orchestrator.cli import main

TRUTH = {"A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28, "E": 1.69}
JOINT = (1.0, 0.45, 1.4)  # L, F, C: the paper's neighbourhood
WEIGHTS_ONLY = [f"int{bits}-had" for bits in (1, 2, 3, 4, 8)]
WEIGHTS_AND_ACTIVATIONS = [f"w:int{bits}-had,a:int{bits}-had" for bits in (2, 3, 4, 8)]


def loss_of(params: float, tokens: float, rho: float) -> float:
    return (
        TRUTH["A"] * (params * rho) ** -TRUTH["alpha"]
        + TRUTH["B"] * tokens ** -TRUTH["beta"]
        + TRUTH["E"]
    )


def cells(rho: dict[str, float], noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        (int(params), int(params * ratio), name, 0, loss_of(params, params * ratio, value))
        for name, value in rho.items()
        for params in (1e6, 3e6, 1e7, 3e7, 1e8)
        for ratio in (10, 30, 100)
    ]
    table = pd.DataFrame(rows, columns=["params", "tokens", "format", "seed", "val_loss"])
    return table.assign(val_loss=table["val_loss"] * np.exp(rng.normal(0, noise, len(table))))


def true_rho(name: str) -> float:
    law = capacity.CapacityLaw({capacity.SHARED: JOINT})
    return 1.0 if name == "dense" else law.rho(parts_of(name))


@pytest.fixture(scope="module")
def joint_fit() -> laws.FitResult:
    names = ["dense", *WEIGHTS_ONLY, *WEIGHTS_AND_ACTIVATIONS]
    table = cells({name: true_rho(name) for name in names}, noise=0.003)
    return laws.fit(
        table.params,
        table.tokens,
        table.val_loss,
        table.format,
        law="unified-gmse",
        options=laws.FitOptions(bootstrap=0),
    )


def test_a_known_joint_law_with_per_tensor_capacities_is_recovered(joint_fit):
    for name, truth in zip("LFC", JOINT, strict=True):
        assert joint_fit.params[name] == pytest.approx(truth, rel=0.05), name
    law = joint_fit.fitted.capacity_law
    for name in WEIGHTS_ONLY + WEIGHTS_AND_ACTIVATIONS:
        for part in parts_of(name):  # every component's own rho
            truth = capacity.CapacityLaw({capacity.SHARED: JOINT}).rho([part])
            assert law.rho([part]) == pytest.approx(truth, rel=0.03), (name, part)


def test_weights_and_activations_get_the_square_of_weights_only_at_equal_bits(joint_fit):
    for bits in (2, 3, 4):
        weights = joint_fit.rho[f"int{bits}-had"]
        both = joint_fit.rho[f"w:int{bits}-had,a:int{bits}-had"]
        assert both < weights - 0.02  # distinct, not the weights' GMSE alone
        assert both == pytest.approx(weights**2, rel=0.03)


def test_a_parameter_at_its_bound_gets_a_profile_interval_not_a_zero_width_ci():
    rng = np.random.default_rng(1)
    params = np.repeat([1e6, 3e6, 1e7, 3e7, 1e8], 3)
    tokens = params * np.tile([10, 30, 100], 5)
    loss = TRUTH["A"] * params ** -TRUTH["alpha"] + TRUTH["B"] * tokens ** -TRUTH["beta"] + 0.0
    noisy = loss * np.exp(rng.normal(0, 0.002, len(loss)))
    result = laws.fit(params, tokens, noisy, options=laws.FitOptions(bootstrap=20))
    assert "at a bound" in result.notes["E"] and "profile" in result.notes["E"]
    low, high = result.ci["E"]
    assert low <= result.params["E"] <= 1e-6  # E ~ 0 is best ...
    assert high > 1000 * max(result.params["E"], 1e-9)  # ... but not known to be exactly that
    assert any(text.startswith("E: at a bound") for text in result.warnings)


def test_minima_that_predict_the_same_losses_are_one_minimum():
    rng = np.random.default_rng(2)
    params = np.repeat([1e6, 3e6, 1e7, 3e7, 1e8], 3)
    tokens = params * np.tile([10, 30, 100], 5)
    loss = TRUTH["A"] * params ** -TRUTH["alpha"] + TRUTH["B"] * tokens ** -TRUTH["beta"]
    obs = laws.observations(params, tokens, loss * np.exp(rng.normal(0, 0.002, len(loss))))
    problem = laws.Problem(laws.make_law("chinchilla", obs), obs, 1e-3)
    theta, value = problem.polish(np.array([6.0, 0.34, 6.0, 0.28, -19.0]))
    same = theta.copy()
    same[4] = -16.0  # E from 6e-9 to 1e-7: a different point, the same predictions
    other = theta.copy()
    other[1] += 0.05  # a different fit
    found = [(value, theta), (problem.objective(same), same)]
    assert laws.distinct_runner_up(problem, found) is None
    assert laws.distinct_runner_up(problem, [*found, (value * 1.5, other)])[1] is other


@pytest.mark.slow  # over a few seconds
def test_a_law_that_does_not_fall_with_n_is_reported_not_identified_not_as_numbers(tmp_path):
    rng = np.random.default_rng(3)
    rows = [
        (int(params), int(tokens), name, 0, TRUTH["B"] * tokens ** -TRUTH["beta"] + TRUTH["E"])
        for name in ("dense", "int4", "int2")
        for params in (1e5, 2e5, 4e5)
        for tokens in (1e6, 3e6, 1e7)
    ]
    table = pd.DataFrame(rows, columns=["params", "tokens", "format", "seed", "val_loss"])
    table["val_loss"] *= np.exp(rng.normal(0, 0.003, len(table)))
    reduction = reduce(table, FitOptions(bootstrap=20, holdout_fraction=0))
    law = reduction.law.set_index("parameter")
    for name in ("A", "alpha"):
        assert math.isnan(law.loc[name, "value"]) and law.loc[name, "note"].startswith(
            "not identified"
        )
    rho = reduction.rho.set_index("format")
    assert math.isnan(rho.loc["int2", "rho"]) and "not identified" in rho.loc["int2", "note"]
    assert "not identified (alpha" in reduction.summary()
    assert not math.isnan(law.loc["beta", "value"])  # what the cells do determine stays


def test_fit_on_a_table_gives_what_reduce_gives_on_the_same_rows(tmp_path, capsys):
    names = ["dense", "int2", "int3", "int4", "sp50"]
    rho = {"dense": 1.0, "int2": 0.45, "int3": 0.7, "int4": 0.85, "sp50": 0.8}
    table = cells({name: rho[name] for name in names}, noise=0.004, seed=5)
    reduction = reduce(table, FitOptions(bootstrap=20, holdout_fraction=0))
    shuffled = table.sample(frac=1.0, random_state=0).assign(loss=1.0)  # val_loss is the default
    path = tmp_path / "results.parquet"
    shuffled.to_parquet(path)
    assert main(["fit", str(path), "--law", "unified", "--json", "--bootstrap", "20"]) == 0
    document = json.loads(capsys.readouterr().out)
    law = reduction.law.set_index("parameter")
    for name in laws.BASE_NAMES:
        assert document[name] == pytest.approx(law.loc[name, "value"], rel=1e-9), name
        assert document["ci"][name] == pytest.approx(
            [law.loc[name, "ci_low"], law.loc[name, "ci_high"]], rel=1e-9
        ), name
    table_rho = reduction.rho.set_index("format")["rho"]
    assert document["rho"] == pytest.approx(table_rho.to_dict(), rel=1e-9)


@pytest.mark.slow  # over a few seconds
def test_cells_that_cannot_place_e_get_the_range_that_fits_in_the_note():
    # Three sizes within 4x of each other and 1% noise: the cells cannot tell E = 1.69 (truth)
    # from E ~ 0, and the note says which range fits rather than a number.
    rng = np.random.default_rng(4)
    params = np.repeat([2e8, 4e8, 8e8], 3)
    tokens = params * np.tile([20, 40, 80], 3)
    loss = TRUTH["A"] * params ** -TRUTH["alpha"] + TRUTH["B"] * tokens ** -TRUTH["beta"]
    noisy = (loss + TRUTH["E"]) * np.exp(rng.normal(0, 0.01, len(loss)))
    result = laws.fit(params, tokens, noisy, options=laws.FitOptions(bootstrap=30))
    low, high = result.ci["E"]
    assert low < 1e-6 and high > 0.5
    assert f"any value in [{low:.3g}, {high:.3g}] fits within 5%" in result.notes["E"]
    assert any(text.startswith("E: ") and "any value in" in text for text in result.warnings)
