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
Besides the store, each cell process appends to a log of its own (`trainings/`, outside the
store) a line per training it completed (its result row written; a trunk segment: its last
fork's checkpoint), so "trained once" is counted where it happens, not read back from events.

`--s3` runs it on an S3 store (a moto server on 127.0.0.1 in a process of its own; claims are
conditional PUTs) as two sweeps submitted at once: seeds [0, 0.6 N) and [0.4 N, N), so 0.2 N
cells are in both, and both hold one WSD ladder of three budgets (its trunk trained in segments,
each segment process SIGKILLed once before its last checkpoint). The first sweep's driver is
killed twice and restarted; the second's runs throughout. It also counts moto's requests.

    .venv/bin/python benchmarks/chaos.py                 # 10,000 cells
    .venv/bin/python benchmarks/chaos.py --cells 1000
    .venv/bin/python benchmarks/chaos.py --cells 1000 --s3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SWEEP = "chaos"
S3_SWEEPS = ("chaos-a", "chaos-b")  # seeds [0, 0.6 N) and [0.4 N, N): 0.2 N cells in both
LADDER_TOKENS = (16_384, 32_768, 65_536)  # tiny WSD budgets of 4, 8 and 16 steps: forks 3, 6, 12
TRAININGS = "CHAOS_TRAININGS"  # the folder of the per-process training logs, outside the store
KILL_FRACTION = 0.1  # of cell processes (attempts), each decided by a hash: reproducible
DRIVER_KILLS = (0.2, 0.5)  # fractions of the cells done when the driver is SIGKILLed
NODE_REMOVAL = 0.35  # fraction of the cells done when a worker node is removed
HEARTBEAT_S, LEASE_S = "1", "10"
DONE_LINE = re.compile(r"^\[\S+\] done (\S+) \(")


def killed(cell_id: str, attempt: int) -> bool:
    """Whether this attempt's process kills itself (10% of attempts, the same on every run)."""
    digest = hashlib.sha256(f"{cell_id}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < KILL_FRACTION * 2**64


def chaos_cell(cell: Any, store_uri: str, attempt: int, ladder: Any = None) -> dict:
    """The cell function: a loss row, maybe a SIGKILL of its own process, a loss row, the result
    (the layout and schemas of docs/contracts.md, no training). With a `ladder` that has forks it
    is a trunk segment (`chaos_segment`); a ladder's branch first checks its fork's checkpoint."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.store import Store
    from workers.ladder import fork_step
    from workers.schema import LOSS_SCHEMA, RESULT_SCHEMA

    store = Store(store_uri)
    if ladder is not None and ladder.forks:
        return chaos_segment(store, ladder.trunk_id, ladder.forks)
    if ladder is not None:
        fork = store.layout.trunk(ladder.trunk_id).checkpoint(fork_step(cell))
        if not store.exists(fork):
            raise RuntimeError(f"branch {cell.cell_id} started before its fork {fork} existed")

    def parquet(rows: list[dict], schema: pa.Schema) -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
        return sink.getvalue().to_pybytes()

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
    log_training("cell", cell.cell_id, attempt)
    return {"tokens": cell.tokens, "tokens_per_s": 0.0}


def chaos_segment(store: Any, trunk_id: str, forks: tuple[int, ...]) -> dict:
    """A trunk segment: the missing checkpoints up to its last fork, its process SIGKILLed once
    (the first time any process runs the segment) just before the last one."""
    trunk = store.layout.trunk(trunk_id)
    for fork in forks:
        if fork == forks[-1] and first_time(f"kill-{trunk_id}-{fork}"):
            os.kill(os.getpid(), signal.SIGKILL)
        if not store.exists(trunk.checkpoint(fork)):
            store.write_atomic(trunk.checkpoint(fork), f"chaos checkpoint {fork}".encode())
    log_training("segment", trunk_id, forks[-1])
    return {"trunk_id": trunk_id, "steps": forks[-1]}


def log_training(kind: str, name: str, number: int) -> None:
    """Append `kind name number` to this process's training log (one write: a SIGKILL cannot
    leave half a line)."""
    folder = Path(os.environ[TRAININGS])
    line = f"{kind} {name} {number}\n".encode()
    descriptor = os.open(folder / f"{os.getpid()}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def first_time(marker: str) -> bool:
    """True for the first process on this machine to ask with `marker` (an exclusive create)."""
    try:
        os.close(os.open(Path(os.environ[TRAININGS]) / marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def trainings(folder: Path) -> tuple[Counter, Counter]:
    """Completed trainings from the logs: per cell id, and per (trunk id, fork) segment."""
    cells, segments = Counter(), Counter()
    for log in folder.glob("*.log"):
        for line in log.read_text().splitlines():
            kind, name, number = line.split()
            if kind == "cell":
                cells[name] += 1
            else:
                segments[(name, int(number))] += 1
    return cells, segments


class DriverRun:
    """One `compscale submit` of the sweep as a child process: counts its per-cell `done` lines,
    samples its CPU time and RSS at the first one and its RSS every 0.1 s after, and reports its
    CPU time and peak RSS when reaped."""

    def __init__(self, spec: Path, store: str, address: str, log: Path):
        import psutil  # Ray's own dependency, importable once ray is

        command = [sys.executable, "-m", "orchestrator.cli", "submit", str(spec)]
        command += ["--store", store, "--address", address, "--cell-fn", "chaos:chaos_cell"]
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
        """SIGKILL it, unless reaped (not `Popen.send_signal`, which would reap it unseen)."""
        if self.usage is None:
            os.kill(self.process.pid, signal.SIGKILL)

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


class Lineage:
    """One sweep's drivers, one after another: each is SIGKILLed once the cells done by all
    drivers reach its fraction of `kills`, and a new one started on the same spec."""

    def __init__(self, spec: Path, kills: tuple[float, ...], start: Any):
        self.spec, self.kills, self.start = spec, list(kills), start
        self.driver, self.runs, self.done = start(spec), [], 0

    def step(self, progress: float, say: Any) -> bool:
        """Sample, kill, reap and restart as due; False once its last driver has exited."""
        self.driver.sample()
        if self.kills and progress >= self.kills[0]:
            self.driver.kill()
        if not self.driver.exited():
            return True
        self.runs.append(self.driver.reap())
        say(f"driver of {self.spec.stem} #{len(self.runs)}: {self.runs[-1]}")
        if self.runs[-1]["exit"] != -signal.SIGKILL or not self.kills:
            return False  # it finished (before its turn to be killed, or after the last)
        self.kills.pop(0)
        self.done += self.driver.done
        self.driver = self.start(self.spec)
        return True

    @property
    def cells_done(self) -> int:
        """Cells its drivers reported done so far."""
        return self.done + self.driver.done


def write_specs(directory: Path, cells: int, two_sweeps: bool) -> list[Path]:
    """The sweep's spec, or the two sweeps' (sharing 0.2 `cells` seeds and a WSD ladder)."""
    if not two_sweeps:
        return [write_spec(directory, SWEEP, range(cells))]
    first, second = range(0, round(0.6 * cells)), range(round(0.4 * cells), cells)
    return [
        write_spec(directory, name, seeds, ladder=True)
        for name, seeds in zip(S3_SWEEPS, (first, second), strict=True)
    ]


def write_spec(directory: Path, name: str, seeds: range, ladder: bool = False) -> Path:
    spec = directory / f"{name}.yaml"
    text = (
        f"name: {name}\nmodels: [tiny]\ntokens: [4096]\nformats: [dense]\n"
        f"seeds: [{', '.join(map(str, seeds))}]\nresources: {{cpus: 1}}\nretries: 6\n"
    )
    if ladder:
        text += "extra_cells:\n" + "".join(
            f"  - {{model: tiny, format: dense, tokens: {tokens}, train: {{schedule: wsd}}}}\n"
            for tokens in LADDER_TOKENS
        )
    spec.write_text(text)
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


@contextlib.contextmanager
def moto_store(directory: Path) -> Iterator[str]:
    """A store on a moto S3 server (tests/s3.py) whose requests are logged to `moto.log`; its
    AWS_* variables are set here for the drivers and the Ray nodes this process starts."""
    sys.path.insert(0, str(REPO / "tests"))
    from s3 import moto_s3

    with moto_s3(log=directory / "moto.log") as env:
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield f"s3://{env['COMPSCALE_TEST_BUCKET']}/chaos"
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def moto_requests(log: Path) -> dict[str, int]:
    """Requests moto served, by method (its werkzeug log: one line per request)."""
    methods = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) ')
    found = Counter(m[1] for m in map(methods.search, log.read_text().splitlines()) if m)
    return dict(found)


def audit(store: Any, cells: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What the store and the training logs say happened: every count named lost, duplicated,
    twice, never or false must be 0."""
    connection = store.connect(["status", "events", "losses_raw"])
    states = connection.execute("SELECT cell_id, state FROM status").fetchall()
    done = sum(state == "done" for _, state in states)
    connection.execute(
        "CREATE VIEW dead AS SELECT DISTINCT cell_id, attempt FROM events "
        "WHERE state = 'failed' AND error_class = 'WorkerDied'"
    )

    def count(sql: str) -> int:
        return connection.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]

    trained, segments_trained = trainings(folder)
    segments = {(r.trunk_id, fork) for r in ladder_rungs(cells) for fork in r.forks}
    trunk_events = [e for trunk in {t for t, _ in segments} for e in store.trunk_events(trunk)]
    return {
        "done": done,
        "lost": len(cells) - done,
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
        # from the processes' own logs: trainings completed, per cell and per trunk segment
        "trainings_per_cell": dict(Counter(trained[cell_id] for cell_id in cells)),
        "cells_trained_twice_logged": sum(trained[cell_id] > 1 for cell_id in cells),
        "cells_never_trained": sum(trained[cell_id] == 0 for cell_id in cells),
        "trainings_per_segment": {
            f"{trunk} fork {fork}": segments_trained[(trunk, fork)]
            for trunk, fork in sorted(segments)
        },
        "segments_trained_twice": sum(segments_trained[key] > 1 for key in segments),
        "segments_never_trained": sum(segments_trained[key] == 0 for key in segments),
        "segment_deaths": sum(e.get("error_class") == "WorkerDied" for e in trunk_events),
        "segment_waits": sum(e["state"] == "held" for e in trunk_events),
    }


