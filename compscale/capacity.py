"""The capacity law rho = L tanh(F log_{1/4}(GMSE))^C and the composition check of capacities.

GMSE is a format's relative Gaussian MSE (dimensionless); log_{1/4}(GMSE) is its effective bits
(the bits at which the rate-distortion bound 4^-bits equals that MSE). Dense has GMSE 0, infinite
bits and rho = 1 by definition, so it carries no information about L, F, C and is left out of fits;
the law sends GMSE -> 0 to rho -> L.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

# Effective bits above this count as infinite: tanh is 1 to double precision long before.
MAX_BITS = 60.0


def effective_bits(gmse: float | np.ndarray) -> np.ndarray:
    """log_{1/4}(GMSE) in bits; GMSE 0 (dense) gives infinity."""
    gmse = np.asarray(gmse, dtype=float)
    with np.errstate(divide="ignore"):
        return -np.log(gmse) / math.log(4.0)


def capped_bits(gmse: float | np.ndarray) -> np.ndarray:
    """Effective bits the capacity law is evaluated at: infinite (dense) becomes MAX_BITS."""
    return np.minimum(effective_bits(gmse), MAX_BITS)


# Fits reach capacities through u on the whole real line: rho = exp(-softplus(u)) stays in (0, 1]
# without bounds on rho, and the tanh law's F and C through their logs, which keeps them positive.


def log_rho_of_u(u: float | np.ndarray) -> np.ndarray:
    """log rho = -softplus(u)."""
    return -np.logaddexp(0.0, u)


def log_rho_of_u_grad(u: float | np.ndarray) -> np.ndarray:
    """d log rho / d u = -sigmoid(u)."""
    return -0.5 * (1.0 + np.tanh(0.5 * np.asarray(u)))


def u_of_rho(rho: float) -> float:
    """Inverse of rho = exp(-softplus(u)), rho clipped into (0, 1)."""
    rho = min(max(rho, 1e-9), 1.0 - 1e-9)
    return float(np.log(np.expm1(-np.log(rho))))


def _log_tanh_law(log_cap, slope, power, bits: np.ndarray) -> np.ndarray:
    """log(L tanh(F bits)^C) from log L, F and C: the capacity law's one formula."""
    return log_cap + power * np.log(np.tanh(slope * bits))


