"""Adaptive design against the full grid and random cells, on sweeps simulated from a known law.

Every repetition draws a log-loss noise level in [0.5%, 1.5%], trains (simulates) a small start
design, then spends the same FLOPs per round three ways: `design` (`compscale.design.propose`,
target rho), `grid` (the full grid's cells in sweep order, then again with new seeds) and
`random` (grid cells drawn uniformly). After each round the unified law is refitted (warm-started
from the previous round's fit, 50 bootstrap resamples) and the mean 95% interval width of the
capacities and their mean absolute error against the truth are recorded. Last: the FLOPs each
strategy needs to reach the width the grid reaches at its end (log-interpolated between rounds).

    python benchmarks/adaptive.py [--repetitions 5] [--rounds 4] [--bootstrap 50]

`--autopilot` benchmarks the real loop instead (`orchestrator.autopilot`: the driver on a local
Ray, the store, the reducer's paired fit, the group design) on synthetic cells
(`tests/doubles.py: law_cell`) from known laws with seed-shared and own noise, asking
`composition sp50 int4`: the FLOPs the loop spends to reach the target against the FLOPs a
static grid needs (whole seeds of the spec's grid added one at a time until the interval at the
same level is as narrow), as a median over laws x repetitions; then the coverage of the loop's
final interval over cheap in-process runs (the cells trained in the driver's process, no Ray):

    PYTHONPATH=.:tests python benchmarks/adaptive.py --autopilot [--laws 3] [--repetitions 3]
        [--coverage-runs 50] [--bootstrap 100] [--target 0.03]
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


# ---- the autopilot's loop against a static grid ------------------------------------------------

LAWS = (  # (law, rho) of the synthetic cells; sp50+int4 multiplicative times the last number
    ({"A": 50.0, "alpha": 0.34, "B": 16.0, "beta": 0.28, "E": 1.5}, 0.85, 0.9, 1.0),
    ({"A": 30.0, "alpha": 0.30, "B": 25.0, "beta": 0.30, "E": 1.8}, 0.8, 0.95, 0.97),
    ({"A": 80.0, "alpha": 0.38, "B": 10.0, "beta": 0.25, "E": 1.2}, 0.9, 0.85, 1.03),
)


def autopilot_spec(name: str, target: float, bootstrap: int, budget: float, round_flops: float):
    text = (
        f"name: {name}\nmodels: [tiny, 100k, 200k]\ntokens: [8192, 32768]\n"
        "formats: [dense, sp50, int4, sp50+int4]\nseeds: [0, 1]\n"
        f"adaptive: {{question: composition sp50 int4, target: {target}, "
        f"budget_flops: {budget:.6g}, round_flops: {round_flops:.6g}, bootstrap: {bootstrap}}}\n"
    )
    return text


def truth_of(index: int, salt: int) -> dict:
    law, sp50, int4, factor = LAWS[index % len(LAWS)]
    rho = {"dense": 1.0, "sp50": sp50, "int4": int4, "sp50+int4": sp50 * int4 * factor}
    return {"law": law, "rho": rho, "shared_sd": 0.02, "own_sd": 0.004, "salt": salt}


def run_autopilot(folder, truth: dict, text: str, on_ray: bool):
    """One loop in `folder` (store and the double's control folder): its rounds."""
    import json
    from pathlib import Path

    from orchestrator import autopilot
    from orchestrator.cells import expand
    from orchestrator.driver import Driver
    from orchestrator.driver import plan as plan_cells
    from orchestrator.spec import parse_spec
    from orchestrator.store import Store

    folder = Path(folder)
    (folder / "double").mkdir(parents=True, exist_ok=True)
    (folder / "double" / "sleep_s").write_text("0")
    (folder / "double" / "law.json").write_text(json.dumps(truth))
    store = Store(folder / "store")
    store.create()
    spec = parse_spec(text)
    cells = expand(spec)
    for cell in cells:
        store.put_cell(cell)
    store.put_sweep(spec.name, text, [cell.cell_id for cell in cells])
    from doubles import law_cell

    def on_ray_cells(cells):
        driver = Driver(spec.name, store, resources=spec.resources, retries=0, cell_fn=law_cell)
        counts = driver.run(plan_cells(cells, store))
        return 1 if counts["failed"] else 0

    def in_process(cells):
        for cell in cells:
            if not store.has_result(cell.cell_id):
                law_cell(cell, store.uri, 1)
                store.record(cell.cell_id, "done", 1)
        return 0

    run_cells = on_ray_cells if on_ray else in_process
    autopilot.run(spec, store, cells, run_cells, say=lambda _: None)
    return spec, cells, store.round_rows(spec.name)


def static_flops(spec, cells, truth: dict, level: float, target: float, most: int) -> float:
    """FLOPs of the spec's grid with whole seeds added until the interval at `level` is as
    narrow as `target` (inf: not within `most` seeds)."""
    import pandas as pd

    from compscale.questions import answer, parse_question
    from compscale.reduce import unified_fit
    from orchestrator.autopilot import sweep_flops

    sys_path_tests()
    from doubles import law_loss

    question = parse_question(spec.adaptive.question)
    base = [cell for cell in cells if cell.seed == 0]
    grid = list(cells)
    seeds = 1 + max(cell.seed for cell in cells)
    while True:
        rows = [
            {
                "params": c.params,
                "tokens": c.tokens,
                "format": c.format,
                "seed": c.seed,
                "val_loss": law_loss(c, truth),
            }
            for c in grid
        ]
        fit = unified_fit(pd.DataFrame(rows), FitOptions(bootstrap=spec.adaptive.bootstrap, seed=0))
        if answer(question, fit, level).half_width <= target:
            return sweep_flops(grid)
        if seeds >= most:
            return math.inf
        grid += [c.model_copy(update={"seed": seeds}) for c in base]
        seeds += 1


def sys_path_tests() -> None:
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def autopilot_main(args: argparse.Namespace) -> None:
    import tempfile

    sys_path_tests()
    from orchestrator.cluster import connect

    started = time.perf_counter()
    connect()
    budget, round_flops = 4.0e12, 2.0e11
    ratios = []
    for index in range(args.laws):
        for repetition in range(args.repetitions):
            truth = truth_of(index, salt=100 * index + repetition)
            text = autopilot_spec("bench", args.target, args.bootstrap, budget, round_flops)
            with tempfile.TemporaryDirectory() as folder:
                spec, cells, rows = run_autopilot(folder, truth, text, on_ray=True)
            last = rows[-1]
            loop = last["flops"] if last["stopped"] == "target reached" else math.inf
            grid = static_flops(spec, cells, truth, last["level"], args.target, most=40)
            ratios.append(grid / loop)
            print(
                f"law {index} rep {repetition}: loop {loop:.3g} FLOPs in {len(rows)} rounds "
                f"({last['stopped']}), static grid {grid:.3g}: {grid / loop:.3g}x "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    print(f"median static / loop FLOPs: {np.median(ratios):.3g}x over {len(ratios)} runs")

    misses, runs = 0, []
    for run in range(args.coverage_runs):
        truth = truth_of(run, salt=10_000 + run)
        true = math.log(truth["rho"]["sp50+int4"] / (truth["rho"]["sp50"] * truth["rho"]["int4"]))
        text = autopilot_spec("cover", args.coverage_target, 40, 1.2e12, 2.0e11)
        with tempfile.TemporaryDirectory() as folder:
            _, _, rows = run_autopilot(folder, truth, text, on_ray=False)
        last = rows[-1]
        missed = not math.log(last["low"]) <= true <= math.log(last["high"])
        misses += missed
        runs.append(len(rows))
    print(
        f"coverage: the final interval missed the true log ratio in {misses} of "
        f"{args.coverage_runs} runs ({100 * misses / max(args.coverage_runs, 1):.0f}%; "
        f"{np.mean(runs):.1f} rounds each; {time.perf_counter() - started:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=50)
    parser.add_argument("--autopilot", action="store_true", help="benchmark the real loop")
    parser.add_argument("--laws", type=int, default=3, help="--autopilot: synthetic laws")
    parser.add_argument("--target", type=float, default=0.03, help="--autopilot: half-width")
    parser.add_argument("--coverage-runs", type=int, default=50)
    parser.add_argument("--coverage-target", type=float, default=0.01)
    args = parser.parse_args()
    if args.autopilot:
        autopilot_main(args)
        return
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
