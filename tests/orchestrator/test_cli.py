"""The `compscale` sweep commands as a user runs them: real processes, embedded or existing Ray."""

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
import uuid
from pathlib import Path

import pytest
from helpers import (
    COMPSCALE,
    DOUBLE,
    REPO,
    compscale,
    environment,
    free_port,
    kill_session,
    ray_job_submit,
    write_spec,
)

from orchestrator.cells import expand
from orchestrator.spec import load_spec
from orchestrator.store import Store


def running_events(store: Store, cell_id: str) -> int:
    return sum(name.endswith("-running.json") for name in store.events(cell_id))


@pytest.mark.slow
def test_submit_smoke_starts_embedded_ray_runs_all_then_a_second_submit_runs_nothing(
    smoke_sweep, tmp_path
):
    spec = load_spec(str(REPO / "sweeps" / "smoke.yaml"))
    cells = len(expand(spec))
    per_format = cells // len(spec.formats)
    submitted = smoke_sweep.done  # the README's first command: submit (real worker), then report
    assert submitted.returncode == 0, submitted.stderr
    assert f"run {cells}" in submitted.stdout
    store = Store(smoke_sweep.cwd / "store")  # the default store, ./store
    cpus = os.cpu_count()
    banner = f"on embedded local Ray ({cpus} CPUs, 0 GPUs, 127.0.0.1); store {store.uri}"
    assert banner in submitted.stdout
    assert {store.status(c).state for c in store.manifest("smoke")} == {"done"}

    status = compscale("status", "smoke", "--json", cwd=smoke_sweep.cwd)
    rows = [json.loads(line) for line in status.stdout.splitlines()]
    assert len(rows) == cells and {row["state"] for row in rows} == {"done"}

    again = compscale("submit", str(REPO / "sweeps" / "smoke.yaml"), *DOUBLE, cwd=smoke_sweep.cwd)
    assert again.returncode == 0
    assert f"skip {cells}" in again.stdout and "nothing to run" in again.stdout
    assert all(running_events(store, c) == 1 for c in store.manifest("smoke"))

    table = compscale("status", "smoke", cwd=smoke_sweep.cwd).stdout
    assert table.strip().endswith(f"done {cells}")
    csv = compscale(
        "query",
        "select format, count(*) n from results group by 1 order by 1",
        "--csv",
        cwd=smoke_sweep.cwd,
    )
    expected = [f"{fmt},{per_format}" for fmt in sorted(spec.formats)]
    assert csv.stdout.splitlines() == ["format,n", *expected]
    out = tmp_path / "losses.parquet"
    compscale("query", "select * from losses", "--parquet", str(out), cwd=smoke_sweep.cwd)
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == store.results("smoke")["steps"].sum()  # a row a step


