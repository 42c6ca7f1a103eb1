"""The format advisor: for a memory, compute or data budget, the model size N and token count D
each format should train at, the loss the unified law predicts there, and its 95% interval.

The law `L = A (N rho)^-alpha + B D^-beta + E` falls in N and in D, so a budget pins the optimum:
memory M bytes caps N at 8 M / bits (bits per parameter, scales and masks included); compute C =
6 N D trades N against D, with the compute-optimal N* = G (C / 6)^(beta / (alpha + beta)),
G = (alpha A rho^-alpha / (beta B))^(1 / (alpha + beta)) (Hoffmann et al.'s closed form with A
replaced by A rho^-alpha: a format of capacity rho is a dense model of N rho parameters); tokens D
fix D. Everything is closed form. The interval re-evaluates the loss at the chosen (N, D) under
every bootstrap resample of (A, alpha, B, beta, E, rho): the uncertainty of the prediction, not of
the allocation.

The ensemble comes from a fit (`laws.fit`'s `bootstrap_samples`); a reduction keeps intervals but
not the resamples, so a sweep is refitted (`fit_ensemble`, the call `reduce` makes). Formats that
were never trained get their rho, draw by draw, from the two-stage capacity law refitted to each
resample's rhos (as `reduce` fits it), so their interval carries the capacity law's uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from compscale import capacity, laws

LEVEL = (2.5, 97.5)  # percentiles of the 95% interval


@dataclass(frozen=True)
class Budget:
    """What limits training: bytes of weights, training FLOPs (6 N D), and/or tokens D."""

    memory_bytes: float | None = None
    flops: float | None = None
    tokens: float | None = None

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "flops", "tokens"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive finite number, got {value!r}")
        if self.memory_bytes is None and self.flops is None:
            raise ValueError(
                "budget: give memory bytes and/or FLOPs (with tokens alone the loss keeps falling "
                "as N grows, so no N is optimal)"
            )


def compute_optimal_params(
    A: float, alpha: float, B: float, beta: float, rho: float, flops: float
) -> float:
    """N minimising A (N rho)^-alpha + B D^-beta at 6 N D = flops (closed form)."""
    if alpha <= 0 or beta <= 0:
        raise ValueError(
            f"law: alpha {alpha:.3g} and beta {beta:.3g} must be positive for a compute optimum"
        )
    g = (alpha * A * rho**-alpha / (beta * B)) ** (1 / (alpha + beta))
    return g * (flops / 6) ** (beta / (alpha + beta))


def allocate(
    A: float, alpha: float, B: float, beta: float, rho: float, bits: float, budget: Budget
) -> tuple[float, float]:
    """(N, D) of least predicted loss within `budget` for a format of capacity `rho` storing
    `bits` per parameter. The loss falls in N and D and, at fixed 6 N D, is unimodal in N, so a
    memory cap below the compute optimum binds at the cap. D is infinite when nothing bounds it
    (memory alone: the loss is its D -> infinity limit)."""
    n_memory = 8 * budget.memory_bytes / bits if budget.memory_bytes else math.inf
    if budget.tokens is not None:
        tokens = budget.tokens
        n_flops = budget.flops / (6 * tokens) if budget.flops else math.inf
        return min(n_memory, n_flops), tokens
    if budget.flops is not None:
        params = min(n_memory, compute_optimal_params(A, alpha, B, beta, rho, budget.flops))
        return params, budget.flops / (6 * params)
    return n_memory, math.inf


def loss(A, alpha, B, beta, E, rho, params: float, tokens: float) -> np.ndarray:
    """The unified law's loss, broadcasting over parameter draws; D = infinity drops B D^-beta."""
    data = 0.0 if math.isinf(tokens) else np.asarray(B) * tokens ** -np.asarray(beta)
    return np.asarray(A) * (params * np.asarray(rho)) ** -np.asarray(alpha) + data + np.asarray(E)


