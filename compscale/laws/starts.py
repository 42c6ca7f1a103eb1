"""Where a fit starts and which minimum it keeps: the grid of starts in (a, alpha, b, beta, e),
scored in one vectorised pass, the best of it polished, and the runner-up minimum that is a
different fit (the bootstrap warm-starts from it, a warning names it when it comes close)."""

from __future__ import annotations

import itertools

import numpy as np

from compscale.laws.problem import Problem

# Start grid in the log-sum-exp coordinates (a, alpha, b, beta, e): Besiroglu et al.'s grid widened
# with E near 0 (e = -3, E = 0.05) and small exponents, where real grids hide a second minimum.
GRID_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
GRID_EXPONENT = (0.05, 0.2, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-3.0, -1.0, -0.5, 0.0, 0.5, 1.0)


def start_grid() -> np.ndarray:
    """All (a, alpha, b, beta, e) starts: 6^5 = 7776 points."""
    return np.array(list(itertools.product(GRID_A, GRID_EXPONENT, GRID_A, GRID_EXPONENT, GRID_E)))


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


def local_minima(problem: Problem, top_starts: int, method: str) -> list[tuple[float, np.ndarray]]:
    """Every polished start as (objective, theta), best first."""
    found = []
    for start in candidate_starts(problem, top_starts):
        theta, value = problem.polish(start, method)
        if np.isfinite(value):
            found.append((value, theta))
    found.sort(key=lambda item: item[0])
    return found


def distinct_runner_up(
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
