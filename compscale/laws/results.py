"""What a fit returns: `FittedLaw`, the law as a value (the only predictor of losses,
serialisable to JSON), and `FitResult`, the law with its intervals and diagnostics.

Fit error, as reported here: `rmse_log_loss`, the root mean square of log(predicted / observed)
over cells, and `mean_abs_rel_error`, the mean over cells of |predicted / observed - 1|.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from compscale import capacity
from compscale.laws.cells import DENSE
from compscale.laws.forms import BASE_NAMES, log_loss
from compscale.laws.identify import NOT_IDENTIFIED


@dataclass(frozen=True)
class FittedLaw:
    """A fitted law as a value: enough to predict any cell's loss, serialisable to JSON.

    `rho` holds the fitted capacity of every fitted format (empty for chinchilla, whose cells are
    all one representation). `capacity` (parameter group -> [L, F, C]) is the capacity law, when
    known, and `parts` (format -> its [family, GMSE] parts) lets it predict the rho of a format
    that was not fitted: the product over its parts of L tanh(F log_1/4 GMSE)^C. `eff_d`
    (unified-effd) holds the effective-data multiplier of each format whose backward pass is
    compressed (any other format's is 1); `gamma` (unified-gamma) the outer exponent.
    """

    law: str
    A: float
    alpha: float
    B: float
    beta: float
    E: float
    rho: dict[str, float] = field(default_factory=dict)
    capacity: dict[str, list[float]] = field(default_factory=dict)
    parts: dict[str, list[list]] = field(default_factory=dict)
    dense: str = DENSE
    eff_d: dict[str, float] = field(default_factory=dict)
    gamma: float | None = None

    @property
    def capacity_law(self) -> capacity.CapacityLaw | None:
        if not self.capacity:
            return None
        return capacity.CapacityLaw({g: tuple(v) for g, v in self.capacity.items()})

    @property
    def params(self) -> dict[str, float]:
        """A, alpha, B, beta, E, then the law's own: gamma, the capacity law's L, F, C, or each
        format's eff_d."""
        values = {name: getattr(self, name) for name in BASE_NAMES}
        if self.gamma is not None:
            values["gamma"] = self.gamma
        values |= {f"eff_d[{name}]": value for name, value in self.eff_d.items()}
        if self.law == "unified-gmse":
            names = capacity.parameter_names(tuple(self.capacity))
            values |= dict(
                zip(names, (v for lfc in self.capacity.values() for v in lfc), strict=True)
            )
        return values

    def rho_of(self, name: str) -> float:
        """Capacity of a format: fitted, else predicted from its parts by the capacity law."""
        if name in self.rho:
            return self.rho[name]
        if name == self.dense or not self.rho:
            return 1.0
        law = self.capacity_law
        if name in self.parts and law is not None:
            return law.rho([(family, gmse) for family, gmse in self.parts[name]])
        raise ValueError(f"format: {name!r} was not fitted and has no GMSE to predict its rho")

    def predict(
        self, params: Sequence[float], tokens: Sequence[float], formats: Sequence[str] | None = None
    ) -> np.ndarray:
        """Predicted loss (nats) of cells of N parameters and D tokens; formats default to dense."""
        log_params = np.log(np.asarray(params, dtype=float))
        names = [self.dense] * len(log_params) if formats is None else list(formats)
        rho = {name: self.rho_of(name) for name in set(names)}
        log_rho = np.log([rho[name] for name in names])
        log_d = np.log([self.eff_d.get(name, 1.0) for name in names])
        log_tokens = np.log(np.asarray(tokens, dtype=float)) + log_d
        base = (math.log(self.A), self.alpha, math.log(self.B), self.beta, math.log(self.E))
        log_pred, _ = log_loss(base, log_params + log_rho, log_tokens, self.gamma)
        return np.exp(log_pred)

    def to_dict(self) -> dict:
        """Plain JSON types only; `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, document: Mapping) -> FittedLaw:
        return cls(**document)


@dataclass(frozen=True)
class FitResult:
    """A fit: the fitted law, 95% intervals and diagnostics (never prints).

    `ci` holds the bootstrap percentile interval of each parameter, or, for a parameter at a
    bound of the fit (`notes` says which), its profile interval: the values whose best objective
    stays within PROFILE_TOLERANCE of the optimum. `notes` names every parameter that sits at a
    bound or is not identified, with why; such a parameter's value is no measurement.
    """

    fitted: FittedLaw
    ci: dict[str, tuple[float, float]]
    notes: dict[str, str]
    objective: float
    residuals: np.ndarray
    fit_error: dict[str, float]
    warnings: tuple[str, ...]
    bootstrap: int
    bootstrap_samples: np.ndarray
    delta: float
    theta: np.ndarray = field(repr=False)  # the optimum in fit coordinates (warm starts)
    runner_up: np.ndarray | None = field(default=None, repr=False)  # a distinct second minimum

    @property
    def law(self) -> str:
        return self.fitted.law

    @property
    def params(self) -> dict[str, float]:
        return self.fitted.params

    @property
    def rho(self) -> dict[str, float]:
        return self.fitted.rho

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the columns of `bootstrap_samples`: parameters, then rho of every format."""
        return (*self.params, *(f"rho[{name}]" for name in self.rho))

    def identified(self, name: str) -> bool:
        return not self.notes.get(name, "").startswith(NOT_IDENTIFIED)

    def predict(
        self, params: Sequence[float], tokens: Sequence[float], formats: Sequence[str] | None = None
    ) -> np.ndarray:
        return self.fitted.predict(params, tokens, formats)

    def rho_of(self, name: str) -> float:
        return self.fitted.rho_of(name)

    def summary(self) -> str:
        lines = [
            f"{self.law} law, Huber delta {self.delta:g} on log loss, {len(self.residuals)} cells, "
            f"{self.bootstrap} bootstrap resamples (95% percentile CI; profile at a bound)",
            f"{'parameter':<24}{'value':>12}{'ci low':>12}{'ci high':>12}",
        ]
        rows = list(self.params.items()) + [(f"rho[{k}]", v) for k, v in self.rho.items()]
        for name, value in rows:
            if not self.identified(name):
                lines.append(f"{name:<24}  {self.notes[name]}")
                continue
            low, high = self.ci.get(name, (math.nan, math.nan))
            note = f"  {self.notes[name]}" if name in self.notes else ""
            lines.append(f"{name:<24}{value:>12.5g}{low:>12.5g}{high:>12.5g}{note}")
        lines.append(
            f"objective {self.objective:.6g}; fit error: RMSE of log loss "
            f"{self.fit_error['rmse_log_loss']:.4g}, mean |pred/obs - 1| "
            f"{self.fit_error['mean_abs_rel_error']:.4g}"
        )
        lines += [f"warning: {text}" for text in self.warnings]
        return "\n".join(lines)