@pytest.mark.slow
def test_a_killed_driver_restarted_finishes_without_rerunning_done_cells(tmp_path):
    formats = ["dense", "int4", "int8", "sp50", "int2", "int3"]
    spec = write_spec(tmp_path / "resume.yaml", "resume", formats, max_in_flight=2)
    (tmp_path / "double").mkdir()
    (tmp_path / "double" / "sleep_s").write_text("1.5")
    store = Store(tmp_path / "store")
    command = [COMPSCALE, "submit", str(spec), *DOUBLE, "--heartbeat-s", "0.5", "--lease-s", "3"]
    driver = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        done_before: list[str] = []
        while time.monotonic() < deadline and len(done_before) < 2:
            time.sleep(0.2)
            if (tmp_path / "store" / "sweeps" / "resume" / "manifest.json").exists():
                done_before = [
                    c for c in store.manifest("resume") if store.status(c).state == "done"
                ]
        assert len(done_before) >= 2, "the first driver finished no cells"
        assert len(done_before) < len(formats), "the first driver finished before it was killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        kill_session(driver.pid)

    again = compscale(
        "submit", str(spec), *DOUBLE, "--heartbeat-s", "0.5", "--lease-s", "3", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert {store.status(c).state for c in store.manifest("resume")} == {"done"}
    for cell_id in done_before:
        assert running_events(store, cell_id) == 1  # never rerun


@pytest.mark.slow
def test_detached_submit_can_be_cancelled(tmp_path):
    spec = write_spec(
        tmp_path / "slow.yaml", "slow", ["dense", "int4", "int8", "int2"], max_in_flight=1
    )
    (tmp_path / "double").mkdir()
    (tmp_path / "double" / "sleep_s").write_text("30")
    detached = compscale("submit", str(spec), "--detach", *DOUBLE, cwd=tmp_path, timeout=30)
    assert detached.returncode == 0, detached.stderr
    pid = int(re.search(r"pid (\d+)", detached.stdout).group(1))
    store = Store(tmp_path / "store")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if any(store.status(c).state == "running" for c in store.manifest("slow")):
                break
            time.sleep(0.2)
        cancelled = compscale("cancel", "slow", cwd=tmp_path)
        assert cancelled.returncode == 0, cancelled.stderr
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists(), "the driver did not stop"
    finally:
        kill_session(pid)
    states = [store.status(c).state for c in store.manifest("slow")]
    assert states == ["cancelled"] * 4
    assert "cancel" in (tmp_path / "store" / "sweeps" / "slow" / "driver.log").read_text()


@pytest.fixture
def ray_head(tmp_path):
    """A real head started with `ray start --head` on 127.0.0.1, with its own auth token."""
    port, dashboard = free_port(), free_port()
    # Its own temp dir (short: Unix socket paths are limited), so it never becomes the machine's
    # "current cluster" that a plain ray.init() elsewhere would join.
    temp_dir = tempfile.mkdtemp(prefix="cs-ray-", dir="/tmp")
    env = environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={free_port()}",  # not 52365: another Ray may hold it
            "--num-cpus=2",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", dashboard)) == 0:
                    break
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", env
    finally:
        head.terminate()
        try:
            head.wait(timeout=20)
        finally:
            kill_session(head.pid)
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_submit_to_an_existing_head_by_address_and_by_ray_job_submit(ray_head, tmp_path):
    address, dashboard, env = ray_head
    spec = write_spec(tmp_path / "remote.yaml", "remote", ["dense", "int4"])
    by_address = compscale(
        "submit",
        str(spec),
        "--address",
        address,
        "--store",
        str(tmp_path / "a"),
        *DOUBLE,
        cwd=tmp_path,
        env=env,
    )
    assert by_address.returncode == 0, by_address.stderr
    assert f"on Ray cluster at {address}: 1 nodes, 2 CPUs, 0 GPUs;" in by_address.stdout
    assert {
        Store(tmp_path / "a").status(c).state for c in Store(tmp_path / "a").manifest("remote")
    } == {"done"}

    job = ray_job_submit(
        [
            str(Path(sys.executable).parent / "ray"),
            "job",
            "submit",
            "--address",
            dashboard,
            "--",
            "env",
            f"PYTHONPATH={REPO}{os.pathsep}{REPO / 'tests'}",
            COMPSCALE,
            "submit",
            str(spec),
            "--store",
            str(tmp_path / "b"),
            *DOUBLE,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert job.returncode == 0, job.stdout + job.stderr
    assert "succeeded" in job.stdout + job.stderr
    store = Store(tmp_path / "b")
    assert {store.status(c).state for c in store.manifest("remote")} == {"done"}


def start_driver(spec: Path, cwd: Path) -> subprocess.Popen:
    """`python -m orchestrator.cli submit SPEC` with the double, as its own process session."""
    command = [sys.executable, "-m", "orchestrator.cli", "submit", str(spec), *DOUBLE]
    command += ["--heartbeat-s", "0.5", "--lease-s", "10"]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(drivers: list[subprocess.Popen]) -> list[tuple[str, str]]:
    try:
        return [driver.communicate(timeout=300) for driver in drivers]
    finally:
        for driver in drivers:
            kill_session(driver.pid)


def assert_each_cell_trained_once(store: Store, cell_ids: list[str]) -> None:
    assert {store.status(c).state for c in cell_ids} == {"done"}
    assert {c: running_events(store, c) for c in cell_ids} == dict.fromkeys(cell_ids, 1)
    duplicated = store.query(
        "select count(*) from (select cell_id, step from losses_raw group by all "
        "having count(*) > 1)"
    )
    assert duplicated.fetchall() == [(0,)]
    assert store.query("select count(*) from losses_raw").fetchall() == [(8 * len(cell_ids),)]
    deaths = store.query("select count(*) from events where error_class = 'WorkerDied'")
    assert deaths.fetchall() == [(0,)]  # nothing died, so no death is on record


@pytest.mark.slow
def test_two_submits_of_one_sweep_at_once_train_it_once_and_the_second_refuses(tmp_path):
    spec = write_spec(tmp_path / "twice.yaml", "twice", ["dense", "int4", "int8"], max_in_flight=2)
    (tmp_path / "double").mkdir()
    (tmp_path / "double" / "sleep_s").write_text("1")
    drivers = [start_driver(spec, tmp_path) for _ in range(2)]
    outputs = finish(drivers)
    codes = [driver.returncode for driver in drivers]
    assert sorted(codes) == [0, 2], outputs
    winner, refused = drivers[codes.index(0)], outputs[codes.index(2)]
    (line,) = refused[1].strip().splitlines()  # one line, naming the driver that runs it
    assert "sweep twice is already being run" in line, line
    assert f"host {socket.gethostname()}, pid {winner.pid}, since " in line, line
    store = Store(tmp_path / "store")
    assert_each_cell_trained_once(store, store.manifest("twice"))


@pytest.mark.slow
def test_two_sweeps_sharing_cells_at_once_train_each_shared_cell_once(tmp_path):
    shared = ["int4", "int8", "sp50"]
    first = write_spec(tmp_path / "a.yaml", "a", [*shared, "dense"], max_in_flight=2)
    second = write_spec(tmp_path / "b.yaml", "b", [*shared, "int2"], max_in_flight=2)
    (tmp_path / "double").mkdir()
    (tmp_path / "double" / "sleep_s").write_text("2")
    drivers = [start_driver(first, tmp_path), start_driver(second, tmp_path)]
    outputs = finish(drivers)
    assert [driver.returncode for driver in drivers] == [0, 0], outputs
    store = Store(tmp_path / "store")
    cells = sorted(set(store.manifest("a")) | set(store.manifest("b")))
    assert len(cells) == 5
    assert_each_cell_trained_once(store, cells)