def log_tanh_law(z: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """log rho of the capacity law at `bits`, in fit coordinates z = (u, log F, log C)."""
    u, log_slope, log_power = z
    return _log_tanh_law(log_rho_of_u(u), np.exp(log_slope), np.exp(log_power), bits)


def log_tanh_law_jac(z: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """d log rho / d z of `log_tanh_law`: one row per entry of `bits`, one column per z."""
    u, log_slope, log_power = z
    power = np.exp(log_power)
    x = np.exp(log_slope) * bits
    t = np.tanh(x)
    return np.stack(
        [np.full(len(x), log_rho_of_u_grad(u)), power * x * (1.0 / t - t), power * np.log(t)], 1
    )


def tanh_law_params(z: np.ndarray) -> tuple[float, float, float]:
    """L, F, C of fit coordinates z = (u, log F, log C)."""
    return math.exp(float(log_rho_of_u(z[0]))), math.exp(z[1]), math.exp(z[2])


def log_capacity(bits: np.ndarray, cap: float, slope: float, power: float) -> np.ndarray:
    """log rho of the capacity law at `bits`, from L = `cap`, F = `slope`, C = `power`."""
    return _log_tanh_law(math.log(cap), slope, power, bits)


def capacity(gmse: float | np.ndarray, cap: float, slope: float, power: float) -> np.ndarray:
    """rho = L tanh(F bits)^C with L = `cap`, F = `slope`, C = `power`; GMSE 0 gives L."""
    return np.exp(log_capacity(capped_bits(gmse), cap, slope, power))


@dataclass(frozen=True)
class CapacityFit:
    """Fitted L, F, C with CIs (95% percentile over `samples`), the pairs used and the fit error."""

    L: float
    F: float
    C: float
    ci: dict[str, tuple[float, float]]
    formats: tuple[str, ...]
    gmse: np.ndarray
    rho: np.ndarray
    rmse_log_rho: float
    samples: np.ndarray

    def predict(self, gmse: float | np.ndarray) -> np.ndarray:
        """Capacity of a format from its GMSE alone."""
        return capacity(gmse, self.L, self.F, self.C)

    def summary(self) -> str:
        lines = [f"capacity law over {len(self.formats)} formats, {len(self.samples)} resamples"]
        for name in ("L", "F", "C"):
            low, high = self.ci.get(name, (math.nan, math.nan))
            lines.append(f"{name:<4}{getattr(self, name):>10.4g}  [{low:.4g}, {high:.4g}]")
        lines.append(f"RMSE of log rho {self.rmse_log_rho:.4g}")
        return "\n".join(lines)


def _check_pairs(gmse: np.ndarray, rho: np.ndarray, formats: Sequence[str]) -> None:
    if len(gmse) != len(rho) or len(formats) != len(rho):
        raise ValueError("gmse, rho and formats must have the same length")
    for name, g, r in zip(formats, gmse, rho, strict=True):
        if not 0 < g < 1:
            raise ValueError(
                f"gmse: format {name!r} has GMSE {float(g):g}; the capacity law needs 0 < GMSE < 1 "
                "(leave dense out)"
            )
        if not 0 < r <= 1:
            raise ValueError(f"rho: format {name!r} has rho {float(r):g}; need 0 < rho <= 1")
    if len(np.unique(gmse)) < 4:
        raise ValueError(
            f"formats: {len(np.unique(gmse))} distinct GMSE values for 3 parameters (L, F, C); "
            "need at least 4"
        )


def _fit_once(bits: np.ndarray, log_rho: np.ndarray, starts: list[np.ndarray]) -> np.ndarray:
    """Best least-squares fit of log rho over starts in z = (u, log F, log C)."""

    def residuals(z: np.ndarray) -> np.ndarray:
        return log_capacity(bits, *tanh_law_params(z)) - log_rho

    bounds = ([-25.0, -10.0, -10.0], [25.0, 5.0, 5.0])
    results = [least_squares(residuals, z, bounds=bounds, xtol=1e-12, ftol=1e-12) for z in starts]
    return min(results, key=lambda result: result.cost).x


_STARTS = [
    np.array([u, math.log(slope), math.log(power)])
    for u, slope, power in itertools.product((-3.0, 0.0), (0.2, 0.6, 1.5), (0.5, 1.5, 4.0))
]


def fit_capacity(
    gmse: Sequence[float],
    rho: Sequence[float],
    formats: Sequence[str] | None = None,
    rho_samples: np.ndarray | None = None,
    bootstrap: int = 200,
    seed: int = 0,
) -> CapacityFit:
    """Fit L, F, C to (GMSE, rho) pairs by least squares on log rho, from a grid of 18 starts.

    CIs: when `rho_samples` (resamples x formats, e.g. a law fit's bootstrap) is given, L, F, C
    are refitted to each row so the CIs carry the uncertainty of every rho; otherwise the pairs
    themselves are resampled `bootstrap` times.
    """
    gmse_array = np.asarray(gmse, dtype=float)
    rho_array = np.asarray(rho, dtype=float)
    names = tuple(formats) if formats is not None else tuple(f"#{i}" for i in range(len(rho_array)))
    _check_pairs(gmse_array, rho_array, names)
    bits = capped_bits(gmse_array)
    best = _fit_once(bits, np.log(rho_array), _STARTS)
    cap, slope, power = tanh_law_params(best)
    rng = np.random.default_rng(seed)
    if rho_samples is not None:
        draws = [(bits, np.log(np.clip(row, 1e-12, 1.0))) for row in np.asarray(rho_samples)]
    else:
        draws = []
        for _ in range(bootstrap):
            rows = rng.choice(len(bits), size=len(bits), replace=True)
            draws.append((bits[rows], np.log(rho_array[rows])))
    samples = np.array([tanh_law_params(_fit_once(b, r, [best])) for b, r in draws]).reshape(-1, 3)
    ci = {}
    if len(samples):
        low, high = np.percentile(samples, [2.5, 97.5], axis=0)
        ci = {name: (float(low[i]), float(high[i])) for i, name in enumerate(("L", "F", "C"))}
    predicted = capacity(gmse_array, cap, slope, power)
    return CapacityFit(
        L=cap,
        F=slope,
        C=power,
        ci=ci,
        formats=names,
        gmse=gmse_array,
        rho=rho_array,
        rmse_log_rho=float(np.sqrt(np.mean(np.log(predicted / rho_array) ** 2))),
        samples=samples,
    )


def leave_one_out(gmse: Sequence[float], rho: Sequence[float]) -> np.ndarray:
    """rho of each format predicted from its GMSE by a law fitted to all the other formats."""
    gmse_array = np.asarray(gmse, dtype=float)
    rho_array = np.asarray(rho, dtype=float)
    predictions = np.full(len(rho_array), np.nan)
    for i in range(len(rho_array)):
        keep = np.arange(len(rho_array)) != i
        if len(np.unique(gmse_array[keep])) < 4:
            continue
        law = fit_capacity(gmse_array[keep], rho_array[keep], bootstrap=0)
        predictions[i] = float(law.predict(gmse_array[i]))
    return predictions


def composition_table(
    rho: Mapping[str, float],
    samples: Mapping[str, np.ndarray] | None = None,
    tolerance: float = 0.02,
) -> pd.DataFrame:
    """For every format `A+B` whose parts were fitted: rho(A+B) / (rho(A) rho(B)) and its CI.

    `samples` maps format -> bootstrap draws of its rho (the same draws across formats, so the
    ratio's CI keeps their correlation). A pair is flagged when the ratio's 95% CI lies entirely
    above 1 + `tolerance` or below 1 - `tolerance`; without samples, when |ratio - 1| > tolerance.
    """
    rows = []
    for name, value in rho.items():
        parts = name.split("+")
        if len(parts) < 2 or not all(part in rho for part in parts):
            continue
        product = math.prod(rho[part] for part in parts)
        ratio = value / product
        low = high = math.nan
        if samples is not None:
            draws = samples[name] / np.prod([samples[part] for part in parts], axis=0)
            low, high = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
            flagged = low > 1 + tolerance or high < 1 - tolerance
        else:
            flagged = abs(ratio - 1) > tolerance
        rows.append(
            {
                "format": name,
                "parts": " * ".join(parts),
                "rho": value,
                "rho_product": product,
                "ratio": ratio,
                "ratio_ci_low": low,
                "ratio_ci_high": high,
                "rel_error": ratio - 1,
                "rel_error_ci_low": low - 1,
                "rel_error_ci_high": high - 1,
                "flagged": bool(flagged),
            }
        )
    columns = [
        "format",
        "parts",
        "rho",
        "rho_product",
        "ratio",
        "ratio_ci_low",
        "ratio_ci_high",
        "rel_error",
        "rel_error_ci_low",
        "rel_error_ci_high",
        "flagged",
    ]
    return pd.DataFrame(rows, columns=columns)
