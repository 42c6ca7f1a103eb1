"""Adaptive design against the full grid and random cells, on sweeps simulated from a known law.

Every repetition draws a log-loss noise level in [0.5%, 1.5%], trains (simulates) a small start
design, then spends the same FLOPs per round three ways: `design` (`compscale.design.propose`,
target rho), `grid` (the full grid's cells in sweep order, then again with new seeds) and
`random` (grid cells drawn uniformly). After each round the unified law is refitted (warm-started
from the previous round's fit, 50 bootstrap resamples) and the mean 95% interval width of the
capacities and their mean absolute error against the truth are recorded. Last: the FLOPs each
strategy needs to reach the width the grid reaches at its end (log-interpolated between rounds).

    python benchmarks/adaptive.py [--repetitions 5] [--rounds 4] [--bootstrap 50]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import pandas as pd

from compscale.advise import Ensemble, fit_ensemble, loss
from compscale.design import Candidate, propose, random_picks
from compscale.laws import FitOptions

BASE = (406.4, 0.34, 410.7, 0.28, 1.69)  # A, alpha, B, beta, E (Chinchilla's scale)
RHO = {"dense": 1.0, "int4": 0.85, "int3": 0.7, "int2": 0.4, "sp50": 0.9}
SIZES = (1e6, 3e6, 1e7, 3e7, 1e8)
RATIOS = (10, 30, 100)
STRATEGIES = ("design", "grid", "random")


def grid(sizes, ratios) -> list[Candidate]:
    """Cells in sweep order: models x token budgets x formats."""
    return [Candidate(n, n * r, f) for n in sizes for r in ratios for f in RHO]


def simulate(cells: list[Candidate], noise: float, rng: np.random.Generator) -> pd.DataFrame:
    values = np.array([float(loss(*BASE, RHO[c.format], c.params, c.tokens)) for c in cells])
    return pd.DataFrame(
        {
            "params": [c.params for c in cells],
            "tokens": [c.tokens for c in cells],
            "format": [c.format for c in cells],
            "val_loss": values * np.exp(rng.normal(0, noise, len(cells))),
        }
    )


def measure(ensemble: Ensemble) -> tuple[float, float]:
    """Mean 95% width of the compressed formats' rho, and their mean |rho - truth|."""
    names = [name for name in RHO if name != "dense"]
    draws = np.column_stack([ensemble.column(f"rho[{name}]") for name in names])
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    error = np.mean([abs(ensemble.fitted.rho[name] - RHO[name]) for name in names])
    return float(np.mean(high - low)), float(error)


def in_order(cells: list[Candidate], start: int, budget: float) -> tuple[list[int], int]:
    """The grid strategy: cells from position `start` on (cycling), while the budget lasts."""
    picks, position = [], start
    while cells[position % len(cells)].flops <= budget:
        budget -= cells[position % len(cells)].flops
        picks.append(position % len(cells))
        position += 1
    return picks, position


def repetition(seed: int, rounds: int, bootstrap: int) -> dict[str, list[tuple]]:
    """One simulated sweep: (cumulative FLOPs, width, error, cells) per round and strategy."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0.005, 0.015)
    start, candidates = grid(SIZES[:2], RATIOS[:2]), grid(SIZES, RATIOS)
    per_round = sum(c.flops for c in start)  # each round costs the start design again
    first = simulate(start, noise, rng)
    ensemble, fit = fit_ensemble(first, FitOptions(bootstrap=bootstrap, seed=seed))
    spent0 = sum(c.flops for c in start)
    history = {name: [(spent0, *measure(ensemble), len(first))] for name in STRATEGIES}
    state = {
        name: {"data": first, "ensemble": ensemble, "fit": fit, "left": 0.0, "position": 0}
        for name in STRATEGIES
    }
    for _ in range(rounds):
        for name in STRATEGIES:
            s = state[name]
            budget = per_round + s["left"]
            if name == "design":
                picks = propose(s["ensemble"], candidates, budget, max_copies=4).picks
            elif name == "grid":
                picks, s["position"] = in_order(candidates, s["position"], budget)
            else:
                picks = random_picks(candidates, budget, rng)
            spent = sum(candidates[i].flops for i in picks)
            s["left"] = budget - spent
            more = simulate([candidates[i] for i in picks], noise, rng)
            s["data"] = pd.concat([s["data"], more], ignore_index=True)
            s["ensemble"], s["fit"] = fit_ensemble(
                s["data"], FitOptions(bootstrap=bootstrap, seed=seed), warm_starts=[s["fit"].theta]
            )
            total = history[name][-1][0] + spent
            history[name].append((total, *measure(s["ensemble"]), len(s["data"])))
    return history | {"noise": noise}


def flops_to_reach(history: list[tuple], width: float) -> float:
    """Cumulative FLOPs at which the width first reaches `width` (log-interpolated); inf: never."""
    for (f0, w0, *_), (f1, w1, *_) in itertools.pairwise(history):
        if w1 <= width:
            if w0 <= width:
                return f0
            t = (math.log(w0) - math.log(width)) / (math.log(w0) - math.log(w1))
            return math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0)))
    return math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=50)
    args = parser.parse_args()
    started = time.perf_counter()
    runs = []
    for seed in range(args.repetitions):
        runs.append(repetition(seed, args.rounds, args.bootstrap))
        print(
            f"repetition {seed}: noise {runs[-1]['noise']:.4f} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    print("\nmean over repetitions (sd): rho 95% interval width, |rho - truth|, cells")
    print(f"{'round':>5} {'FLOPs':>9}  " + "  ".join(f"{name:<30}" for name in STRATEGIES))
    for r in range(args.rounds + 1):
        cells = []
        for name in STRATEGIES:
            rows = np.array([run[name][r] for run in runs])
            width, error = rows[:, 1], rows[:, 2]
            cells.append(
                f"{width.mean():.4f} ({width.std():.4f}) {error.mean():.4f} "
                f"{rows[:, 3].mean():>6.0f}"
            )
        flops = np.mean([run["grid"][r][0] for run in runs])
        print(f"{r:>5} {flops:>9.3g}  " + "  ".join(f"{cell:<30}" for cell in cells))
    print("\nFLOPs to reach the width the full grid reaches at its end (per repetition)")
    ratios = []
    for i, run in enumerate(runs):
        goal = run["grid"][-1][1]
        need = {name: flops_to_reach(run[name], goal) for name in STRATEGIES}
        ratios.append(need["grid"] / need["design"])
        print(
            f"  rep {i}: width {goal:.4f}: "
            + ", ".join(f"{name} {need[name]:.3g}" for name in STRATEGIES)
            + f"; grid / design {ratios[-1]:.3g}x"
        )
    print(
        f"median grid / design FLOPs: {np.median(ratios):.3g}x "
        f"({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
