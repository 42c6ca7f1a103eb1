"""The seam between the model and a representation: a linear layer that computes with the weight
its format gives back (straight-through in the backward pass), with quantized inputs where the
format quantizes activations, and through the format's product (`Format.linear`), which quantizes
the backward GEMMs where the format has a `g:` part. Sparse formats keep a boolean keep-mask
buffer, so masks live in the state dict and therefore in checkpoints.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from compscale.formats import Format


class CompressedLinear(nn.Linear):
    """A bias-free linear layer computing with `fmt.apply(weight, mask)` on every call."""

    def __init__(self, in_features: int, out_features: int, fmt: Format):
        super().__init__(in_features, out_features, bias=False)
        self.fmt = fmt
        if fmt.sparsity > 0:
            self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        else:
            self.mask = None

    @torch.no_grad()
    def update_mask(self, sparsity: float) -> None:
        """Recompute the keep-mask from the current weights at `sparsity` (fraction pruned)."""
        if self.mask is None:
            return
        mask = self.fmt.compute_mask(self.weight, sparsity=sparsity)
        if mask is None:
            self.mask.fill_(True)
        else:
            self.mask.copy_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fmt.linear(self.fmt.apply_activation(x), self.fmt.apply(self.weight, self.mask))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, format={self.fmt}"


def linear_factory(fmt: Format):
    """A `workers.model.LinearFactory` that makes `CompressedLinear` layers of one format."""
    return functools.partial(CompressedLinear, fmt=fmt)


def sparsity_at(step: int, total_steps: int, target: float, ramp_fraction: float) -> float:
    """Cubic ramp (Zhu & Gupta 2017) from 0 to `target` over the first `ramp_fraction` of steps."""
    ramp_steps = int(ramp_fraction * total_steps)
    if target == 0 or step >= ramp_steps:
        return target
    return target * (1 - (1 - step / ramp_steps) ** 3)


def mask_update(
    step: int,
    total_steps: int,
    target: float,
    ramp_fraction: float,
    updates: int = 64,
    every_step: bool = False,
) -> float | None:
    """The sparsity to recompute masks at before `step`, or None when the masks stay as they are.

    Masks are recomputed `updates` times over the ramp and once at its end, then frozen; with
    `every_step` (formats whose backward mask feeds pruned weights, `Format.refreshes_mask`) they
    are recomputed before every step, at the ramp's sparsity and then at the target.
    """
    ramp_steps = int(ramp_fraction * total_steps)
    if target == 0:
        return None
    if every_step:
        return sparsity_at(step, total_steps, target, ramp_fraction)
    if step > ramp_steps:
        return None
    if step % max(1, ramp_steps // updates) and step != ramp_steps:
        return None
    return sparsity_at(step, total_steps, target, ramp_fraction)


def update_masks(model: nn.Module, sparsity: float) -> None:
    for module in model.modules():
        if isinstance(module, CompressedLinear):
            module.update_mask(sparsity)
