"""`g:FMT`, quantized training: the backward GEMMs' operands rounded to a scalar format, the
forward pass, storage and cell ids of every other format untouched.

For y = x W^T with output gradient G: dL/dx = Q(G) Q(W) and dL/dW = Q(G)^T Q(x), each operand
quantized with one scale per vector along its GEMM's reduction dimension.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from compscale.formats import STANDARD_FORMATS, FormatError, parse
from compscale.gmse import components, estimate, gmse, parts_of
from orchestrator.cli import main
from orchestrator.spec import parse_spec
from workers import run_cell
from workers.compressed_linear import CompressedLinear
from workers.config import CellConfig, TrainConfig, preset
from workers.sink import read_losses

# --- grammar, storage, parts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("g:int8", "g:int8"),
        ("w:dense,g:int8", "g:int8"),
        (" W:INT4,G:INT8 ", "w:int4,g:int8"),
        ("w:int4,a:int4,g:int4", "w:int4,a:int4,g:int4"),
        ("w:dense,a:int4,g:fp8", "w:dense,a:int4,g:fp8"),
        ("w:sp50-rbbm0.1+int4,g:int4-had-g32", "w:sp50-rbbm0.1+int4,g:int4-g32-had"),
    ],
)
def test_backward_formats_print_back_canonically(text, canonical):
    assert str(parse(text)) == canonical
    assert str(parse(canonical)) == canonical


@pytest.mark.parametrize(
    "text",
    ["g:sp50", "g:vq2d4", "g:", "int4,g:int8", "a:int4,g:int4", "g:int4,g:int4", "g:int4,w:int4"],
)
def test_a_backward_part_takes_a_scalar_format_after_a_tagged_forward_part(text):
    with pytest.raises(FormatError, match="accepted"):
        parse(text)


def test_every_standard_format_keeps_its_spelling_and_has_no_backward_part():
    for text in STANDARD_FORMATS:
        fmt = parse(text)
        assert str(fmt) == text and not fmt.has_backward
        assert fmt.has_forward == (text != "dense")


@pytest.mark.parametrize("forward", ["dense", "int4", "sp50+int4", "w:int2,a:int4"])
def test_a_backward_part_stores_nothing_and_leaves_the_forward_part_alone(forward):
    plain = parse(forward)
    fmt = parse(f"{forward if forward.startswith('w:') else f'w:{forward}'},g:int4")
    assert fmt.bits_per_param == plain.bits_per_param
    assert fmt.sparsity == plain.sparsity
    assert fmt.quantizes_activations == plain.quantizes_activations
    assert fmt.has_forward == plain.has_forward and fmt.has_backward
    w = torch.randn(16, 64)
    assert torch.equal(fmt.apply(w, fmt.compute_mask(w)), plain.apply(w, plain.compute_mask(w)))


def test_parts_say_their_direction_and_the_forward_ones_alone_feed_the_capacity_law():
    parts = components("w:int4,a:int3,g:int2")
    assert [(p.tensor, p.direction, p.format) for p in parts] == [
        ("weights", "forward", "int4"),
        ("activations", "forward", "int3"),
        ("gradients", "backward", "int2"),
    ]
    assert parts_of("w:int4,a:int3,g:int2") == parts_of("w:int4,a:int3")
    assert parts_of("w:int4,a:int3,g:int2", "backward") == (("quantization", gmse("int2")),)
    assert parts_of("g:int8") == () and parts_of("int4", "backward") == ()


def test_gmse_of_a_backward_part_is_its_quantizers_and_the_format_gmse_its_weights(capsys):
    assert estimate("g:int4").gmse == 0.0 and estimate("w:int4,g:int2").gmse == gmse("int4")
    (part,) = components("g:int4")
    assert part.gmse == gmse("int4") and part.stderr == 0  # exact, as int4's own
    assert main(["gmse", "g:int4", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["components"][0]["gmse"] == pytest.approx(0.01154, rel=1e-3)
    assert main(["gmse", "g:int4"]) == 0
    assert "gradients quantization: int4" in capsys.readouterr().out


# --- the backward GEMMs -----------------------------------------------------------------------


def layer_gradients(fmt: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dW, dL/dx) of one 64 -> 48 layer on a batch of 4 x 32 tokens, fixed data."""
    torch.manual_seed(seed)
    layer = CompressedLinear(64, 48, parse(fmt))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 32, 64, generator=generator).requires_grad_()
    target = torch.randn(4, 32, 48, generator=generator)
    (layer(x) - target).square().mean().backward()
    return layer.weight.grad, x.grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_int8_gradients_stay_close_to_dense_and_int2_ones_do_not():
    dense_w, dense_x = layer_gradients("dense")
    int8_w, int8_x = layer_gradients("g:int8")
    int2_w, int2_x = layer_gradients("g:int2")
    assert cosine(int8_w, dense_w) > 0.999 and cosine(int8_x, dense_x) > 0.999
    assert cosine(int2_w, dense_w) < 0.95 and cosine(int2_x, dense_x) < 0.95
    assert cosine(int2_w, dense_w) < cosine(layer_gradients("g:int4")[0], dense_w)
    assert not torch.equal(int8_w, dense_w)  # quantized, not passed through