def ladder_rungs(cells: dict[str, Any]) -> list[Any]:
    """The distinct trunks of the cells' WSD ladders (one rung each)."""
    from workers.ladder import rungs

    return list({rung.trunk_id: rung for rung in rungs(list(cells.values())).values()}.values())


def run(cells: int, directory: Path, say: Any = print, *, s3: bool = False) -> dict[str, Any]:
    """The chaos run in `directory` (on a local store, or with `s3` the two sweeps on a moto
    store); returns the audit, the driver runs, the requests to moto and the wall time."""
    # This checkout, for this process, the drivers and the Ray workers the cluster starts.
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    import ray  # noqa: F401 (makes its vendored psutil importable)
    from ray.cluster_utils import Cluster

    from orchestrator.cells import expand
    from orchestrator.spec import load_spec
    from orchestrator.store import Store

    (directory / "trainings").mkdir()
    os.environ[TRAININGS] = str(directory / "trainings")
    specs, log = write_specs(directory, cells, two_sweeps=s3), directory / "log"
    expected = {c.cell_id: c for spec in specs for c in expand(load_spec(str(spec)))}
    with moto_store(directory) if s3 else contextlib.nullcontext(str(directory / "store")) as uri:
        store = Store(uri)
        stale = leave_a_stale_running_cell(store, specs[0])
        loopback = {"node_ip_address": "127.0.0.1", "num_cpus": 1}
        head = loopback | {"include_dashboard": False}
        cluster = Cluster(initialize_head=True, head_node_args=head)
        workers = [cluster.add_node(**loopback) for _ in range(2)]
        cluster.wait_for_nodes()
        say(
            f"{len(expected)} cells in {len(specs)} sweeps on 3 nodes, store {uri}; stale running "
            f"cell {stale}; log {log}"
        )
        started, removed, lineages = time.monotonic(), False, []
        total = sum(len(expand(load_spec(str(spec)))) for spec in specs)

        def start(spec: Path) -> DriverRun:
            return DriverRun(spec, uri, cluster.address, log)

        try:
            kills = [tuple(f * total for f in DRIVER_KILLS)] + [()] * (len(specs) - 1)
            lineages = [Lineage(spec, k, start) for spec, k in zip(specs, kills, strict=True)]
            active = list(lineages)
            while active:
                time.sleep(0.1)
                progress = sum(line.cells_done for line in lineages)
                if not removed and progress >= NODE_REMOVAL * total:
                    cluster.remove_node(workers[0], allow_graceful=False)
                    removed = True
                    say(f"removed a worker node at {progress} cells")
                active = [line for line in active if line.step(progress, say)]
        finally:
            for line in lineages:  # interrupted
                if not line.driver.exited():
                    line.driver.kill()
                    line.driver.reap()
            cluster.shutdown()
        wall = time.monotonic() - started
        for line in lineages:
            if line.runs[-1]["exit"] != 0:
                raise RuntimeError(f"the last driver exited with {line.runs[-1]['exit']}; {log}")
        found = audit(store, expected, directory / "trainings")
    return {
        "audit": found,
        "sweeps": len(specs),
        "runs": [run for line in lineages for run in line.runs],
        "exits": [[run["exit"] for run in line.runs] for line in lineages],
        "node_removed": removed,
        "moto_requests": moto_requests(directory / "moto.log") if s3 else {},
        "wall_s": wall,
    }


