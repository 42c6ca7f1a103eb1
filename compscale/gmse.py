"""Gaussian MSE of a representation: GMSE(R) = E||x - R(x)||^2 / E||x||^2, x i.i.d. N(0, 1).

x is laid out as a rows x cols weight matrix and R is `fmt.apply`, the op training uses, so
grouping, scales, clipping and rotation are the training ones. Two ways to compute it:
- exact: a scalar format with one MSE-clipped scale per row (any rotation: a Hadamard-rotated
  Gaussian row is Gaussian) is integrated in closed form over the Gaussian density, in the long-row
  limit where the row RMS is 1 (at 128 x 4096 the Monte Carlo value of int4 lies within its
  stderr of it);
  `dense` is 0 and `noise{g}` is g by construction;
- Monte Carlo otherwise, with a seeded matrix; the standard error treats rows as independent samples
  of the ratio (delta method).
For `w:...,a:...` and `...,g:...` formats the GMSE is the weight format's; a format's capacity,
though, is per tensor and per method (`Format.components`), so `components` gives each part's own
GMSE: the weights' sparsity and quantization, the activations' quantizer (applied per token, the
same per-row op as for weights, so its GMSE on N(0, 1) data is that format's GMSE), and the
backward GEMMs' quantizer of a `g:` part (the same per-row op along each GEMM's reduction
dimension: the relative error it adds to each backward operand, were the operand Gaussian).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from compscale.formats import Format, parse
from compscale.formats.activation import WeightsAndActivations
from compscale.formats.base import Direction
from compscale.formats.gaussian import gaussian_quantizer_mse
from compscale.formats.gradients import QuantizedBackward
from compscale.formats.noise import NoiseFormat
from compscale.formats.scalar import ScalarFormat
from compscale.formats.sparse import Dense

DEFAULT_ROWS = 128
DEFAULT_COLS = 4096
Method = Literal["auto", "exact", "monte-carlo"]


@dataclass(frozen=True)
class ComponentGMSE:
    """One part of a format (`Format.components`) with its own GMSE: what the capacity law sees."""

    tensor: str  # "weights", "activations" or "gradients" (the backward GEMMs' operands)
    direction: Direction  # "forward" (weights, activations) or "backward" (gradients)
    family: str  # "quantization" or "sparsity"
    format: str
    gmse: float
    stderr: float


@dataclass(frozen=True)
class GMSEEstimate:
    format: str
    bits_per_param: float
    gmse: float
    stderr: float  # 0.0 for exact values
    effective_bits: float  # log_{1/4}(gmse); inf when gmse == 0
    method: str  # "exact" or "monte-carlo"

    def as_json(self) -> dict[str, object]:
        """The CLI's JSON object; an infinite effective_bits (a lossless format) becomes null."""
        row = asdict(self)
        del row["method"]
        if math.isinf(self.effective_bits):
            row["effective_bits"] = None
        return row


def exact_gmse(fmt: Format | str) -> float | None:
    """The closed-form GMSE in the long-row limit, or None where no closed form applies."""
    fmt = parse(fmt) if isinstance(fmt, str) else fmt
    if isinstance(fmt, WeightsAndActivations):
        return exact_gmse(fmt.weights)
    if isinstance(fmt, QuantizedBackward):
        return exact_gmse(fmt.forward)
    if isinstance(fmt, Dense):
        return 0.0
    if isinstance(fmt, NoiseFormat):
        return fmt.relative_mse
    if isinstance(fmt, ScalarFormat) and not fmt.absmax and not fmt.group_size:
        return gaussian_quantizer_mse(fmt.levels, fmt.scale_per_statistic)
    return None


def monte_carlo_gmse(fmt: Format | str, rows: int, cols: int, seed: int) -> tuple[float, float]:
    """(GMSE, standard error) of `fmt.apply` on one seeded rows x cols N(0, 1) matrix."""
    fmt = parse(fmt) if isinstance(fmt, str) else fmt
    if rows < 2 or cols < 1:
        raise ValueError(
            f"need rows >= 2 and cols >= 1 for a Monte Carlo GMSE, got {rows} x {cols}"
        )
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        x = torch.randn(rows, cols, dtype=torch.float64).float()
        error = (x - fmt.apply(x)).double().square().sum(dim=1)
    energy = x.double().square().sum(dim=1)
    ratio = float(error.sum() / energy.sum())
    residual = error - ratio * energy
    stderr = float(residual.std() / energy.mean() / math.sqrt(rows))
    return ratio, stderr


def estimate(
    fmt: Format | str,
    rows: int = DEFAULT_ROWS,
    cols: int = DEFAULT_COLS,
    seed: int = 0,
    method: Method = "auto",
) -> GMSEEstimate:
    """GMSE with its standard error; `auto` integrates exactly where a closed form applies."""
    fmt = parse(fmt) if isinstance(fmt, str) else fmt
    exact = exact_gmse(fmt) if method != "monte-carlo" else None
    if method == "exact" and exact is None:
        raise ValueError(f"no closed-form GMSE for format {fmt}; use Monte Carlo")
    if exact is not None:
        value, stderr, used = exact, 0.0, "exact"
    else:
        value, stderr = monte_carlo_gmse(fmt, rows, cols, seed)
        used = "monte-carlo"
    effective = math.inf if value <= 0 else math.log(value, 0.25)
    return GMSEEstimate(str(fmt), fmt.bits_per_param, value, stderr, effective, used)


def gmse(
    fmt: Format | str,
    rows: int = DEFAULT_ROWS,
    cols: int = DEFAULT_COLS,
    seed: int = 0,
    method: Method = "auto",
) -> float:
    """E||x - R(x)||^2 / E||x||^2 (see `estimate`)."""
    return estimate(fmt, rows, cols, seed, method).gmse


def components(
    fmt: Format | str,
    rows: int = DEFAULT_ROWS,
    cols: int = DEFAULT_COLS,
    seed: int = 0,
    method: Method = "auto",
) -> tuple[ComponentGMSE, ...]:
    """Each compressed part of `fmt` with its GMSE (dense has none)."""
    fmt = parse(fmt) if isinstance(fmt, str) else fmt
    parts = []
    for part in fmt.components():
        value = estimate(part.format, rows, cols, seed, method)
        parts.append(
            ComponentGMSE(
                part.tensor,
                part.direction,
                part.family,
                str(part.format),
                value.gmse,
                value.stderr,
            )
        )
    return tuple(parts)


def parts_of(name: str, direction: Direction = "forward") -> tuple[tuple[str, float], ...]:
    """A format's (family, GMSE) parts in one direction: the forward ones are what the capacity
    law multiplies over (rho on N), the backward ones (`g:`) what acts on D. Cached, since a fit
    asks for the same formats again and again."""
    return _parts_of(str(parse(name)), direction)


@functools.lru_cache(maxsize=512)
def _parts_of(name: str, direction: Direction) -> tuple[tuple[str, float], ...]:
    return tuple(
        (part.family, part.gmse) for part in components(name) if part.direction == direction
    )
