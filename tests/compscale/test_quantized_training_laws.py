"""The quantized-training law forms: `unified-effd` (effN, effD per format) and `unified-gamma`
recover synthetic truth; which multiplier a format gets comes from the grammar or a table's
columns; the effD capacity law fits only where the formats determine it; leave-one-size-out
selection prefers the form the cells came from."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import approx_fprime

from compscale import capacity, laws
from compscale.effective_data import effective_data_capacity
from compscale.laws.forms import EFF_BOUND
from compscale.laws.selection import leave_one_size_out, selection_text
from compscale.multipliers import multipliers
from compscale.table import multiplier_columns

TRUTH = {"A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28, "E": 1.69}
NO_BOOTSTRAP = laws.FitOptions(bootstrap=0)
# forward-only, backward-only and both: effN = rho scales N, effD scales D
EFF_N = {"dense": 1.0, "fwd4": 0.8, "bwd4": 1.0, "both4": 0.75, "bwd8": 1.0}
EFF_D = {"bwd4": 0.6, "both4": 0.65, "bwd8": 0.9}
ON = {"fwd4": (True, False), "bwd4": (False, True), "both4": (True, True), "bwd8": (False, True)}


def cells(
    eff_n: dict[str, float],
    eff_d: dict[str, float],
    seed: int = 0,
    noise: float = 0.001,
    gamma: float = 1.0,
    sizes=(1e6, 3e6, 1e7, 3e7, 1e8),
) -> pd.DataFrame:
    """N x tokens-per-parameter per format; loss (A (N effN)^-alpha + B (D effD)^-beta)^gamma + E
    with log-normal noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, n_multiplier in eff_n.items():
        for params in sizes:
            for tokens_per_param in (10, 20, 50, 100):
                tokens = params * tokens_per_param
                power = TRUTH["A"] * (params * n_multiplier) ** -TRUTH["alpha"]
                power += TRUTH["B"] * (tokens * eff_d.get(name, 1.0)) ** -TRUTH["beta"]
                loss = power**gamma + TRUTH["E"]
                rows.append((params, tokens, name, loss * math.exp(rng.normal(0, noise))))
    return pd.DataFrame(rows, columns=["params", "tokens", "format", "loss"])


@pytest.mark.parametrize("seed", [0, 1])
def test_unified_effd_recovers_every_eff_d_within_0_03_at_0_1_percent_noise(seed):
    table = cells(EFF_N, EFF_D, seed)
    result = laws.fit(
        table.params,
        table.tokens,
        table.loss,
        table.format,
        law="unified-effd",
        options=NO_BOOTSTRAP,
        multipliers=ON,
    )
    assert set(result.fitted.eff_d) == {"bwd4", "both4", "bwd8"}
    for name, value in EFF_D.items():
        assert abs(result.fitted.eff_d[name] - value) < 0.03, name
    for name, value in EFF_N.items():
        assert abs(result.rho[name] - value) < 0.03, name
    assert result.params["beta"] == pytest.approx(TRUTH["beta"], rel=0.05)
    predicted = result.predict(table.params, table.tokens, table.format)
    assert np.max(np.abs(np.log(predicted / table.loss))) < 0.005


def test_unified_effd_lets_a_multiplier_pass_1_up_to_its_bound_and_unified_does_not():
    table = cells({"dense": 1.0, "better": 1.1}, {}, sizes=(1e6, 1e7, 1e8))
    args = (table.params, table.tokens, table.loss, table.format)
    effd = laws.fit(*args, law="unified-effd", options=NO_BOOTSTRAP)
    unified = laws.fit(*args, law="unified", options=NO_BOOTSTRAP)
    assert effd.rho["better"] == pytest.approx(1.1, abs=0.02)
    assert unified.rho["better"] <= 1.0
    law = laws.make_law("unified-effd", laws.observations(*args), multipliers={})
    high = np.full(1, laws.forms.U_BOUNDS[0])
    assert math.exp(law.log_rho(high, laws.observations(*args))[1]) == pytest.approx(EFF_BOUND)


def test_unified_gamma_recovers_gamma_and_every_rho():
    rho = {"dense": 1.0, "int4": 0.8, "int2": 0.4}
    table = cells(rho, {}, gamma=1.3)
    result = laws.fit(
        table.params, table.tokens, table.loss, table.format, law="unified-gamma",
        options=NO_BOOTSTRAP,
    )  # fmt: skip
    assert result.params["gamma"] == pytest.approx(1.3, abs=0.1)
    for name, value in rho.items():
        assert abs(result.rho[name] - value) < 0.03, name
    predicted = result.predict(table.params, table.tokens, table.format)
    assert np.max(np.abs(np.log(predicted / table.loss))) < 0.005
    assert result.fitted.from_dict(result.fitted.to_dict()).gamma == result.params["gamma"]


@pytest.mark.parametrize("law", ["unified-effd", "unified-gamma"])
def test_the_new_forms_analytic_jacobian_matches_finite_differences(law):
    table = cells(EFF_N, EFF_D, sizes=(1e6, 1e7, 1e8))
    obs = laws.observations(table.params, table.tokens, table.loss, table.format)
    problem = laws.Problem(laws.make_law(law, obs, multipliers=ON), obs, 1e-3)
    extra = len(problem.law.extra_bounds())
    theta = np.concatenate([[3.0, 0.3, 4.0, 0.25, 0.4], np.linspace(0.9, -0.4, extra)])
    rows = range(len(obs))
    numeric = np.array([approx_fprime(theta, lambda x, i=i: problem.residuals(x)[i]) for i in rows])
    assert np.max(np.abs(numeric - problem.jacobian(theta))) < 1e-4


