"""Chaos run: an N-cell sweep through real drivers, a real store and a real multi-node Ray while
things die, then an audit of the store: nothing lost, nothing doubled.

A local Ray of 3 nodes (`ray.cluster_utils.Cluster` on 127.0.0.1: a head and two workers, one CPU
each) runs a sweep of no-op cells (`chaos_cell`: two loss rows and a result through the store
layout, no training). Meanwhile:
- 10% of cell processes SIGKILL themselves between their two loss rows (Ray retries them);
- the driver (`python -m orchestrator.cli submit`) is SIGKILLed at 20% and at 50% of the cells and
  restarted (its running cells die with it; the next driver takes its sweep claim over);
- one worker node is removed, without grace, at 35%;
- before the start, a cell is left `running` by a driver and a cluster that are gone.
It prints cells done and lost, duplicated (cell, step) loss rows, cells trained more than once
beyond their killed attempts, deaths recorded for attempts that finished, and the driver's CPU
time per cell and peak RSS per run (targets: <= 10 ms a cell, RSS flat in the cell count).

    .venv/bin/python benchmarks/chaos.py                 # 10,000 cells
    .venv/bin/python benchmarks/chaos.py --cells 1000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SWEEP = "chaos"
KILL_FRACTION = 0.1  # of cell processes (attempts), each decided by a hash: reproducible
DRIVER_KILLS = (0.2, 0.5)  # fractions of the cells done when the driver is SIGKILLed
NODE_REMOVAL = 0.35  # fraction of the cells done when a worker node is removed
HEARTBEAT_S, LEASE_S = "1", "10"
DONE_LINE = re.compile(rf"^\[{SWEEP}\] done (\S+) \(")


def killed(cell_id: str, attempt: int) -> bool:
    """Whether this attempt's process kills itself (10% of attempts, the same on every run)."""
    digest = hashlib.sha256(f"{cell_id}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < KILL_FRACTION * 2**64


def chaos_cell(cell: Any, store_uri: str, attempt: int) -> dict:
    """The cell function: a loss row, maybe a SIGKILL of its own process, a loss row, the result
    (the layout and schemas of docs/contracts.md, no training)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.store import Store
    from workers.schema import LOSS_SCHEMA, RESULT_SCHEMA

    def parquet(rows: list[dict], schema: pa.Schema) -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
        return sink.getvalue().to_pybytes()

    store = Store(store_uri)
    paths = store.layout.cell(cell.cell_id)
    for step in (1, 2):
        row = {"cell_id": cell.cell_id, "attempt": attempt, "step": step, "train_loss": 1.0 / step}
        store.write_atomic(paths.loss_part(attempt, step - 1), parquet([row], LOSS_SCHEMA))
        if step == 1 and killed(cell.cell_id, attempt):
            os.kill(os.getpid(), signal.SIGKILL)
    result = {"cell_id": cell.cell_id, "params": cell.params, "tokens": cell.tokens}
    result |= {"format": cell.format, "seed": cell.seed, "val_loss": 0.5, "attempt": attempt}
    result |= {"steps": 2, "finished_at": datetime.now(timezone.utc)}
    store.write_atomic(paths.result, parquet([result], RESULT_SCHEMA))
    return {"tokens": cell.tokens, "tokens_per_s": 0.0}


class DriverRun:
    """One `compscale submit` of the sweep as a child process: counts its per-cell `done` lines,
    samples its CPU time and RSS at the first one and its RSS every 0.1 s after, and reports its
    CPU time and peak RSS when reaped."""

    def __init__(self, spec: Path, store: Path, address: str, log: Path):
        import psutil  # Ray's own dependency, importable once ray is

        command = [sys.executable, "-m", "orchestrator.cli", "submit", str(spec)]
        command += ["--store", str(store), "--address", address, "--cell-fn", "chaos:chaos_cell"]
        command += ["--heartbeat-s", HEARTBEAT_S, "--lease-s", LEASE_S]
        path = os.pathsep.join([str(REPO), str(REPO / "benchmarks")])
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.process = subprocess.Popen(
            command,
            env=env | {"PYTHONPATH": path},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.done, self.cpu_at_first_done, self.usage = 0, 0.0, None
        self.rss_at_first_done = self.rss_driving = 0.0  # MiB
        self._psutil = psutil.Process(self.process.pid)
        self.log = open(log, "a")  # noqa: SIM115 (closed when the reader ends)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with self.log:
            for line in self.process.stdout:
                self.log.write(line)
                if DONE_LINE.match(line):
                    if self.done == 0:
                        times = self._psutil.cpu_times()
                        self.cpu_at_first_done = times.user + times.system
                        self.rss_at_first_done = self.rss_driving = self._rss()
                    self.done += 1

    def _rss(self) -> float:
        try:
            return self._psutil.memory_info().rss / 2**20
        except Exception:  # it just exited
            return 0.0

    def sample(self) -> None:
        """Keep the highest RSS seen since its first finished cell."""
        if self.done:
            self.rss_driving = max(self.rss_driving, self._rss())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    def exited(self) -> bool:
        """Whether it has exited (then reaped here, keeping its resource usage)."""
        if self.usage is None:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid:
                self.process.returncode = os.waitstatus_to_exitcode(status)
                self.usage = usage
        return self.usage is not None

    def reap(self) -> dict[str, float]:
        """Wait for it; its exit code, CPU seconds (in all, and while driving: after its first
        finished cell) and peak RSS in MiB."""
        if self.usage is None:
            _, status, self.usage = os.wait4(self.process.pid, 0)
            self.process.returncode = os.waitstatus_to_exitcode(status)
        cpu = self.usage.ru_utime + self.usage.ru_stime
        return {
            "exit": self.process.returncode,
            "cells": self.done,
            "cpu_s": cpu,
            "driving_cpu_s": cpu - self.cpu_at_first_done if self.done else 0.0,
            "peak_rss_mib": self.usage.ru_maxrss / 1024,
            "rss_first_cell_mib": self.rss_at_first_done,
            "rss_driving_mib": self.rss_driving,
        }


def write_spec(directory: Path, cells: int) -> Path:
    spec = directory / f"{SWEEP}.yaml"
    seeds = ", ".join(str(seed) for seed in range(cells))
    spec.write_text(
        f"name: {SWEEP}\nmodels: [tiny]\ntokens: [4096]\nformats: [dense]\nseeds: [{seeds}]\n"
        "resources: {cpus: 1}\nretries: 6\n"
    )
    return spec


def leave_a_stale_running_cell(store: Any, spec: Path) -> str:
    """A cell `running` under a driver and a cluster that are gone (its lease long expired)."""
    from orchestrator.cells import expand
    from orchestrator.spec import load_spec

    cell = expand(load_spec(str(spec)))[0]
    store.put_cell(cell)
    store.record(cell.cell_id, "running", 1, host="gone-host", pid=4242)
    old = {"attempt": 1, "host": "gone-host", "pid": 4242, "unix_time": time.time() - 3600}
    store.write_json(store.layout.cell(cell.cell_id).heartbeat, old)
    return cell.cell_id


def audit(store: Any, cells: int) -> dict[str, int]:
    """What the store says happened: every figure but `done` must be 0."""
    connection = store.connect(["status", "events", "losses_raw"])
    states = connection.execute("SELECT cell_id, state FROM status").fetchall()
    done = sum(state == "done" for _, state in states)
    connection.execute(
        "CREATE VIEW dead AS SELECT DISTINCT cell_id, attempt FROM events "
        "WHERE state = 'failed' AND error_class = 'WorkerDied'"
    )

    def count(sql: str) -> int:
        return connection.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]

    return {
        "done": done,
        "lost": cells - done,
        "not_done": sorted((cell_id, state) for cell_id, state in states if state != "done")[:5],
        "duplicated_rows": count(
            "SELECT cell_id, step FROM losses_raw ANTI JOIN dead USING (cell_id, attempt) "
            "GROUP BY ALL HAVING count(*) > 1"
        ),
        "trained_twice": count(
            "SELECT cell_id FROM (SELECT DISTINCT cell_id, attempt FROM events "
            "WHERE state = 'running' EXCEPT SELECT * FROM dead) GROUP BY cell_id "
            "HAVING count(*) > 1"
        ),
        "false_deaths": count(
            "SELECT * FROM dead INTERSECT SELECT cell_id, attempt FROM events WHERE state = 'done'"
        ),
        "killed_attempts": count("SELECT * FROM dead"),
        "rows_of_killed_attempts": count(
            "SELECT * FROM losses_raw SEMI JOIN dead USING (cell_id, attempt)"
        ),
    }


def run(cells: int, directory: Path, say: Any = print) -> dict[str, Any]:
    """The chaos run in `directory`; returns the audit, the driver runs and the wall time."""
    # This checkout, for this process, the drivers and the Ray workers the cluster starts.
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    import ray  # noqa: F401 (makes its vendored psutil importable)
    from ray.cluster_utils import Cluster

    from orchestrator.store import Store

    spec, store_path, log = write_spec(directory, cells), directory / "store", directory / "log"
    store = Store(store_path)
    stale = leave_a_stale_running_cell(store, spec)
    loopback = {"node_ip_address": "127.0.0.1", "num_cpus": 1}
    cluster = Cluster(initialize_head=True, head_node_args=loopback | {"include_dashboard": False})
    workers = [cluster.add_node(**loopback) for _ in range(2)]
    cluster.wait_for_nodes()
    say(f"{cells} cells on 3 nodes; stale running cell {stale}; log {log}")
    started = time.monotonic()
    runs, finished, removed, driver = [], 0, False, None
    try:
        for kill_at in (*DRIVER_KILLS, None):
            driver = DriverRun(spec, store_path, cluster.address, log)
            while not driver.exited():
                time.sleep(0.1)
                driver.sample()
                if not removed and finished + driver.done >= NODE_REMOVAL * cells:
                    cluster.remove_node(workers[0], allow_graceful=False)
                    removed = True
                    say(f"removed a worker node at {finished + driver.done} cells")
                if kill_at is not None and finished + driver.done >= kill_at * cells:
                    driver.kill()
                    break
            runs.append(driver.reap())
            finished += driver.done
            say(f"driver {len(runs)}: {runs[-1]}")
            if runs[-1]["exit"] != -signal.SIGKILL:  # it finished before its turn to be killed
                break
    finally:
        if driver is not None and not driver.exited():  # interrupted
            driver.kill()
            driver.reap()
        cluster.shutdown()
    wall = time.monotonic() - started
    if runs[-1]["exit"] != 0:
        raise RuntimeError(f"the last driver exited with {runs[-1]['exit']}; see {log}")
    return {"audit": audit(store, cells), "runs": runs, "wall_s": wall}


def report(cells: int, outcome: dict[str, Any]) -> str:
    found, runs = outcome["audit"], outcome["runs"]
    driving = sum(r["driving_cpu_s"] for r in runs) / max(sum(r["cells"] for r in runs), 1)
    total = sum(r["cpu_s"] for r in runs) / cells
    per_run = "; ".join(
        f"{r['cells']} cells, {r['cpu_s']:.1f} s CPU, RSS {r['rss_first_cell_mib']:.0f} MiB at "
        f"its first cell, {r['rss_driving_mib']:.0f} MiB at most after, exit {r['exit']}"
        for r in runs
    )
    return "\n".join(
        [
            f"cells done: {found['done']} of {cells}; lost cells: {found['lost']} "
            f"{found['not_done'] or ''}",
            "duplicated (cell, step) rows in losses_raw: "
            f"{found['duplicated_rows']} (besides the {found['rows_of_killed_attempts']} rows "
            f"of the {found['killed_attempts']} attempts recorded killed)",
            f"cells trained more than once beyond their killed attempts: {found['trained_twice']}",
            f"deaths recorded for attempts that finished: {found['false_deaths']}",
            f"driver CPU per cell while driving: {1e3 * driving:.2f} ms "
            f"({1e3 * total:.2f} ms with start-up, spec expansion and planning)",
            f"driver peak RSS: {max(r['peak_rss_mib'] for r in runs):.0f} MiB; growth while "
            f"driving: {max(r['rss_driving_mib'] - r['rss_first_cell_mib'] for r in runs):.1f} MiB",
            f"driver runs: {per_run}",
            f"wall time: {outcome['wall_s']:.0f} s",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep the store and log")
    args = parser.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True)
        outcome = run(args.cells, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as directory:
            outcome = run(args.cells, Path(directory))
    print(report(args.cells, outcome))
    found = outcome["audit"]
    return 0 if found["lost"] == found["duplicated_rows"] == found["trained_twice"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
