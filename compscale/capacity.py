"""The capacity law rho = L tanh(F log_{1/4}(GMSE))^C and the composition check of capacities.

GMSE is a format's relative Gaussian MSE (dimensionless); log_{1/4}(GMSE) is its effective bits
(the bits at which the rate-distortion bound 4^-bits equals that MSE). Dense has GMSE 0, infinite
bits and rho = 1 by definition, so it carries no information about L, F, C and is left out of fits;
the law sends GMSE -> 0 to rho -> L.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
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


# The unified law's per-format rho stays in (0, 1] through u on the whole real line:
# rho = exp(-softplus(u)).


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


def log_capacity(bits: np.ndarray, cap: float, slope: float, power: float) -> np.ndarray:
    """log rho of the capacity law at `bits`, from L = `cap`, F = `slope`, C = `power`."""
    return _log_tanh_law(math.log(cap), slope, power, bits)


def capacity(gmse: float | np.ndarray, cap: float, slope: float, power: float) -> np.ndarray:
    """rho = L tanh(F bits)^C with L = `cap`, F = `slope`, C = `power`; GMSE 0 gives L."""
    return np.exp(log_capacity(capped_bits(gmse), cap, slope, power))


# ---- per-part capacity: rho(format) = prod over its parts of L tanh(F b_part)^C ----------------
# A part is (family, GMSE): a format's weight sparsity, weight quantization, activation
# quantization (`compscale.formats.Format.components`). The capacity law is fitted in coordinates
# z = (log L, log F, log C), one triple per parameter group: one group per compression family, or
# one shared group "all". L is free up to a generous bound (the paper's L is about 1 and may exceed
# it); a fit that reaches a bound says so.
Part = tuple[str, float]
SHARED = "all"
Z_BOUNDS = ((math.log(0.01), math.log(4.0)), (-10.0, 5.0), (-10.0, 5.0))
MIN_DISTINCT_GMSE = 3  # parts of distinct GMSE a group needs for its own L, F, C


def parameter_groups(parts: Iterable[Sequence[Part]]) -> tuple[str, ...]:
    """One L, F, C per compression family when every family present has parts of at least
    MIN_DISTINCT_GMSE distinct GMSEs, else one shared set: a family seen at one or two GMSEs
    cannot shape its own curve."""
    by_family: dict[str, set[float]] = {}
    for format_parts in parts:
        for family, gmse in format_parts:
            by_family.setdefault(family, set()).add(round(float(gmse), 12))
    families = tuple(sorted(by_family))
    if len(families) > 1 and all(len(v) >= MIN_DISTINCT_GMSE for v in by_family.values()):
        return families
    return (SHARED,)


def parameter_names(groups: Sequence[str]) -> tuple[str, ...]:
    """`L`, `F`, `C` for one shared group, else `L[family]` etc. per group."""
    if tuple(groups) == (SHARED,):
        return ("L", "F", "C")
    return tuple(f"{name}[{group}]" for group in groups for name in ("L", "F", "C"))


@dataclass(frozen=True)
class PartTable:
    """The parts of an ordered list of formats, laid out for vectorised log rho and Jacobian."""

    format_index: np.ndarray  # the format each part belongs to
    group_index: np.ndarray  # the parameter group of each part
    bits: np.ndarray  # effective bits of each part (capped)
    formats: int
    groups: tuple[str, ...]

    @classmethod
    def build(cls, parts: Sequence[Sequence[Part]], groups: Sequence[str]) -> PartTable:
        rows = [(i, family, gmse) for i, fp in enumerate(parts) for family, gmse in fp]
        groups = tuple(groups)
        return cls(
            np.array([i for i, _, _ in rows], dtype=np.int64),
            np.array([groups.index(f) if f in groups else 0 for _, f, _ in rows], dtype=np.int64),
            capped_bits(np.array([g for _, _, g in rows], dtype=float)),
            len(parts),
            groups,
        )

    def log_rho(self, z: np.ndarray) -> np.ndarray:
        """log rho per format: the sum over its parts of log L + C log tanh(F b)."""
        log_cap, slope, power = (np.exp(z[i::3]) if i else z[0::3] for i in range(3))
        g = self.group_index
        per_part = _log_tanh_law(log_cap[g], slope[g], power[g], self.bits)
        return np.bincount(self.format_index, per_part, minlength=self.formats)

    def log_rho_jac(self, z: np.ndarray) -> np.ndarray:
        """d log rho / d z: one row per format, three columns (log L, log F, log C) per group."""
        g = self.group_index
        slope, power = np.exp(z[1::3])[g], np.exp(z[2::3])[g]
        x = slope * self.bits
        t = np.tanh(x)
        jac = np.zeros((self.formats, len(z)))
        for column, values in enumerate(
            (np.ones_like(x), power * x * (1 / t - t), power * np.log(t))
        ):
            np.add.at(jac, (self.format_index, 3 * g + column), values)
        return jac


def z_of_params(params: Sequence[float]) -> np.ndarray:
    """Fit coordinates (log L, log F, log C, ...) of natural (L, F, C, ...)."""
    return np.log(np.asarray(params, dtype=float))


@dataclass(frozen=True)
class CapacityLaw:
    """rho of a format = the product over its parts of L tanh(F log_{1/4} GMSE)^C, with the L, F,
    C of the part's family (or the shared "all" set)."""

    params: dict[str, tuple[float, float, float]]  # group -> (L, F, C)

    def group_of(self, family: str) -> str:
        return family if family in self.params else SHARED

    def rho(self, parts: Sequence[Part]) -> float:
        total = 0.0
        for family, gmse in parts:
            total += float(log_capacity(capped_bits(gmse), *self.params[self.group_of(family)]))
        return math.exp(total)

    def bound(self, bits: float, family: str = "quantization") -> float:
        """The compression lower bound: rho at the best GMSE any format of `bits` bits per
        parameter can have (the Gaussian rate-distortion bound GMSE = 4^-bits)."""
        return float(np.exp(log_capacity(np.array(bits), *self.params[self.group_of(family)])))


