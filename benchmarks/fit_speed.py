"""Time of the law fits against a plain scipy baseline of the same objective, in the same run.

Two problems: the Chinchilla grid (Besiroglu et al.'s 240 points from tests/data) and a synthetic
unified fit of 12 formats x 4 N x 3 D (0.5% log-normal noise). Three fitters from the same starts
(`laws.candidate_starts`: the best grid starts by objective plus E-near-0 and small-alpha ones):
  ours      trust-region Huber least squares, analytic Jacobian (what `laws.fit` uses)
  lbfgs     L-BFGS-B on the same objective with its analytic gradient (`method="lbfgs"`)
  baseline  L-BFGS-B with numerical (finite-difference) gradients: plain scipy
Each row prints wall time, time relative to the baseline, and the best objective reached, so that
speed is never bought with a worse minimum. Run: .venv/bin/python benchmarks/fit_speed.py
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from compscale import laws

CHINCHILLA_CSV = (
    Path(__file__).resolve().parent.parent / "tests" / "data" / "chinchilla_svg_extracted.csv"
)


def chinchilla() -> laws.Problem:
    table = pd.read_csv(CHINCHILLA_CSV).sort_values("loss").iloc[:-5]
    params = table["Model Size"].to_numpy()
    obs = laws.observations(params, table["Training FLOP"] / (6 * params), table["loss"])
    return laws.Problem(laws.make_law("chinchilla", obs), obs, 1e-3)


def unified_12_formats() -> laws.Problem:
    rng = np.random.default_rng(0)
    rho = {"dense": 1.0} | {f"f{i:02d}": 0.3 + 0.06 * i for i in range(11)}
    rows = []
    for name, value in rho.items():
        for params in (1e6, 1e7, 1e8, 1e9):
            for tokens_per_param in (10, 30, 100):
                tokens = params * tokens_per_param
                loss = 406.4 * (params * value) ** -0.34 + 410.7 * tokens**-0.28 + 1.69
                rows.append((params, tokens, name, loss * math.exp(rng.normal(0, 0.005))))
    params, tokens, names, loss = zip(*rows, strict=True)
    obs = laws.observations(params, tokens, loss, names)
    return laws.Problem(laws.make_law("unified", obs), obs, 1e-3)


def baseline_polish(problem: laws.Problem, start: np.ndarray) -> float:
    lower, upper = problem.bounds()
    result = minimize(
        lambda theta: problem.objective(theta) / problem.delta,
        np.clip(start, lower, upper),
        method="L-BFGS-B",
        bounds=list(zip(lower, upper, strict=True)),
        options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9},
    )
    return problem.objective(result.x)


def timed(polish, problem: laws.Problem, starts: list[np.ndarray]) -> tuple[float, float]:
    """Seconds to polish every start, and the best objective reached."""
    begin = time.perf_counter()
    best = min(polish(problem, start) for start in starts)
    return time.perf_counter() - begin, best


FITTERS = {
    "ours": lambda problem, start: problem.polish(start, "trf")[1],
    "lbfgs": lambda problem, start: problem.polish(start, "lbfgs")[1],
    "baseline": baseline_polish,
}


def main() -> None:
    header = ("problem", "fitter", "starts", "seconds", "vs baseline", "objective")
    print("{:<24}{:<10}{:>7}{:>10}{:>13}{:>14}".format(*header))
    for label, problem in (
        ("chinchilla 240 cells", chinchilla()),
        ("unified 12x4x3", unified_12_formats()),
    ):
        begin = time.perf_counter()
        starts = laws.candidate_starts(problem, top_starts=8)
        grid_seconds = time.perf_counter() - begin
        runs = {name: timed(polish, problem, starts) for name, polish in FITTERS.items()}
        base = runs["baseline"][0]
        for fitter, (seconds, objective) in runs.items():
            total = seconds + grid_seconds
            print(
                f"{label:<24}{fitter:<10}{len(starts):>7}{total:>10.2f}"
                f"{total / (base + grid_seconds):>12.3f}x{objective:>14.8g}"
            )
    print("seconds include scoring the 7776-point start grid once (shared by all fitters)")


if __name__ == "__main__":
    main()
