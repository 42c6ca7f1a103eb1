"""Scalar quantizers of a standard Gaussian: exact MSE and the MSE-optimal scale of a grid.

A grid is a sorted array of reconstruction levels for inputs in scaled units (x / scale); each
input goes to its nearest level, so the cells are bounded by midpoints between neighbouring levels.
The MSE of such a quantizer on N(0, sigma^2) has a closed form per cell, using
    integral_a^b (x - y)^2 phi(x) dx = [Phi(x) (1 + y^2) + phi(x) (2 y - x)]_a^b,
which makes both the exact GMSE of a scalar format and its optimal scale cheap (no sampling).
"""

from __future__ import annotations

import functools
import math

import numpy as np


def _cdf_and_pdf(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import ndtr

    pdf = np.exp(-0.5 * np.square(points)) / math.sqrt(2 * math.pi)
    pdf = np.where(np.isfinite(points), pdf, 0.0)
    return ndtr(points), pdf


def gaussian_quantizer_mse(levels: np.ndarray, scale: float) -> float:
    """E[(x - Q(x))^2] for x ~ N(0, 1) and Q = nearest of `levels * scale` (levels sorted)."""
    values = np.asarray(levels, dtype=np.float64) * scale
    edges = np.concatenate(([-np.inf], (values[1:] + values[:-1]) / 2, [np.inf]))
    cdf, pdf = _cdf_and_pdf(edges)
    lower, upper = slice(None, -1), slice(1, None)
    finite_edges = np.where(np.isfinite(edges), edges, 0.0)
    mass = cdf[upper] - cdf[lower]
    pdf_term_upper = pdf[upper] * (2 * values - finite_edges[upper])
    pdf_term_lower = pdf[lower] * (2 * values - finite_edges[lower])
    per_cell = mass * (1 + values**2) + pdf_term_upper - pdf_term_lower
    return float(np.sum(per_cell))


@functools.cache
def optimal_scale(levels: tuple[float, ...]) -> float:
    """The scale s minimising the N(0, 1) MSE of the grid `levels * s` (grid search, then Brent)."""
    from scipy.optimize import minimize_scalar

    grid = np.asarray(levels)
    top = float(np.max(np.abs(grid)))
    candidates = np.geomspace(0.05 / top, 8.0 / top, 400)
    errors = [gaussian_quantizer_mse(grid, s) for s in candidates]
    best = int(np.argmin(errors))
    low, high = candidates[max(best - 1, 0)], candidates[min(best + 1, len(candidates) - 1)]
    result = minimize_scalar(
        lambda s: gaussian_quantizer_mse(grid, s),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(result.x)