def law_starts(groups: int) -> list[np.ndarray]:
    """Starts of the capacity law's coordinates in a joint (unified-gmse) fit: L 1, F 0.3 or 1,
    C 0.5 or 2, the same for every parameter group."""
    return [
        np.tile(z_of_params((cap, slope, power)), groups)
        for cap, slope, power in itertools.product((1.0,), (0.3, 1.0), (0.5, 2.0))
    ]


def _starts(groups: int) -> list[np.ndarray]:
    return [
        np.tile(z_of_params((cap, slope, power)), groups)
        for cap, slope, power in itertools.product((1.0,), (0.2, 0.6, 1.5), (0.5, 1.5, 4.0))
    ]


def _bounds(groups: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.tile([low for low, _ in Z_BOUNDS], groups),
        np.tile([high for _, high in Z_BOUNDS], groups),
    )


def _fit_z(table: PartTable, log_rho: np.ndarray, scale: np.ndarray, starts: list[np.ndarray]):
    """Best weighted least-squares z over `starts`: residuals (model - observed) / scale."""
    lower, upper = _bounds(len(table.groups))

    def residuals(z: np.ndarray) -> np.ndarray:
        return (table.log_rho(z) - log_rho) / scale

    def jacobian(z: np.ndarray) -> np.ndarray:
        return table.log_rho_jac(z) / scale[:, None]

    results = [
        least_squares(
            residuals, np.clip(z, lower, upper), jac=jacobian, bounds=(lower, upper), xtol=1e-12,
            ftol=1e-12, gtol=1e-12,
        )
        for z in starts
    ]  # fmt: skip
    return min(results, key=lambda result: result.cost).x


@dataclass(frozen=True)
class CapacityFit:
    """A two-stage capacity law: fitted to per-format rhos, weighted by their uncertainty."""

    law: CapacityLaw
    names: tuple[str, ...]  # L, F, C (or per family), the order of `samples`' columns
    values: dict[str, float]
    ci: dict[str, tuple[float, float]]
    at_bound: tuple[str, ...]  # parameters that ended on a bound of Z_BOUNDS
    formats: tuple[str, ...]
    rho: np.ndarray
    predicted: np.ndarray
    log_rho_sd: np.ndarray  # the weights: uncertainty of each format's log rho
    rmse_log_rho: float
    samples: np.ndarray

    def summary(self) -> str:
        lines = [f"capacity law over {len(self.formats)} formats, {len(self.samples)} resamples"]
        for name in self.names:
            low, high = self.ci.get(name, (math.nan, math.nan))
            note = "  (at its bound)" if name in self.at_bound else ""
            lines.append(f"{name:<16}{self.values[name]:>10.4g}  [{low:.4g}, {high:.4g}]{note}")
        lines.append(f"RMSE of log rho {self.rmse_log_rho:.4g}")
        return "\n".join(lines)


SD_FLOOR = 0.01  # log rho uncertainty below this counts as this: no format gets infinite weight


