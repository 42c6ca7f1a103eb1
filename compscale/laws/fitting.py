"""`fit`: a law fitted to cells from a grid of starts, the best minimum kept, its intervals
bootstrapped over cells and its parameters checked for identification."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from compscale import capacity
from compscale.laws.bootstrap import Resampler, bootstrap_rows, map_in_processes
from compscale.laws.cells import Observations, observations
from compscale.laws.forms import BASE_NAMES, UnifiedGmseLaw, make_law, natural
from compscale.laws.identify import fit_warnings, profiled, unidentified
from compscale.laws.options import FitOptions
from compscale.laws.problem import Problem
from compscale.laws.results import FitResult, FittedLaw
from compscale.laws.starts import distinct_runner_up, local_minima


def canonical_order(obs: Observations) -> np.ndarray:
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
    options: FitOptions | None = None,
    parts: Mapping[str, Sequence[capacity.Part]] | None = None,
    warm_starts: Sequence[np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
    paired_seeds: Sequence[int] | None = None,
    multipliers: Mapping[str, tuple[bool, bool]] | None = None,
) -> FitResult:
    """Fit `law` to cells (N parameters, D tokens, loss in nats) and bootstrap its intervals.

    `options` says how (`FitOptions`: Huber delta, resamples, seed, processes, starts, polisher).
    The `options.top_starts` best of the 7776 grid starts (ranked by their objective, per start of
    the law's extra parameters) are polished; `warm_starts` (fit coordinates, e.g. another fit's
    `theta` on overlapping cells) replace the grid. `parts` (unified-gmse): each compressed
    format's (family, GMSE) parts; by default from the format grammar (`compscale.gmse.parts_of`).
    Each bootstrap resample is polished from the optimum and from the best distinct runner-up
    minimum (the runner-up basin wins a tenth of cpu-mini's resamples), in `options.jobs`
    processes; `progress(done, total)` hears of each. A parameter whose CI is wider than
    `options.unidentified_width` times its value is reported in `warnings` as weakly identified;
    see `FitResult.notes` for the stronger verdicts. `paired_seeds` (each cell's seed): profile
    out a log-loss offset per (N, D, seed) group (`pairing_projection`) and bootstrap whole groups.
    `multipliers` (unified-effd): each format's (on_n, on_d), whether it scales N or D; by
    default from the format grammar (`compscale.multipliers.multipliers`).
    """
    options = options or FitOptions()
    dense, delta, bootstrap = options.dense, options.delta, options.bootstrap
    obs = observations(params, tokens, loss, formats)
    if paired_seeds is not None:
        keys = np.column_stack([obs.log_params, obs.log_tokens, np.asarray(paired_seeds, float)])
        obs = replace(obs, pair_index=np.unique(keys, axis=0, return_inverse=True)[1].ravel())
    order = canonical_order(obs)
    obs = obs.take(order)
    if law == "unified-gmse" and parts is None:
        from compscale.gmse import parts_of

        parts = {name: parts_of(name) for name in obs.formats if name != dense}
    if law == "unified-effd" and multipliers is None:
        from compscale.multipliers import multipliers as multipliers_of

        multipliers = {name: multipliers_of(name) for name in obs.formats if name != dense}
    law_object = make_law(law, obs, parts, dense, multipliers)
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
            (item[1], item[0]) for item in (problem.polish(x, options.method) for x in warm_starts)
        )
        found = [(value, theta) for value, theta in found if np.isfinite(value)]
    else:
        found = local_minima(problem, options.top_starts, options.method)
    if not found:
        raise ValueError("fit: every start diverged; check that losses are in nats and positive")
    objective, theta = found[0]
    runner_up = distinct_runner_up(problem, found)
    with_rho = law != "chinchilla"
    names = [*BASE_NAMES, *law_object.extra_names()]
    columns = names + ([f"rho[{name}]" for name in obs.formats] if with_rho else [])
    estimate = natural(law_object, theta, obs, with_rho)

    rng = np.random.default_rng(options.seed)
    resamples = [bootstrap_rows(obs, rng) for _ in range(bootstrap)]
    warm = [theta] + ([runner_up[1]] if runner_up is not None else [])
    task = Resampler(law_object, obs, delta, warm, options.method, with_rho)
    samples = np.empty((bootstrap, len(columns)))
    for i, row in enumerate(map_in_processes(task, resamples, options.jobs, progress)):
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
    notes = profiled(problem, theta, objective, columns, ci, with_rho)
    notes |= unidentified(values, ci, notes)
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
        eff_d={name[6:-1]: value for name, value in values.items() if name.startswith("eff_d[")},
        gamma=values.get("gamma"),
    )
    warnings = fit_warnings(values, ci, notes, runner_up, objective, options.unidentified_width)
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