@dataclass(frozen=True)
class Ensemble:
    """A fitted unified law, its bootstrap resamples and the range of the cells it was fitted to.

    `samples` has one row per resample, columns `names` (A, alpha, B, beta, E, rho[format]...).
    `capacity_samples` (or None): the two-stage capacity law's (L, F, C) per group refitted to
    each row's rhos, row for row, so a grammar format's rho can be drawn with the rest.
    """

    fitted: laws.FittedLaw
    samples: np.ndarray
    names: tuple[str, ...]
    capacity_samples: np.ndarray | None
    params_range: tuple[float, float]
    tokens_range: tuple[float, float]
    noise: float  # RMSE of log loss of the fit: the scatter a new cell is expected to show
    warnings: tuple[str, ...] = ()

    def column(self, name: str) -> np.ndarray:
        return self.samples[:, self.names.index(name)]

    def base(self) -> tuple[np.ndarray, ...]:
        """Draws of A, alpha, B, beta, E."""
        return tuple(self.column(name) for name in laws.BASE_NAMES)

    def fitted_formats(self) -> list[str]:
        return list(self.fitted.rho)

    def rho_draws(self, name: str) -> np.ndarray:
        """rho of a format in every resample: fitted, else from its parts by the capacity law."""
        if f"rho[{name}]" in self.names:
            return self.column(f"rho[{name}]")
        if name == self.fitted.dense:
            return np.ones(len(self.samples))
        law = self.fitted.capacity_law
        if law is None or self.capacity_samples is None:
            raise ValueError(
                f"format: {name!r} was not fitted and no capacity law is fitted to predict it"
            )
        from compscale.gmse import parts_of

        groups = tuple(law.params)
        table = capacity.PartTable.build([parts_of(name)], groups)
        z = np.log(self.capacity_samples)
        return np.exp(np.array([table.log_rho(row)[0] for row in z]))

    def rho(self, name: str) -> float:
        """rho of a format at the fit (fitted, else the capacity law's prediction)."""
        if name not in self.fitted.rho and name != self.fitted.dense:
            from compscale.gmse import parts_of

            law = self.fitted.capacity_law
            if law is None:
                raise ValueError(
                    f"format: {name!r} was not fitted and no capacity law is fitted to predict it"
                )
            return law.rho(parts_of(name))
        return self.fitted.rho_of(name)

    @classmethod
    def from_fit(
        cls,
        fit: laws.FitResult,
        params: Sequence[float],
        tokens: Sequence[float],
        parts_of: Callable[[str], tuple] | None = None,
    ) -> Ensemble:
        """The ensemble of a unified-law fit; the two-stage capacity law (for formats never
        trained) is fitted as `reduce` fits it: to the identified rhos, weighted by their
        bootstrap spread, refitted to each resample. `parts_of=None` uses the grammar."""
        if fit.law != "unified":
            raise ValueError(f"law: the advisor needs a unified-law fit, got {fit.law}")
        if parts_of is None:
            from compscale.gmse import parts_of
        dense = fit.fitted.dense
        usable = [n for n in fit.rho if n != dense and fit.identified(f"rho[{n}]")]
        fitted, capacity_samples, warnings = fit.fitted, None, list(fit.warnings)
        try:
            parts = {name: tuple(parts_of(name)) for name in usable}
            draws = np.column_stack([fit.bootstrap_samples[:, fit.names.index(f"rho[{n}]")]
                                     for n in usable]) if usable else None  # fmt: skip
            law = capacity.fit_capacity(
                usable,
                [fit.rho[name] for name in usable],
                [parts[name] for name in usable],
                rho_samples=draws,
            )
            fitted = replace(
                fitted,
                parts={name: [list(p) for p in value] for name, value in parts.items()},
                capacity={g: list(v) for g, v in law.law.params.items()},
            )
            capacity_samples = law.samples if len(law.samples) == len(draws) else None
        except ValueError as error:  # too few formats, or a format the grammar cannot parse
            warnings.append(f"capacity law not fitted (formats never trained unavailable): {error}")
        return cls(
            fitted=fitted,
            samples=fit.bootstrap_samples,
            names=fit.names,
            capacity_samples=capacity_samples,
            params_range=(float(np.min(params)), float(np.max(params))),
            tokens_range=(float(np.min(tokens)), float(np.max(tokens))),
            noise=fit.fit_error["rmse_log_loss"],
            warnings=tuple(warnings),
        )


