"""The chaos run on S3 (benchmarks/chaos.py --s3) at 100 cells: two sweeps sharing cells and a WSD
ladder, submitted at once on a moto server, with cell and trunk segment processes, a worker node
and one sweep's driver (twice) killed; nothing lost, nothing doubled, and by the processes' own
logs every cell and every trunk segment trained to completion exactly once."""

import json
import subprocess
import sys

import pytest
from helpers import REPO, environment, kill_session

CELLS = 100  # grid cells; the ladder's three budgets come on top


@pytest.mark.slow
def test_a_chaos_run_on_s3_trains_every_cell_and_trunk_segment_exactly_once(tmp_path):
    out = tmp_path / "outcome.json"
    command = [sys.executable, str(REPO / "benchmarks" / "chaos.py"), "--s3"]
    command += ["--cells", str(CELLS), "--keep", str(tmp_path / "run"), "--json", str(out)]
    # A process (and session) of its own: Ray keeps an instance's auth token per process.
    driver = subprocess.Popen(
        command,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = driver.communicate(timeout=1500)
    finally:
        kill_session(driver.pid)
    assert driver.returncode == 0, output[-6000:]
    outcome = json.loads(out.read_text())
    found = outcome["audit"]
    assert (found["done"], found["lost"]) == (CELLS + 3, 0)
    assert found["duplicated_rows"] == found["trained_twice"] == found["false_deaths"] == 0
    assert found["trainings_per_cell"] == {"1": CELLS + 3}, "each cell trained once, no more"
    assert sorted(found["trainings_per_segment"].values()) == [1, 1, 1]
    assert found["segment_deaths"] >= 3  # each segment's first process was killed
    assert found["killed_attempts"] >= 3  # ~10% of the cells' attempts killed themselves
    assert outcome["exits"] == [[-9, -9, 0], [0]]  # one sweep's driver killed twice, restarted
    assert outcome["node_removed"]
    assert outcome["moto_requests"]["PUT"] > CELLS  # the store really was on the moto server
