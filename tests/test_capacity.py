"""Capacity law: known L, F, C come back; unseen formats are predicted; composition is checked."""

import numpy as np
import pytest

from compscale import capacity

TRUE_LAW = {"cap": 0.96, "slope": 0.55, "power": 1.7}
BITS = {"q1": 1.0, "q1.5": 1.5, "q2": 2.0, "q2.5": 2.5, "q3": 3.0, "q4": 4.0, "q5": 5.0, "q6": 6.0}


def pairs(noise: float, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = list(BITS)
    gmse = np.array([4.0 ** -BITS[name] for name in names])
    rho = capacity.capacity(gmse, **TRUE_LAW) * np.exp(rng.normal(0, noise, len(names)))
    return names, gmse, np.minimum(rho, 1.0)


def test_effective_bits_inverts_the_rate_distortion_bound():
    assert capacity.effective_bits(4.0**-3) == pytest.approx(3.0)
    assert capacity.effective_bits(0.0) == np.inf
    assert capacity.capacity(0.0, **TRUE_LAW) == pytest.approx(TRUE_LAW["cap"])


def test_fit_coordinates_map_onto_capacities_in_zero_one():
    for rho in (1e-6, 0.3, 0.97):
        assert np.exp(capacity.log_rho_of_u(capacity.u_of_rho(rho))) == pytest.approx(rho)
    assert np.exp(capacity.log_rho_of_u(np.array([-30.0, 30.0]))) == pytest.approx([1.0, 0.0])
    z = np.array([capacity.u_of_rho(0.9), np.log(0.5), np.log(2.0)])
    assert capacity.tanh_law_params(z) == pytest.approx((0.9, 0.5, 2.0))
    bits = np.array([0.5, 2.0, 8.0])
    rho = capacity.capacity(4.0**-bits, 0.9, 0.5, 2.0)
    assert np.exp(capacity.log_tanh_law(z, bits)) == pytest.approx(rho, rel=1e-12)
    step = 1e-6
    numeric = np.column_stack(
        [
            (
                capacity.log_tanh_law(z + step * unit, bits)
                - capacity.log_tanh_law(z - step * unit, bits)
            )
            / (2 * step)
            for unit in np.eye(3)
        ]
    )
    np.testing.assert_allclose(capacity.log_tanh_law_jac(z, bits), numeric, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_known_law_is_fitted_back_from_noisy_pairs(seed):
    names, gmse, rho = pairs(noise=0.005, seed=seed)
    fit = capacity.fit_capacity(gmse, rho, names, bootstrap=50)
    tolerance = {"L": ("cap", 0.03), "F": ("slope", 0.1), "C": ("power", 0.15)}
    for name, (truth, rel) in tolerance.items():
        value = getattr(fit, name)
        assert value == pytest.approx(TRUE_LAW[truth], rel=rel), name
        low, high = fit.ci[name]
        assert low <= value <= high
    assert fit.rmse_log_rho < 0.02
    assert fit.samples.shape == (50, 3)


def test_a_format_left_out_of_the_fit_is_predicted_from_its_gmse_alone():
    names, gmse, rho = pairs(noise=0.005)
    left_out = names.index("q2.5")
    keep = np.arange(len(names)) != left_out
    fit = capacity.fit_capacity(gmse[keep], rho[keep], bootstrap=0)
    truth = capacity.capacity(gmse[left_out], **TRUE_LAW)
    assert fit.predict(gmse[left_out]) == pytest.approx(truth, rel=0.03)
    loo = capacity.leave_one_out(gmse, rho)
    assert loo[left_out] == pytest.approx(fit.predict(gmse[left_out]), rel=1e-6)


def test_refitting_to_rho_draws_gives_one_sample_per_draw():
    names, gmse, rho = pairs(noise=0.0)
    draws = rho * np.exp(np.random.default_rng(0).normal(0, 0.01, (30, len(rho))))
    fit = capacity.fit_capacity(gmse, rho, names, rho_samples=np.minimum(draws, 1.0))
    assert fit.samples.shape == (30, 3)
    assert fit.ci["L"][0] < fit.L < fit.ci["L"][1]


def test_dense_and_too_few_formats_are_rejected_with_clear_errors():
    names, gmse, rho = pairs(noise=0.0)
    with pytest.raises(ValueError, match="gmse: format 'dense' has GMSE 0;"):
        capacity.fit_capacity([0.0, *gmse], [1.0, *rho], ["dense", *names])
    with pytest.raises(ValueError, match="need at least 4"):
        capacity.fit_capacity(gmse[:3], rho[:3], names[:3])
    with pytest.raises(ValueError, match="rho: format 'q1' has rho"):
        capacity.fit_capacity(gmse, np.r_[1.5, rho[1:]], names)


def correlated_draws(rho: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: value * np.exp(rng.normal(0, 0.01, 200)) for name, value in rho.items()}


def test_multiplicative_composition_reports_near_zero_error_and_no_flag():
    rho = {"dense": 1.0, "sp50": 0.7, "int4": 0.8, "sp50+int4": 0.56, "int3": 0.6}
    table = capacity.composition_table(rho, correlated_draws(rho))
    assert list(table["format"]) == ["sp50+int4"]
    row = table.iloc[0]
    assert row["rel_error"] == pytest.approx(0.0, abs=1e-9)
    assert row["ratio_ci_low"] < 1 < row["ratio_ci_high"]
    assert not row["flagged"]


def test_non_multiplicative_composition_is_flagged():
    rho = {"dense": 1.0, "sp50": 0.7, "int4": 0.8, "sp50+int4": 0.45}
    table = capacity.composition_table(rho, correlated_draws(rho))
    row = table.iloc[0]
    assert row["rel_error"] == pytest.approx(0.45 / 0.56 - 1)
    assert row["ratio_ci_high"] < 0.98
    assert row["flagged"]
    assert capacity.composition_table(rho)["flagged"].iloc[0]
