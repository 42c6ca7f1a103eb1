"""One law on one set of cells as an optimisation problem: the log residuals, their analytic
Jacobian, the Huber objective (delta on log loss, as Besiroglu et al. (2024) fitted Chinchilla),
and the local polish from a start.

The polish is a trust-region Huber least squares (scipy `least_squares`, loss="huber",
f_scale=delta, analytic Jacobian): the same objective as Besiroglu et al.'s L-BFGS, which stays
available as method="lbfgs". With 0.5% noise most residuals sit in Huber's linear part and
L-BFGS-B crawls along the kinks: from the 24 best grid starts of a 7-format synthetic grid (84
cells) it stopped at its 2000-iteration cap from 19, ending 0.002% to 160% above the minimum that
the trust-region method reached from all 24 (benchmarks/fit_speed.py times both).

The Huber polish starts from the plain least-squares minimum (`two_stage_least_squares`): from a
grid start the Huber trust region crawls along the kinks too (about 1,400 evaluations a start on
QuEST's 104 runs, stopping at its tolerance up to 2e-4 above the minimum), while Gauss-Newton on
the smooth squares converges in about 100 and the Huber polish from there in about 60, lower.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import OptimizeResult, least_squares, minimize

from compscale.laws.cells import Observations
from compscale.laws.forms import Law, log_loss

# A profile point is polished to 1e-10: at 1e-8 the Huber stage stops early on QuEST's runs with
# E held at 0.08 (7.4% above the optimum where 1e-10 reaches 1.5%), cutting the interval short.
PROFILE_TOL = 1e-10
BASE_BOUNDS = ((-20.0, 60.0), (0.0, 10.0), (-20.0, 60.0), (0.0, 10.0), (-20.0, 10.0))


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
            obs, law, extra = self.obs, self.law, theta[5:]
            log_rho = law.log_rho(extra, obs)[obs.format_index]
            log_d = law.log_eff_d(extra, obs)[obs.format_index]
            self._last = (
                key,
                log_loss(
                    theta[:5], obs.log_params + log_rho, obs.log_tokens + log_d, law.gamma(extra)
                ),
            )
        return self._last[1]

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        residual = self.log_prediction(theta)[0] - self.obs.log_loss
        return residual if self.pairing is None else self.pairing @ residual

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        _, (w1, w2, w3, *by_gamma) = self.log_prediction(theta)
        obs, alpha, beta, extra = self.obs, theta[1], theta[3], theta[5:]
        log_rho = self.law.log_rho(extra, obs)[obs.format_index]
        log_d = self.law.log_eff_d(extra, obs)[obs.format_index]
        base = [w1, -w1 * (obs.log_params + log_rho), w2, -w2 * (obs.log_tokens + log_d), w3]
        rho_jac = self.law.log_rho_jac(extra, obs)[obs.format_index]
        d_jac = self.law.log_eff_d_jac(extra, obs)[obs.format_index]
        extra_jac = (-alpha * w1)[:, None] * rho_jac + (-beta * w2)[:, None] * d_jac
        if by_gamma:
            extra_jac[:, 0] += by_gamma[0]
        jacobian = np.column_stack([*base, extra_jac])
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
        obs, law = self.obs, self.law
        log_n_rho = obs.log_params + law.log_rho(extra, obs)[obs.format_index]
        log_d_eff = obs.log_tokens + law.log_eff_d(extra, obs)[obs.format_index]
        log_pred, _ = log_loss(starts.T[:, :, None], log_n_rho, log_d_eff, law.gamma(extra))
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
            result = two_stage_least_squares(
                self.residuals, self.jacobian, theta, (lower, upper), self.delta, tol, max_nfev
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

        result = two_stage_least_squares(
            lambda x: self.residuals(full(x)),
            lambda x: self.jacobian(full(x))[:, free],
            np.clip(theta[free], lower[free], upper[free]),
            (lower[free], upper[free]),
            self.delta,
            PROFILE_TOL,
            2000,
        )
        theta_out = full(result.x)
        return theta_out, self.objective(theta_out)


def two_stage_least_squares(
    residuals: Callable[[np.ndarray], np.ndarray],
    jacobian: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    delta: float,
    tol: float,
    max_nfev: int,
) -> OptimizeResult:
    """The Huber least-squares minimum near `start`, reached through the plain least-squares one.

    Gauss-Newton on the squares (smooth) walks the curved valleys of the law fast; the Huber
    trust region then only corrects for the residuals beyond delta. Both stages scale the
    parameters by the Jacobian's columns and stop at `tol` or `max_nfev` evaluations each.
    """
    settings = dict(
        jac=jacobian, bounds=bounds, x_scale="jac", xtol=tol, ftol=tol, gtol=tol, max_nfev=max_nfev
    )
    squares = least_squares(residuals, start, **settings)
    return least_squares(residuals, squares.x, loss="huber", f_scale=delta, **settings)


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
