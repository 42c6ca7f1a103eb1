"""Backward masks of sparse formats (`-rms{q}`, `-rbbm{q}`) against their definitions (paper §5.2).

M_FW = 1[|w| in top-k] with threshold T_k; T_p = RMS(w) * Phi^-1(0.5 + q);
rms: M_BW = |w| > T_p; rbbm: M_BW = (|w| < min(T_p, T_k)) or (|w| > max(T_p, T_k)).
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
from statistics import NormalDist

import pytest
import torch

from compscale.formats import FormatError, parse
from orchestrator.cli import main
from orchestrator.spec import parse_spec
from workers import run_cell
from workers.compressed_linear import CompressedLinear, mask_update, sparsity_at

LITERAL = torch.tensor([[0.1, -0.2, 0.3, -0.4], [0.5, -0.6, 0.7, -0.8]])


def t_p(w: torch.Tensor, q: float) -> float:
    return math.sqrt(w.square().mean().item()) * NormalDist().inv_cdf(0.5 + q)


def reference_masks(w: torch.Tensor, sparsity: float, kind: str | None, q: float):
    """(M_FW, M_BW) straight from the definitions, with T_k halfway between the largest pruned
    and the smallest kept magnitude (any T_k between them defines the same top-k mask)."""
    magnitudes = w.abs().flatten().sort().values
    pruned = round(sparsity * w.numel())
    t_k = (magnitudes[pruned - 1] + magnitudes[pruned]).item() / 2
    forward = w.abs() > t_k
    if kind is None:
        return forward, forward
    if kind == "rms":
        return forward, w.abs() > t_p(w, q)
    low, high = sorted((t_p(w, q), t_k))
    return forward, (w.abs() < low) | (w.abs() > high)


def forward_and_gradient(text: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = parse(text)
    latent = w.clone().requires_grad_()
    out = fmt.apply(latent, fmt.compute_mask(latent))
    out.sum().backward()
    return out.detach(), latent.grad


@pytest.mark.parametrize(
    ("text", "gradient"),
    [
        # sp50 prunes 0.1..0.4 (T_k between 0.4 and 0.5); T_p = 0.505 * Phi^-1(0.7) = 0.265 < T_k.
        ("sp50", [[0, 0, 0, 0], [1, 1, 1, 1]]),
        ("sp50-rms0.2", [[0, 0, 1, 1], [1, 1, 1, 1]]),
        ("sp50-rbbm0.2", [[1, 1, 0, 0], [1, 1, 1, 1]]),  # no gradient in the band [T_p, T_k]
        # sp25 prunes 0.1, 0.2 (T_k between 0.2 and 0.3); T_p = 0.505 * Phi^-1(0.9) = 0.647 > T_k.
        ("sp25-rms0.4", [[0, 0, 0, 0], [0, 0, 1, 1]]),
        ("sp25-rbbm0.4", [[1, 1, 0, 0], [0, 0, 1, 1]]),  # no gradient in the band [T_k, T_p]
    ],
)
def test_masks_on_a_literal_matrix(text, gradient):
    out, grad = forward_and_gradient(text, LITERAL)
    baseline, _ = forward_and_gradient(text.partition("-")[0], LITERAL)
    assert torch.equal(out, baseline)  # the forward pass is the plain magnitude mask's
    assert torch.equal(grad, torch.tensor(gradient, dtype=torch.float32))


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.75, 0.9])
@pytest.mark.parametrize(
    ("kind", "q"),
    [
        (None, 0.0),
        ("rms", 0.1),
        ("rms", 0.4),
        ("rbbm", 0.0),
        ("rbbm", 0.1),
        ("rbbm", 0.3),
        ("rbbm", 0.45),
    ],
)
def test_masks_match_the_definitions_on_a_fixed_matrix(sparsity, kind, q):
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(7))
    text = f"sp{sparsity * 100:g}" + ("" if kind is None else f"-{kind}{q:g}")
    forward, backward = reference_masks(w, sparsity, kind, q)
    out, grad = forward_and_gradient(text, w)
    assert torch.equal(out, w * forward)
    assert torch.equal(grad, backward.float())


def test_the_fixed_matrix_cases_put_t_p_on_both_sides_of_t_k():
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(7))
    magnitudes = w.abs().flatten().sort().values
    assert t_p(w, 0.45) > magnitudes[96].item()  # sp10: the band lies above T_k (kept weights)
    assert t_p(w, 0.1) < magnitudes[480].item()  # sp50: the band lies below T_k (pruned weights)


@pytest.mark.parametrize("base", ["sp50", "2:4", "sp75"])
def test_q_zero_is_the_baseline(base):
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    out, grad = forward_and_gradient(f"{base}-rbbm0", w)
    plain_out, plain_grad = forward_and_gradient(base, w)
    assert torch.equal(out, plain_out) and torch.equal(grad, plain_grad)


def test_n_m_masks_use_one_forward_threshold_per_group():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    out, grad = forward_and_gradient("2:4-rbbm0.2", w)
    groups = w.abs().reshape(8, 4, 4).sort(dim=-1).values
    t_k = ((groups[..., 1] + groups[..., 2]) / 2).repeat_interleave(4, dim=-1).reshape(8, 16)
    low, high = (
        torch.minimum(t_k, torch.tensor(t_p(w, 0.2))),
        torch.maximum(t_k, torch.tensor(t_p(w, 0.2))),
    )
    assert torch.equal(out, w * (w.abs() > t_k))
    assert torch.equal(grad, ((w.abs() < low) | (w.abs() > high)).float())


def test_inside_a_composition_survivors_also_need_the_quantizers_trust():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    w[0, :4] = 40.0  # clipped by int2: kept, but untrusted
    out, grad = forward_and_gradient("sp50-rbbm0.1+int2", w)
    plain_out, trusted = forward_and_gradient("sp50+int2", w)  # trust & keep
    keep, backward = reference_masks(w, 0.5, "rbbm", 0.1)
    assert torch.equal(out, plain_out)
    expected = torch.where(keep, trusted.bool() & backward, backward)
    assert torch.equal(grad, expected.float())
    assert not grad[0, :4].any()


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("sp50-rbbm0.10", "sp50-rbbm0.1"),
        ("SP50.0-RMS0.25", "sp50-rms0.25"),
        ("2:4-rbbm0.1", "2:4-rbbm0.1"),
        ("sp50-rbbm0", "sp50-rbbm0"),
        ("sp50-rbbm0.1+int4-g128", "sp50-rbbm0.1+int4-g128"),
        ("w:sp75-rms0.1+int2,a:int8", "w:sp75-rms0.1+int2,a:int8"),
    ],
)
def test_backward_masks_print_back_canonically(text, canonical):
    fmt = parse(text)
    assert str(fmt) == canonical and parse(canonical) == fmt
    baseline = parse(re.sub(r"-(rms|rbbm)[0-9.]+", "", canonical))
    assert fmt.bits_per_param == baseline.bits_per_param and fmt.sparsity == baseline.sparsity


@pytest.mark.parametrize(
    "text",
    [
        "sp50-rms0",
        "sp50-rms0.5",
        "sp50-rbbm0.5",
        "sp50-rbbm-0.1",
        "sp50-rms",
        "int4-rms0.1",
        "sp50-rms0.1-rbbm0.1",
        "sp50-magnitude",
        "int4+sp50-rbbm0.1",
    ],
)
def test_bad_backward_masks_raise_one_line_errors(text):
    with pytest.raises(FormatError) as caught:
        parse(text)
    assert "\n" not in str(caught.value) and repr(text) in str(caught.value)


def test_gmse_cli_gives_identical_values_for_every_backward_mask(capsys):
    assert main(["gmse", "sp50", "sp50-rbbm0.1", "sp50-rms0.1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["format"] for row in rows] == ["sp50", "sp50-rbbm0.1", "sp50-rms0.1"]
    assert len({(row["gmse"], row["stderr"], row["bits_per_param"]) for row in rows}) == 1


def test_formats_with_a_backward_mask_refresh_their_masks_every_step():
    assert parse("sp50-rbbm0.1+int4").refreshes_mask and parse("w:2:4-rms0.1,a:int8").refreshes_mask
    assert not parse("sp50").refreshes_mask and not parse("sp50+int4").refreshes_mask
    every = [mask_update(step, 100, 0.5, 0.25, every_step=True) for step in range(100)]
    assert every == [sparsity_at(step, 100, 0.5, 0.25) for step in range(100)]


def test_pruned_weights_with_gradient_grow_back_into_a_refreshed_mask():
    """Why masks refresh: a target that needs the initially pruned weights. Under M_BW = M_FW they
    only re-enter when kept weights shrink past them; with gradient (rms) they grow back."""
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    regrown, loss = {}, {}
    for text in ("sp50", "sp50-rms0.05"):
        layer = CompressedLinear(16, 4, parse(text))
        layer.update_mask(0.5)
        pruned_at_start = ~layer.mask.clone()
        target = x @ torch.where(pruned_at_start, 3 * layer.weight.detach().sign(), 0.0).T
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
        for _ in range(50):
            layer.update_mask(0.5)
            optimizer.zero_grad()
            error = (layer(x) - target).square().mean()
            error.backward()
            optimizer.step()
        regrown[text] = (layer.mask & pruned_at_start).sum().item()
        loss[text] = error.item()
    assert regrown["sp50-rms0.05"] > regrown["sp50"] + 5
    assert loss["sp50-rms0.05"] < loss["sp50"] / 2


def test_a_sweep_with_backward_masks_validates_and_its_cells_train(tmp_path, one_thread):
    spec = parse_spec(
        "name: masks\nmodels: [{preset: tiny, seq_len: 32}]\ntokens: [3072]\n"
        "formats: [sp50-rbbm0.1, SP50-RMS0.1+INT4, 2:4-rbbm0.2]\n"
        "train: {batch_size: 4, eval_tokens: 1024}\n"
    )
    from orchestrator.cells import expand

    cells = expand(spec)
    assert [cell.format for cell in cells] == ["sp50-rbbm0.1", "sp50-rms0.1+int4", "2:4-rbbm0.2"]
    for cell in cells:
        result = run_cell(cell, str(tmp_path))
        assert result["format"] == cell.format and math.isfinite(result["val_loss"])


@pytest.mark.parametrize("text", ["sp50-rbbm0.1", "2:4-rms0.1", "sp50-rbbm0.1+int4"])
def test_backward_masks_keep_dtype_survive_zeros_and_pickling(text):
    fmt = parse(text)
    assert pickle.loads(pickle.dumps(fmt)) == fmt == copy.deepcopy(fmt)
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    half = w.bfloat16().requires_grad_()
    out = fmt.apply(half, fmt.compute_mask(half))
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), fmt.apply(w, fmt.compute_mask(w)), atol=0.1)
    zero = torch.zeros(16, 32, requires_grad=True)
    fmt.apply(zero, fmt.compute_mask(zero)).sum().backward()
    assert torch.isfinite(zero.grad).all()