def fit_ensemble(
    results: pd.DataFrame,
    options: laws.FitOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    warm_starts: Sequence[np.ndarray] | None = None,
) -> tuple[Ensemble, laws.FitResult]:
    """The unified law fitted to result rows (`params`, `tokens`, `format`, `val_loss`) as
    `reduce` fits it (the same `options`), so its point estimates are the reduction's; and its
    ensemble."""
    fit = laws.fit(
        results["params"],
        results["tokens"],
        results["val_loss"],
        results["format"].astype(str),
        law="unified",
        options=options,
        progress=progress,
        warm_starts=warm_starts,
    )
    return Ensemble.from_fit(fit, results["params"], results["tokens"]), fit


def storable(name: str) -> bool:
    """Whether a format stores weights (noise injection has no storage, only a GMSE)."""
    from compscale.formats import parse
    from compscale.formats.noise import NoiseFormat

    return not isinstance(parse(name), NoiseFormat)


def _bits(name: str) -> float:
    from compscale.formats import parse

    return float(parse(name).bits_per_param)


def extrapolation(value: float, fitted: tuple[float, float]) -> float:
    """How far `value` lies outside the fitted range, as a factor (1: inside)."""
    low, high = fitted
    return max(value / high, low / value, 1.0)


COLUMNS = [
    "format", "source", "bits_per_param", "rho", "params", "tokens", "effective_params", "flops",
    "memory_bytes", "loss", "loss_ci_low", "loss_ci_high", "rho_bound", "fraction_of_bound",
    "params_extrapolation", "tokens_extrapolation",
]  # fmt: skip


def advise(
    ensemble: Ensemble,
    budget: Budget,
    formats: Sequence[str] = (),
    bits_of: Callable[[str], float] = _bits,
) -> pd.DataFrame:
    """One row per format (every fitted format that stores weights, then `formats`), ranked by
    predicted loss at its optimal (N, D) within `budget`: N, D, N rho, FLOPs 6 N D, bytes of
    weights, loss and its 95% interval, the capacity law's lower bound at its bits (rho at GMSE
    4^-bits) and rho's fraction of it, and how far N and D lie beyond the fitted cells (factor)."""
    A, alpha, B, beta, E = (getattr(ensemble.fitted, name) for name in laws.BASE_NAMES)
    draws = ensemble.base()
    law = ensemble.fitted.capacity_law
    names = list(dict.fromkeys([n for n in ensemble.fitted_formats() if storable(n)]))
    names += [n for n in dict.fromkeys(formats) if n not in names]
    rows = []
    for name in names:
        if not storable(name):
            raise ValueError(f"format: {name} is noise injection, which stores no weights")
        bits = float(bits_of(name))
        rho = ensemble.rho(name)
        params, tokens = allocate(A, alpha, B, beta, rho, bits, budget)
        value = float(loss(A, alpha, B, beta, E, rho, params, tokens))
        low = high = math.nan
        if len(ensemble.samples):
            low, high = np.percentile(loss(*draws, ensemble.rho_draws(name), params, tokens), LEVEL)
        bound = law.bound(bits) if law is not None and name != ensemble.fitted.dense else math.nan
        rows.append(
            {
                "format": name,
                "source": "fitted" if name in ensemble.fitted.rho else "capacity law",
                "bits_per_param": bits,
                "rho": rho,
                "params": params,
                "tokens": tokens,
                "effective_params": params * rho,
                "flops": 6 * params * tokens,
                "memory_bytes": params * bits / 8,
                "loss": value,
                "loss_ci_low": float(low),
                "loss_ci_high": float(high),
                "rho_bound": bound,
                "fraction_of_bound": rho / bound,
                "params_extrapolation": extrapolation(params, ensemble.params_range),
                "tokens_extrapolation": extrapolation(tokens, ensemble.tokens_range),
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values("loss", kind="stable").reset_index(drop=True)


def extrapolation_note(row: pd.Series, ensemble: Ensemble) -> str:
    """Where a row's N or D leaves the fitted cells, and by how much (empty when inside)."""
    notes = []
    for column, label, fitted in (
        ("params", "N", ensemble.params_range),
        ("tokens", "D", ensemble.tokens_range),
    ):
        value = row[column]
        if math.isinf(value):
            notes.append(f"{label} unbounded (loss at the {label} -> infinity limit)")
        elif value > fitted[1] * (1 + 1e-9):
            notes.append(f"{label} {value / fitted[1]:.3g}x above the largest fitted")
        elif value < fitted[0] * (1 - 1e-9):
            notes.append(f"{label} {fitted[0] / value:.3g}x below the smallest fitted")
    return "; ".join(notes)
