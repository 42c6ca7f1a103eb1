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


def parts_of(gmse: np.ndarray) -> list[tuple[tuple[str, float], ...]]:
    return [(("quantization", float(g)),) for g in gmse]


def test_unified_rho_coordinates_stay_in_zero_one():
    for rho in (1e-6, 0.3, 0.97):
        assert np.exp(capacity.log_rho_of_u(capacity.u_of_rho(rho))) == pytest.approx(rho)
    assert np.exp(capacity.log_rho_of_u(np.array([-30.0, 30.0]))) == pytest.approx([1.0, 0.0])


def test_part_table_multiplies_capacities_over_parts_with_an_exact_jacobian():
    law = {"quantization": (0.95, 0.5, 1.5), "sparsity": (1.1, 0.8, 2.0)}
    parts = [
        (("quantization", 4.0**-3),),
        (("sparsity", 0.07), ("quantization", 4.0**-4)),
        (("quantization", 4.0**-2), ("quantization", 4.0**-2)),
    ]
    table = capacity.PartTable.build(parts, ("quantization", "sparsity"))
    z = capacity.z_of_params([*law["quantization"], *law["sparsity"]])
    expected = [capacity.CapacityLaw(law).rho(p) for p in parts]
    assert np.exp(table.log_rho(z)) == pytest.approx(expected, rel=1e-12)
    single = capacity.capacity(4.0**-2, *law["quantization"])
    assert expected[2] == pytest.approx(single**2)  # w+a at equal bits: the square
    step = 1e-6
    numeric = np.column_stack(
        [
            (table.log_rho(z + step * unit) - table.log_rho(z - step * unit)) / (2 * step)
            for unit in np.eye(len(z))
        ]
    )
    np.testing.assert_allclose(table.log_rho_jac(z), numeric, atol=1e-7)


def test_families_get_their_own_law_only_when_each_has_three_distinct_gmses():
    three = [(("quantization", g),) for g in (0.1, 0.03, 0.01)]
    two_sparse = [(("sparsity", g),) for g in (0.07, 0.27)]
    assert capacity.parameter_groups(three + two_sparse) == (capacity.SHARED,)
    three_sparse = [*two_sparse, (("sparsity", 0.15),)]
    assert capacity.parameter_groups(three + three_sparse) == ("quantization", "sparsity")
    assert capacity.parameter_names(("quantization", "sparsity"))[:3] == (
        "L[quantization]",
        "F[quantization]",
        "C[quantization]",
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_known_law_is_fitted_back_from_noisy_pairs(seed):
    names, gmse, rho = pairs(noise=0.005, seed=seed)
    fit = capacity.fit_capacity(names, rho, parts_of(gmse), bootstrap=50)
    tolerance = {"L": ("cap", 0.03), "F": ("slope", 0.1), "C": ("power", 0.15)}
    for name, (truth, rel) in tolerance.items():
        value = fit.values[name]
        assert value == pytest.approx(TRUE_LAW[truth], rel=rel), name
        low, high = fit.ci[name]
        assert low <= value <= high
    assert fit.rmse_log_rho < 0.02
    assert fit.samples.shape == (50, 3)


def test_l_is_free_above_one_and_rho_above_one_is_accepted():
    names = list(BITS)
    gmse = np.array([4.0 ** -BITS[name] for name in names])
    rho = capacity.capacity(gmse, 1.03, 0.5, 1.2)  # saturates above dense, as at 8 bits
    assert rho.max() > 1
    fit = capacity.fit_capacity(names, rho, parts_of(gmse), bootstrap=0)
    assert fit.values["L"] == pytest.approx(1.03, rel=1e-4) and not fit.at_bound


def test_an_l_beyond_its_generous_bound_is_reported_at_the_bound():
    names = list(BITS)
    gmse = np.array([4.0 ** -BITS[name] for name in names])
    rho = capacity.capacity(gmse, 6.0, 0.1, 1.0)  # every rho below 4, but it saturates at 6
    fit = capacity.fit_capacity(names, rho, parts_of(gmse), bootstrap=0)
    assert "L" in fit.at_bound and "at its bound" in fit.summary()


def test_uncertain_formats_weigh_less():
    names, gmse, rho = pairs(noise=0.0)
    noisy = rho.copy()
    noisy[0] *= 0.6  # one badly measured format
    rng = np.random.default_rng(0)
    spread = np.full(len(rho), 0.01)
    spread[0] = 0.5
    draws = noisy * np.exp(rng.normal(0, spread, (200, len(rho))))
    weighted = capacity.fit_capacity(names, noisy, parts_of(gmse), rho_samples=draws)
    plain = capacity.fit_capacity(names, noisy, parts_of(gmse), bootstrap=0)
    truth = capacity.capacity(gmse, **TRUE_LAW)
    assert np.abs(np.log(weighted.predicted / truth))[1:].max() < 0.01
    assert np.abs(np.log(plain.predicted / truth))[1:].max() > 0.02
    assert weighted.samples.shape == (200, 3)


def test_a_format_left_out_of_the_fit_is_predicted_from_its_gmse_alone():
    names, gmse, rho = pairs(noise=0.005)
    left_out = names.index("q2.5")
    keep = np.arange(len(names)) != left_out
    kept = [names[i] for i in np.flatnonzero(keep)]
    fit = capacity.fit_capacity(kept, rho[keep], parts_of(gmse[keep]), bootstrap=0)
    truth = capacity.capacity(gmse[left_out], **TRUE_LAW)
    predicted = fit.law.rho(parts_of(gmse[[left_out]])[0])
    assert predicted == pytest.approx(truth, rel=0.03)
    loo = capacity.leave_one_out(names, rho, parts_of(gmse))
    assert loo[left_out] == pytest.approx(predicted, rel=1e-6)


def test_dense_and_too_few_formats_are_rejected_with_clear_errors():
    names, gmse, rho = pairs(noise=0.0)
    with pytest.raises(ValueError, match="format 'dense' has no compressed part"):
        capacity.fit_capacity(["dense", *names], [1.0, *rho], [(), *parts_of(gmse)])
    with pytest.raises(ValueError, match="need at least 4"):
        capacity.fit_capacity(names[:3], rho[:3], parts_of(gmse[:3]))
    with pytest.raises(ValueError, match="rho: format 'q1' has rho"):
        capacity.fit_capacity(names, np.r_[-1.0, rho[1:]], parts_of(gmse))


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
