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
import shlex
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

REPO = Path(__file__).resolve().parents[2]

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


def cluster_lines() -> list[str]:
    """The shell lines of docs/cluster.md's two blocks after the image build: starting a cluster
    by hand (`export` of the token, `ray start` head and worker), then running a sweep on it;
    their trailing comments dropped."""
    from helpers import doc_block

    blocks = [doc_block("cluster.md", marker) for marker in ("ray start --head", "ray job submit")]
    lines = [re.sub(r"\s+# .*$", "", line) for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.split()[0] in ("export", "ray", "compscale")]


def substitute(line: str, values: dict[str, str]) -> str:
    """`line` with each placeholder of `values` replaced; one left over is an error, so a docs
    change the tests do not follow fails here."""
    for placeholder, value in values.items():
        line = line.replace(placeholder, value)
    assert not re.search(r"HEAD|BUCKET|SECRET|paper-quant", line), line
    return line


def exported(line: str) -> dict[str, str]:
    """The variables an `export A=1 B=2` line sets."""
    words = shlex.split(line)
    assert words[0] == "export", line
    return dict(word.split("=", 1) for word in words[1:])


@dataclass(frozen=True)
class RayProcesses:
    """A head (no CPUs) and two one-CPU worker nodes, each a `ray start --block` process."""

    address: str  # the GCS, for `compscale submit --address`
    env: dict[str, str]  # what every node was started with (the auth token among it)
    node_ids: dict[str, str]  # custom resource (node_a, node_b) -> Ray node id
    node_ips: dict[str, str]  # Ray node id -> the IP Ray registered the node at (see below)
    processes: dict[str, subprocess.Popen]  # head, node_a, node_b
    temp_dirs: dict[str, Path]
    placeholders: dict[str, str]  # docs/cluster.md's HEAD addresses and SECRET -> this cluster's

    def logs(self, node: str, name: str) -> str:
        """A log file of a node's Ray session, e.g. ("head", "dashboard_JobHead.log")."""
        return (self.temp_dirs[node] / "session_latest" / "logs" / name).read_text()


