"""Scalar quantization: `int{b}` and `fp8/fp6/fp4` grids with per-row or per-group scales.

Grids, in scaled units (x / scale):
- `int{b}`: the symmetric uniform grid of 2^b levels (k + 1/2) for k = -2^(b-1) .. 2^(b-1) - 1. It
  has no zero level; with b = 1 it is sign(x) * scale, whose Gaussian MSE is 1 - 2/pi.
- `fp8` = OCP e4m3 (max 448, no infinities), `fp6` = OCP e2m3 (max 7.5), `fp4` = e2m1 (max 6), all
  with subnormals; rounding to nearest, ties to even.

Scales, one per row (default) or per group of `-g{size}` weights along the row:
- MSE-optimal clipping (default): scale = c_b * RMS(row or group), where c_b minimises the MSE of
  the grid on N(0, 1) (computed once per grid by exact integration, `gaussian.optimal_scale`). As
  QuEST (arXiv 2502.05003) does, this replaces a per-step search with one ratio, exact for Gaussian
  rows and cheap enough to run in every training step.
- `-absmax`: the largest |weight| maps to the outermost level (nothing is clipped); such formats
  are idempotent, MSE-clipped ones are not (a quantized row has a different RMS).

`-had` rotates each row by a block-diagonal Hadamard matrix (blocks of the largest power of two
dividing the row length, at most 128, as in QuEST) before quantizing and rotates back after.

Backward: QuEST's trust estimator. The gradient passes (in the basis where the grid is applied) only
where the input lies within half a step of the grid's range, i.e. where the quantization error is at
most half a step; clipped weights get no gradient.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from compscale.formats.base import (
    NOMINAL_ROW_LENGTH,
    SCALE_BITS,
    Format,
    FormatError,
    check_matrix,
    straight_through,
)
from compscale.formats.gaussian import optimal_scale

INT_BITS = range(1, 9)
HADAMARD_MAX_BLOCK = 128


@dataclass(frozen=True)
class FloatGrid:
    """A small floating-point number format: exponent and mantissa widths, bias, largest value."""

    exponent_bits: int
    mantissa_bits: int
    bias: int
    max_value: float

    @property
    def min_exponent(self) -> int:
        return 1 - self.bias

    def levels(self) -> np.ndarray:
        """Every finite representable value, sorted (negatives mirrored, one zero)."""
        scale = 2.0**self.mantissa_bits
        positive = [
            (2.0 ** (exponent - self.bias) * (1 + mantissa / scale))
            if exponent
            else 2.0**self.min_exponent * mantissa / scale
            for exponent in range(2**self.exponent_bits)
            for mantissa in range(2**self.mantissa_bits)
        ]
        positive = sorted({v for v in positive if v <= self.max_value})
        return np.array([-v for v in reversed(positive[1:])] + positive)


E4M3 = FloatGrid(exponent_bits=4, mantissa_bits=3, bias=7, max_value=448.0)
FLOAT_GRIDS = {
    8: E4M3,
    6: FloatGrid(exponent_bits=2, mantissa_bits=3, bias=1, max_value=7.5),
    4: FloatGrid(exponent_bits=2, mantissa_bits=1, bias=1, max_value=6.0),
}


def int_levels(bits: int) -> np.ndarray:
    half = 2 ** (bits - 1)
    return np.arange(-half, half) + 0.5


@functools.cache
def hadamard_matrix(size: int, device: str, dtype: torch.dtype) -> Tensor:
    """Orthonormal Sylvester Hadamard matrix of a power-of-two `size` (symmetric, self-inverse)."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return (matrix / math.sqrt(size)).to(device=device, dtype=dtype)


def hadamard_block(row_length: int) -> int:
    """Largest power of two dividing the row length, capped at HADAMARD_MAX_BLOCK."""
    return min(row_length & -row_length, HADAMARD_MAX_BLOCK)


