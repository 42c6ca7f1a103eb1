"""Time of the law fits against plain scipy baselines of the same objective, in the same run.

Part 1, polishers. Two problems: the Chinchilla grid (Besiroglu et al.'s 240 points from
tests/data) and a synthetic unified fit of 12 formats x 4 N x 3 D (0.5% log-normal noise). Four
fitters from the same starts (`laws.candidate_starts`):
  ours        trust-region Huber least squares, analytic Jacobian, Jacobian-scaled parameters
              (what `laws.fit` uses)
  unscaled    the same without scaling, tolerance 1e-12 (what `laws.fit` used before)
  lbfgs       L-BFGS-B on the same objective with its analytic gradient (`method="lbfgs"`)
  baseline    L-BFGS-B with numerical (finite-difference) gradients: plain scipy
Each row prints wall time, time relative to the baseline, and the best objective reached, so that
speed is never bought with a worse minimum.

Part 2, what users run, each as a ratio to ONE scipy refine of QuEST's 21-parameter problem
timed in the same run (an unscaled trust-region Huber least squares from the best grid start):
`fit` of QuEST's 104 public runs (tests/data/quest_runs.csv), `reduce` of the committed cpu-mini
store (80 cells, every table), and a synthetic table of ~600 runs and 35 formats under `--law`;
200 bootstrap resamples each. Targets: <= 30x, <= 70x, <= 60x.
Run: PYTHONPATH=$PWD .venv/bin/python benchmarks/fit_speed.py [--law unified] [--targets-only]
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, minimize

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


def unscaled_polish(problem: laws.Problem, start: np.ndarray) -> float:
    lower, upper = problem.bounds()
    result = least_squares(
        problem.residuals,
        np.clip(start, lower, upper),
        jac=problem.jacobian,
        bounds=(lower, upper),
        loss="huber",
        f_scale=problem.delta,
        xtol=1e-12,
        ftol=1e-12,
        gtol=1e-12,
        max_nfev=2000,
    )
    return problem.objective(result.x)


FITTERS = {
    "ours": lambda problem, start: problem.polish(start, "trf")[1],
    "unscaled": unscaled_polish,
    "lbfgs": lambda problem, start: problem.polish(start, "lbfgs")[1],
    "baseline": baseline_polish,
}


def synthetic_results(rho: dict[str, float], sizes, ratios, seed: int = 0) -> pd.DataFrame:
    """Result rows of a sweep over `sizes` x `ratios` tokens per parameter, 0.5% noise."""
    rng = np.random.default_rng(seed)
    rows = [
        (
            int(n),
            int(n * r),
            name,
            0,
            406.4 * (n * value) ** -0.34 + 410.7 * (n * r) ** -0.28 + 1.69,
        )
        for name, value in rho.items()
        for n in sizes
        for r in ratios
    ]
    table = pd.DataFrame(rows, columns=["params", "tokens", "format", "seed", "val_loss"])
    return table.assign(val_loss=table["val_loss"] * np.exp(rng.normal(0, 0.005, len(table))))


def synthetic_table() -> pd.DataFrame:
    """About 600 runs of 35 formats (dense and 34 compressed, 6 sizes x 3 ratios each): the scale
    of everyone's data in one table."""
    rho = {"dense": 1.0} | {f"f{i:02d}": 0.2 + 0.023 * i for i in range(34)}
    return synthetic_results(rho, (3e7, 6e7, 1e8, 2e8, 4e8, 8e8), (20, 50, 100))


def end_to_end(law: str) -> None:
    """The three targets, each as a ratio to one scipy refine of QuEST's 21-parameter problem
    (unscaled trust-region Huber least squares from the best grid start) timed in this run."""
    import os

    from compscale.reduce import reduce
    from orchestrator.store import Store

    repo = Path(__file__).resolve().parent.parent
    jobs = os.cpu_count() or 1
    quest = pd.read_csv(repo / "tests" / "data" / "quest_runs.csv")
    params = quest["non_embedding_parameters"]
    obs = laws.observations(params, quest["tokens"], quest["loss"], quest["format"])
    problem = laws.Problem(laws.make_law("unified", obs), obs, 1e-3)
    start = laws.candidate_starts(problem, top_starts=1)[0]
    begin = time.perf_counter()
    unscaled_polish(problem, start)
    refine = time.perf_counter() - begin
    cpu_mini = Store(repo / "docs" / "results" / "stores" / "cpu-mini").results("cpu-mini")
    table = synthetic_table()
    options = laws.FitOptions(jobs=jobs)
    tasks = {
        "fit QuEST's 104 runs (unified)": (
            30,
            lambda: laws.fit(
                params,
                quest["tokens"],
                quest["loss"],
                quest["format"],
                law="unified",
                options=options,
            ),
        ),
        "reduce cpu-mini, 80 cells": (70, lambda: reduce(cpu_mini, options)),
        f"fit {len(table)} runs, 35 formats ({law})": (
            60,
            lambda: laws.fit(
                table.params, table.tokens, table.val_loss, table.format, law=law, options=options
            ),
        ),
    }
    print(f"\none scipy refine of QuEST's problem: {refine:.3f} s; {jobs} processes")
    print(
        "{:<40}{:>10}{:>16}{:>10}".format("task (200 resamples)", "seconds", "vs refine", "target")
    )
    for label, (target, task) in tasks.items():
        begin = time.perf_counter()
        task()
        seconds = time.perf_counter() - begin
        print(f"{label:<40}{seconds:>10.2f}{seconds / refine:>15.1f}x{target:>9}x")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--law", default="unified", help="law of the 600-run synthetic table")
    parser.add_argument("--targets-only", action="store_true", help="skip part 1 (polishers)")
    args = parser.parse_args()
    if not args.targets_only:
        polishers()
    end_to_end(args.law)


def polishers() -> None:
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
