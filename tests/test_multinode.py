"""A multi-node Ray cluster on one machine runs a real sweep, and survives losing a worker node.

The head has no CPUs, so every cell runs on one of two one-CPU worker nodes; removing one while its
cell trains makes Ray rerun the cell on the other, where it resumes from its checkpoint. The loss
view must still hold exactly one row per (cell, step).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.store import Store

pytestmark = pytest.mark.slow

SPEC = """
name: multinode
models: [tiny]
tokens: [{tokens}]
formats: [dense, int4, sp50]
seeds: [0]
train: {{batch_size: 4, eval_tokens: 4096, checkpoint_every: 5}}
resources: {{cpus: 1}}
retries: 1
"""


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def submit(spec: Path, store: Path, address: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "orchestrator.cli", "submit", str(spec)]
    command += ["--store", str(store), "--address", address]
    env = os.environ | {"RAY_ADDRESS": address}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def steps_logged(store: Store) -> int:
    return store.query("SELECT count(*) FROM losses").fetchall()[0][0] if store.cell_ids() else 0


def test_sweep_finishes_on_the_surviving_node_without_duplicate_loss_rows(cluster, tmp_path):
    cluster, workers = cluster
    spec = tmp_path / "multinode.yaml"
    spec.write_text(SPEC.format(tokens=4 * 256 * 120))  # 120 steps a cell
    store_path = tmp_path / "store"
    driver = submit(spec, store_path, cluster.address)
    store = Store(store_path)

    deadline = time.monotonic() + 120
    while steps_logged(store) < 20:  # both nodes are training
        assert driver.poll() is None, driver.stdout.read().decode()
        assert time.monotonic() < deadline, "no cell started training"
        time.sleep(0.5)
    cluster.remove_node(workers[0])

    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output.decode()
    statuses = store.query("SELECT state, count(*) FROM status GROUP BY state").fetchall()
    assert statuses == [("done", 3)], statuses
    per_step = store.query(
        "SELECT cell_id, count(*) AS rows, count(DISTINCT step) AS steps "
        "FROM losses GROUP BY cell_id"
    ).fetchall()
    assert sorted(rows for _, rows, _ in per_step) == [120, 120, 120], per_step
    assert all(rows == steps for _, rows, steps in per_step), per_step
    attempts = store.query("SELECT max(attempt) FROM losses_raw").fetchall()[0][0]
    assert attempts >= 2, "the removed node's cell was rerun as a new attempt"
