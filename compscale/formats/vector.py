"""`vq{bits}d{dim}`: vector quantization with a Gaussian-fitted codebook and a per-row scale.

Each row is divided by its RMS, cut into consecutive `dim`-vectors (zero-padded at the end), and
each vector is replaced by its nearest codeword. The codebook has 2^(bits * dim) points: Lloyd's
k-means on N(0, I_dim) samples with a fixed seed, so every process builds the same one. Storage:
`bits` per weight plus the row scale; the codebook itself (at most 2^12 * dim 16-bit numbers) is
not charged.
Backward: straight-through (identity).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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

MAX_CODEBOOK_BITS = 12
SAMPLES_PER_CODEWORD = 64
LLOYD_ITERATIONS = 20
NEAREST_CHUNK = 1 << 16  # vectors per distance matrix, bounding memory to chunk * codewords floats


def nearest_codeword(vectors: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codeword (Euclidean) for each row of `vectors`."""
    half_norms = 0.5 * codebook.square().sum(dim=1)
    indices = [
        (half_norms - chunk @ codebook.T).argmin(dim=1) for chunk in vectors.split(NEAREST_CHUNK)
    ]
    return torch.cat(indices) if indices else vectors.new_zeros(0, dtype=torch.long)


@functools.cache
def gaussian_codebook(bits: int, dim: int) -> Tensor:
    """K-means codebook (float32, CPU) of 2^(bits*dim) points for N(0, I_dim)."""
    size = 2 ** (bits * dim)
    generator = torch.Generator().manual_seed(bits * 1000 + dim)
    samples = torch.randn(size * SAMPLES_PER_CODEWORD, dim, generator=generator)
    codebook = samples[:size].clone()
    for _ in range(LLOYD_ITERATIONS):
        assignment = nearest_codeword(samples, codebook)
        sums = torch.zeros_like(codebook).index_add_(0, assignment, samples)
        counts = torch.bincount(assignment, minlength=size).unsqueeze(1)
        codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
    return codebook


@dataclass(frozen=True, eq=False, repr=False)
class VectorFormat(Format):
    bits: int
    dim: int

    def __post_init__(self) -> None:
        if self.bits < 1 or self.dim < 1 or self.bits * self.dim > MAX_CODEBOOK_BITS:
            raise FormatError(
                f"{self}: need bits >= 1, dim >= 1, bits * dim <= {MAX_CODEBOOK_BITS}"
            )

    def __str__(self) -> str:
        return f"vq{self.bits}d{self.dim}"

    @property
    def bits_per_param(self) -> float:
        return self.bits + SCALE_BITS / NOMINAL_ROW_LENGTH

    def apply(self, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        check_matrix(weight, self)
        if mask is not None:
            raise FormatError(f"{self}: vector quantization does not take a sparsity mask")
        return straight_through(weight, self._quantize)

    def _quantize(self, weight: Tensor) -> tuple[Tensor, None]:
        x = weight.float()
        rows, cols = x.shape
        rms = x.square().mean(dim=1, keepdim=True).sqrt_()
        scale = torch.where(rms > 0, rms, torch.ones_like(rms))
        padding = -cols % self.dim
        scaled = torch.nn.functional.pad(x / scale, (0, padding)).reshape(-1, self.dim)
        codebook = gaussian_codebook(self.bits, self.dim).to(x.device)
        values = codebook[nearest_codeword(scaled, codebook)]
        return values.reshape(rows, cols + padding)[:, :cols] * scale * (rms > 0), None