def _ray_start(line: str, *extra: str, env: dict, temp_dir: Path) -> subprocess.Popen:
    """A docs/cluster.md `ray start` line plus what a test needs (`--block`: the process is the
    node, and stopping it stops the node; a temp dir; no usage report), as its own process session
    (so every process it spawns can be found by session and stopped by pid)."""
    command = [*shlex.split(line), "--block", "--node-ip-address=127.0.0.1"]
    command += ["--disable-usage-stats", f"--temp-dir={temp_dir}", *extra]
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
    """docs/cluster.md's `ray start` lines on this machine: the head, then (once its GCS listens)
    both worker nodes with one CPU and a resource of their own each; it returns once all three are
    alive, so a sweep sees the whole cluster. Every process is stopped by pid afterwards. `env`
    goes to every node on top of the documented token (the store's credentials, as on a cluster).

    Ports are free ones, each node's own, as on separate machines: with Ray's fixed default for
    the dashboard agent (52365) the first agent to start takes it, the others fail to bind, and if
    the head's is one of them no job can be submitted ("No available agent to submit job", for as
    long as the cluster runs). The head's dashboard listens on 127.0.0.1, not 0.0.0.0. Still,
    `--node-ip-address=127.0.0.1` does not keep a node on loopback: `ray start` on Linux swaps it
    for the machine's routable address (`ray._private.services.resolve_ip_for_localhost`), and
    the switch that stops it (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) makes it refuse worker nodes;
    the nodes report that address (`node_ips`).

    Each node has a temp dir of its own, its shard cache (`cache/`) in it, as on separate
    machines: nodes sharing one also share its socket folder, where each picks the first free
    name (`raylet.1`) before its raylet binds it,
    so two nodes started together can pick the same one and one raylet dies at start ("bind:
    Address already in use"); losing the other node then leaves no CPU, and the sweep waits.
    """
    from helpers import environment, free_port, kill_session

    auth, head_line, worker_line = cluster_lines()[:3]
    root = Path(tempfile.mkdtemp(prefix="cs-ray-", dir="/tmp"))  # short: socket paths are limited
    temp_dirs = {name: root / name for name in ("head", "node_a", "node_b")}
    port, dashboard_port, client_port = free_port(), free_port(), free_port()
    agent_port = {name: f"--dashboard-agent-listen-port={free_port()}" for name in temp_dirs}
    cache = {name: {"COMPSCALE_CACHE": str(temp_dirs[name] / "cache")} for name in temp_dirs}
    placeholders = {
        "HEAD:8265": f"127.0.0.1:{dashboard_port}",
        "HEAD:6379": f"127.0.0.1:{port}",
        "--port=6379": f"--port={port}",
        "--dashboard-host=0.0.0.0": "--dashboard-host=127.0.0.1",
        "SECRET": uuid.uuid4().hex,
    }
    # as on a machine set up by scripts/setup.sh: `ray` and `compscale` on the PATH
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = environment(PATH=path) | exported(substitute(auth, placeholders)) | env
    processes = {}
    try:
        processes["head"] = _ray_start(
            substitute(head_line, placeholders), f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={client_port}", agent_port["head"],
            env=env | FAST_DEATH_NOTICE | cache["head"], temp_dir=temp_dirs["head"],
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not _listens(port):
            assert processes["head"].poll() is None, "`ray start --head` exited"
            assert time.monotonic() < deadline, "the head's GCS did not listen within 120 s"
            time.sleep(0.2)
        for name in ("node_a", "node_b"):
            processes[name] = _ray_start(
                substitute(worker_line, placeholders), "--num-cpus=1",
                f'--resources={{"{name}": 1}}', agent_port[name], env=env | cache[name],
                temp_dir=temp_dirs[name],
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
            f"127.0.0.1:{port}", env, node_ids, node_ips, processes, temp_dirs, placeholders,
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
    with ray_start_processes({}) as cluster:
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
    from helpers import COMPSCALE, DOUBLE, compscale, kill_session

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


def checkout_with_spec(target: Path, spec: str, text: str) -> Path:
    """A copy of this checkout's code and sweeps, what a job needs (its .rayignore too), with
    `spec` (a path in it) holding `text`."""
    ignored = [".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", "store", "runs", "docs"]
    shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(*ignored, "benchmarks", "tests"))
    (target / spec).write_text(text)
    return target


def test_the_documented_cluster_commands_run_a_sweep_into_s3_and_rerun_its_failed_cell(tmp_path):
    """docs/cluster.md's second cluster block, line by line, from a copy of this checkout
    (`--working-dir .`): placeholders filled in, `sweeps/smoke.yaml` for the paper sweep with its
    token shards in the bucket (prepared there first, as docs/data.md says), the stand-in cell
    function, whose one failing cell is fixed between `query` and `rerun --failed`. Nothing but
    the bucket is shared: each node downloads the shards once into its own cache."""
    from helpers import compscale, environment
    from s3 import moto_s3, unique_prefix

    from orchestrator.cells import expand
    from orchestrator.spec import load_spec

    (tmp_path / "text").mkdir()
    shutil.copy(REPO / "orchestrator" / "driver.py", tmp_path / "text")  # some text to train on
    log = tmp_path / "moto.log"
    with moto_s3(log=log) as s3:
        uri = f"s3://{s3['COMPSCALE_TEST_BUCKET']}/{unique_prefix()}"
        shards = f"{uri}/shards/smoke"
        prepared = compscale(
            "data", "prepare", str(tmp_path / "text"), shards, "--quiet", "--val-fraction", "0.5",
            cwd=tmp_path, env=environment(COMPSCALE_CACHE=str(tmp_path / "cache")) | s3,
        )  # fmt: skip
        assert prepared.returncode == 0, prepared.stderr
        meta = json.loads(prepared.stdout)
        smoke = (REPO / "sweeps" / "smoke.yaml").read_text()
        assert "data: {source: bundled}" in smoke
        checkout = checkout_with_spec(
            tmp_path / "checkout", "sweeps/smoke.yaml",
            smoke.replace("data: {source: bundled}", f"data: {{source: {shards}}}"),
        )  # fmt: skip
        spec = load_spec(str(checkout / "sweeps" / "smoke.yaml"))
        cell_ids = [cell.cell_id for cell in expand(spec)]
        control = tmp_path / "double"
        (control / "fail").mkdir(parents=True)
        (control / "fail" / cell_ids[0]).touch()  # fails every time, until the file is gone
        with ray_start_processes(s3 | {"COMPSCALE_DOUBLE_DIR": str(control)}) as cluster:
            rows = run_the_documented_sweep(cluster, checkout, uri, cell_ids)
            node_caches = {
                name: sorted(path.name for path in (directory / "cache" / "shards").iterdir())
                for name, directory in cluster.temp_dirs.items()
                if name != "head"
            }
        downloads = {
            name: len(re.findall(rf"GET /{re.escape(shards[5:])}/{name} HTTP", log.read_text()))
            for name in ("train.bin", "val.bin")
        }
    assert {row["cell_id"]: row["state"] for row in rows} == dict.fromkeys(cell_ids, "done")
    assert {row["node_id"] for row in rows} == set(cluster.node_ids.values())
    assert downloads == {"train.bin": 2, "val.bin": 2}, "one download per node"
    assert [len(folders) for folders in node_caches.values()] == [1, 1], node_caches
    assert meta["fingerprint"].startswith("text:sha256:")
    fingerprints = {row["data_fingerprint"] for row in rows}
    assert fingerprints == {meta["fingerprint"]}, fingerprints


def run_the_documented_sweep(
    cluster: RayProcesses, checkout: Path, uri: str, cell_ids: list[str]
) -> list[dict]:
    """The block's lines in `checkout`: submit (the first cell fails), status, query, rerun,
    report; returns `status --json`'s rows, each with its result row's `data_fingerprint`."""
    from helpers import DOUBLE, ray_job_submit

    one_failed = f"done {len(cell_ids) - 1}, failed 1"
    values = cluster.placeholders | {
        "s3://BUCKET/compscale": uri,
        "sweeps/paper-quant.yaml": " ".join(["sweeps/smoke.yaml", *DOUBLE]),
        "paper-quant --failed": " ".join(["smoke --failed", *DOUBLE]),
        "paper-quant": "smoke",
    }
    exports, job, status, query, rerun, report = (
        substitute(line, values) for line in cluster_lines()[3:]
    )
    env = cluster.env | exported(exports)
    control = Path(env["COMPSCALE_DOUBLE_DIR"])

    def shell(line: str) -> subprocess.CompletedProcess:
        """A documented line as typed in the checkout (`--working-dir .`)."""
        return subprocess.run(
            ["bash", "-c", line], cwd=checkout, env=env, capture_output=True, text=True,
            timeout=240,
        )  # fmt: skip

    submitted = ray_job_submit(
        ["bash", "-c", job], cwd=checkout, env=env, capture_output=True, text=True, timeout=240
    )
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode != 0, output  # the sweep ended with a failed cell
    assert "on Ray cluster at" in output, output
    assert f"{one_failed} of {len(cell_ids)}" in output, output
    # The upload: its size as the head logged it on receipt, its files as the job got them.
    package = re.search(r"Uploading package gcs://(_ray_pkg_\w+)\.zip", output).group(1)
    received = cluster.logs("head", "dashboard_JobHead.log")
    pushed = re.search(rf"Pushing file package 'gcs://{package}\.zip' \(([\d.]+)MiB\)", received)
    assert float(pushed.group(1)) < 4, f"the --working-dir upload is {pushed.group(1)} MiB"
    session = cluster.temp_dirs["head"] / "session_latest"
    job_dir = session / "runtime_resources" / "working_dir_files" / package
    assert (job_dir / "orchestrator" / "driver.py").exists()
    assert (job_dir / "workers" / "corpus").is_dir() and (job_dir / "sweeps").is_dir()
    assert not [name for name in (".git", "docs", "benchmarks") if (job_dir / name).exists()]

    listed = shell(status)
    assert listed.returncode == 0 and listed.stdout.strip().endswith(one_failed)
    # the failed cell's traceback: a worker node ran the uploaded code (a cell runs in tasks.py)
    assert f"working_dir_files/{package}/orchestrator/tasks.py" in listed.stdout
    table = shell(query)
    assert table.returncode == 0, table.stderr
    assert sum(cell_id in table.stdout for cell_id in cell_ids) == len(cell_ids) - 1
    (control / "fail" / cell_ids[0]).unlink()  # the cause is fixed
    rerun_run = ray_job_submit(
        ["bash", "-c", rerun], cwd=checkout, env=env, capture_output=True, text=True, timeout=240
    )
    output = rerun_run.stdout + rerun_run.stderr
    assert rerun_run.returncode == 0, output
    assert "on Ray cluster at" in output and f"done {cell_ids[0]}" in output, output
    reported = shell(report)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    assert f"report: {uri}/sweeps/smoke/report/report.html" in reported.stdout
    rows = [json.loads(line) for line in shell(f"{status} --json").stdout.splitlines()]
    fingerprints = shell('compscale query "SELECT cell_id, data_fingerprint FROM results" --csv')
    assert fingerprints.returncode == 0, fingerprints.stderr
    by_cell = dict(line.split(",", 1) for line in fingerprints.stdout.splitlines()[1:])
    return [row | {"data_fingerprint": by_cell.get(row["cell_id"])} for row in rows]
