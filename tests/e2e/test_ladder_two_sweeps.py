"""Two sweeps that share one WSD ladder, submitted at once as two `compscale submit` processes
(each with its own embedded Ray): every trunk segment and every cell is trained exactly once, by
one driver or the other, and the other waits for it. Real training of tiny cells."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import environment, kill_session

from orchestrator.store import Store
from workers.ladder import fork_step, trunk_id

pytestmark = pytest.mark.slow

# tiny at seq_len 32, batch 4: budgets of 30, 50 and 80 steps, forks at steps 24, 40 and 64
SPEC = """name: {name}
models: [{{preset: tiny, seq_len: 32}}]
tokens: [3840, 6400, 10240]
formats: [sp50]
train: {{batch_size: 4, eval_tokens: 1024, eval_every: 10, schedule: wsd, lr: 5.0e-3}}
data: {{source: bundled}}
resources: {{cpus: 1, gpus: 0}}
retries: 1
"""


def start_driver(name: str, cwd: Path) -> subprocess.Popen:
    (cwd / f"{name}.yaml").write_text(SPEC.format(name=name))
    command = [sys.executable, "-m", "orchestrator.cli", "submit", f"{name}.yaml"]
    command += ["--cell-fn", "helpers:run_cell_trunk_paused", "--heartbeat-s", "0.5"]
    command += ["--lease-s", "20"]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_sweeps_sharing_a_ladder_at_once_train_each_trunk_segment_once(tmp_path):
    drivers = [start_driver("a", tmp_path), start_driver("b", tmp_path)]
    try:
        outputs = [driver.communicate(timeout=540) for driver in drivers]
    finally:
        for driver in drivers:
            kill_session(driver.pid)
    assert [driver.returncode for driver in drivers] == [0, 0], outputs
    store = Store(tmp_path / "store")
    cells = store.manifest("a")
    assert sorted(cells) == sorted(store.manifest("b")) and len(cells) == 3
    trunk = {trunk_id(store.load_cell(c)) for c in cells}
    assert len(trunk) == 1
    trunk = trunk.pop()
    events = store.trunk_events(trunk)
    trainings = Counter(e["fork"] for e in events if e["state"] == "running")
    assert trainings == {24: 1, 40: 1, 64: 1}, events
    assert Counter(e["fork"] for e in events if e["state"] == "done") == trainings
    assert not [e for e in events if e["state"] == "failed"], events
    rows = read_trunk_steps(store, trunk)
    assert sorted(rows) == list(range(64)), "each trunk step trained once, by one driver"
    for cell_id in cells:
        cell = store.load_cell(cell_id)
        assert store.status(cell_id).state == "done"
        running = [p for p in store.events(cell_id) if p.endswith("-running.json")]
        assert len(running) == 1, f"{cell_id} trained once"
        assert store.read_json(running[0])["fork_step"] == fork_step(cell)


def read_trunk_steps(store: Store, trunk: str) -> list[int]:
    """The step of every loss row the trunk's segments wrote, over all attempts (not the
    one-row-per-step view a reader gets): a step trained twice shows twice."""
    parts = sorted(Path(store.layout.trunk(trunk).losses).glob("attempt-*/part-*.parquet"))
    assert parts
    return [step for part in parts for step in pq.read_table(part).column("step").to_pylist()]
