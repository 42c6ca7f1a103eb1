"""The interface every representation implements, and the storage constants its costs use.

A format compresses a 2-D weight (out_features x in_features; rows are output channels, scales and
groups run along the last dimension). `apply` is what a training step calls: the compressed weight
in the original basis, same shape and dtype, with a straight-through (or exact) backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

# A dense weight, a surviving weight of a sparse format and a scale are stored in 16 bits (bf16).
DENSE_BITS = 16
SCALE_BITS = 16
# Per-row scales are charged as if rows had this many weights (16 / 4096 ≈ 0.004 bits/weight): the
# storage cost of a format is a property of the format, not of one layer's shape.
NOMINAL_ROW_LENGTH = 4096


class FormatError(ValueError):
    """A format string that does not parse, or a weight a format cannot handle."""


Family = Literal["quantization", "sparsity"]


Direction = Literal["forward", "backward"]


@dataclass(frozen=True)
class Component:
    """One compressed part of a format: the tensor it compresses (`weights`, `activations`, or
    `gradients`: the operands of the backward pass's GEMMs), its compression family, and the
    single-part format that does it. Capacities compose multiplicatively over a format's forward
    components (the paper's rho(q_w, s_w, q_a)); a backward part changes what the data teaches,
    not what the model holds, so a law that tells them apart (`direction`) charges it to D."""

    tensor: Literal["weights", "activations", "gradients"]
    family: Family
    format: Format

    @property
    def direction(self) -> Direction:
        """`backward` for the gradients' part, `forward` for the weights' and activations'."""
        return "backward" if self.tensor == "gradients" else "forward"


class Format:
    """A representation: parsed from a string, printed back canonically, applied to weights."""

    quantizes_activations: bool = False

    def __str__(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"parse({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Format) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def bits_per_param(self) -> float:
        """Storage per weight in bits, scales and masks included."""
        raise NotImplementedError

    @property
    def sparsity(self) -> float:
        """Fraction of weights the format zeroes (0.0 when it prunes nothing)."""
        return 0.0

    @property
    def refreshes_mask(self) -> bool:
        """Whether a trainer must recompute the keep-mask at every step instead of freezing it after
        the ramp: true where a backward mask passes gradient to pruned weights, which can only
        matter if they may grow back into the mask."""
        return False

    def compute_mask(self, weight: Tensor, sparsity: float | None = None) -> Tensor | None:
        """Boolean keep-mask for `weight`, or None when the format prunes nothing.

        `sparsity` overrides the target, so a trainer can ramp from 0 to `self.sparsity`.
        """
        return None

    def apply(self, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        """The compressed weight: same shape and dtype, gradients to `weight` by STE."""
        raise NotImplementedError

    def apply_activation(self, x: Tensor) -> Tensor:
        """Identity unless the format quantizes activations."""
        return x

    def linear(self, inputs: Tensor, weight: Tensor) -> Tensor:
        """`inputs @ weight.T` of the already-compressed operands (`apply_activation`, `apply`):
        a plain product unless the format quantizes the backward pass's GEMMs (`g:`)."""
        return torch.nn.functional.linear(inputs, weight)

    def components(self) -> tuple[Component, ...]:
        """Every compressed part, forward ones (whose capacities multiply) first; a plain weight
        quantizer (scalar, vector, float grid, Gaussian noise standing in for one) is one
        quantization part of the weights."""
        return (Component("weights", "quantization", self),)

    @property
    def has_forward(self) -> bool:
        """Whether any part compresses the forward pass (weights or activations): rho on N."""
        return any(part.direction == "forward" for part in self.components())

    @property
    def has_backward(self) -> bool:
        """Whether any part compresses the backward pass (`g:`): what acts on D."""
        return any(part.direction == "backward" for part in self.components())


Compressor = Callable[[Tensor], tuple[Tensor, "Tensor | None"]]


class _StraightThrough(torch.autograd.Function):
    """Forward: compressor(weight)'s values. Backward: the gradient, zeroed where `passes` is 0.

    One autograd node instead of `w + (q - w).detach()`: no extra full-size passes in either
    direction, which matters because it runs on every weight at every step.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, compressor: Compressor) -> Tensor:
        values, passes = compressor(weight)
        ctx.save_for_backward(passes)
        return values.to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (passes,) = ctx.saved_tensors
        return (grad if passes is None else grad * passes.to(grad.dtype)), None


def straight_through(weight: Tensor, compressor: Compressor) -> Tensor:
    """`compressor` maps a weight to (compressed values, 0/1 gradient mask or None), without
    gradients; the result carries the straight-through estimator back to `weight`."""
    if not (weight.requires_grad and torch.is_grad_enabled()):
        with torch.no_grad():
            return compressor(weight)[0].to(weight.dtype)
    return _StraightThrough.apply(weight, compressor)


def check_matrix(weight: Tensor, fmt: Format) -> None:
    """Formats act on 2-D weights; anything else is a caller error."""
    if weight.dim() != 2:
        raise FormatError(f"format {fmt} needs a 2-D weight, got shape {tuple(weight.shape)}")
    if not torch.is_floating_point(weight):
        raise FormatError(f"format {fmt} needs a floating-point weight, got {weight.dtype}")
