"""A multi-node Ray cluster on one machine runs a real sweep, and survives losing a worker node.

The head has no CPUs, so every cell runs on one of two one-CPU worker nodes; removing one while its
cell trains makes Ray rerun the cell on the other, where it resumes from its checkpoint. The loss
view must still hold exactly one row per (cell, step). Twice: nodes of `ray.cluster_utils` in this
process, and separate `ray start` processes whose raylet is SIGKILLed.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.store import Store

REPO = Path(__file__).resolve().parent.parent

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

    loopback = {"node_ip_address": "127.0.0.1"}  # the driver joins it there (`connect`)
    cluster = Cluster(initialize_head=True, head_node_args=loopback | {"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1, **loopback) for _ in range(2)]
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


# ---- a cluster of separate `ray start` processes ------------------------------------------------
# The head's GCS probes each raylet every second instead of every 3 s (Ray's default), so a killed
# raylet (its port refuses at once) is declared dead after 5 failed probes, ~5 s instead of ~15 s,
# while a slow but live one still has 5 probes of up to 10 s each (Ray's default probe timeout).
# Real clusters keep Ray's defaults.
FAST_DEATH_NOTICE = {"RAY_health_check_period_ms": "1000"}


@dataclass(frozen=True)
class RayProcesses:
    """A head (no CPUs) and two one-CPU worker nodes, each a `ray start --block` process."""

    address: str  # the GCS, for `compscale submit --address`
    dashboard: str  # http://127.0.0.1:PORT, for `ray job submit`
    client: str  # ray://127.0.0.1:PORT, Ray Client
    env: dict[str, str]  # what every node was started with (the auth token among it)
    node_ids: dict[str, str]  # custom resource (node_a, node_b) -> Ray node id
    node_ips: dict[str, str]  # Ray node id -> the IP Ray registered the node at (see below)
    processes: dict[str, subprocess.Popen]  # head, node_a, node_b
    temp_dirs: dict[str, Path]


def _ray_start(*args: str, env: dict, temp_dir: Path) -> subprocess.Popen:
    """`ray start --block ...` on 127.0.0.1 as its own process session (so every process it spawns
    can be found by session and stopped by pid)."""
    ray = str(Path(sys.executable).parent / "ray")
    command = [ray, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    command += [f"--temp-dir={temp_dir}", *args]
    return subprocess.Popen(
        command, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _session_pids(session_id: int, name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if int(fields[3]) == session_id and comm == name:
                pids.append(int(entry.name))
    return pids


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive_nodes(dashboard: str, token: str) -> list[dict]:
    """The alive nodes, with their resources, from Ray's state API (what `ray list nodes` reads);
    none while the dashboard is not up yet."""
    request = urllib.request.Request(
        f"{dashboard}/api/v0/nodes?detail=true", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            nodes = json.load(response)["data"]["result"]["result"]
    except urllib.error.HTTPError:  # 401 (a wrong token) is no start-up delay
        raise
    except OSError:  # refused, or timed out on a loaded machine
        return []
    return [node for node in nodes if node["state"] == "ALIVE"]


@contextlib.contextmanager
def ray_start_processes(env: dict[str, str]) -> Iterator[RayProcesses]:
    """Start the head, wait for its GCS, start both worker nodes and wait until all three are
    alive, so a sweep sees the whole cluster; stop every process by pid afterwards.

    `--node-ip-address=127.0.0.1` does not keep a node on loopback: `ray start` on Linux swaps it
    for the machine's routable address (`ray._private.services.resolve_ip_for_localhost`), and
    the switch that stops it (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) makes it refuse worker nodes;
    the nodes report that address (`node_ips`). The GCS is dialled, and the dashboard listens, on
    127.0.0.1.

    Each node has a temp dir of its own, as on separate machines: nodes sharing one also share its
    socket folder, where each picks the first free name (`raylet.1`) before its raylet binds it,
    so two nodes started together can pick the same one and one raylet dies at start ("bind:
    Address already in use"); losing the other node then leaves no CPU, and the sweep waits.
    """
    from test_cli import free_port, kill_session

    port, dashboard_port, client_port = free_port(), free_port(), free_port()
    root = Path(tempfile.mkdtemp(prefix="cs-ray-", dir="/tmp"))  # short: socket paths are limited
    temp_dirs = {name: root / name for name in ("head", "node_a", "node_b")}
    processes = {}
    try:
        processes["head"] = _ray_start(
            "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={client_port}",
            "--num-cpus=0", env=env | FAST_DEATH_NOTICE, temp_dir=temp_dirs["head"],
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not _listens(port):
            assert processes["head"].poll() is None, "`ray start --head` exited"
            assert time.monotonic() < deadline, "the head's GCS did not listen within 120 s"
            time.sleep(0.2)
        for name in ("node_a", "node_b"):
            processes[name] = _ray_start(
                f"--address=127.0.0.1:{port}", "--num-cpus=1", f'--resources={{"{name}": 1}}',
                env=env, temp_dir=temp_dirs[name],
            )  # fmt: skip
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        while len(nodes := _alive_nodes(dashboard, env["RAY_AUTH_TOKEN"])) < 3:
            exited = [name for name, process in processes.items() if process.poll() is not None]
            assert not exited, f"`ray start` of {exited} exited (logs: {root}/*/session_latest)"
            assert time.monotonic() < deadline, f"{len(nodes)} of 3 nodes alive after 120 s"
            time.sleep(0.5)
        node_ids = {
            name: next(node["node_id"] for node in nodes if name in node["resources_total"])
            for name in ("node_a", "node_b")
        }
        node_ips = {node["node_id"]: node["node_ip"] for node in nodes}
        yield RayProcesses(
            f"127.0.0.1:{port}", dashboard, f"ray://127.0.0.1:{client_port}", env, node_ids,
            node_ips, processes, temp_dirs,
        )  # fmt: skip
    finally:
        for process in reversed(processes.values()):
            process.terminate()
        for process in reversed(processes.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            kill_session(process.pid)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ray_processes() -> Iterator[RayProcesses]:
    """The cluster, its nodes started with this checkout on the path and a token of their own."""
    from test_cli import environment

    with ray_start_processes(
        environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    ) as cluster:
        yield cluster


DOUBLE_SPEC = """
name: {name}
models: [tiny]
tokens: [8000]
formats: [dense, int4, int8, sp50]
seeds: [{seed}]
resources: {{cpus: 1}}
retries: 1
max_in_flight: 2
"""


def test_separate_ray_processes_lose_a_raylet_and_every_cell_finishes_once(ray_processes, tmp_path):
    from test_cli import COMPSCALE, DOUBLE, compscale, kill_session

    cluster = ray_processes
    node_a, node_b = cluster.node_ids["node_a"], cluster.node_ids["node_b"]
    (tmp_path / "double").mkdir()
    (tmp_path / "double" / "sleep_s").write_text("4")  # long enough to be caught running
    spec = tmp_path / "nodes.yaml"
    spec.write_text(DOUBLE_SPEC.format(name="nodes", seed=0))
    store = Store(tmp_path / "store")
    command = [COMPSCALE, "submit", str(spec), "--address", cluster.address]
    command += ["--store", str(store.root), *DOUBLE, "--heartbeat-s", "0.5", "--lease-s", "5"]
    driver = subprocess.Popen(
        command, cwd=tmp_path, env=cluster.env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline, victim = time.monotonic() + 90, None
        while victim is None:  # a cell trains on node_a: the node to lose
            assert driver.poll() is None, driver.stdout.read()
            assert time.monotonic() < deadline, "no cell started on node_a"
            time.sleep(0.2)
            for cell_id in store.cell_ids():
                status = store.status(cell_id)
                if status.state == "running" and status.event.get("node_id") == node_a:
                    victim = cell_id
        (raylet,) = _session_pids(cluster.processes["node_a"].pid, "raylet")
        os.kill(raylet, signal.SIGKILL)  # its worker processes exit with it
        output, _ = driver.communicate(timeout=150)
    finally:
        kill_session(driver.pid)
    assert driver.returncode == 0, output
    assert re.search(r"on Ray cluster at 127\.0\.0\.1:\d+: 3 nodes, 2 CPUs, 0 GPUs", output)
    cells = store.manifest("nodes")
    assert {store.status(c).state for c in cells} == {"done"}
    duplicated = store.query(
        "select count(*) from (select cell_id, step from losses group by all having count(*) > 1)"
    )
    assert duplicated.fetchall() == [(0,)]
    assert store.query("select count(*) from losses").fetchall() == [(8 * len(cells),)]

    placements = {}  # cell -> [(attempt, node id)], from its running events
    for cell_id in cells:
        events = [store.read_json(path) for path in store.events(cell_id)]
        running = [event for event in events if event["state"] == "running"]
        assert all(event["node_ip"] == cluster.node_ips[event["node_id"]] for event in running)
        placements[cell_id] = [(event["attempt"], event["node_id"]) for event in running]
        if cell_id == victim:
            deaths = [event for event in events if event.get("error_class") == "WorkerDied"]
            assert [event["attempt"] for event in deaths] == [1], events
    assert placements[victim] == [(1, node_a), (2, node_b)], placements
    assert {node for runs in placements.values() for _, node in runs} == {node_a, node_b}
    status = compscale("status", "nodes", "--json", "--store", str(store.root), cwd=tmp_path)
    rows = {row["cell_id"]: row for row in map(json.loads, status.stdout.splitlines())}
    assert {cell_id: (row["state"], row["node_id"]) for cell_id, row in rows.items()} == {
        cell_id: ("done", runs[-1][1]) for cell_id, runs in placements.items()
    }  # where each cell finished