def report(outcome: dict[str, Any]) -> str:
    found, runs = outcome["audit"], outcome["runs"]
    driving = sum(r["driving_cpu_s"] for r in runs) / max(sum(r["cells"] for r in runs), 1)
    total = sum(r["cpu_s"] for r in runs) / (found["done"] + found["lost"])
    per_run = "; ".join(
        f"{r['cells']} cells, {r['cpu_s']:.1f} s CPU, RSS {r['rss_first_cell_mib']:.0f} MiB at "
        f"its first cell, {r['rss_driving_mib']:.0f} MiB at most after, exit {r['exit']}"
        for r in runs
    )
    requests = outcome["moto_requests"]
    lines = [
        f"cells done: {found['done']} of {found['done'] + found['lost']} in "
        f"{outcome['sweeps']} sweep(s); lost cells: {found['lost']} {found['not_done'] or ''}",
        "duplicated (cell, step) rows in losses_raw: "
        f"{found['duplicated_rows']} (besides the {found['rows_of_killed_attempts']} rows "
        f"of the {found['killed_attempts']} attempts recorded killed)",
        f"cells trained more than once beyond their killed attempts: {found['trained_twice']}",
        f"deaths recorded for attempts that finished: {found['false_deaths']}",
        f"completed trainings per cell (processes' logs), trainings: cells = "
        f"{dict(sorted(found['trainings_per_cell'].items()))}",
        f"completed trainings per trunk segment: {found['trainings_per_segment'] or 'none'} "
        f"({found['segment_deaths']} segment deaths recorded, {found['segment_waits']} waits "
        "for another sweep's segment)",
        f"kills: driver exits per sweep {outcome['exits']}, a worker node removed: "
        f"{outcome['node_removed']}",
        f"driver CPU per cell while driving: {1e3 * driving:.2f} ms "
        f"({1e3 * total:.2f} ms with start-up, spec expansion and planning)",
        f"driver peak RSS: {max(r['peak_rss_mib'] for r in runs):.0f} MiB; growth while "
        f"driving: {max(r['rss_driving_mib'] - r['rss_first_cell_mib'] for r in runs):.1f} MiB",
        f"driver runs: {per_run}",
        f"wall time: {outcome['wall_s']:.0f} s",
    ]
    if requests:
        lines.append(f"requests to moto: {sum(requests.values())} {requests}")
    return "\n".join(lines)


def clean(found: dict[str, Any]) -> bool:
    """Nothing lost, doubled or trained twice, by the store and by the processes' logs."""
    return not any(
        found[key]
        for key in (
            "lost",
            "duplicated_rows",
            "trained_twice",
            "false_deaths",
            "cells_trained_twice_logged",
            "cells_never_trained",
            "segments_trained_twice",
            "segments_never_trained",
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep the store and log")
    parser.add_argument("--s3", action="store_true", help="two sweeps on a moto S3 store")
    parser.add_argument("--json", metavar="FILE", help="also write the outcome to FILE")
    args = parser.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True)
        outcome = run(args.cells, Path(args.keep), s3=args.s3)
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as directory:
            outcome = run(args.cells, Path(directory), s3=args.s3)
    print(report(outcome))
    if args.json:
        Path(args.json).write_text(json.dumps(outcome, default=str))
    return 0 if clean(outcome["audit"]) else 1


if __name__ == "__main__":
    sys.exit(main())
