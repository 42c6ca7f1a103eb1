"""Backward masks of sparse formats (Panferov et al. 2025, §5.2 and App. F.3).

The forward mask M_FW (top-k |w| with threshold T_k, or n:m) is untouched; these choose which
weights the straight-through estimator passes gradient to, so GMSE and storage do not change:
- baseline (no suffix): M_BW = M_FW, pruned weights get no gradient;
- `-rms{q}`: M_BW = |w| > T_p with T_p = RMS(w) * Phi^-1(0.5 + q) (q is the median deviation: a
  Gaussian weight lies below T_p with probability 2q);
- `-rbbm{q}` (banded): no gradient inside [min(T_p, T_k), max(T_p, T_k)], i.e. wherever |w| sits
  between the forward threshold and T_p. q = 0 is the baseline.
RMS(w) is taken over the whole latent matrix (pruned weights included), as T_k is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import torch
from torch import Tensor

from compscale.formats.base import FormatError

BackwardKind = Literal["rms", "rbbm"]


@dataclass(frozen=True)
class BackwardMask:
    """`-rms{q}` or `-rbbm{q}` after a sparse format."""

    kind: BackwardKind
    deviation: float  # q

    def __post_init__(self) -> None:
        low_ok = self.deviation > 0 or (self.kind == "rbbm" and self.deviation == 0)
        if not (low_ok and self.deviation < 0.5):
            bounds = "[0, 0.5)" if self.kind == "rbbm" else "(0, 0.5)"
            raise FormatError(f"-{self.kind}{self.deviation:g}: q must lie in {bounds}")

    def __str__(self) -> str:
        return f"-{self.kind}{self.deviation:g}"

    @functools.cached_property
    def quantile(self) -> float:
        """Phi^-1(0.5 + q): T_p in units of RMS(w)."""
        return NormalDist().inv_cdf(0.5 + self.deviation) if self.deviation else 0.0

    def threshold(self, weight: Tensor) -> Tensor:
        """T_p = RMS(w) * Phi^-1(0.5 + q), a 0-d tensor."""
        return weight.float().square().mean().sqrt() * self.quantile

    def passes(self, weight: Tensor, keep: Tensor) -> Tensor:
        """M_BW (bool) for `weight` whose forward keep-mask is `keep`.

        The band is written through `keep` rather than a scalar T_k: |w| lies between T_k and T_p
        exactly when its forward decision (kept / pruned) disagrees with the T_p test. This equals
        the threshold form for a fresh top-k mask, also holds for n:m masks (one T_k per group),
        and makes q = 0 give M_FW exactly.
        """
        magnitude = weight.detach().abs()
        t_p = self.threshold(weight.detach())
        if self.kind == "rms":
            return magnitude > t_p
        return torch.where(keep, magnitude >= t_p, magnitude < t_p)
