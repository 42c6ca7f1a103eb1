"""`A+B`: prune with sparse format A, then quantize the survivors with scalar format B.

B's scales (RMS or absmax per row or group) are computed over the survivors only, and a row or group
with no survivor becomes zero. Storage: B's bits for each survivor, B's scales, and A's mask.
Backward: B's trust mask restricted to survivors; with a backward mask on A (`sp50-rbbm0.1+int4`),
a survivor needs both B's trust and A's backward mask, and a pruned weight A's backward mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from compscale.formats.base import (
    NOMINAL_ROW_LENGTH,
    SCALE_BITS,
    Component,
    Format,
    FormatError,
    check_matrix,
    straight_through,
)
from compscale.formats.scalar import ScalarFormat
from compscale.formats.sparse import SparseFormat


@dataclass(frozen=True, eq=False, repr=False)
class Composed(Format):
    pruning: SparseFormat
    quantizer: ScalarFormat

    def __post_init__(self) -> None:
        if self.quantizer.hadamard:
            raise FormatError(f"{self}: a rotated (-had) quantizer would undo the sparsity")

    def __str__(self) -> str:
        return f"{self.pruning}+{self.quantizer}"

    @property
    def sparsity(self) -> float:
        return self.pruning.sparsity

    @property
    def bits_per_param(self) -> float:
        scale_bits = SCALE_BITS / (self.quantizer.group_size or NOMINAL_ROW_LENGTH)
        survivors = (1 - self.sparsity) * self.quantizer.bits
        return survivors + scale_bits + self.pruning.mask_bits()

    @property
    def refreshes_mask(self) -> bool:
        return self.pruning.refreshes_mask

    def compute_mask(self, weight: Tensor, sparsity: float | None = None) -> Tensor | None:
        return self.pruning.compute_mask(weight, sparsity)

    def components(self) -> tuple[Component, ...]:
        return (*self.pruning.components(), *self.quantizer.components())

    def apply(self, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            mask = self.compute_mask(weight)
        backward = self.pruning.backward
        if backward is None or mask is None:
            return self.quantizer.apply(weight, mask)
        check_matrix(weight, self)

        def compress(w: Tensor) -> tuple[Tensor, Tensor]:
            values, trusted = self.quantizer.quantize(w.float(), mask)
            passes = backward.passes(w, mask)
            return values, passes & torch.where(mask, trusted.bool(), True)

        return straight_through(weight, compress)
