"""GMSE against Gaussian theory computed here by numerical integration (scipy), and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from compscale.formats import STANDARD_FORMATS, parse
from compscale.gmse import components, estimate, exact_gmse, gmse, monte_carlo_gmse
from orchestrator.cli import main


def _density_integral(function, low: float, high: float) -> float:
    return integrate.quad(lambda x: function(x) * stats.norm.pdf(x), low, high, limit=200)[0]


def uniform_quantizer_mse(bits: int, step: float) -> float:
    """MSE on N(0, 1) of the midrise uniform quantizer with 2^bits levels (k + 1/2) * step."""
    half = 2 ** (bits - 1)
    total = 0.0
    for k in range(half):  # positive half; the quantizer is odd and the density even
        level = (k + 0.5) * step
        low, high = k * step, (math.inf if k == half - 1 else (k + 1) * step)
        total += _density_integral(lambda x, level=level: (x - level) ** 2, low, high)
    return 2 * total


def optimal_uniform_quantizer_mse(bits: int) -> float:
    """min over the step of the MSE above: the optimal uniform quantizer of a standard Gaussian."""
    half = 2 ** (bits - 1)
    bracket = (0.5 / half, 5.0 / half)
    result = optimize.minimize_scalar(
        lambda step: uniform_quantizer_mse(bits, step),
        bounds=bracket,
        method="bounded",
        options={"xatol": 1e-6 / half},
    )
    return float(result.fun)


def truncated_second_moment(sparsity: float) -> float:
    """E[x^2; |x| < t] with P(|x| < t) = sparsity: the energy magnitude pruning removes."""
    threshold = stats.norm.ppf((1 + sparsity) / 2)
    return _density_integral(lambda x: x**2, -threshold, threshold)


@pytest.fixture(scope="module")
def standard_estimates():
    """Monte Carlo GMSE of every standard format (the training op on a seeded matrix)."""
    return {
        text: estimate(text, rows=64, cols=4096, method="monte-carlo") for text in STANDARD_FORMATS
    }


@pytest.mark.parametrize("bits", range(1, 9))
def test_int_with_mse_clipping_is_within_2_percent_of_the_optimal_uniform_quantizer(bits):
    theory = optimal_uniform_quantizer_mse(bits)
    # Rows of 65536; at 6+ bits rare clipped tails dominate the sampling error, so pool more
    # draws to keep 2% at least 4 standard errors away.
    draws = [
        monte_carlo_gmse(parse(f"int{bits}"), rows=64, cols=65536, seed=10 * bits + draw)
        for draw in range(1 if bits < 6 else 2 * (bits - 5))
    ]
    measured = float(np.mean([value for value, _ in draws]))
    stderr = math.sqrt(sum(error**2 for _, error in draws)) / len(draws)
    assert stderr < 0.02 * theory / 4
    assert measured == pytest.approx(theory, rel=0.02)
    assert exact_gmse(f"int{bits}") == pytest.approx(theory, rel=1e-4)


def test_one_bit_gmse_is_one_minus_two_over_pi():
    measured, stderr = monte_carlo_gmse(parse("int1"), rows=64, cols=16384, seed=0)
    assert abs(measured - (1 - 2 / math.pi)) < 4 * stderr
    assert gmse("int1") == pytest.approx(1 - 2 / math.pi, rel=1e-9)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75, 0.9])
def test_magnitude_pruning_removes_the_truncated_second_moment(sparsity):
    measured, stderr = monte_carlo_gmse(parse(f"sp{sparsity * 100:g}"), 64, 16384, seed=1)
    theory = truncated_second_moment(sparsity)
    assert abs(measured - theory) < max(4 * stderr, 0.002 * theory)


def test_no_format_beats_the_rate_distortion_bound(standard_estimates):
    for text, result in standard_estimates.items():
        bound = 4.0**-result.bits_per_param
        if text == "dense":  # the reference: the weight itself, no code to bound
            continue
        if text.startswith("noise"):  # its bits are defined as the bound: it sits on it
            assert abs(result.gmse - bound) < 4 * result.stderr, text
        else:
            assert result.gmse >= bound, text


@pytest.mark.parametrize(
    "family",
    [
        [f"int{bits}" for bits in range(1, 9)],
        ["fp4", "fp6", "fp8"],
        ["sp90", "sp75", "sp50", "sp25", "dense"],
        ["vq1d4", "vq2d4", "vq3d2"],
        ["sp75+int2", "sp50+int4"],
        ["noise0.1", "noise0.01", "noise0.001"],
    ],
)
def test_gmse_falls_as_bits_rise_within_a_family(family, standard_estimates):
    results = [standard_estimates[text] for text in family]
    assert [r.bits_per_param for r in results] == sorted(r.bits_per_param for r in results)
    values = [r.gmse for r in results]
    assert values == sorted(values, reverse=True)
    assert len(set(values)) == len(values)


@pytest.mark.parametrize(
    ("vector", "scalar"),
    [("vq1d4", "int1"), ("vq2d2", "int2"), ("vq2d4", "int2"), ("vq3d2", "int3")],
)
def test_a_vq_codebook_beats_scalar_quantization_at_equal_bits(vector, scalar, standard_estimates):
    vq, sq = standard_estimates[vector], standard_estimates[scalar]
    assert vq.bits_per_param == sq.bits_per_param
    assert vq.gmse + 4 * vq.stderr < sq.gmse - 4 * sq.stderr


@pytest.mark.parametrize("text", ["int2", "int5", "fp4", "fp8", "int4-had", "noise0.01"])
def test_exact_integration_agrees_with_monte_carlo_on_long_rows(text):
    exact = estimate(text)
    assert exact.method == "exact" and exact.stderr == 0.0
    sampled = estimate(text, rows=64, cols=8192, method="monte-carlo")
    assert abs(sampled.gmse - exact.gmse) < 4 * sampled.stderr + 0.003 * exact.gmse


def test_noise_injection_has_the_requested_relative_mse():
    sampled = estimate("noise0.05", rows=64, cols=4096, method="monte-carlo")
    assert abs(sampled.gmse - 0.05) < 4 * sampled.stderr


def test_monte_carlo_is_deterministic_for_a_seed_and_varies_across_seeds():
    first = gmse("int4-absmax", rows=16, cols=1024, seed=5)
    assert gmse("int4-absmax", rows=16, cols=1024, seed=5) == first
    assert gmse("int4-absmax", rows=16, cols=1024, seed=6) != first


def test_estimate_reports_effective_bits():
    result = estimate("int2")
    assert result.effective_bits == pytest.approx(-np.log(result.gmse) / np.log(4))
    assert estimate("dense").effective_bits == math.inf


# --- components: what the capacity law multiplies ------------------------------------------


def test_weights_and_activations_report_a_gmse_for_each_tensor():
    parts = components("w:int4-had,a:int3")
    assert [(p.tensor, p.family, p.format) for p in parts] == [
        ("weights", "quantization", "int4-had"),
        ("activations", "quantization", "int3"),
    ]
    assert parts[0].gmse == pytest.approx(gmse("int4-had"))
    assert parts[1].gmse == pytest.approx(gmse("int3"))
    # activations are quantized per token by the same per-row op: measured, not assumed
    x = torch.randn(256, 1024)
    measured = (x - parse("int3").quantize_activation(x)).square().sum() / x.square().sum()
    assert float(measured) == pytest.approx(gmse("int3"), rel=0.03)


def test_sparse_plus_quantized_splits_into_its_sparsity_and_quantization_parts():
    parts = components("sp50+int4")
    assert [(p.family, p.format) for p in parts] == [("sparsity", "sp50"), ("quantization", "int4")]
    assert parts[0].gmse == pytest.approx(gmse("sp50")) and parts[1].gmse == gmse("int4")
    assert components("dense") == ()
    single = components("int4")
    assert len(single) == 1 and single[0].gmse == gmse("int4")


def test_cli_table_lists_the_parts_of_a_composite_format(capsys):
    assert main(["gmse", "w:int4-had,a:int4-had"]) == 0
    table = capsys.readouterr().out
    assert "weights quantization: int4-had" in table
    assert "activations quantization: int4-had" in table


# --- CLI -------------------------------------------------------------------------------------


def test_cli_json_lists_every_requested_format(capsys):
    assert main(["gmse", "int4", "sp50+int4", "dense", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["format"] for row in rows] == ["int4", "sp50+int4", "dense"]
    keys = {"format", "bits_per_param", "gmse", "stderr", "effective_bits", "components"}
    assert all(set(row) == keys for row in rows)
    assert rows[0]["gmse"] == pytest.approx(gmse("int4"))
    assert rows[0]["components"] == [] and len(rows[1]["components"]) == 2
    assert rows[2]["effective_bits"] is None  # lossless: log_{1/4}(0) is infinite


def test_cli_table_shows_the_standard_formats(capsys):
    assert main(["gmse", "--standard"]) == 0
    out = capsys.readouterr().out
    for text in ("int4", "sp50+int4", "vq2d4", "noise0.01", "fp8", "2:4"):
        assert f" {text} " in out


def test_cli_rejects_a_bad_format_with_exit_code_2():
    process = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "gmse", "int4", "int17"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2
    assert process.stderr.strip().count("\n") == 0 and "int17" in process.stderr
    assert process.stdout == ""
