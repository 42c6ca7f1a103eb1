"""The chaos run (benchmarks/chaos.py) at 300 cells: cell processes, a worker node and the driver
killed, a stale running cell left behind, and still nothing lost, nothing doubled."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# In a process of its own: Ray keeps an instance's auth token per process, and an earlier test's
# Ray in the pytest process would leave the chaos cluster's drivers unable to authenticate.
RUN = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("chaos", sys.argv[1])
chaos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chaos)
outcome = chaos.run(300, __import__("pathlib").Path(sys.argv[2]))
print(chaos.report(outcome))
open(sys.argv[3], "w").write(json.dumps(outcome, default=str))
"""


@pytest.mark.slow
def test_a_chaos_run_loses_nothing_and_trains_nothing_twice(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    out = tmp_path / "outcome.json"
    command = [
        sys.executable,
        "-c",
        RUN,
        str(REPO / "benchmarks" / "chaos.py"),
        str(tmp_path),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outcome = json.loads(out.read_text())
    found = outcome["audit"]
    assert (found["done"], found["lost"]) == (300, 0)
    assert found["duplicated_rows"] == 0
    assert found["trained_twice"] == 0
    assert found["false_deaths"] == 0
    assert found["killed_attempts"] >= 10  # the chaos happened: ~10% of ~330 attempts and more
    exits = [run["exit"] for run in outcome["runs"]]
    assert exits == [-signal.SIGKILL, -signal.SIGKILL, 0]
