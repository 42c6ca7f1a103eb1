"""`g:FMT`: quantized training, i.e. the backward pass's GEMM operands rounded to a scalar format.

As in Quartet (arXiv 2505.14669), a linear layer y = x W^T has two backward GEMMs, and each of
their operands is quantized with FMT (`int4`, `fp8`, `int4-had`, ...), one scale per vector along
the GEMM's reduction dimension (so a low-precision GEMM could factor the scales out of each dot
product):
- input gradient  dL/dx = Q(G) Q(W):     G along out_features (per token), W along out_features
  (per input channel);
- weight gradient dL/dW = Q(G)^T Q(x):   G and x along the tokens (per output and input channel).
G is the output gradient; W and x are the operands the forward pass multiplied, i.e. already
compressed by the forward parts. The forward pass is untouched, so the format's storage, GMSE and
capacity (rho on N) are its forward part's. Rounding is the scalar format's own: round to nearest
with MSE-optimal clipping (or `-absmax`), deterministic, so a g-part's GMSE is exactly FMT's.
RTN is biased where stochastic rounding would not be; the bias is part of what a sweep measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from compscale.formats.base import Component, Format
from compscale.formats.scalar import ScalarFormat
from compscale.formats.sparse import Dense


class _QuantizedBackwardLinear(torch.autograd.Function):
    """Forward: inputs @ weight^T. Backward: both GEMMs on quantized operands (module docstring),
    computed in the output gradient's dtype (bf16 under autocast, as a plain linear's are)."""

    @staticmethod
    def forward(ctx, inputs: Tensor, weight: Tensor, quantizer: ScalarFormat) -> Tensor:
        ctx.save_for_backward(inputs, weight)
        ctx.quantizer = quantizer
        return torch.nn.functional.linear(inputs, weight)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        inputs, weight = ctx.saved_tensors
        quantize, dtype = ctx.quantizer.quantize_rows, grad_out.dtype
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_inputs = grad_weight = None
        if ctx.needs_input_grad[0]:
            product = quantize(grad).to(dtype) @ quantize(weight.t()).t().to(dtype)
            grad_inputs = product.reshape(*inputs.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            tokens = inputs.reshape(-1, inputs.shape[-1])
            grad_weight = quantize(grad.t()).to(dtype) @ quantize(tokens.t()).t().to(dtype)
        return grad_inputs, grad_weight, None


@dataclass(frozen=True, eq=False, repr=False)
class QuantizedBackward(Format):
    """A forward format (`dense`, `int4`, `w:int4,a:int4`, ...) with its backward GEMMs quantized
    by `gradients`; printed `g:FMT`, `w:W,g:FMT` or `w:W,a:A,g:FMT`."""

    forward: Format
    gradients: ScalarFormat

    def __str__(self) -> str:
        if isinstance(self.forward, Dense):
            return f"g:{self.gradients}"
        forward = str(self.forward)
        return f"{forward if forward.startswith('w:') else f'w:{forward}'},g:{self.gradients}"

    @property
    def quantizes_activations(self) -> bool:  # type: ignore[override]
        return self.forward.quantizes_activations

    @property
    def bits_per_param(self) -> float:
        """The forward part's: a backward part stores nothing."""
        return self.forward.bits_per_param

    @property
    def sparsity(self) -> float:
        return self.forward.sparsity

    @property
    def refreshes_mask(self) -> bool:
        return self.forward.refreshes_mask

    def compute_mask(self, weight: Tensor, sparsity: float | None = None) -> Tensor | None:
        return self.forward.compute_mask(weight, sparsity)

    def apply(self, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward.apply(weight, mask)

    def apply_activation(self, x: Tensor) -> Tensor:
        return self.forward.apply_activation(x)

    def linear(self, inputs: Tensor, weight: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return torch.nn.functional.linear(inputs, weight)
        return _QuantizedBackwardLinear.apply(inputs, weight, self.gradients)

    def components(self) -> tuple[Component, ...]:
        """The forward part's parts, then the gradients' quantizer (direction `backward`)."""
        return (
            *self.forward.components(),
            Component("gradients", "quantization", self.gradients),
        )
