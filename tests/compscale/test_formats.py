"""Specification of the representation library: grammar, storage costs, STE ops, masks."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from compscale.formats import GRAMMAR, STANDARD_FORMATS, Format, FormatError, parse
from compscale.formats.scalar import FLOAT_GRIDS, rotate

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def weight(rows: int = 32, cols: int = 256, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=generator).to(dtype)


def compress(fmt: Format, w: torch.Tensor) -> torch.Tensor:
    """What a training step does: mask (if the format prunes), then apply."""
    return fmt.apply(w, fmt.compute_mask(w))


# --- grammar ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", STANDARD_FORMATS)
def test_standard_formats_print_back_canonically(text):
    assert str(parse(text)) == text


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("INT4", "int4"),
        (" sp50.0 ", "sp50"),
        ("sp87.5", "sp87.5"),
        ("int4-had-g128", "int4-g128-had"),
        ("fp4-had-absmax", "fp4-absmax-had"),
        ("noise0.050", "noise0.05"),
        ("w:sp50+int4,a:fp8", "w:sp50+int4,a:fp8"),
    ],
)
def test_equivalent_spellings_parse_to_the_canonical_one(text, canonical):
    assert str(parse(text)) == canonical
    assert parse(text) == parse(canonical)


def test_standard_formats_cover_every_family():
    kinds = {type(parse(text)).__name__ for text in STANDARD_FORMATS}
    assert kinds >= {
        "Dense",
        "MagnitudeSparse",
        "NMSparse",
        "ScalarFormat",
        "VectorFormat",
        "Composed",
        "NoiseFormat",
        "WeightsAndActivations",
    }


@pytest.mark.parametrize(
    "text",
    [
        "foo",
        "int9",
        "int0",
        "fp5",
        "sp100",
        "3:2",
        "int4-had-had",
        "int4-g0",
        "int4-g1",
        "int4-x",
        "sp50+vq1d2",
        "vq7d2",
        "noise2",
        "w:int4",
        "int4+sp50",
        "sp50+int4-had",
        "",
    ],
)
def test_bad_strings_raise_one_line_value_error(text):
    with pytest.raises(FormatError) as caught:
        parse(text)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(text.strip().lower()) in message


def test_unknown_string_error_lists_the_grammar():
    with pytest.raises(FormatError, match="accepted") as caught:
        parse("int4-ternary")
    assert GRAMMAR in str(caught.value)


# --- storage costs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("dense", 16.0),
        ("sp50", 0.5 * 16 + 1.0),  # survivors in bf16 + a mask at its entropy H(0.5) = 1 bit
        ("sp90", 0.1 * 16 - (0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))),
        ("2:4", 0.5 * 16 + math.log2(6) / 4),
        ("int4", 4 + 16 / 4096),  # one 16-bit scale per (nominal 4096-long) row
        ("int4-g128", 4 + 16 / 128),
        ("fp6", 6 + 16 / 4096),
        ("vq2d4", 2 + 16 / 4096),
        ("sp50+int4", 0.5 * 4 + 16 / 4096 + 1.0),
        ("noise0.0625", 2.0),  # rate-distortion bits of GMSE 4^-2
        ("w:int4,a:int8", 4 + 16 / 4096),
    ],
)
def test_bits_per_param_counts_scales_and_masks(text, bits):
    assert parse(text).bits_per_param == pytest.approx(bits)


def test_sparsity_and_activation_flags():
    assert parse("sp75").sparsity == 0.75
    assert parse("2:4").sparsity == 0.5
    assert parse("sp50+int4").sparsity == 0.5
    assert parse("w:sp50+int4,a:int4").sparsity == 0.5
    assert parse("int4").sparsity == 0.0
    assert parse("w:int4,a:int4").quantizes_activations
    assert not parse("int4").quantizes_activations


# --- STE ops ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", STANDARD_FORMATS)
def test_gradients_flow_finite_and_shaped_like_the_weight(text):
    fmt = parse(text)
    w = weight().requires_grad_()
    out = compress(fmt, w)
    assert out.shape == w.shape and out.dtype == w.dtype
    (out * torch.linspace(-1, 1, w.numel()).reshape(w.shape)).sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_dense_is_the_identity_forward_and_backward():
    w = weight().requires_grad_()
    out = parse("dense").apply(w)
    upstream = torch.randn_like(w)
    out.backward(upstream)
    assert torch.equal(out, w)
    assert torch.equal(w.grad, upstream)


def test_quantizer_gradient_is_straight_through_except_for_clipped_weights():
    w = weight(rows=1, cols=256)
    w[0, 7] = 50.0  # far outside any MSE-optimal clipping range
    w.requires_grad_()
    parse("int2").apply(w).sum().backward()
    assert w.grad[0, 7] == 0
    inside = torch.ones(256, dtype=torch.bool)
    inside[7] = False
    assert (w.grad[0, inside] == 1).float().mean() > 0.9


def test_sparse_gradient_reaches_only_survivors():
    w = weight().requires_grad_()
    fmt = parse("sp50")
    mask = fmt.compute_mask(w)
    fmt.apply(w, mask).sum().backward()
    assert torch.equal(w.grad, mask.float())


@pytest.mark.parametrize("text", ["int4-had", "int2-had"])
def test_hadamard_gradient_is_the_rotated_trust_mask(text):
    w = weight().requires_grad_()
    upstream = torch.randn_like(w)
    parse(text).apply(w).backward(upstream)
    assert torch.allclose(
        rotate(rotate(w.detach())), w.detach(), atol=1e-5
    )  # orthogonal, self-inverse
    # Projection onto the trusted coordinates in the rotated basis: never longer than the upstream.
    assert w.grad.norm() <= upstream.norm() * (1 + 1e-5)
    assert w.grad.norm() > 0.9 * upstream.norm()


def test_hadamard_rotation_spreads_an_outlier():
    w = weight(rows=8, cols=256)
    w[:, 3] = 40.0
    plain = ((parse("int4").apply(w) - w).square().sum() / w.square().sum()).item()
    rotated = ((parse("int4-had").apply(w) - w).square().sum() / w.square().sum()).item()
    assert rotated < plain / 2


def test_integer_grid_has_at_most_two_to_the_bits_levels_per_row():
    w = weight(rows=4, cols=4096)
    for bits in range(1, 9):
        out = parse(f"int{bits}").apply(w)
        assert all(row.unique().numel() <= 2**bits for row in out)


def test_fp4_absmax_lands_on_the_e2m1_grid():
    w = weight(rows=4, cols=512)
    out = parse("fp4-absmax").apply(w)
    scale = w.abs().amax(dim=1, keepdim=True) / 6.0
    grid = torch.tensor(FLOAT_GRIDS[4].levels(), dtype=torch.float32)
    assert set(grid.abs().tolist()) == {0, 0.5, 1, 1.5, 2, 3, 4, 6}
    assert set((out / scale).round(decimals=4).unique().tolist()) <= set(grid.tolist())


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_fp_grids_round_to_the_nearest_representable_value(bits):
    fmt = parse(f"fp{bits}")
    grid = FLOAT_GRIDS[bits]
    levels = torch.tensor(grid.levels(), dtype=torch.float32)
    scaled = torch.randn(20000) * grid.max_value / 3
    nearest = levels[(scaled[:, None] - levels[None, :]).abs().argmin(dim=1)]
    assert torch.equal(fmt._round(scaled.clone()), nearest)


def test_activation_quantization_is_per_token_and_identity_elsewhere():
    x = torch.randn(2, 5, 64)
    assert parse("int4").apply_activation(x) is x
    out = parse("w:int4,a:int2").apply_activation(x)
    assert out.shape == x.shape
    assert all(token.unique().numel() <= 4 for token in out.reshape(-1, 64))


# --- masks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75, 0.9])
def test_magnitude_mask_has_exactly_the_requested_sparsity(sparsity, dtype):
    w = weight(rows=48, cols=200, dtype=dtype)  # bf16: many ties in |w|
    mask = parse(f"sp{sparsity * 100:g}").compute_mask(w)
    assert mask.dtype == torch.bool
    assert (~mask).sum().item() == round(sparsity * w.numel())
    assert w.abs()[~mask].max() <= w.abs()[mask].min()


def test_magnitude_mask_follows_a_ramp():
    w = weight()
    fmt = parse("sp75")
    assert fmt.compute_mask(w, 0.0) is None
    assert (~fmt.compute_mask(w, 0.3)).sum().item() == round(0.3 * w.numel())


def test_n_m_mask_keeps_exactly_n_in_every_group_and_ramps_in_steps():
    w = weight()
    fmt = parse("2:4")
    kept = fmt.compute_mask(w).reshape(-1, 4).sum(dim=1)
    assert (kept == 2).all()
    assert (fmt.compute_mask(w, 0.3).reshape(-1, 4).sum(dim=1) == 3).all()  # 3:4 on the way
    assert fmt.compute_mask(w, 0.1) is None


def test_sparse_apply_without_mask_prunes_at_full_target():
    w = weight()
    assert (parse("sp50+int4").apply(w) == 0).float().mean().item() == pytest.approx(0.5)
    assert (parse("2:4").apply(w) == 0).float().mean().item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "text",
    ["dense", "sp50", "2:4", "int4-absmax", "fp4-absmax", "int3-absmax-g64", "sp50+int4-absmax"],
)
def test_applying_twice_changes_nothing_for_idempotent_formats(text):
    # MSE-clipped formats are not idempotent by design: the second pass sees a new row RMS.
    fmt = parse(text)
    once = compress(fmt, weight())
    assert torch.allclose(compress(fmt, once), once, rtol=1e-6, atol=1e-7)


# --- robustness ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [*STANDARD_FORMATS, "int4-g64", "fp4-absmax-g32", "sp50+int4-g32"])
def test_all_zero_rows_and_groups_stay_zero_without_nan(text):
    w = weight(rows=8, cols=256)
    w[2] = 0.0
    w[5, :64] = 0.0
    w[6] = 1e-3 * w[6]  # magnitude pruning empties this row: no survivors to scale
    w.requires_grad_()
    out = compress(parse(text), w)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w.grad).all()
    assert (out[2] == 0).all()


@pytest.mark.parametrize("text", STANDARD_FORMATS)
def test_bf16_weights_come_back_as_bf16_close_to_float32(text):
    fmt = parse(text)
    w = weight(rows=16, cols=512, dtype=torch.bfloat16).requires_grad_()
    torch.manual_seed(0)
    out = compress(fmt, w)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    reference = compress(fmt, w.detach().float())
    error_bf16 = (out.float() - w.float()).square().sum()
    error_fp32 = (reference - w.float()).square().sum()
    assert torch.isfinite(out).all()
    assert error_bf16 <= 1.2 * error_fp32 + 1e-3 * w.float().square().sum()


@pytest.mark.parametrize("text", STANDARD_FORMATS)
def test_same_seed_same_output(text):
    fmt = parse(text)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(compress(fmt, weight()))
    assert torch.equal(*outputs)


def test_rows_not_divisible_by_the_group_are_padded_not_rejected():
    w = weight(rows=4, cols=100)
    out = parse("int4-g64").apply(w)
    assert out.shape == w.shape and torch.isfinite(out).all()


def test_non_matrix_weights_are_rejected_with_a_clear_error():
    with pytest.raises(FormatError, match="2-D"):
        parse("int4").apply(torch.randn(3, 4, 5))
    with pytest.raises(FormatError, match="multiple of 4"):
        parse("2:4").compute_mask(torch.randn(3, 6))


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("text", STANDARD_FORMATS)
def test_cuda_matches_cpu(text):
    fmt = parse(text)
    w = weight(rows=64, cols=512)
    cpu = compress(fmt, w)
    cuda_weight = w.cuda().requires_grad_()
    gpu = compress(fmt, cuda_weight)
    gpu.sum().backward()
    assert gpu.device.type == "cuda" and torch.isfinite(cuda_weight.grad).all()
    if text.startswith("noise"):
        return  # different generators on the two devices
    mismatch = (gpu.cpu() - cpu).abs() > 1e-4 * w.abs().max()
    assert mismatch.float().mean() < 1e-3  # rounding at cell edges may differ


def test_formats_survive_pickling_and_deepcopy():
    # Ray ships them between processes; models holding them get deep-copied.
    for text in STANDARD_FORMATS:
        fmt = parse(text)
        for copy_of in (pickle.loads(pickle.dumps(fmt)), copy.deepcopy(fmt)):
            assert copy_of == fmt and str(copy_of) == text
            assert copy_of.bits_per_param == fmt.bits_per_param
