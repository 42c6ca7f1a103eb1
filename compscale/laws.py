"""Scaling-law forms and their fits: Chinchilla, the unified law with one capacity per format, and
the unified law whose capacities follow the tanh(GMSE) capacity law.

All three share `L = A (N rho)^-alpha + B D^-beta + E` (N non-embedding parameters, D training
tokens, L validation loss in nats per token) and are fitted as Besiroglu et al. (2024) fitted
Chinchilla: in log space through `log L = LSE(a - alpha log(N rho), b - beta log D, e)` with
A = e^a, B = e^b, E = e^e, minimising a Huber loss (delta 1e-3) of the log residuals from a grid
of starts and keeping the best. The whole grid is scored in one vectorised pass; the best starts
are polished by a trust-region Huber least squares (scipy `least_squares`, loss="huber",
f_scale=delta, analytic Jacobian): the same objective as Besiroglu et al.'s L-BFGS, which stays
available as method="lbfgs". With 0.5% noise most residuals sit in Huber's linear part and L-BFGS-B
crawls along the kinks: from the 24 best grid starts of a 7-format synthetic grid (84 cells) it
stopped at its 2000-iteration cap from 19, ending 0.002% to 160% above the minimum that the
trust-region method reached from all 24 (benchmarks/fit_speed.py times both).

Capacities stay in (0, 1] through the parametrisation `compscale.capacity` owns (rho =
exp(-softplus(u)), the tanh law in (u, log F, log C)). Confidence intervals come from a bootstrap
over cells (resampled within each format, so every format keeps its cells), each resample
warm-started from the best fit and from the runner-up local minimum, percentile 2.5-97.5.

`fit` returns a `FitResult` whose `fitted` (`FittedLaw`) is the only predictor of losses.

Fit error, as reported here: `rmse_log_loss`, the root mean square of log(predicted / observed)
over cells, and `mean_abs_rel_error`, the mean over cells of |predicted / observed - 1|.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy.optimize import least_squares, minimize

from compscale import capacity

BASE_NAMES = ("A", "alpha", "B", "beta", "E")
DENSE = "dense"

# Start grid in the log-sum-exp coordinates (a, alpha, b, beta, e): Besiroglu et al.'s grid widened
# with E near 0 (e = -3, E = 0.05) and small exponents, where real grids hide a second minimum.
GRID_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
GRID_EXPONENT = (0.05, 0.2, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-3.0, -1.0, -0.5, 0.0, 0.5, 1.0)
BASE_BOUNDS = ((-20.0, 60.0), (0.0, 10.0), (-20.0, 60.0), (0.0, 10.0), (-20.0, 10.0))
U_BOUNDS = (-25.0, 25.0)


@dataclass(frozen=True)
class Observations:
    """Cells to fit, in log space; `format_index` points into `formats`. `pair_index` (paired
    fits): the cell's (N, D, seed) group, whose formats share that seed's weights and batches."""

    log_params: np.ndarray
    log_tokens: np.ndarray
    log_loss: np.ndarray
    format_index: np.ndarray
    formats: tuple[str, ...]
    pair_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.log_loss)

    def take(self, rows: np.ndarray) -> Observations:
        return Observations(
            self.log_params[rows],
            self.log_tokens[rows],
            self.log_loss[rows],
            self.format_index[rows],
            self.formats,
            None if self.pair_index is None else self.pair_index[rows],
        )


def _positive_finite(name: str, values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(array) | (array <= 0))
    if bad.size:
        rows = ", ".join(str(i) for i in bad[:5]) + (" ..." if bad.size > 5 else "")
        raise ValueError(
            f"{name}: {bad.size} value(s) are NaN, infinite or non-positive (rows {rows})"
        )
    return array


def observations(
    params: Sequence[float],
    tokens: Sequence[float],
    loss: Sequence[float],
    formats: Sequence[str] | None = None,
) -> Observations:
    """Validate cells (all positive and finite, at least two model sizes) and move to log space."""
    params_array = _positive_finite("params", params)
    tokens_array = _positive_finite("tokens", tokens)
    loss_array = _positive_finite("loss", loss)
    if not len(params_array) == len(tokens_array) == len(loss_array):
        raise ValueError("params, tokens and loss must have the same length")
    if len(np.unique(params_array)) < 2:
        raise ValueError(
            f"params: only one distinct model size (N={params_array[0]:.4g}); need >= 2"
        )
    if len(np.unique(tokens_array)) < 2:
        raise ValueError(
            f"tokens: only one distinct token count (D={tokens_array[0]:.4g}); need >= 2"
        )
    if formats is None:
        formats = [DENSE] * len(loss_array)
    format_names = [str(name) for name in formats]
    if len(format_names) != len(loss_array):
        raise ValueError("format must have one entry per cell")
    names = tuple(sorted(set(format_names), key=lambda name: (name != DENSE, name)))
    index = {name: i for i, name in enumerate(names)}
    return Observations(
        np.log(params_array),
        np.log(tokens_array),
        np.log(loss_array),
        np.array([index[name] for name in format_names], dtype=np.int64),
        names,
    )


class Law:
    """A law form: the shared A, alpha, B, beta, E plus its own extra parameters for log rho."""

    name: str = ""

    def extra_names(self) -> tuple[str, ...]:
        """Names of the natural parameters beyond A, alpha, B, beta, E (capacities excluded)."""
        return ()

    def check(self, obs: Observations) -> None:
        """Raise ValueError when the cells cannot identify this law."""

    def extra_starts(self) -> list[np.ndarray]:
        return [np.zeros(0)]

    def extra_bounds(self) -> list[tuple[float, float]]:
        return []

    def log_rho(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        """log rho per format (length len(obs.formats)); dense is 0."""
        return np.zeros(len(obs.formats))

    def log_rho_jac(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        """d log rho / d extra: one row per format, one column per extra parameter."""
        return np.zeros((len(obs.formats), 0))

    def extra_values(self, extra: np.ndarray) -> np.ndarray:
        """Extra parameters in natural units, in `extra_names()` order."""
        return np.zeros(0)

    def extra_columns(self, obs: Observations) -> list[str]:
        """The reported column each extra fit coordinate sets (for bounds and profiles)."""
        return list(self.extra_names())


class ChinchillaLaw(Law):
    """L = A N^-alpha + B D^-beta + E; every cell is the same (dense) representation."""

    name = "chinchilla"

    def check(self, obs: Observations) -> None:
        if len(obs.formats) > 1:
            raise ValueError(
                f"format: the chinchilla law takes one representation, got {len(obs.formats)}; "
                "use the unified law"
            )


@dataclass
class UnifiedLaw(Law):
    """L = A (N rho_R)^-alpha + B D^-beta + E with one free rho per non-dense format."""

    formats: tuple[str, ...] = ()
    dense: str = DENSE
    name = "unified"

    def check(self, obs: Observations) -> None:
        _check_formats(obs, self.dense, self.name)

    def extra_starts(self) -> list[np.ndarray]:
        k = len(self.formats) - 1
        return [np.full(k, capacity.u_of_rho(0.7)), np.full(k, capacity.u_of_rho(0.3))]

    def extra_bounds(self) -> list[tuple[float, float]]:
        return [U_BOUNDS] * (len(self.formats) - 1)

    def log_rho(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        return np.concatenate([[0.0], capacity.log_rho_of_u(extra)])

    def log_rho_jac(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        return np.vstack([np.zeros(len(extra)), np.diag(capacity.log_rho_of_u_grad(extra))])

    def extra_columns(self, obs: Observations) -> list[str]:
        return [f"rho[{name}]" for name in obs.formats[1:]]


@dataclass
class UnifiedGmseLaw(Law):
    """The unified law whose capacities follow the capacity law per part of each format:
    rho(format) = prod over its parts (weight sparsity, weight quantization, activation
    quantization) of L tanh(F b)^C, b = log_{1/4}(GMSE of the part), with one L, F, C per
    compression family (or one shared set; `capacity.parameter_groups`).

    Dense keeps rho = 1 (it fixes A's units); L is the capacity a part approaches as its GMSE goes
    to 0, F and C shape the approach. A format never trained is predicted from its parts' GMSEs.
    """

    parts: Mapping[str, Sequence[capacity.Part]] = field(default_factory=dict)
    dense: str = DENSE
    name = "unified-gmse"
    groups: tuple[str, ...] = ()
    _table: capacity.PartTable | None = None
    _formats: tuple[str, ...] = ()

    def extra_names(self) -> tuple[str, ...]:
        return capacity.parameter_names(self.groups)

    def check(self, obs: Observations) -> None:
        _check_formats(obs, self.dense, self.name)
        compressed = [name for name in obs.formats if name != self.dense]
        missing = [name for name in compressed if not self.parts.get(name)]
        if missing:
            raise ValueError(f"gmse: no GMSE for format(s) {', '.join(missing)}")
        for name in compressed:
            for family, gmse in self.parts[name]:
                if not 0 < gmse < 1:
                    raise ValueError(
                        f"gmse: {name} has a {family} part of GMSE {gmse!r}; need 0 < GMSE < 1"
                    )
        distinct = {gmse for name in compressed for _, gmse in self.parts[name]}
        if len(distinct) < capacity.MIN_DISTINCT_GMSE:
            raise ValueError(
                f"format: the unified-gmse law needs parts of >= {capacity.MIN_DISTINCT_GMSE} "
                f"distinct GMSEs, got {len(distinct)}"
            )
        self.groups = capacity.parameter_groups(self.parts[name] for name in compressed)
        self._table = None

    def table(self, obs: Observations) -> capacity.PartTable:
        """The parts of `obs.formats` (dense has none), built once per format list."""
        if self._table is None or self._formats != obs.formats:
            parts = [() if name == self.dense else self.parts[name] for name in obs.formats]
            self._table = capacity.PartTable.build(parts, self.groups)
            self._formats = obs.formats
        return self._table

    def extra_starts(self) -> list[np.ndarray]:
        return capacity.law_starts(len(self.groups))

    def extra_bounds(self) -> list[tuple[float, float]]:
        return list(capacity.Z_BOUNDS) * len(self.groups)

    def log_rho(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        return self.table(obs).log_rho(extra)

    def log_rho_jac(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        return self.table(obs).log_rho_jac(extra)

    def extra_values(self, extra: np.ndarray) -> np.ndarray:
        return np.exp(extra)

    def capacity_law(self, extra: np.ndarray) -> capacity.CapacityLaw:
        values = np.exp(extra)
        return capacity.CapacityLaw(
            {
                g: tuple(float(v) for v in values[3 * i : 3 * i + 3])
                for i, g in enumerate(self.groups)
            }
        )


def _check_formats(obs: Observations, dense: str, law: str) -> None:
    if dense not in obs.formats:
        raise ValueError(
            f"format: no cells of the dense reference {dense!r}; every rho is relative to it"
        )
    if len(obs.formats) < 2:
        raise ValueError(
            f"format: the {law} law needs the dense reference and at least one other format; "
            f"got only {dense!r}"
        )


def log_loss(
    base: Sequence[float], log_n_rho: np.ndarray, log_tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """log(A (N rho)**-alpha + B D**-beta + E) and the softmax weights of its three terms.

    The law's one formula: fits, their start grid and every prediction go through it. `base` is
    (a, alpha, b, beta, e) with A = e^a, B = e^b, E = e^e; computed as the stable log-sum-exp
    LSE(a - alpha log(N rho), b - beta log D, e), broadcasting (a grid of starts against cells).
    """
    a, alpha, b, beta, e = base
    terms = np.stack(np.broadcast_arrays(a - alpha * log_n_rho, b - beta * log_tokens, e))
    top = terms.max(axis=0)
    exp_terms = np.exp(terms - top)
    total = exp_terms.sum(axis=0)
    return top + np.log(total), exp_terms / total


class Problem:
    """One law on one set of cells: log residuals, their Jacobian, and the Huber objective."""

    def __init__(self, law: Law, obs: Observations, delta: float):
        self.law, self.obs, self.delta = law, obs, delta
        self._last: tuple[bytes, tuple[np.ndarray, np.ndarray]] | None = None
        self.pairing = None if obs.pair_index is None else pairing_projection(obs)

    def log_prediction(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log predicted loss per cell and the softmax weights of the three LSE terms (the last
        one kept: the optimiser asks for residuals and Jacobian at the same point)."""
        key = np.asarray(theta, dtype=float).tobytes()
        if self._last is None or self._last[0] != key:
            obs = self.obs
            log_rho = self.law.log_rho(theta[5:], obs)[obs.format_index]
            self._last = key, log_loss(theta[:5], obs.log_params + log_rho, obs.log_tokens)
        return self._last[1]

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        residual = self.log_prediction(theta)[0] - self.obs.log_loss
        return residual if self.pairing is None else self.pairing @ residual

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        _, (w1, w2, w3) = self.log_prediction(theta)
        obs, alpha, extra = self.obs, theta[1], theta[5:]
        log_rho = self.law.log_rho(extra, obs)[obs.format_index]
        base = [w1, -w1 * (obs.log_params + log_rho), w2, -w2 * obs.log_tokens, w3]
        rho_jac = self.law.log_rho_jac(extra, obs)[obs.format_index]
        jacobian = np.column_stack([*base, (-alpha * w1)[:, None] * rho_jac])
        return jacobian if self.pairing is None else self.pairing @ jacobian

    def objective(self, theta: np.ndarray) -> float:
        """Sum over cells of Huber(log predicted - log observed)."""
        return float(huber(self.residuals(theta), self.delta).sum())

    def objective_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """The objective divided by delta (so L-BFGS-B's tolerances suit it) and its gradient."""
        residual = self.residuals(theta)
        slope = np.clip(residual / self.delta, -1.0, 1.0)
        value = huber(residual, self.delta).sum() / self.delta
        return float(value), self.jacobian(theta).T @ slope

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        pairs = list(BASE_BOUNDS) + self.law.extra_bounds()
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def grid_values(self, starts: np.ndarray, extra: np.ndarray) -> np.ndarray:
        """Objective at many base starts (rows of a, alpha, b, beta, e) with `extra` fixed."""
        obs = self.obs
        log_n_rho = obs.log_params + self.law.log_rho(extra, obs)[obs.format_index]
        log_pred, _ = log_loss(starts.T[:, :, None], log_n_rho, obs.log_tokens)
        residual = log_pred - obs.log_loss
        residual = residual if self.pairing is None else residual @ self.pairing.T
        return huber(residual, self.delta).sum(axis=1)

    def polish(
        self, theta: np.ndarray, method: str = "trf", tol: float = 1e-8, max_nfev: int = 2000
    ) -> tuple[np.ndarray, float]:
        """Local minimum from `theta` of the Huber objective.

        `trf` (default): scipy's trust-region Huber least squares (loss="huber", f_scale=delta,
        analytic Jacobian) with the parameters scaled by the Jacobian's columns: unscaled, it
        crawls along Huber's kinks for hundreds of Jacobians a start and stops at its evaluation
        cap. `lbfgs`: Besiroglu et al.'s L-BFGS-B. `benchmarks/fit_speed.py` compares them.
        """
        lower, upper = self.bounds()
        theta = np.clip(theta, lower, upper)
        if method == "trf":
            result = least_squares(
                self.residuals,
                theta,
                jac=self.jacobian,
                bounds=(lower, upper),
                x_scale="jac",
                loss="huber",
                f_scale=self.delta,
                xtol=tol,
                ftol=tol,
                gtol=tol,
                max_nfev=max_nfev,
            )
        elif method == "lbfgs":
            result = minimize(
                self.objective_and_gradient,
                theta,
                jac=True,
                method="L-BFGS-B",
                bounds=list(zip(lower, upper, strict=True)),
                options={"maxiter": max_nfev, "ftol": 1e-13, "gtol": 1e-9},
            )
        else:
            raise ValueError(f"method: unknown optimiser {method!r}; choose trf or lbfgs")
        return result.x, self.objective(result.x)

    def profile(self, theta: np.ndarray, index: int, value: float) -> tuple[np.ndarray, float]:
        """The best objective with coordinate `index` held at `value`, the others re-fitted from
        `theta` (one point of a profile likelihood)."""
        lower, upper = self.bounds()
        free = np.arange(len(theta)) != index

        def full(x: np.ndarray) -> np.ndarray:
            out = np.array(theta, dtype=float)
            out[free], out[index] = x, value
            return out

        result = least_squares(
            lambda x: self.residuals(full(x)),
            np.clip(theta[free], lower[free], upper[free]),
            jac=lambda x: self.jacobian(full(x))[:, free],
            bounds=(lower[free], upper[free]),
            x_scale="jac",
            loss="huber",
            f_scale=self.delta,
            xtol=1e-8,
            ftol=1e-8,
            gtol=1e-8,
            max_nfev=2000,
        )
        theta_out = full(result.x)
        return theta_out, self.objective(theta_out)


def pairing_projection(obs: Observations) -> np.ndarray:
    """The linear map that profiles out one log-loss offset per (N, D, seed) group, constrained
    to average zero over the groups of each (N, D): residual - group mean + (N, D) mean.

    A seed's shared luck (its initial weights and batches, the same in every format) then drops
    out of the format contrasts that determine rho, while the law still fits the seed-averaged
    level at each (N, D). The offsets are least-squares optimal given the law (a mean is linear,
    so the Jacobian maps the same way), and the Huber objective is taken of what remains.
    """
    _, level = np.unique(
        np.column_stack([obs.log_params, obs.log_tokens]), axis=0, return_inverse=True
    )

    def mean_of(index: np.ndarray) -> np.ndarray:
        same = index[:, None] == index[None, :]
        return same / same.sum(axis=1, keepdims=True)

    return np.eye(len(obs)) - mean_of(obs.pair_index) + mean_of(level.ravel())


def huber(residual: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss per residual: r^2 / 2 within delta, delta (|r| - delta / 2) beyond."""
    magnitude = np.abs(residual)
    return np.where(magnitude <= delta, 0.5 * residual**2, delta * (magnitude - 0.5 * delta))


def start_grid() -> np.ndarray:
    """All (a, alpha, b, beta, e) starts: 6^5 = 7776 points."""
    return np.array(list(itertools.product(GRID_A, GRID_EXPONENT, GRID_A, GRID_EXPONENT, GRID_E)))


@dataclass(frozen=True)
class FittedLaw:
    """A fitted law as a value: enough to predict any cell's loss, serialisable to JSON.

    `rho` holds the fitted capacity of every fitted format (empty for chinchilla, whose cells are
    all one representation). `capacity` (parameter group -> [L, F, C]) is the capacity law, when
    known, and `parts` (format -> its [family, GMSE] parts) lets it predict the rho of a format
    that was not fitted: the product over its parts of L tanh(F log_1/4 GMSE)^C.
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

    @property
    def capacity_law(self) -> capacity.CapacityLaw | None:
        if not self.capacity:
            return None
        return capacity.CapacityLaw({g: tuple(v) for g, v in self.capacity.items()})

    @property
    def params(self) -> dict[str, float]:
        """A, alpha, B, beta, E, then the capacity law's L, F, C when it is part of the law."""
        values = {name: getattr(self, name) for name in BASE_NAMES}
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
        base = (math.log(self.A), self.alpha, math.log(self.B), self.beta, math.log(self.E))
        log_pred, _ = log_loss(base, log_params + log_rho, np.log(np.asarray(tokens, dtype=float)))
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


def make_law(
    name: str,
    obs: Observations,
    parts: Mapping[str, Sequence[capacity.Part]] | None = None,
    dense: str = DENSE,
) -> Law:
    """Build the law `name` ('chinchilla', 'unified' or 'unified-gmse') for these cells."""
    if name == "chinchilla":
        return ChinchillaLaw()
    if name == "unified":
        return UnifiedLaw(formats=obs.formats, dense=dense)
    if name == "unified-gmse":
        return UnifiedGmseLaw(parts=dict(parts or {}), dense=dense)
    raise ValueError(f"law: unknown law {name!r}; choose chinchilla, unified or unified-gmse")


def candidate_starts(problem: Problem, top_starts: int) -> list[np.ndarray]:
    """Starts worth polishing: per start of the law's extra parameters, the `top_starts` best of
    the whole grid by objective, plus the best two with E near 0 and the best two with small
    alpha (the second minimum real grids hide)."""
    grid = start_grid()
    starts = []
    for extra in problem.law.extra_starts():
        values = problem.grid_values(grid, extra)
        order = list(np.argsort(values)[:top_starts])
        for special in (grid[:, 4] <= -3.0, grid[:, 1] <= 0.2):
            candidates = np.flatnonzero(special)
            order += list(candidates[np.argsort(values[candidates])[:2]])
        starts += [np.concatenate([grid[index], extra]) for index in dict.fromkeys(order)]
    return starts


def _local_minima(problem: Problem, top_starts: int, method: str) -> list[tuple[float, np.ndarray]]:
    """Every polished start as (objective, theta), best first."""
    found = []
    for start in candidate_starts(problem, top_starts):
        theta, value = problem.polish(start, method)
        if np.isfinite(value):
            found.append((value, theta))
    found.sort(key=lambda item: item[0])
    return found


def _distinct_runner_up(
    problem: Problem, found: list[tuple[float, np.ndarray]]
) -> tuple[float, np.ndarray] | None:
    """The best local minimum that is a different fit: one whose predictions differ from the best
    one's by more than delta on some cell. Minima that predict the same losses are one minimum
    (they differ only along a flat direction, which the intervals report)."""
    best = problem.log_prediction(found[0][1])[0]
    for value, theta in found[1:]:
        if np.max(np.abs(problem.log_prediction(theta)[0] - best)) > problem.delta:
            return value, theta
    return None


def _natural(law: Law, theta: np.ndarray, obs: Observations, with_rho: bool) -> np.ndarray:
    """Parameters in natural units (A, alpha, B, beta, E, extras), then rho of every format."""
    base = np.array(
        [math.exp(theta[0]), theta[1], math.exp(theta[2]), theta[3], math.exp(theta[4])]
    )
    parts = [base, law.extra_values(theta[5:])]
    if with_rho:
        parts.append(np.exp(law.log_rho(theta[5:], obs)))
    return np.concatenate(parts)


def _bootstrap_rows(obs: Observations, rng: np.random.Generator) -> np.ndarray:
    """Cells resampled with replacement within each format (every format keeps its cell count);
    in a paired fit, whole (N, D, seed) groups within each (N, D), so pairs stay pairs."""
    if obs.pair_index is not None:
        _, level = np.unique(
            np.column_stack([obs.log_params, obs.log_tokens]), axis=0, return_inverse=True
        )
        parts = []
        for index in np.unique(level):
            groups = np.unique(obs.pair_index[level.ravel() == index])
            for group in rng.choice(groups, size=len(groups), replace=True):
                parts.append(np.flatnonzero(obs.pair_index == group))
        return np.concatenate(parts)
    parts = []
    for index in range(len(obs.formats)):
        rows = np.flatnonzero(obs.format_index == index)
        parts.append(rng.choice(rows, size=len(rows), replace=True))
    return np.concatenate(parts)


# Identification. A parameter at a bound of the fit (moving it onto the bound changes no
# predicted log loss by more than BOUND_TOLERANCE x delta: E ~ 0, a rho ~ 1) is reported with
# its profile interval: the values whose best objective is within
# PROFILE_TOLERANCE (relative) of the optimum. Alpha below ALPHA_FLOOR means loss does not fall
# with N in the cells, so A, alpha and every capacity lose their meaning; any other parameter
# whose interval is wider than WIDTH_FACTOR times its value is not identified either.
BOUND_TOLERANCE = 0.1
PROFILE_TOLERANCE = 0.05
ALPHA_FLOOR = 0.02
WIDTH_FACTOR = 10.0
NOT_IDENTIFIED = "not identified"
PROFILE_STEPS = 12
PROFILE_BISECTIONS = 6


def _canonical_order(obs: Observations) -> np.ndarray:
    """Rows sorted by (format, N, D, loss): fits, bootstraps and their seeds then do not depend
    on the order a table lists its cells in, so `fit` and `reduce` agree on the same rows."""
    return np.lexsort((obs.log_loss, obs.log_tokens, obs.log_params, obs.format_index))


def fit(
    params: Sequence[float],
    tokens: Sequence[float],
    loss: Sequence[float],
    formats: Sequence[str] | None = None,
    *,
    law: str = "chinchilla",
    parts: Mapping[str, Sequence[capacity.Part]] | None = None,
    dense: str = DENSE,
    delta: float = 1e-3,
    bootstrap: int = 200,
    seed: int = 0,
    top_starts: int = 8,
    method: str = "trf",
    unidentified_width: float = 1.0,
    warm_starts: Sequence[np.ndarray] | None = None,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
    paired_seeds: Sequence[int] | None = None,
) -> FitResult:
    """Fit `law` to cells (N parameters, D tokens, loss in nats) and bootstrap its intervals.

    `top_starts`: how many of the 7776 grid starts (ranked by their objective, per start of the
    law's extra parameters) are polished by `method`; the best two with E near 0 and with
    alpha <= 0.2 are always polished too. `warm_starts` (fit coordinates, e.g. another fit's
    `theta` on overlapping cells) replace the grid. `parts` (unified-gmse): each compressed
    format's (family, GMSE) parts; by default from the format grammar (`compscale.gmse.parts_of`).
    Each bootstrap resample is polished from the optimum and from the best distinct runner-up
    minimum (the runner-up basin wins a tenth of cpu-mini's resamples), in `jobs` processes;
    `progress(done, total)` hears of each. A parameter whose CI is wider than
    `unidentified_width` times its value is reported in `warnings` as weakly identified; see
    `FitResult.notes` for the stronger verdicts. `paired_seeds` (each cell's seed): profile out
    a log-loss offset per (N, D, seed) group (`pairing_projection`) and bootstrap whole groups.
    """
    obs = observations(params, tokens, loss, formats)
    if paired_seeds is not None:
        keys = np.column_stack([obs.log_params, obs.log_tokens, np.asarray(paired_seeds, float)])
        obs = replace(obs, pair_index=np.unique(keys, axis=0, return_inverse=True)[1].ravel())
    order = _canonical_order(obs)
    obs = obs.take(order)
    if law == "unified-gmse" and parts is None:
        from compscale.gmse import parts_of

        parts = {name: parts_of(name) for name in obs.formats if name != dense}
    law_object = make_law(law, obs, parts, dense)
    law_object.check(obs)
    n_internal = 5 + len(law_object.extra_bounds())
    if len(obs) <= n_internal:
        raise ValueError(
            f"cells: {len(obs)} cells for {n_internal} law parameters; "
            "need more cells than parameters"
        )
    if delta <= 0:
        raise ValueError(f"delta: must be positive, got {delta}")
    problem = Problem(law_object, obs, delta)
    if warm_starts is not None:
        found = sorted(
            (item[1], item[0]) for item in (problem.polish(x, method) for x in warm_starts)
        )
        found = [(value, theta) for value, theta in found if np.isfinite(value)]
    else:
        found = _local_minima(problem, top_starts, method)
    if not found:
        raise ValueError("fit: every start diverged; check that losses are in nats and positive")
    objective, theta = found[0]
    runner_up = _distinct_runner_up(problem, found)
    with_rho = law != "chinchilla"
    names = [*BASE_NAMES, *law_object.extra_names()]
    columns = names + ([f"rho[{name}]" for name in obs.formats] if with_rho else [])
    estimate = _natural(law_object, theta, obs, with_rho)

    rng = np.random.default_rng(seed)
    resamples = [_bootstrap_rows(obs, rng) for _ in range(bootstrap)]
    warm = [theta] + ([runner_up[1]] if runner_up is not None else [])
    task = _Resampler(law_object, obs, delta, warm, method, with_rho)
    samples = np.empty((bootstrap, len(columns)))
    for i, row in enumerate(_map(task, resamples, jobs, progress)):
        samples[i] = row
    ci = {}
    if bootstrap:
        low, high = np.percentile(samples, [2.5, 97.5], axis=0)
        ci = {name: (float(lo), float(hi)) for name, lo, hi in zip(columns, low, high, strict=True)}

    log_pred, _ = problem.log_prediction(theta)
    residuals = np.empty(len(obs))
    residuals[order] = log_pred - obs.log_loss  # back in the caller's row order
    fit_error = {
        "rmse_log_loss": float(np.sqrt(np.mean(residuals**2))),
        "mean_abs_rel_error": float(np.mean(np.abs(np.expm1(residuals)))),
    }
    values = dict(zip(columns, (float(v) for v in estimate), strict=True))
    notes = _at_bounds(problem, theta, objective, columns, ci, with_rho)
    notes |= _unidentified(values, ci, notes)
    fitted = FittedLaw(
        law,
        *(values[name] for name in BASE_NAMES),
        rho={name: values[f"rho[{name}]"] for name in obs.formats} if with_rho else {},
        capacity=(
            {g: list(v) for g, v in law_object.capacity_law(theta[5:]).params.items()}
            if isinstance(law_object, UnifiedGmseLaw)
            else {}
        ),
        parts={name: [list(p) for p in value] for name, value in (parts or {}).items()},
        dense=dense,
    )
    warnings = _warnings(
        values, ci, notes, problem, runner_up, objective, unidentified_width, dense
    )
    return FitResult(
        fitted=fitted,
        ci=ci,
        notes=notes,
        objective=objective,
        residuals=residuals,
        fit_error=fit_error,
        warnings=tuple(warnings),
        bootstrap=bootstrap,
        bootstrap_samples=samples,
        delta=delta,
        theta=theta,
        runner_up=None if runner_up is None else runner_up[1],
    )


@dataclass(frozen=True)
class _Resampler:
    """One bootstrap resample's fit, as a picklable callable for a process pool."""

    law: Law
    obs: Observations
    delta: float
    warm: list[np.ndarray]
    method: str
    with_rho: bool

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Polish from the optimum; polish from each other warm start only as far as it stays
        competitive (within PROBE_MARGIN of the best after PROBE_EVALUATIONS evaluations)."""
        resample = Problem(self.law, self.obs.take(rows), self.delta)
        best, best_value = resample.polish(self.warm[0], self.method)
        for start in self.warm[1:]:
            probe, value = resample.polish(start, self.method, max_nfev=PROBE_EVALUATIONS)
            if value <= best_value * (1 + PROBE_MARGIN):
                theta, value = resample.polish(probe, self.method)
                if value < best_value:
                    best, best_value = theta, value
        return _natural(self.law, best, self.obs, self.with_rho)


# A second warm start of a bootstrap resample that is not within PROBE_MARGIN of the first one's
# objective after PROBE_EVALUATIONS function evaluations is abandoned: it would not win.
PROBE_EVALUATIONS = 40
PROBE_MARGIN = 0.25


def _map(
    task: Callable[[np.ndarray], np.ndarray],
    items: list[np.ndarray],
    jobs: int,
    progress: Callable[[int, int], None] | None,
) -> Iterator[np.ndarray]:
    """task over items in order, in `jobs` spawned processes when more than one (spawned, not
    forked: the caller may hold torch or Ray threads)."""
    if jobs <= 1 or len(items) < 2 * jobs:
        results: Iterable[np.ndarray] = map(task, items)
        pool = None
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(task, items, chunksize=max(1, len(items) // (8 * jobs)))
    try:
        for done, result in enumerate(results, 1):
            if progress is not None:
                progress(done, len(items))
            yield result
    finally:
        if pool is not None:
            pool.shutdown()


def _column_of(problem: Problem, index: int, columns: list[str]) -> str | None:
    """The reported column that fit coordinate `index` sets (None: not reported)."""
    if index < 5:
        return BASE_NAMES[index]
    name = problem.law.extra_columns(problem.obs)[index - 5]
    return name if name in columns else None


def _at_bounds(
    problem: Problem,
    theta: np.ndarray,
    objective: float,
    columns: list[str],
    ci: dict[str, tuple[float, float]],
    with_rho: bool,
) -> dict[str, str]:
    """Notes for parameters at a bound; their `ci` entry becomes the profile interval."""
    lower, upper = problem.bounds()
    law, obs = problem.law, problem.obs
    log_pred = problem.log_prediction(theta)[0]
    notes = {}
    for index, value in enumerate(theta):
        nearest = lower[index] if value - lower[index] <= upper[index] - value else upper[index]
        moved = np.array(theta, dtype=float)
        moved[index] = nearest
        shift = np.max(np.abs(problem.log_prediction(moved)[0] - log_pred))
        at_bound = shift <= BOUND_TOLERANCE * problem.delta
        name = _column_of(problem, index, columns)
        if not at_bound or name is None:
            continue
        column = columns.index(name)
        ends = []
        for end in (value, *_profile_interval(problem, theta, index, objective)):
            moved = np.array(theta, dtype=float)
            moved[index] = end
            ends.append(float(_natural(law, moved, obs, with_rho)[column]))
        ci[name] = (min(ends[1:]), max(ends[1:]))
        notes[name] = (
            f"at a bound of the fit ({name} = {ends[0]:.3g}); interval: the profile likelihood "
            f"(objective within {PROFILE_TOLERANCE:.0%} of the optimum)"
        )
    return notes


def _profile_interval(
    problem: Problem, theta: np.ndarray, index: int, objective: float
) -> tuple[float, float]:
    """The range of coordinate `index` (fit units) whose profile objective stays within
    PROFILE_TOLERANCE of `objective`: walked out from the optimum in steps to each bound, the
    crossing refined by bisection."""
    lower, upper = problem.bounds()
    limit = objective * (1 + PROFILE_TOLERANCE) + 1e-15
    ends = []
    for bound in (lower[index], upper[index]):
        inside, start = theta[index], theta
        outside = None
        for value in np.linspace(theta[index], bound, PROFILE_STEPS + 1)[1:]:
            moved, value_objective = problem.profile(start, index, value)
            if value_objective > limit:
                outside = value
                break
            inside, start = value, moved
        if outside is not None:
            for _ in range(PROFILE_BISECTIONS):
                middle = 0.5 * (inside + outside)
                moved, value_objective = problem.profile(start, index, middle)
                if value_objective > limit:
                    outside = middle
                else:
                    inside, start = middle, moved
        ends.append(inside)
    return ends[0], ends[1]


def _unidentified(
    values: dict[str, float], ci: dict[str, tuple[float, float]], notes: dict[str, str]
) -> dict[str, str]:
    """Notes for parameters the cells do not determine, saying why."""
    out = {}
    alpha = values["alpha"]
    if alpha < ALPHA_FLOOR:
        why = (
            f"{NOT_IDENTIFIED} (alpha = {alpha:.2g} ~ 0: loss does not fall with N in these cells, "
            "so A, alpha and the capacities have no meaning)"
        )
        for name in values:
            if name in ("A", "alpha") or name.startswith(("rho[", "L", "F", "C")):
                out[name] = why
    for name, value in values.items():
        if name in out or name not in ci:
            continue
        low, high = ci[name]
        wide = high - low > WIDTH_FACTOR * abs(value) if value else high - low > 0
        if wide and (name not in notes or high - low > WIDTH_FACTOR * max(abs(low), abs(high))):
            out[name] = (
                f"{NOT_IDENTIFIED} (95% interval [{low:.3g}, {high:.3g}] is wider than "
                f"{WIDTH_FACTOR:g}x its value {value:.3g})"
            )
    return out


def _warnings(
    values: dict[str, float],
    ci: dict[str, tuple[float, float]],
    notes: dict[str, str],
    problem: Problem,
    runner_up: tuple[float, np.ndarray] | None,
    objective: float,
    unidentified_width: float,
    dense: str,
) -> list[str]:
    warnings = [f"{name}: {note}" for name, note in notes.items()]
    for name, (low, high) in ci.items():
        value = values[name]
        if name not in notes and value and (high - low) > unidentified_width * abs(value):
            warnings.append(
                f"{name} is weakly identified: 95% CI [{low:.4g}, {high:.4g}] is wider than "
                f"{unidentified_width:g} x its value {value:.4g}"
            )
    if runner_up is not None and runner_up[0] <= objective * 1.01 + 1e-12:
        other = runner_up[1]
        warnings.append(
            f"a second minimum, predicting different losses, is within 1% of the objective: "
            f"E={math.exp(other[4]):.4g}, alpha={other[1]:.4g} (best: E={values['E']:.4g}, "
            f"alpha={values['alpha']:.4g})"
        )
    return warnings
