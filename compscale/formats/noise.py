"""`noise{gmse}`: Gaussian noise of a given relative MSE, the paper's stand-in for a format.

Forward: w + sqrt(gmse) * RMS(row) * eps with eps ~ N(0, 1) drawn fresh from torch's global
generator at every call (so a run is reproducible under `torch.manual_seed`); backward: identity.
No storage exists, so `bits_per_param` reports log_{1/4}(gmse), the rate-distortion bits: the
fewest bits per weight any format needs to reach that GMSE on Gaussian weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from compscale.formats.base import Format, FormatError, check_matrix, straight_through


@dataclass(frozen=True, eq=False, repr=False)
class NoiseFormat(Format):
    relative_mse: float

    def __post_init__(self) -> None:
        if not 0 < self.relative_mse < 1:
            raise FormatError(f"noise{self.relative_mse:g}: the relative MSE must lie in (0, 1)")

    def __str__(self) -> str:
        return f"noise{self.relative_mse:g}"

    @property
    def bits_per_param(self) -> float:
        return math.log(self.relative_mse, 0.25)

    def apply(self, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        check_matrix(weight, self)
        if mask is not None:
            raise FormatError(f"{self}: noise injection does not take a sparsity mask")
        return straight_through(weight, self._perturb)

    def _perturb(self, weight: Tensor) -> tuple[Tensor, None]:
        x = weight.float()
        rms = x.square().mean(dim=1, keepdim=True).sqrt_()
        noise = torch.randn(x.shape, device=x.device).mul_(rms * math.sqrt(self.relative_mse))
        return x + noise, None
