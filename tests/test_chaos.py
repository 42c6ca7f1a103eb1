"""The chaos run (benchmarks/chaos.py) at 300 cells: cell processes, a worker node and the driver
killed, a stale running cell left behind, and still nothing lost, nothing doubled."""

import importlib.util
import signal
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "chaos.py"


@pytest.mark.slow
def test_a_chaos_run_loses_nothing_and_trains_nothing_twice(tmp_path):
    spec = importlib.util.spec_from_file_location("chaos", BENCHMARK)
    chaos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos)
    outcome = chaos.run(300, tmp_path)
    print(chaos.report(300, outcome))
    found = outcome["audit"]
    assert (found["done"], found["lost"]) == (300, 0)
    assert found["duplicated_rows"] == 0
    assert found["trained_twice"] == 0
    assert found["false_deaths"] == 0
    assert found["killed_attempts"] >= 10  # the chaos happened: ~10% of ~330 attempts and more
    exits = [run["exit"] for run in outcome["runs"]]
    assert exits == [-signal.SIGKILL, -signal.SIGKILL, 0]