def fit_capacity(
    formats: Sequence[str],
    rho: Sequence[float],
    parts: Sequence[Sequence[Part]],
    *,
    rho_samples: np.ndarray | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> CapacityFit:
    """Fit the capacity law to per-format rhos: least squares on log rho, each format weighted by
    1 / the standard deviation of its log rho over `rho_samples` (resamples x formats, e.g. the law
    fit's bootstrap; unweighted without it), from a grid of starts.

    CIs: L, F, C refitted to every row of `rho_samples` (so they carry every rho's uncertainty), or
    to `bootstrap` resamples of the formats when no samples are given.
    """
    names = tuple(formats)
    rho_array = np.asarray(rho, dtype=float)
    groups = tuple(groups or parameter_groups(parts))
    _check_inputs(names, rho_array, parts, groups)
    table = PartTable.build(parts, groups)
    log_rho = np.log(rho_array)
    sd = np.ones(len(names))
    if rho_samples is not None and len(rho_samples) > 1:
        draws = np.log(np.clip(np.asarray(rho_samples, dtype=float), 1e-12, None))
        sd = np.maximum(draws.std(axis=0, ddof=1), SD_FLOOR)
    best = _fit_z(table, log_rho, sd, _starts(len(groups)))
    samples = []
    if rho_samples is not None:
        for row in draws if len(rho_samples) > 1 else []:
            samples.append(np.exp(_fit_z(table, row, sd, [best])))
    else:
        rng = np.random.default_rng(seed)
        for _ in range(bootstrap):
            rows = rng.choice(len(names), size=len(names), replace=True)
            sub = PartTable.build([parts[i] for i in rows], groups)
            samples.append(np.exp(_fit_z(sub, log_rho[rows], sd[rows], [best])))
    samples_array = np.array(samples).reshape(-1, len(best))
    param_names = parameter_names(groups)
    ci = {}
    if len(samples_array):
        low, high = np.percentile(samples_array, [2.5, 97.5], axis=0)
        ci = {name: (float(low[i]), float(high[i])) for i, name in enumerate(param_names)}
    lower, upper = _bounds(len(groups))
    at_bound = tuple(
        name
        for name, z, lo, hi in zip(param_names, best, lower, upper, strict=True)
        if z <= lo + 1e-6 or z >= hi - 1e-6
    )
    natural = np.exp(best)
    law = CapacityLaw({g: tuple(natural[3 * i : 3 * i + 3]) for i, g in enumerate(groups)})
    predicted = np.exp(table.log_rho(best))
    return CapacityFit(
        law=law,
        names=param_names,
        values=dict(zip(param_names, (float(v) for v in natural), strict=True)),
        ci=ci,
        at_bound=at_bound,
        formats=names,
        rho=rho_array,
        predicted=predicted,
        log_rho_sd=sd,
        rmse_log_rho=float(np.sqrt(np.mean(np.log(predicted / rho_array) ** 2))),
        samples=samples_array,
    )


def _check_inputs(
    names: Sequence[str], rho: np.ndarray, parts: Sequence[Sequence[Part]], groups: Sequence[str]
) -> None:
    if not len(names) == len(rho) == len(parts):
        raise ValueError("formats, rho and parts must have the same length")
    for name, value, format_parts in zip(names, rho, parts, strict=True):
        if not format_parts:
            raise ValueError(f"parts: format {name!r} has no compressed part (leave dense out)")
        for family, gmse in format_parts:
            if not 0 < gmse < 1:
                raise ValueError(
                    f"gmse: format {name!r} has a {family} part of GMSE {float(gmse):g}; the "
                    "capacity law needs 0 < GMSE < 1"
                )
        if not (math.isfinite(value) and 0 < value < 4.0):
            raise ValueError(f"rho: format {name!r} has rho {float(value):g}; need 0 < rho < 4")
    needed = 3 * len(groups) + 1
    if len(names) < needed:
        raise ValueError(
            f"formats: {len(names)} compressed formats for {3 * len(groups)} capacity-law "
            f"parameters; need at least {needed}"
        )


def leave_one_out(
    formats: Sequence[str],
    rho: Sequence[float],
    parts: Sequence[Sequence[Part]],
    log_rho_sd: Sequence[float] | None = None,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """rho of each format predicted from its parts by the law fitted, with the same weights, to all
    the other formats (NaN where the rest cannot determine the law)."""
    rho_array = np.asarray(rho, dtype=float)
    groups = tuple(groups or parameter_groups(parts))
    sd = np.ones(len(rho_array)) if log_rho_sd is None else np.asarray(log_rho_sd, dtype=float)
    predictions = np.full(len(rho_array), np.nan)
    for i in range(len(rho_array)):
        keep = [j for j in range(len(rho_array)) if j != i]
        kept_parts = [parts[j] for j in keep]
        if len(keep) < 3 * len(groups) + 1 or len(parameter_groups(kept_parts)) < len(groups):
            continue
        table = PartTable.build(kept_parts, groups)
        z = _fit_z(table, np.log(rho_array[keep]), sd[keep], _starts(len(groups)))
        predictions[i] = float(np.exp(PartTable.build([parts[i]], groups).log_rho(z))[0])
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
