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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

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
    """Cells to fit, in log space; `format_index` points into `formats`."""

    log_params: np.ndarray
    log_tokens: np.ndarray
    log_loss: np.ndarray
    format_index: np.ndarray
    formats: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.log_loss)

    def take(self, rows: np.ndarray) -> Observations:
        return Observations(
            self.log_params[rows],
            self.log_tokens[rows],
            self.log_loss[rows],
            self.format_index[rows],
            self.formats,
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


@dataclass
class UnifiedGmseLaw(Law):
    """The unified law with rho = L tanh(F b)^C, b = log_{1/4}(GMSE) the format's effective bits.

    Dense keeps rho = 1 (it fixes A's units); L is the capacity compressed formats approach as their
    GMSE goes to 0, F and C shape the approach. A format never trained is predicted from its GMSE.
    """

    gmse: Mapping[str, float] = field(default_factory=dict)
    dense: str = DENSE
    name = "unified-gmse"

    def extra_names(self) -> tuple[str, ...]:
        return ("L", "F", "C")

    def check(self, obs: Observations) -> None:
        _check_formats(obs, self.dense, self.name)
        missing = [name for name in obs.formats if name != self.dense and name not in self.gmse]
        if missing:
            raise ValueError(f"gmse: no GMSE for format(s) {', '.join(missing)}")
        for name in obs.formats:
            if name != self.dense and not 0 < self.gmse[name] < 1:
                raise ValueError(f"gmse: {name} has GMSE {self.gmse[name]!r}; need 0 < GMSE < 1")
        distinct = {self.gmse[name] for name in obs.formats if name != self.dense}
        if len(distinct) < 3:
            raise ValueError("format: the unified-gmse law needs >= 3 formats of distinct GMSE")

    def bits(self, obs: Observations) -> np.ndarray:
        gmse = np.array([0.0] + [self.gmse[name] for name in obs.formats[1:]])
        return capacity.capped_bits(gmse)

    def extra_starts(self) -> list[np.ndarray]:
        starts = []
        for cap, slope, power in itertools.product((0.9,), (0.3, 1.0), (0.5, 2.0)):
            starts.append(np.array([capacity.u_of_rho(cap), math.log(slope), math.log(power)]))
        return starts

    def extra_bounds(self) -> list[tuple[float, float]]:
        return [U_BOUNDS, (-10.0, 5.0), (-10.0, 5.0)]

    def log_rho(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        values = capacity.log_tanh_law(extra, self.bits(obs))
        values[0] = 0.0
        return values

    def log_rho_jac(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        jac = capacity.log_tanh_law_jac(extra, self.bits(obs))
        jac[0] = 0.0
        return jac

    def extra_values(self, extra: np.ndarray) -> np.ndarray:
        return np.array(capacity.tanh_law_params(extra))


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

    def log_prediction(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log predicted loss per cell and the softmax weights of the three LSE terms."""
        obs = self.obs
        log_rho = self.law.log_rho(theta[5:], obs)[obs.format_index]
        return log_loss(theta[:5], obs.log_params + log_rho, obs.log_tokens)

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        return self.log_prediction(theta)[0] - self.obs.log_loss

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        _, (w1, w2, w3) = self.log_prediction(theta)
        obs, alpha, extra = self.obs, theta[1], theta[5:]
        log_rho = self.law.log_rho(extra, obs)[obs.format_index]
        base = [w1, -w1 * (obs.log_params + log_rho), w2, -w2 * obs.log_tokens, w3]
        rho_jac = self.law.log_rho_jac(extra, obs)[obs.format_index]
        return np.column_stack([*base, (-alpha * w1)[:, None] * rho_jac])

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
        return huber(log_pred - obs.log_loss, self.delta).sum(axis=1)

    def polish(self, theta: np.ndarray, method: str = "trf") -> tuple[np.ndarray, float]:
        """Local minimum from `theta`: trust-region Huber least squares or L-BFGS-B."""
        lower, upper = self.bounds()
        theta = np.clip(theta, lower, upper)
        if method == "trf":
            result = least_squares(
                self.residuals,
                theta,
                jac=self.jacobian,
                bounds=(lower, upper),
                loss="huber",
                f_scale=self.delta,
                xtol=1e-12,
                ftol=1e-12,
                gtol=1e-12,
                max_nfev=2000,
            )
        elif method == "lbfgs":
            result = minimize(
                self.objective_and_gradient,
                theta,
                jac=True,
                method="L-BFGS-B",
                bounds=list(zip(lower, upper, strict=True)),
                options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9},
            )
        else:
            raise ValueError(f"method: unknown optimiser {method!r}; choose trf or lbfgs")
        return result.x, self.objective(result.x)


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
    all one representation); `L`, `F`, `C` are the capacity law's, when known, and predict the rho
    of a format that was not fitted from its entry in `gmse`.
    """

    law: str
    A: float
    alpha: float
    B: float
    beta: float
    E: float
    rho: dict[str, float] = field(default_factory=dict)
    L: float | None = None
    F: float | None = None
    C: float | None = None
    gmse: dict[str, float] = field(default_factory=dict)
    dense: str = DENSE

    @property
    def params(self) -> dict[str, float]:
        """A, alpha, B, beta, E, then L, F, C when known."""
        names = BASE_NAMES + (("L", "F", "C") if self.L is not None else ())
        return {name: getattr(self, name) for name in names}

    def rho_of(self, name: str) -> float:
        """Capacity of a format: fitted, else predicted from its GMSE by the capacity law."""
        if name in self.rho:
            return self.rho[name]
        if name == self.dense or not self.rho:
            return 1.0
        if name in self.gmse and self.L is not None:
            return float(capacity.capacity(self.gmse[name], self.L, self.F, self.C))
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
    """A fit: the fitted law, bootstrap CIs and diagnostics (never prints)."""

    fitted: FittedLaw
    ci: dict[str, tuple[float, float]]
    objective: float
    residuals: np.ndarray
    fit_error: dict[str, float]
    warnings: tuple[str, ...]
    bootstrap: int
    bootstrap_samples: np.ndarray
    delta: float

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

    def predict(
        self, params: Sequence[float], tokens: Sequence[float], formats: Sequence[str] | None = None
    ) -> np.ndarray:
        return self.fitted.predict(params, tokens, formats)

    def rho_of(self, name: str) -> float:
        return self.fitted.rho_of(name)

    def summary(self) -> str:
        lines = [
            f"{self.law} law, Huber delta {self.delta:g} on log loss, {len(self.residuals)} cells, "
            f"{self.bootstrap} bootstrap resamples (95% percentile CI)",
            f"{'parameter':<24}{'value':>12}{'ci low':>12}{'ci high':>12}",
        ]
        rows = list(self.params.items()) + [(f"rho[{k}]", v) for k, v in self.rho.items()]
        for name, value in rows:
            low, high = self.ci.get(name, (math.nan, math.nan))
            lines.append(f"{name:<24}{value:>12.5g}{low:>12.5g}{high:>12.5g}")
        lines.append(
            f"objective {self.objective:.6g}; fit error: RMSE of log loss "
            f"{self.fit_error['rmse_log_loss']:.4g}, mean |pred/obs - 1| "
            f"{self.fit_error['mean_abs_rel_error']:.4g}"
        )
        lines += [f"warning: {text}" for text in self.warnings]
        return "\n".join(lines)


def make_law(
    name: str, obs: Observations, gmse: Mapping[str, float] | None = None, dense: str = DENSE
) -> Law:
    """Build the law `name` ('chinchilla', 'unified' or 'unified-gmse') for these cells."""
    if name == "chinchilla":
        return ChinchillaLaw()
    if name == "unified":
        return UnifiedLaw(formats=obs.formats, dense=dense)
    if name == "unified-gmse":
        return UnifiedGmseLaw(gmse=dict(gmse or {}), dense=dense)
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


def _distinct_runner_up(found: list[tuple[float, np.ndarray]]) -> tuple[float, np.ndarray] | None:
    """The best local minimum whose (alpha, e) differ visibly from the best one's."""
    best = found[0][1]
    for value, theta in found[1:]:
        if (
            abs(theta[1] - best[1]) > 0.02 * max(abs(best[1]), 1e-3)
            or abs(theta[4] - best[4]) > 0.05
        ):
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
    """Cells resampled with replacement within each format (every format keeps its cell count)."""
    parts = []
    for index in range(len(obs.formats)):
        rows = np.flatnonzero(obs.format_index == index)
        parts.append(rng.choice(rows, size=len(rows), replace=True))
    return np.concatenate(parts)


def fit(
    params: Sequence[float],
    tokens: Sequence[float],
    loss: Sequence[float],
    formats: Sequence[str] | None = None,
    *,
    law: str = "chinchilla",
    gmse: Mapping[str, float] | None = None,
    dense: str = DENSE,
    delta: float = 1e-3,
    bootstrap: int = 200,
    seed: int = 0,
    top_starts: int = 8,
    method: str = "trf",
    unidentified_width: float = 1.0,
) -> FitResult:
    """Fit `law` to cells (N parameters, D tokens, loss in nats) and bootstrap its CIs.

    `top_starts`: how many of the 7776 grid starts (ranked by their objective, per start of the
    law's extra parameters) are polished by `method`; the best two with E near 0 and with
    alpha <= 0.2 are always polished too. A parameter whose CI is wider than `unidentified_width`
    times its value is reported in `warnings` as not identified.
    """
    obs = observations(params, tokens, loss, formats)
    law_object = make_law(law, obs, gmse, dense)
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
    found = _local_minima(problem, top_starts, method)
    if not found:
        raise ValueError("fit: every start diverged; check that losses are in nats and positive")
    objective, theta = found[0]
    runner_up = _distinct_runner_up(found)
    with_rho = law != "chinchilla"
    names = [*BASE_NAMES, *law_object.extra_names()]
    columns = names + ([f"rho[{name}]" for name in obs.formats] if with_rho else [])
    estimate = _natural(law_object, theta, obs, with_rho)

    rng = np.random.default_rng(seed)
    warm = [theta] + ([runner_up[1]] if runner_up else [])
    samples = np.empty((bootstrap, len(columns)))
    for i in range(bootstrap):
        resample = Problem(law_object, obs.take(_bootstrap_rows(obs, rng)), delta)
        best, _ = min((resample.polish(x, method) for x in warm), key=lambda item: item[1])
        samples[i] = _natural(law_object, best, obs, with_rho)
    ci = {}
    if bootstrap:
        low, high = np.percentile(samples, [2.5, 97.5], axis=0)
        ci = {name: (float(lo), float(hi)) for name, lo, hi in zip(columns, low, high, strict=True)}

    log_pred, _ = problem.log_prediction(theta)
    residuals = log_pred - obs.log_loss
    fit_error = {
        "rmse_log_loss": float(np.sqrt(np.mean(residuals**2))),
        "mean_abs_rel_error": float(np.mean(np.abs(np.expm1(residuals)))),
    }
    params_out = {name: float(v) for name, v in zip(names, estimate, strict=False)}
    rho_out = (
        {name: float(v) for name, v in zip(obs.formats, estimate[len(names) :], strict=True)}
        if with_rho
        else {}
    )
    known_gmse = {name: float(value) for name, value in (gmse or {}).items()}
    fitted = FittedLaw(law, **params_out, rho=rho_out, gmse=known_gmse, dense=dense)
    return FitResult(
        fitted=fitted,
        ci=ci,
        objective=objective,
        residuals=residuals,
        fit_error=fit_error,
        warnings=tuple(
            _warnings(
                params_out, rho_out, ci, theta, runner_up, objective, unidentified_width, dense
            )
        ),
        bootstrap=bootstrap,
        bootstrap_samples=samples,
        delta=delta,
    )


def _warnings(
    params: dict[str, float],
    rho: dict[str, float],
    ci: dict[str, tuple[float, float]],
    theta: np.ndarray,
    runner_up: tuple[float, np.ndarray] | None,
    objective: float,
    unidentified_width: float,
    dense: str,
) -> list[str]:
    warnings = []
    values = params | {f"rho[{k}]": v for k, v in rho.items()}
    for name, (low, high) in ci.items():
        value = values[name]
        if value and (high - low) > unidentified_width * abs(value):
            warnings.append(
                f"{name} is weakly identified: 95% CI [{low:.4g}, {high:.4g}] is wider than "
                f"{unidentified_width:g} x its value {value:.4g}"
            )
    for name, value in rho.items():
        if name != dense and value > 0.999:
            warnings.append(f"rho[{name}] sits at its upper bound 1 (format no worse than dense?)")
    for i, name in ((1, "alpha"), (3, "beta")):
        low, high = BASE_BOUNDS[i]
        if theta[i] <= low + 1e-6 or theta[i] >= high - 1e-6:
            warnings.append(f"{name} sits at its bound [{low:g}, {high:g}]")
    if runner_up is not None and runner_up[0] <= objective * 1.01 + 1e-12:
        other = runner_up[1]
        warnings.append(
            f"a second minimum is within 1% of the objective: E={math.exp(other[4]):.4g}, "
            f"alpha={other[1]:.4g} (best: E={params['E']:.4g}, alpha={params['alpha']:.4g})"
        )
    return warnings