def rotate(x: Tensor) -> Tensor:
    """Block-diagonal Hadamard rotation along the last dimension (its own inverse)."""
    rows, cols = x.shape
    block = hadamard_block(cols)
    if block == 1:
        return x
    matrix = hadamard_matrix(block, str(x.device), x.dtype)
    return (x.reshape(rows, cols // block, block) @ matrix).reshape(rows, cols)


@dataclass(frozen=True, eq=False, repr=False)
class ScalarFormat(Format):
    """`int{b}` or `fp{b}` with optional `-absmax`, `-g{size}` and `-had`."""

    grid: str  # "int" or "fp"
    bits: int
    absmax: bool = False
    group_size: int = 0  # 0: one scale per row
    hadamard: bool = False

    def __post_init__(self) -> None:
        if self.grid == "int" and self.bits not in INT_BITS:
            raise FormatError(f"int{self.bits}: bits must be 1..8")
        if self.grid == "fp" and self.bits not in FLOAT_GRIDS:
            raise FormatError(f"fp{self.bits}: floating-point grids are fp8, fp6, fp4")
        if self.group_size < 0 or self.group_size == 1:
            raise FormatError(f"{self}: group size must be at least 2")

    def __str__(self) -> str:
        suffixes = "-absmax" * self.absmax + (f"-g{self.group_size}" if self.group_size else "")
        return f"{self.grid}{self.bits}{suffixes}{'-had' * self.hadamard}"

    @property
    def bits_per_param(self) -> float:
        return self.bits + SCALE_BITS / (self.group_size or NOMINAL_ROW_LENGTH)

    @functools.cached_property
    def levels(self) -> np.ndarray:
        """The grid in scaled units, sorted."""
        return int_levels(self.bits) if self.grid == "int" else FLOAT_GRIDS[self.bits].levels()

    @functools.cached_property
    def scale_per_statistic(self) -> float:
        """scale = this factor * RMS (MSE-optimal clipping) or * max|x| (absmax)."""
        if self.absmax:
            return 1.0 / float(self.levels[-1])
        return optimal_scale(tuple(self.levels.tolist()))

    @functools.cached_property
    def trust_edge(self) -> float:
        """|x / scale| beyond which the error exceeds half the outermost step: no gradient there."""
        top, below = float(self.levels[-1]), float(self.levels[-2])
        return top + (top - below) / 2

    def _round(self, scaled: Tensor) -> Tensor:
        if self.grid == "int":
            top = float(self.levels[-1])
            return torch.floor(scaled).add_(0.5).clamp_(-top, top)
        grid = FLOAT_GRIDS[self.bits]
        if grid.mantissa_bits == E4M3.mantissa_bits:
            # e4m3 and e2m3 share the mantissa; a power-of-two shift maps e2m3's exponent range
            # (subnormals included) onto e4m3's, so torch's float8 cast rounds both, 3x faster.
            shift = 2.0 ** (E4M3.min_exponent - grid.min_exponent)
            clipped = scaled.clamp(-grid.max_value, grid.max_value).mul_(shift)
            return clipped.to(torch.float8_e4m3fn).float().div_(shift)
        magnitude = scaled.abs().clamp_(max=grid.max_value)
        _, exponent = torch.frexp(magnitude)
        step = torch.exp2((exponent - 1).clamp_(min=grid.min_exponent) - grid.mantissa_bits)
        rounded = torch.round(magnitude / step).mul_(step).clamp_(max=grid.max_value)
        return rounded.copysign_(scaled)

    def quantize(self, x: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Quantize a float32 matrix in its own basis; returns (values, gradient pass mask).

        With `keep`, scales are computed over the kept entries only and dropped entries become 0.
        A row or group with nothing to scale (all zero or all dropped) becomes 0, never NaN.
        """
        rows, cols = x.shape
        group = self.group_size or cols
        groups = -(-cols // group)
        padding = groups * group - cols
        if keep is not None:
            x = x * keep
        if padding:
            x = torch.nn.functional.pad(x, (0, padding))
        grouped = x.reshape(rows, groups, group)
        if self.absmax:
            statistic = torch.linalg.vector_norm(grouped, ord=math.inf, dim=-1, keepdim=True)
        else:
            if keep is not None:
                kept = keep.reshape(rows, -1).float()
                if padding:
                    kept = torch.nn.functional.pad(kept, (0, padding))
                count = kept.reshape(rows, groups, group).sum(dim=-1, keepdim=True).clamp_(min=1)
            elif padding:
                count = torch.full((1, groups, 1), float(group), device=x.device)
                count[0, -1, 0] = group - padding
            else:
                count = torch.tensor(float(group), device=x.device)
            norm = torch.linalg.vector_norm(grouped, dim=-1, keepdim=True)
            statistic = norm / count.sqrt()
        nonzero = statistic > 0
        scale = statistic * self.scale_per_statistic
        scaled = grouped / torch.where(nonzero, scale, 1.0)
        values = self._round(scaled).mul_(torch.where(nonzero, scale, 0.0))
        passes = scaled.abs_().le_(self.trust_edge)  # reuses the buffer: 1.0 passes, 0.0 not
        values = values.reshape(rows, groups * group)[:, :cols]
        passes = passes.reshape(rows, groups * group)[:, :cols]
        if keep is not None:
            values = values * keep
            passes = passes * keep
        return values, passes

    def apply(self, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        check_matrix(weight, self)
        return self._apply_rows(weight, mask)

    def quantize_rows(self, x: Tensor) -> Tensor:
        """Quantize a tensor of any rank with one scale per vector along its last dimension (or
        per group of it), the weights' op on every such vector; straight-through backward."""
        flat = x.reshape(-1, x.shape[-1])
        return self._apply_rows(flat, None).reshape(x.shape)

    def quantize_activation(self, x: Tensor) -> Tensor:
        """Quantize activations per token (rows along the feature dimension); used by
        `w:...,a:...` formats (a plain weight format leaves activations alone)."""
        return self.quantize_rows(x)

    def _apply_rows(self, weight: Tensor, mask: Tensor | None) -> Tensor:
        if self.hadamard and mask is not None:
            raise FormatError(f"{self}: a Hadamard-rotated format cannot quantize a sparse weight")
        if self.hadamard:
            rotated = rotate(weight.float())
            return rotate(straight_through(rotated, self.quantize)).to(weight.dtype)
        return straight_through(weight, lambda w: self.quantize(w.float(), mask))