def test_backward_is_the_product_of_operands_quantized_along_the_reduction_dimension():
    q = parse("int3")
    fmt = parse("w:int4,a:int4,g:int3")
    weight = torch.randn(24, 40).requires_grad_()
    x = torch.randn(2, 16, 40).requires_grad_()
    upstream = torch.randn(2, 16, 24)
    inputs, compressed = fmt.apply_activation(x), fmt.apply(weight)
    out = fmt.linear(inputs, compressed)
    assert torch.equal(out, torch.nn.functional.linear(inputs, compressed))  # forward untouched
    grad_out, grad_w = torch.autograd.grad(out, (inputs, compressed), upstream)
    g = upstream.reshape(-1, 24)
    tokens = inputs.detach().reshape(-1, 40)
    expected_x = q.quantize_rows(g) @ q.quantize_rows(compressed.detach().t()).t()
    expected_w = q.quantize_rows(g.t()) @ q.quantize_rows(tokens.t()).t()
    assert torch.allclose(grad_out, expected_x.reshape(2, 16, 40), atol=1e-5)
    assert torch.allclose(grad_w, expected_w, atol=1e-5)


def test_gradients_reach_the_latent_weight_through_the_forward_straight_through_estimator():
    fmt = parse("w:sp50+int4,g:int8")
    layer = CompressedLinear(64, 32, fmt)
    layer.update_mask(0.5)
    layer(torch.randn(8, 64)).square().sum().backward()
    grad = layer.weight.grad
    assert torch.isfinite(grad).all()
    assert torch.equal(grad != 0, layer.mask)  # only survivors learn, as under sp50+int4


def test_bf16_autocast_gives_finite_gradients_of_the_inputs_dtype():
    layer = CompressedLinear(64, 48, parse("w:int4,a:int4,g:int4"))
    x = torch.randn(2, 8, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


# --- cells --------------------------------------------------------------------------------------


def test_a_backward_format_validates_in_a_sweep_spec_under_its_canonical_name():
    spec = parse_spec(
        "name: effd\nmodels: [tiny]\ntokens: [10000]\n"
        "formats: [dense, G:INT4, 'w:dense,g:int8', 'w:int4,a:int4,g:int4']\n"
    )
    assert spec.formats == ["dense", "g:int4", "g:int8", "w:int4,a:int4,g:int4"]


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_cell_trains_under_int4_gradients(tmp_path):
    model = preset("tiny").model_copy(update={"seq_len": 32})
    train = TrainConfig(batch_size=8, eval_tokens=2048)
    cell = CellConfig(model=model, format="g:int4", tokens=80 * 8 * 32, train=train)
    result = run_cell(cell, str(tmp_path))
    train_loss = read_losses(str(tmp_path), cell.cell_id).column("train_loss").to_pylist()
    assert all(math.isfinite(value) for value in train_loss)
    assert sum(train_loss[-10:]) / 10 < sum(train_loss[:10]) / 10 - 0.5
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < train_loss[0] - 0.5
    assert "-g_int4-s0-" in cell.cell_id  # a folder name on every filesystem
