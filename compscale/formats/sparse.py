"""`dense` and the sparse formats: unstructured magnitude `sp{percent}` and structured `{n}:{m}`.

Survivors stay in 16 bits. Masks are charged at their information content: an unstructured mask at
sparsity s costs the binary entropy H(s) bits per weight (what an ideal compressor of the bitmap
needs; 1 bit at s = 0.5), an n:m mask log2(C(m, n)) / m bits per weight (0.65 for 2:4).

Backward: the exact gradient of weight * mask, so pruned weights get none (gradual magnitude pruning
in the manner of Zhu & Gupta, 2017), unless a `-rms{q}` / `-rbbm{q}` suffix picks another backward
mask (`backward.py`). A format with such a suffix refreshes its forward mask at every training step:
a gradient to a pruned weight only matters if the weight can grow back into the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from compscale.formats.backward import BackwardMask
from compscale.formats.base import (
    DENSE_BITS,
    Component,
    Format,
    FormatError,
    check_matrix,
    straight_through,
)


def binary_entropy(p: float) -> float:
    """H(p) in bits."""
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _check_sparsity(sparsity: float) -> float:
    if not 0.0 <= sparsity < 1.0:
        raise FormatError(f"sparsity must lie in [0, 1), got {sparsity}")
    return sparsity


class Dense(Format):
    """The reference: the weight itself, forward and backward (capacity 1 by definition)."""

    def __str__(self) -> str:
        return "dense"

    @property
    def bits_per_param(self) -> float:
        return float(DENSE_BITS)

    def apply(self, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        return weight if mask is None else weight * mask

    def components(self) -> tuple[Component, ...]:
        return ()


class SparseFormat(Format):
    """Common behaviour of pruning formats: apply = weight * keep-mask, with an optional backward
    mask (`backward`, None for the baseline M_BW = M_FW)."""

    backward: BackwardMask | None

    def components(self) -> tuple[Component, ...]:
        return (Component("weights", "sparsity", self),)

    def mask_bits(self) -> float:
        raise NotImplementedError

    @property
    def bits_per_param(self) -> float:
        return (1 - self.sparsity) * DENSE_BITS + self.mask_bits()

    @property
    def refreshes_mask(self) -> bool:
        return self.backward is not None

    def apply(self, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        check_matrix(weight, self)
        if mask is None:
            mask = self.compute_mask(weight)
        if mask is None:
            return weight
        if self.backward is None:
            return weight * mask
        backward = self.backward
        return straight_through(weight, lambda w: (w * mask, backward.passes(w, mask)))

    def suffix(self) -> str:
        return "" if self.backward is None else str(self.backward)


@dataclass(frozen=True, eq=False, repr=False)
class MagnitudeSparse(SparseFormat):
    """`sp{percent}`: zero exactly round(s * numel) weights of smallest |w| in the whole matrix."""

    target: float
    backward: BackwardMask | None = None

    def __post_init__(self) -> None:
        _check_sparsity(self.target)

    def __str__(self) -> str:
        return f"sp{self.target * 100:g}{self.suffix()}"

    @property
    def sparsity(self) -> float:
        return self.target

    def mask_bits(self) -> float:
        return binary_entropy(self.target)

    def compute_mask(self, weight: Tensor, sparsity: float | None = None) -> Tensor | None:
        sparsity = _check_sparsity(self.target if sparsity is None else sparsity)
        pruned = round(sparsity * weight.numel())
        if pruned == 0:
            return None
        with torch.no_grad():
            magnitude = weight.detach().abs().flatten()
            keep = torch.zeros_like(magnitude, dtype=torch.bool)
            keep[torch.topk(magnitude, weight.numel() - pruned, sorted=False).indices] = True
        return keep.reshape(weight.shape)


@dataclass(frozen=True, eq=False, repr=False)
class NMSparse(SparseFormat):
    """`{n}:{m}`: keep the n largest |w| in every m consecutive weights along a row."""

    n: int
    m: int
    backward: BackwardMask | None = None

    def __post_init__(self) -> None:
        if not 0 < self.n < self.m:
            raise FormatError(f"{self.n}:{self.m}: need 0 < n < m")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}{self.suffix()}"

    @property
    def sparsity(self) -> float:
        return 1 - self.n / self.m

    def mask_bits(self) -> float:
        return math.log2(math.comb(self.m, self.n)) / self.m

    def compute_mask(self, weight: Tensor, sparsity: float | None = None) -> Tensor | None:
        """During a ramp, `sparsity` s prunes round(s * m) of every m (at most m - n), i.e. the
        pattern steps through (m - 1):m, (m - 2):m, ... down to n:m."""
        check_matrix(weight, self)
        sparsity = _check_sparsity(self.sparsity if sparsity is None else sparsity)
        pruned = min(round(sparsity * self.m), self.m - self.n)
        if pruned == 0:
            return None
        rows, cols = weight.shape
        if cols % self.m:
            raise FormatError(f"{self}: row length {cols} is not a multiple of {self.m}")
        with torch.no_grad():
            magnitude = weight.detach().abs().reshape(rows, cols // self.m, self.m)
            keep = torch.zeros_like(magnitude, dtype=torch.bool)
            keep.scatter_(-1, torch.topk(magnitude, self.m - pruned, dim=-1).indices, True)
        return keep.reshape(rows, cols)
