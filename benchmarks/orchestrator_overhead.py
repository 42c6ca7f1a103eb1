"""Orchestrator overhead: no-op cells through the real driver, store and a local Ray.

For each cell count, a fresh Python process expands a sweep of that many cells, registers them in
a temporary store, starts an embedded Ray (not timed) and drives every cell with a cell function
that does nothing. It prints the wall time per cell (driver + Ray task + the task's status events
and heartbeat in the store) and the driver's peak resident memory, so growth with the number of
cells is visible. Targets: < 50 ms a cell; memory flat in the number of cells.

    .venv/bin/python benchmarks/orchestrator_overhead.py            # 200 and 2,000 cells
    .venv/bin/python benchmarks/orchestrator_overhead.py --cells 500
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def noop_cell(cell, store_uri: str, attempt: int) -> dict:
    """The cell function of the benchmark: no training, so only the orchestration is timed."""
    return {"tokens": 0, "tokens_per_s": 0.0}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(cells: int) -> dict[str, float]:
    """Run `cells` no-op cells in this process; returns timings (s, ms) and memory (MiB)."""
    from orchestrator.cells import expand
    from orchestrator.cluster import connect
    from orchestrator.driver import drive, plan
    from orchestrator.spec import SweepSpec
    from orchestrator.store import Store

    spec = SweepSpec(name="overhead", models=["tiny"], tokens=[4096], formats=["dense"],
                     seeds=list(range(cells)))  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        store = Store(f"{root}/store")
        started = time.perf_counter()
        expanded = expand(spec)
        for cell in expanded:
            store.put_cell(cell)
        store.put_sweep(spec.name, spec.model_dump_json(), [c.cell_id for c in expanded])
        planned = plan(expanded, store)
        prepared = time.perf_counter()
        connect()
        rss_before = peak_rss_mib()
        driven = time.perf_counter()
        counts = drive(
            spec.name, planned, store, resources=spec.resources, retries=0, cell_fn=noop_cell
        )
        finished = time.perf_counter()
    if counts["done"] != cells:
        raise RuntimeError(f"only {counts['done']} of {cells} no-op cells finished: {counts}")
    return {
        "cells": cells,
        "prepare_ms_per_cell": 1e3 * (prepared - started) / cells,
        "drive_ms_per_cell": 1e3 * (finished - driven) / cells,
        "peak_rss_before_drive_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return 0
    print(f"{'cells':>6} {'prepare ms/cell':>16} {'drive ms/cell':>14} {'peak RSS MiB':>13}"
          f" {'of which driving':>17}")  # fmt: skip
    for cells in args.cells:  # a fresh process each, so peak memory is this count's alone
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(cells)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(child.stdout.strip().splitlines()[-1])
        growth = row["peak_rss_mib"] - row["peak_rss_before_drive_mib"]
        print(
            f"{cells:>6} {row['prepare_ms_per_cell']:>16.2f} {row['drive_ms_per_cell']:>14.2f}"
            f" {row['peak_rss_mib']:>13.0f} {growth:>17.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
