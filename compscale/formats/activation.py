"""`w:FMT,a:FMT`: a weight format plus a scalar format for the activations entering each layer.

Activations are quantized per token: one scale per vector along the last (feature) dimension.
Storage (`bits_per_param`) counts the weights only.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from compscale.formats.base import Component, Format
from compscale.formats.scalar import ScalarFormat


@dataclass(frozen=True, eq=False, repr=False)
class WeightsAndActivations(Format):
    weights: Format
    activations: ScalarFormat
    quantizes_activations = True

    def __str__(self) -> str:
        return f"w:{self.weights},a:{self.activations}"

    @property
    def bits_per_param(self) -> float:
        return self.weights.bits_per_param

    @property
    def sparsity(self) -> float:
        return self.weights.sparsity

    @property
    def refreshes_mask(self) -> bool:
        return self.weights.refreshes_mask

    def compute_mask(self, weight: Tensor, sparsity: float | None = None) -> Tensor | None:
        return self.weights.compute_mask(weight, sparsity)

    def apply(self, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.weights.apply(weight, mask)

    def apply_activation(self, x: Tensor) -> Tensor:
        return self.activations.quantize_activation(x)

    def components(self) -> tuple[Component, ...]:
        """The weight format's parts, then the activation quantizer: rho(w:X,a:Y) multiplies
        rho(X) by the capacity of Y applied to activations."""
        return (
            *self.weights.components(),
            Component("activations", "quantization", self.activations),
        )
