"""Scaling-law forms and their fits: Chinchilla, the unified law with one capacity per format, and
the unified law whose capacities follow the tanh(GMSE) capacity law.

All three share `L = A (N rho)^-alpha + B D^-beta + E` (N non-embedding parameters, D training
tokens, L validation loss in nats per token) and are fitted as Besiroglu et al. (2024) fitted
Chinchilla: in log space, minimising a Huber loss (delta 1e-3) of the log residuals from a grid of
starts and keeping the best, with confidence intervals from a bootstrap over cells.

`fit` returns a `FitResult` whose `fitted` (`FittedLaw`) is the only predictor of losses.

Modules, in the order they build on each other: `cells` (validated cells in log space), `forms`
(the law forms and their shared formula), `problem` (objective, Jacobian, polish), `starts` (the
grid and the minima kept), `bootstrap` (resampled fits), `identify` (bounds, profiles, "not
identified"), `results` (`FittedLaw`, `FitResult`), `options` (`FitOptions`), `fitting` (`fit`).
"""

from compscale.laws.cells import DENSE, Observations, observations
from compscale.laws.fitting import fit
from compscale.laws.forms import (
    BASE_NAMES,
    ChinchillaLaw,
    Law,
    UnifiedGmseLaw,
    UnifiedLaw,
    log_loss,
    make_law,
)
from compscale.laws.identify import NOT_IDENTIFIED
from compscale.laws.options import FitOptions
from compscale.laws.problem import Problem, huber, pairing_projection
from compscale.laws.results import FitResult, FittedLaw
from compscale.laws.starts import candidate_starts, distinct_runner_up, start_grid

__all__ = [
    "BASE_NAMES",
    "DENSE",
    "NOT_IDENTIFIED",
    "ChinchillaLaw",
    "FitOptions",
    "FitResult",
    "FittedLaw",
    "Law",
    "Observations",
    "Problem",
    "UnifiedGmseLaw",
    "UnifiedLaw",
    "candidate_starts",
    "distinct_runner_up",
    "fit",
    "huber",
    "log_loss",
    "make_law",
    "observations",
    "pairing_projection",
    "start_grid",
]