def test_a_format_without_a_backward_part_scales_n_only():
    assert multipliers("int4") == (True, False)
    assert multipliers("w:int4,a:int8") == (True, False)
    assert multipliers("fwd:nvfp4-1x16") == (True, False)  # not in the grammar: the default
    assert multipliers("dense") == (False, False)


def test_a_backward_part_of_the_grammar_scales_d():
    assert multipliers("g:int4") == (False, True)
    assert multipliers("w:int4,g:int8") == (True, True)
    assert multipliers("w:int4,a:int4,g:int4") == (True, True)


def test_unified_effd_on_the_grammars_g_formats_recovers_eff_d_with_rho_left_at_1():
    """No table columns: the grammar alone says `g:` formats scale D only, so their rho stays 1
    and their effD comes back."""
    eff_d = {"g:int4": 0.6, "g:int8": 0.9}
    table = cells({"dense": 1.0, "int4": 0.8} | dict.fromkeys(eff_d, 1.0), eff_d)
    result = laws.fit(
        table.params,
        table.tokens,
        table.loss,
        table.format,
        law="unified-effd",
        options=NO_BOOTSTRAP,
    )
    for name, truth in eff_d.items():
        assert abs(result.params[f"eff_d[{name}]"] - truth) < 0.03
        assert result.rho[name] == 1.0
    assert abs(result.rho["int4"] - 0.8) < 0.03
    assert "eff_d[int4]" not in result.params


def test_a_tables_on_n_and_on_d_columns_say_which_multiplier_and_must_agree(tmp_path):
    path = tmp_path / "t.csv"
    table = pd.DataFrame({"format": ["a", "a", "b"], "on_d": [True, True, "false"]})
    assert multiplier_columns(table, path, list(table.format)) == {
        "a": (True, True),
        "b": (True, False),
    }
    assert multiplier_columns(table.drop(columns="on_d"), path, list(table.format)) is None
    table.loc[1, "on_d"] = False
    with pytest.raises(ValueError, match="'a' has rows of different on_n / on_d"):
        multiplier_columns(table, path, list(table.format))
    table.loc[1, "on_d"] = "maybe"
    with pytest.raises(ValueError, match="give true or false"):
        multiplier_columns(table, path, list(table.format))


def backward_capacity_cells(gmse: dict[str, float]) -> tuple[pd.DataFrame, dict[str, float]]:
    law = (0.95, 0.6, 1.5)  # L, F, C of effD over the backward GMSE
    eff_d = {name: float(capacity.capacity(value, *law)) for name, value in gmse.items()}
    return cells({"dense": 1.0} | dict.fromkeys(gmse, 1.0), eff_d, sizes=(1e6, 1e7, 1e8)), eff_d


def test_the_effd_capacity_law_predicts_every_effd_where_enough_backward_formats_determine_it():
    gmse = {"g2": 0.12, "g3": 0.04, "g4": 0.012, "g6": 0.0015, "g8": 1e-4}
    table, eff_d = backward_capacity_cells(gmse)
    result = laws.fit(
        table.params, table.tokens, table.loss, table.format, law="unified-effd",
        options=laws.FitOptions(bootstrap=8), multipliers=dict.fromkeys(gmse, (False, True)),
    )  # fmt: skip
    fitted = effective_data_capacity(result, gmse)
    assert not isinstance(fitted, str), fitted
    for name, value in eff_d.items():
        assert fitted.law.rho([("backward", gmse[name])]) == pytest.approx(value, abs=0.03)
    too_few = effective_data_capacity(result, {"g2": 0.12, "g4": 0.012})
    assert too_few.startswith("not identified (2 backward format(s)")


@pytest.mark.slow
def test_leave_one_size_out_prefers_the_form_the_cells_came_from():
    eff_n = {"dense": 1.0, "fwd4": 0.8, "bwd4": 1.0}
    table = cells(eff_n, EFF_D, sizes=(1e6, 3e6, 1e7, 3e7))
    scores = leave_one_size_out(
        table.params, table.tokens, table.loss, table.format,
        law_names=("unified", "unified-effd"), options=NO_BOOTSTRAP, multipliers=ON,
    )  # fmt: skip
    by_law = {score.law: score for score in scores}
    assert by_law["unified-effd"].folds == 4 and by_law["unified-effd"].cells == len(table)
    assert by_law["unified-effd"].rmse_log_loss < 0.5 * by_law["unified"].rmse_log_loss
    assert "lowest held-out error: unified-effd" in selection_text(scores)


def test_a_form_the_folds_cannot_fit_is_scored_none_with_why():
    table = cells({"dense": 1.0, "fwd:nvfp4": 0.8}, {}, sizes=(1e6, 1e7))
    (score,) = leave_one_size_out(
        table.params, table.tokens, table.loss, table.format, law_names=("unified",),
        options=NO_BOOTSTRAP,
    )  # fmt: skip
    assert math.isnan(score.rmse_log_loss) and score.folds == 0
    assert "only one distinct model size" in score.note
