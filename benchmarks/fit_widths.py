"""Bootstrap interval widths of the two real fits, against widths recorded in a committed JSON:
a faster bootstrap must not buy its speed with narrower (or wider) intervals.

Two fits, 200 resamples, seed 0: `fit` of QuEST's 104 public runs (tests/data/quest_runs.csv,
law unified) and `reduce` of the committed cpu-mini store (docs/results/stores/cpu-mini: its
law and rho tables and the joint capacity law's intervals). Each interval's width (high - low)
is compared with the recorded one; one more than TOLERANCE (relative) away fails.

Record (the command that made benchmarks/fit_widths.json, on main before the warm bootstrap):
Record (the command that made benchmarks/fit_widths.json, on main with the two-stage polish):
Compare:
  PYTHONPATH=$PWD .venv/bin/python benchmarks/fit_widths.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd

from compscale import laws

REPO = Path(__file__).resolve().parent.parent
RECORD = Path(__file__).resolve().parent / "fit_widths.json"
TOLERANCE = 0.05
BOOTSTRAP, SEED = 200, 0


def quest_widths(options: laws.FitOptions) -> dict[str, float]:
    quest = pd.read_csv(REPO / "tests" / "data" / "quest_runs.csv")
    fit = laws.fit(
        quest["non_embedding_parameters"],
        quest["tokens"],
        quest["loss"],
        quest["format"],
        law="unified",
        options=options,
    )
    return {name: high - low for name, (low, high) in fit.ci.items()}


def cpu_mini_widths(options: laws.FitOptions) -> dict[str, float]:
    from compscale.reduce import reduce
    from orchestrator.store import Store

    results = Store(REPO / "docs" / "results" / "stores" / "cpu-mini").results("cpu-mini")
    reduction = reduce(results, options)
    widths = {name: high - low for name, (low, high) in reduction.unified.ci.items()}
    for row in reduction.capacity.itertuples():
        widths[f"joint {row.parameter}"] = row.joint_ci_high - row.joint_ci_low
    return widths


def measure(jobs: int) -> dict[str, dict[str, float]]:
    options = laws.FitOptions(bootstrap=BOOTSTRAP, seed=SEED, jobs=jobs)
    return {"quest": quest_widths(options), "cpu-mini": cpu_mini_widths(options)}


def compare(recorded: dict, measured: dict) -> list[str]:
    """One line per interval more than TOLERANCE away from its recorded width."""
    failures = []
    for fit, widths in recorded.items():
        for name, width in widths.items():
            now = measured[fit].get(name, math.nan)
            if math.isnan(width) and math.isnan(now):
                continue
            if not abs(now - width) <= TOLERANCE * abs(width) + 1e-12:
                failures.append(f"{fit} {name}: width {now:.4g}, recorded {width:.4g}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"write {RECORD.name}")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    measured = measure(args.jobs)
    if args.record:
        RECORD.write_text(json.dumps(measured, indent=1, sort_keys=True) + "\n")
        return
    recorded = json.loads(RECORD.read_text())
    for fit, widths in recorded.items():
        for name, width in widths.items():
            now = measured[fit].get(name, math.nan)
            change = now / width - 1 if width else now - width
            print(f"{fit:<9}{name:<34}{width:>12.4g}{now:>12.4g}{change:>+9.1%}")
    failures = compare(recorded, measured)
    print("\n".join(failures) or f"every width within {TOLERANCE:.0%} of the recorded one")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
