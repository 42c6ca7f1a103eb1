"""The law forms: Chinchilla, the unified law with one free capacity per format, the unified
law whose capacities follow the tanh(GMSE) capacity law, and the two forms quantized-training
papers fit (Quartet, arXiv 2505.14669; Quartet II, arXiv 2601.22813): effective parameters and
effective data per format (`unified-effd`), and `(A (N rho)^-alpha + B D^-beta)^gamma + E`
(`unified-gamma`); and `log_loss`, the formula they share.

All are `L = A (N rho)^-alpha + B (D eff_d)^-beta + E` (eff_d = 1 but in `unified-effd`), written
in log space as `log L = LSE(a - alpha log(N rho), b - beta log(D eff_d), e)` with A = e^a,
B = e^b, E = e^e; `unified-gamma` takes the outer LSE of gamma LSE(first two terms) and e. A form
owns only its extra coordinates: those of log rho, of log eff_d, and gamma (first, when a form has
it). Capacities stay in (0, 1] through the parametrisation `compscale.capacity` owns
(rho = exp(-softplus(u)), the tanh law in (u, log F, log C)); `unified-effd`'s multipliers stay in
(0, EFF_BOUND] through the same map scaled by EFF_BOUND.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from compscale import capacity
from compscale.laws.cells import DENSE, Observations

BASE_NAMES = ("A", "alpha", "B", "beta", "E")
U_BOUNDS = (-25.0, 25.0)
EFF_BOUND = 1.2  # unified-effd: effN and effD in (0, EFF_BOUND], as Quartet fits them
GAMMA_BOUNDS = (0.05, 5.0)
GAMMA_STARTS = (1.0,)  # the unified law; the grid moves A, alpha, B, beta, E around it


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
        return np.zeros((len(obs.formats), len(extra)))

    def log_eff_d(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        """log effective data per format (D is scaled by it as N is by rho); 0 but in
        `unified-effd`."""
        return np.zeros(len(obs.formats))

    def log_eff_d_jac(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        """d log eff_d / d extra: one row per format, one column per extra parameter."""
        return np.zeros((len(obs.formats), len(extra)))

    def gamma(self, extra: np.ndarray) -> float | None:
        """The outer exponent of `(A (N rho)^-alpha + B D^-beta)^gamma + E`, always the first
        extra coordinate; None: the form has none (the plain sum)."""
        return None

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


def _log_eff(u: np.ndarray) -> np.ndarray:
    """log of a multiplier in (0, EFF_BOUND]: log EFF_BOUND - softplus(u)."""
    return math.log(EFF_BOUND) + capacity.log_rho_of_u(u)


def _u_of_eff(value: float) -> float:
    return capacity.u_of_rho(value / EFF_BOUND)


@dataclass
class UnifiedEffDLaw(Law):
    """L = A (N effN_R)^-alpha + B (D effD_R)^-beta + E (Quartet's law of quantized training): a
    format whose forward pass is compressed (weights, activations) gets an effN (reported as its
    rho), one whose backward pass is gets an effD, one with both gets both; each in
    (0, EFF_BOUND] (Quartet lets a multiplier pass 1), dense 1.

    `multipliers` maps each format to (on_n, on_d): `compscale.multipliers` reads them from the
    format grammar, a table from its `on_n` / `on_d` columns.
    """

    formats: tuple[str, ...] = ()
    multipliers: Mapping[str, tuple[bool, bool]] = field(default_factory=dict)
    dense: str = DENSE
    name = "unified-effd"

    def __post_init__(self) -> None:
        compressed = [name for name in self.formats if name != self.dense]
        on = {name: self.multipliers.get(name, (True, False)) for name in compressed}
        self.n_index = np.array([self.formats.index(f) for f in compressed if on[f][0]], int)
        self.d_index = np.array([self.formats.index(f) for f in compressed if on[f][1]], int)
        self.neither = [name for name in compressed if not any(on[name])]

    def check(self, obs: Observations) -> None:
        _check_formats(obs, self.dense, self.name)
        if self.neither:
            raise ValueError(
                f"format: {', '.join(self.neither)} scale(s) neither N nor D (on_n and on_d both "
                "false); a compressed format needs at least one"
            )

    def extra_names(self) -> tuple[str, ...]:
        return tuple(f"eff_d[{self.formats[i]}]" for i in self.d_index)

    def extra_starts(self) -> list[np.ndarray]:
        k = len(self.n_index) + len(self.d_index)
        return [np.full(k, _u_of_eff(0.7)), np.full(k, _u_of_eff(0.3))]

    def extra_bounds(self) -> list[tuple[float, float]]:
        return [U_BOUNDS] * (len(self.n_index) + len(self.d_index))

    def log_rho(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        out = np.zeros(len(obs.formats))
        out[self.n_index] = _log_eff(extra[: len(self.n_index)])
        return out

    def log_rho_jac(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        jac = np.zeros((len(obs.formats), len(extra)))
        k = len(self.n_index)
        jac[self.n_index, np.arange(k)] = capacity.log_rho_of_u_grad(extra[:k])
        return jac

    def log_eff_d(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        out = np.zeros(len(obs.formats))
        out[self.d_index] = _log_eff(extra[len(self.n_index) :])
        return out

    def log_eff_d_jac(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        jac = np.zeros((len(obs.formats), len(extra)))
        k = len(self.n_index)
        columns = np.arange(k, len(extra))
        jac[self.d_index, columns] = capacity.log_rho_of_u_grad(extra[k:])
        return jac

    def extra_values(self, extra: np.ndarray) -> np.ndarray:
        return np.exp(_log_eff(extra[len(self.n_index) :]))

    def extra_columns(self, obs: Observations) -> list[str]:
        return [f"rho[{obs.formats[i]}]" for i in self.n_index] + list(self.extra_names())


@dataclass
class UnifiedGammaLaw(UnifiedLaw):
    """L = (A (N rho_R)^-alpha + B D^-beta)^gamma + E with one free rho per non-dense format: the
    second form Quartet fits; gamma = 1 is the unified law."""

    name = "unified-gamma"

    def extra_names(self) -> tuple[str, ...]:
        return ("gamma",)

    def extra_starts(self) -> list[np.ndarray]:
        rho_starts = super().extra_starts()
        return [np.concatenate([[gamma], u]) for gamma in GAMMA_STARTS for u in rho_starts]

    def extra_bounds(self) -> list[tuple[float, float]]:
        return [GAMMA_BOUNDS, *super().extra_bounds()]

    def log_rho(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        return super().log_rho(extra[1:], obs)

    def log_rho_jac(self, extra: np.ndarray, obs: Observations) -> np.ndarray:
        jac = super().log_rho_jac(extra[1:], obs)
        return np.column_stack([np.zeros(len(jac)), jac])

    def gamma(self, extra: np.ndarray) -> float | None:
        return float(extra[0])

    def extra_values(self, extra: np.ndarray) -> np.ndarray:
        return extra[:1].copy()

    def extra_columns(self, obs: Observations) -> list[str]:
        return ["gamma", *super().extra_columns(obs)]


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
    base: Sequence[float],
    log_n_rho: np.ndarray,
    log_tokens: np.ndarray,
    gamma: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """log(A (N rho)**-alpha + B D**-beta + E) and its derivative by each of its three log terms.

    The law's one formula: fits, their start grid and every prediction go through it. `base` is
    (a, alpha, b, beta, e) with A = e^a, B = e^b, E = e^e; computed as the stable log-sum-exp
    LSE(a - alpha log(N rho), b - beta log D, e), broadcasting (a grid of starts against cells);
    the derivatives are then its softmax weights. With `gamma`, log((A (N rho)**-alpha +
    B D**-beta)**gamma + E) = LSE(gamma LSE(first two terms), e), and a fourth row: the derivative
    by gamma.
    """
    a, alpha, b, beta, e = base
    if gamma is None:
        return _log_sum_exp(a - alpha * log_n_rho, b - beta * log_tokens, e)
    inner, (w_params, w_tokens) = _log_sum_exp(a - alpha * log_n_rho, b - beta * log_tokens)
    outer, (w_power, w_floor) = _log_sum_exp(gamma * inner, e)
    weights = [gamma * w_power * w_params, gamma * w_power * w_tokens, w_floor, w_power * inner]
    return outer, np.stack(weights)


def _log_sum_exp(*terms) -> tuple[np.ndarray, np.ndarray]:
    """log(sum exp(terms)) and the softmax weights of the terms, stably (the largest factored)."""
    stacked = np.stack(np.broadcast_arrays(*terms))
    top = stacked.max(axis=0)
    exp_terms = np.exp(stacked - top)
    total = exp_terms.sum(axis=0)
    return top + np.log(total), exp_terms / total


LAW_NAMES = ("chinchilla", "unified", "unified-gmse", "unified-effd", "unified-gamma")


def make_law(
    name: str,
    obs: Observations,
    parts: Mapping[str, Sequence[capacity.Part]] | None = None,
    dense: str = DENSE,
    multipliers: Mapping[str, tuple[bool, bool]] | None = None,
) -> Law:
    """Build the law `name` (one of LAW_NAMES) for these cells; `parts` (unified-gmse) and
    `multipliers` (unified-effd: format -> (on_n, on_d), default on_n only) as `fit` takes them."""
    if name == "chinchilla":
        return ChinchillaLaw()
    if name == "unified":
        return UnifiedLaw(formats=obs.formats, dense=dense)
    if name == "unified-gmse":
        return UnifiedGmseLaw(parts=dict(parts or {}), dense=dense)
    if name == "unified-effd":
        return UnifiedEffDLaw(formats=obs.formats, multipliers=dict(multipliers or {}), dense=dense)
    if name == "unified-gamma":
        return UnifiedGammaLaw(formats=obs.formats, dense=dense)
    raise ValueError(f"law: unknown law {name!r}; choose {', '.join(LAW_NAMES)}")


def natural(law: Law, theta: np.ndarray, obs: Observations, with_rho: bool) -> np.ndarray:
    """Parameters in natural units (A, alpha, B, beta, E, extras), then rho of every format."""
    base = np.array(
        [math.exp(theta[0]), theta[1], math.exp(theta[2]), theta[3], math.exp(theta[4])]
    )
    parts = [base, law.extra_values(theta[5:])]
    if with_rho:
        parts.append(np.exp(law.log_rho(theta[5:], obs)))
    return np.concatenate(parts)
