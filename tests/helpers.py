"""Helpers shared by test modules: paths, the `compscale` command as a user runs it, the code
blocks of the README and docs pages, and synthetic result tables and stores from laws of known
parameters."""

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from compscale import capacity
from compscale.reduce import ReductionMetrics
from orchestrator.store import RESULT_SCHEMA, Store

TRUTH = {"A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28, "E": 1.69}


LAW = {"cap": 0.97, "slope": 0.5, "power": 1.6}


GMSE = {"int2": 0.1188, "int3": 0.0374, "int4": 0.01154, "int8": 8.8e-5, "sp50": 0.0714}


def sweep(rho: dict[str, float], seeds=(0, 1), noise: float = 0.005) -> pd.DataFrame:
    """Result rows as the store's results view has them: one per cell, loss from TRUTH."""
    rng = np.random.default_rng(7)
    rows = []
    for name, value in rho.items():
        for params in (1e6, 3e6, 1e7, 3e7, 1e8):
            for tokens_per_param in (10, 30, 100):
                tokens = int(params * tokens_per_param)
                loss = (
                    TRUTH["A"] * (params * value) ** -TRUTH["alpha"]
                    + TRUTH["B"] * tokens ** -TRUTH["beta"]
                    + TRUTH["E"]
                )
                for seed in seeds:
                    noisy = loss * math.exp(rng.normal(0, noise))
                    rows.append((int(params), tokens, name, seed, noisy))
    return pd.DataFrame(rows, columns=["params", "tokens", "format", "seed", "val_loss"])


def capacities(composite_factor: float) -> dict[str, float]:
    rho = {"dense": 1.0} | {name: float(capacity.capacity(g, **LAW)) for name, g in GMSE.items()}
    return rho | {"sp50+int4": rho["sp50"] * rho["int4"] * composite_factor}


def metrics(**overrides) -> ReductionMetrics:
    """Metrics of a reduction nobody fitted: every number NaN unless overridden."""
    nan = math.nan
    values = dict(
        law="unified", cells=0, formats=0, seeds=0, bootstrap=0, delta=1e-3, objective=nan,
        rmse_log_loss=nan, mean_abs_rel_error=nan, seed_noise_log_loss=nan, tolerance=0.02,
        holdout_fraction=0.0, heldout_cells=0, heldout_rmse_log_loss=nan,
        heldout_mean_abs_rel_error=nan,
    )  # fmt: skip
    return ReductionMetrics(**values | overrides)


TRUE_RHO = {"dense": 1.0, "int4": 0.9, "int2": 0.55, "sp50": 0.8, "sp50+int4": 0.72}


def fill_store(store: Store, sweep: str) -> None:
    """One result row per cell of a 5-format x 4-N x 3-D grid, losses from the unified law."""
    rng = np.random.default_rng(0)
    cell_ids = []
    for fmt, rho in TRUE_RHO.items():
        for params in (5e4, 1e5, 2e5, 4e5):
            for tokens_per_param in (10, 20, 40):
                tokens = params * tokens_per_param
                loss = 40 * (params * rho) ** -0.3 + 60 * tokens**-0.25 + 1.2
                cell_id = f"{fmt}-{int(params)}-{tokens_per_param}"
                row = {
                    "cell_id": cell_id, "model": "x", "params": int(params),
                    "tokens": int(tokens), "format": fmt, "seed": 0,
                    "val_loss": loss * np.exp(rng.normal(0, 0.002)), "train_loss": loss,
                    "steps": 10, "wall_time_s": 1.0, "tokens_per_s": 1.0, "hardware": "test",
                    "world_size": 1, "attempt": 1, "data_fingerprint": "f",
                    "finished_at": datetime.now(timezone.utc),
                }  # fmt: skip
                table = pa.Table.from_pylist([row], schema=RESULT_SCHEMA)
                store.write_atomic(store.layout.cell(cell_id).result, parquet_bytes(table))
                cell_ids.append(cell_id)
    store.put_sweep(sweep, "name: synthetic\n", cell_ids)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


REPO = Path(__file__).resolve().parent.parent  # tests/ -> the repository


def doc_text(page: str) -> str:
    """The text of `README.md` (page "README.md") or of `docs/<page>`."""
    return (REPO / page if page == "README.md" else REPO / "docs" / page).read_text()


def doc_block(page: str, contains: str, lang: str = "bash") -> str:
    """The one fenced block of language `lang` in `page` (as `doc_text` names it) that contains
    `contains`, without its fences. The marker names the block, so a block that moves to another
    page is one argument to change here; none or two matching is an error."""
    blocks = re.findall(rf"^```{re.escape(lang)}\n(.*?)^```", doc_text(page), re.M | re.S)
    found = [block for block in blocks if contains in block]
    assert len(found) == 1, f"{len(found)} {lang} blocks of {page} contain {contains!r}"
    return found[0]


COMPSCALE = str(Path(sys.executable).parent / "compscale")


DOUBLE = ["--cell-fn", "doubles:run_cell"]


def run_cell_trunk_paused(cell, store_uri: str, attempt: int | None = None, ladder=None) -> dict:
    """`workers.run_cell` (real training), except that a WSD trunk segment pauses 3 s before it
    trains (`--cell-fn helpers:run_cell_trunk_paused`): two drivers that start one segment at
    once then surely overlap, so without the segment's claim both would train it."""
    from workers import run_cell

    if ladder is not None and ladder.forks:
        time.sleep(3)
    return run_cell(cell, store_uri, attempt, ladder)


def environment(**extra: str) -> dict[str, str]:
    """The test's environment without Ray settings; this checkout first on the path (not the one
    an editable install points at), then the test doubles."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # this checkout's code, not whichever one the virtual environment's editable install names
    path = os.pathsep.join([str(REPO / "tests"), str(REPO)])
    return env | {"PYTHONPATH": path, "COLUMNS": "200"} | extra


def compscale(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180):
    return subprocess.run(
        [COMPSCALE, *args],
        cwd=cwd,
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_session(session_id: int) -> None:
    """SIGKILL, one by one, what is left of a process session a test started (Ray's helpers)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:  # field 6 of /proc/<pid>/stat: the session id
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def write_spec(path: Path, name: str, formats: list[str], **extra) -> Path:
    lines = [
        f"name: {name}",
        "models: [tiny]",
        "tokens: [8000]",
        f"formats: [{', '.join(formats)}]",
    ]
    lines += [f"{key}: {value}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_job_submit(command: list[str], **options) -> subprocess.CompletedProcess:
    """`ray job submit`, tried again while the head's job agent is not up yet (the dashboard
    answers before it does, on a loaded machine by tens of seconds)."""
    for _ in range(24):
        job = subprocess.run(command, **options)
        if "No available agent to submit job" not in job.stdout + job.stderr:
            break
        time.sleep(5)
    return job


def race_at_once(code: str, arguments: list[list[str]], env: dict[str, str]) -> list:
    """One `python -c code` process per argument list, released at one moment once every one has
    printed "ready" (so each has read the store before any acts); each one's JSON answer."""
    env = os.environ | env | {"PYTHONPATH": str(REPO)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for args in arguments
    ]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    start = time.time() + 0.5
    for racer in racers:
        racer.stdin.write(f"{start}\n")
        racer.stdin.flush()
    answers = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    return answers
