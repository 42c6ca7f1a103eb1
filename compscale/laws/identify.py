"""Which parameters the cells determine: parameters at a bound of the fit get a profile interval
instead of a bootstrap one, parameters the cells do not determine are named "not identified" with
why, and the fit's warnings say both, plus weak identification and a close second minimum.

A parameter at a bound of the fit (moving it onto the bound changes no predicted log loss by more
than BOUND_TOLERANCE x delta: E ~ 0, a rho ~ 1) is reported with its profile interval: the values
whose best objective is within PROFILE_TOLERANCE (relative) of the optimum. So is one whose
bootstrap interval ends at the estimate (within ONE_SIDED of its width), and one whose profile
stays within PROFILE_TOLERANCE PROFILE_REACH bootstrap widths beyond that interval: there the
resamples, each polished from the optimum, do not see how flat the objective is. Alpha below
ALPHA_FLOOR means loss does not fall with N in the cells, so A, alpha and every capacity lose
their meaning; any other parameter whose interval is wider than WIDTH_FACTOR times its value is
not identified either.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.optimize import brentq

from compscale.laws.forms import BASE_NAMES, natural
from compscale.laws.problem import Problem

BOUND_TOLERANCE = 0.1
PROFILE_TOLERANCE = 0.05
ALPHA_FLOOR = 0.02
WIDTH_FACTOR = 10.0
NOT_IDENTIFIED = "not identified"
PROFILE_STEPS = 12
PROFILE_BISECTIONS = 6
ONE_SIDED = 1e-3
PROFILE_REACH = 2.0


def _column_of(problem: Problem, index: int, columns: list[str]) -> str | None:
    """The reported column that fit coordinate `index` sets (None: not reported)."""
    if index < 5:
        return BASE_NAMES[index]
    name = problem.law.extra_columns(problem.obs)[index - 5]
    return name if name in columns else None


def profiled(
    problem: Problem,
    theta: np.ndarray,
    objective: float,
    columns: list[str],
    ci: dict[str, tuple[float, float]],
    with_rho: bool,
) -> dict[str, str]:
    """Notes for parameters whose honest interval is the profile, not the bootstrap (see
    `_why_profiled`); their `ci` entry becomes the profile interval, and the note says so."""
    notes = {}
    for index in range(len(theta)):
        name = _column_of(problem, index, columns)
        if name is None:
            continue
        column = columns.index(name)

        def natural_at(coordinate: float, index: int = index, column: int = column) -> float:
            moved = np.array(theta, dtype=float)
            moved[index] = coordinate
            return float(natural(problem.law, moved, problem.obs, with_rho)[column])

        why = _why_profiled(problem, theta, objective, index, natural_at, ci.get(name))
        if why is None:
            continue
        profile = _profile_interval(problem, theta, index, objective)
        low, high = sorted(natural_at(end) for end in profile)
        ci[name] = (low, high)
        notes[name] = (
            f"{why.format(name=name)}; interval: the profile likelihood, any value in "
            f"[{low:.3g}, {high:.3g}] fits within {PROFILE_TOLERANCE:.0%} of the optimum"
        )
    return notes


def _why_profiled(
    problem: Problem,
    theta: np.ndarray,
    objective: float,
    index: int,
    natural_at: Callable[[float], float],
    bootstrap: tuple[float, float] | None,
) -> str | None:
    """Why coordinate `index` needs its profile interval, or None: it sits at a bound of the fit;
    its bootstrap interval ends at the estimate (one-sided: the resamples, each polished from
    the optimum, never move it one way, which says nothing of how far it could go); or its
    profile stays within PROFILE_TOLERANCE PROFILE_REACH bootstrap widths beyond that interval."""
    lower, upper = problem.bounds()
    value, estimate = theta[index], natural_at(theta[index])
    moved = np.array(theta, dtype=float)
    moved[index] = lower[index] if value - lower[index] <= upper[index] - value else upper[index]
    shift = problem.log_prediction(moved)[0] - problem.log_prediction(theta)[0]
    if np.max(np.abs(shift)) <= BOUND_TOLERANCE * problem.delta:
        return f"at a bound of the fit ({{name}} = {estimate:.3g})"
    if bootstrap is None or not bootstrap[1] > bootstrap[0]:
        return None
    interval = f"[{bootstrap[0]:.3g}, {bootstrap[1]:.3g}]"
    if min(abs(estimate - end) for end in bootstrap) <= ONE_SIDED * np.ptp(bootstrap):
        return f"its bootstrap interval {interval} ends at the estimate"
    ends = [_coordinate_of(natural_at, end, lower[index], upper[index]) for end in bootstrap]
    reach = PROFILE_REACH * abs(ends[1] - ends[0])
    probes = np.clip((min(ends) - reach, max(ends) + reach), lower[index], upper[index])
    limit = objective * (1 + PROFILE_TOLERANCE) + 1e-15
    if all(problem.profile(theta, index, probe)[1] > limit for probe in probes):
        return None
    return f"its profile reaches far beyond its bootstrap interval {interval}"


def _coordinate_of(
    natural_at: Callable[[float], float], target: float, low: float, high: float
) -> float:
    """The fit coordinate in [low, high] whose natural value is `target` (the map from a fit
    coordinate to its reported column is monotone); the nearer bound when none is."""

    def gap(x: float) -> float:
        return natural_at(x) - target

    at_low, at_high = gap(low), gap(high)
    if at_low * at_high > 0:
        return low if abs(at_low) < abs(at_high) else high
    return float(brentq(gap, low, high, xtol=1e-10))


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


def unidentified(
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


def fit_warnings(
    values: dict[str, float],
    ci: dict[str, tuple[float, float]],
    notes: dict[str, str],
    runner_up: tuple[float, np.ndarray] | None,
    objective: float,
    unidentified_width: float,
) -> list[str]:
    """The fit's warnings: every note, every interval wider than `unidentified_width` times its
    value, and a runner-up minimum within 1% of the objective (the cells cannot tell them apart)."""
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
