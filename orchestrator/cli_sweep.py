"""Sweep commands: validate, plan, submit, status, rerun, query, cancel, sweeps, delete.

The store is `--store`, else $COMPSCALE_STORE, else `./store`. Ray is imported only by the commands
that run cells (submit, rerun); the others never start it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.claims import SweepClaim
    from orchestrator.driver import Planned
    from orchestrator.spec import SweepSpec
    from orchestrator.store import Store
    from orchestrator.tasks import CellFunction
    from workers.config import CellConfig


def store_parent() -> argparse.ArgumentParser:
    """The `--store` option, shared by every command that reads or writes the store."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--store", help="results store: a path or pyarrow URI (default $COMPSCALE_STORE or ./store)"
    )
    return parent


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `compscale` parser."""
    store_flag = store_parent()
    runner = argparse.ArgumentParser(add_help=False)
    runner.add_argument(
        "--address", help="Ray cluster address (default $RAY_ADDRESS, else embedded)"
    )
    runner.add_argument(
        "--cell-fn",
        default=None,
        metavar="MODULE:FUNCTION",
        help="the cell function (default workers:run_cell; tests and benchmarks pass a double)",
    )
    runner.add_argument(
        "--heartbeat-s", type=float, help="seconds between a running cell's lease renewals (10)"
    )
    runner.add_argument(
        "--lease-s", type=float, help="a running cell silent this many seconds is dead (60)"
    )
    runner.add_argument(
        "--unsafe-claims",
        action="store_true",
        help="run on a store without conditional create (GCS, Azure): a cell may train twice",
    )

    command = subparsers.add_parser("validate", help="check a sweep spec without running anything")
    command.add_argument("spec", help="sweep YAML")
    command.set_defaults(func=validate)

    command = subparsers.add_parser(
        "plan", parents=[store_flag], help="dry run: cells, N, D, FLOPs and skip/run per cell"
    )
    command.add_argument("spec", help="sweep YAML")
    command.set_defaults(func=plan)

    command = subparsers.add_parser(
        "submit", parents=[store_flag, runner], help="run a sweep's cells on Ray"
    )
    command.add_argument("spec", help="sweep YAML")
    command.add_argument("--detach", action="store_true", help="run the driver in the background")
    command.set_defaults(func=submit)

    command = subparsers.add_parser("status", parents=[store_flag], help="state of a sweep's cells")
    command.add_argument("sweep", help="sweep name")
    command.add_argument(
        "--json", action="store_true", help="one JSON object per cell, with tracebacks"
    )
    command.set_defaults(func=status)

    command = subparsers.add_parser(
        "rerun", parents=[store_flag, runner], help="run a sweep's failed or chosen cells again"
    )
    command.add_argument("sweep", help="sweep name")
    which = command.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="every failed cell of the sweep")
    which.add_argument(
        "--cells", nargs="+", metavar="ID", help="these cells (not done ones: --force)"
    )
    command.add_argument("--force", action="store_true", help="rerun the given cells even if done")
    command.add_argument("--detach", action="store_true", help="run the driver in the background")
    command.set_defaults(func=rerun)

    command = subparsers.add_parser(
        "query", parents=[store_flag], help="DuckDB SQL over cells, status, events, losses, results"
    )
    command.add_argument("sql", help='e.g. "select format, avg(val_loss) from results group by 1"')
    output = command.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    output.add_argument("--parquet", metavar="FILE", help="write the answer to a Parquet file")
    command.set_defaults(func=query)

    command = subparsers.add_parser("cancel", parents=[store_flag], help="stop a running sweep")
    command.add_argument("sweep", help="sweep name")
    command.set_defaults(func=cancel)

    command = subparsers.add_parser(
        "sweeps",
        parents=[store_flag],
        help="the store's sweeps: cells, done, failed, last activity",
    )
    command.set_defaults(func=sweeps)

    command = subparsers.add_parser(
        "delete",
        parents=[store_flag],
        help="delete a sweep's folder and the cells no other sweep uses",
    )
    command.add_argument("sweep", help="sweep name")
    command.add_argument("--yes", action="store_true", help="really delete (refused without it)")
    command.set_defaults(func=delete)


# ---- helpers ----------------------------------------------------------------------
def open_store(args: argparse.Namespace, must_exist: bool = True, claims: bool = False) -> Store:
    """The store of `--store`, $COMPSCALE_STORE or ./store; one that must exist (every command
    but plan and submit) is an error when missing, a path that is a file always is. A command
    that `claims` (submit, rerun) refuses a store without exact claims before touching it,
    unless given --unsafe-claims."""
    from orchestrator.store import Store

    store = Store(args.store or os.environ.get("COMPSCALE_STORE") or "store")
    if claims:
        store.check_claims(args.unsafe_claims)
    store.check_root(must_exist)
    return store


def load(spec_path: str) -> tuple[SweepSpec, str, list[CellConfig]]:
    """The spec, its text and its cells; every spec error surfaces here, before Ray or the store."""
    from orchestrator.autopilot import check
    from orchestrator.cells import expand
    from orchestrator.spec import load_spec

    spec = load_spec(spec_path)
    cells = expand(spec, source=spec_path)
    check(spec, cells, source=spec_path)  # an adaptive sweep's budget against round 0's cost
    return spec, Path(spec_path).read_text(), cells


def cell_function(spec: str | None) -> CellFunction | None:
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"--cell-fn: expected MODULE:FUNCTION, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def _print_table(
    title: str, columns: list[str], rows: list[list[Any]], caption: str | None = None
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _counts(planned: list[Planned]) -> str:
    from collections import Counter

    counts = Counter(item.action for item in planned)
    return ", ".join(f"{action} {counts[action]}" for action in sorted(counts))


# ---- handlers ----------------------------------------------------------------------
def validate(args: argparse.Namespace) -> int:
    spec, _, cells = load(args.spec)
    extra = len(spec.extra_cells)
    print(f"{args.spec}: sweep {spec.name!r} is valid: {len(cells)} cells ({extra} extra)")
    return 0


def plan(args: argparse.Namespace) -> int:
    from orchestrator.driver import plan as plan_cells
    from workers.ladder import ladder_savings

    spec, _, cells = load(args.spec)
    store = open_store(args, must_exist=False)
    planned = plan_cells(cells, store)
    rows = [
        [
            item.cell.cell_id,
            item.cell.params,
            item.cell.tokens,
            f"{item.cell.tokens / item.cell.params:.1f}",
            f"{item.cell.flops:.3g}",
            item.status.state,
            item.action,
        ]
        for item in planned
    ]
    columns = ["cell", "N (params)", "D (tokens)", "D/N", "FLOPs (6ND)", "state", "action"]
    _print_table(f"sweep {spec.name} in {store.uri}", columns, rows)
    total = sum(item.cell.flops for item in planned if item.action in ("run", "rerun"))
    print(f"{len(cells)} cells: {_counts(planned)}; {total:.3g} FLOPs to run")
    alone, laddered = ladder_savings(cells)
    if laddered:
        print(
            f"WSD cells: {alone:.4g} tokens one by one, {laddered:.4g} as ladders (shared trunks)"
        )
    return 0


def _run(
    args: argparse.Namespace,
    spec: SweepSpec,
    store: Store,
    planned: list[Planned],
    claim: SweepClaim,
) -> int:
    """Drive the planned cells; Ctrl-C cancels the cells in flight and says how to resume."""
    from orchestrator.cluster import connect
    from orchestrator.driver import Driver
    from orchestrator.progress import Progress
    from orchestrator.tasks import HEARTBEAT_S, LEASE_S

    cell_fn = cell_function(args.cell_fn)
    print(f"sweep {spec.name}: {len(planned)} cells: {_counts(planned)}; store {store.uri}")
    if not any(item.action in ("run", "rerun", "wait") for item in planned):
        print("nothing to run")
        return 0
    started_ray = connect(args.address)
    print(f"sweep {spec.name}: on {_where(started_ray)}; store {store.uri}", flush=True)
    driver = Driver(
        spec.name,
        store,
        resources=spec.resources,
        retries=spec.retries,
        max_in_flight=spec.max_in_flight,
        cell_fn=cell_fn,
        heartbeat_s=args.heartbeat_s or HEARTBEAT_S,
        lease_s=args.lease_s or LEASE_S,
        progress=Progress(spec.name, len(planned)),
        claim=claim,
    )
    try:
        counts = driver.run(planned)
    except KeyboardInterrupt:
        stopped = [item.cell.cell_id for item in (*driver.in_flight.values(), *driver.queue)]
        driver.cancel()
        print(
            f"compscale {args.command}: interrupted; {len(stopped)} cells cancelled; "
            f"resume with: {_resume_command(args, store, stopped)}",
            file=sys.stderr,
        )
        return 130
    finally:
        if started_ray or args.address:
            import ray

            ray.shutdown()
    held = sum(item.action == "hold" for item in planned)
    if held:
        print(
            f"{held} cells failed earlier and were not rerun: compscale rerun {spec.name} --failed"
        )
    return 1 if counts["failed"] or counts["cancelled"] else 0


def _where(embedded: bool) -> str:
    """Where the sweep runs, in words: "embedded local Ray (2 CPUs, 0 GPUs, 127.0.0.1)" or
    "Ray cluster at ADDRESS: N nodes, C CPUs, G GPUs"."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = int(total.get("CPU", 0)), int(total.get("GPU", 0))
    if embedded:
        ip = ray.util.get_node_ip_address()
        return f"embedded local Ray ({cpus} CPUs, {gpus} GPUs, {ip})"
    nodes = sum(node["Alive"] for node in ray.nodes())
    address = ray.get_runtime_context().gcs_address
    return f"Ray cluster at {address}: {nodes} nodes, {cpus} CPUs, {gpus} GPUs"


def _runner_flags(args: argparse.Namespace) -> list[str]:
    """The options a run was given, for a command that continues it (--detach, a resume)."""
    flags = []
    for flag in ("address", "cell_fn", "heartbeat_s", "lease_s"):
        if getattr(args, flag):
            flags += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return flags + (["--unsafe-claims"] if args.unsafe_claims else [])


def _resume_command(args: argparse.Namespace, store: Store, cancelled: list[str]) -> str:
    """The command that picks up an interrupted run: the same submit (done cells are skipped,
    cancelled ones run), or a rerun of the cells it cancelled."""
    if args.command == "submit":
        what = ["submit", os.path.abspath(args.spec)]
    else:
        what = ["rerun", args.sweep, *(["--cells", *cancelled] if cancelled else ["--failed"])]
    return shlex.join(["compscale", *what, "--store", store.uri, *_runner_flags(args)])


def _hold_sweep(
    args: argparse.Namespace, store: Store, name: str
) -> AbstractContextManager[SweepClaim]:
    """The sweep's driver claim for this command (`orchestrator.claims`): a second driver of
    the same sweep refuses with `SweepHeld`, one line and exit code 2."""
    from orchestrator.claims import hold_sweep
    from orchestrator.tasks import HEARTBEAT_S, LEASE_S

    lease_s, heartbeat_s = args.lease_s or LEASE_S, args.heartbeat_s or HEARTBEAT_S
    return hold_sweep(store, name, lease_s=lease_s, heartbeat_s=heartbeat_s)


def submit(args: argparse.Namespace) -> int:
    from orchestrator.driver import plan as plan_cells
    from orchestrator.tasks import LEASE_S

    spec, text, spec_cells = load(args.spec)
    store = open_store(args, must_exist=False, claims=True)
    store.create()
    with _hold_sweep(args, store, spec.name) as claim:
        cells = spec_cells
        if spec.adaptive is not None:  # and the cells its rounds added so far
            from orchestrator.autopilot import all_cells

            cells = all_cells(store, spec.name, spec_cells)
        cell_ids = [cell.cell_id for cell in cells]
        if spec.name in store.sweep_names():
            before = set(store.manifest(spec.name))
            added, dropped = len(set(cell_ids) - before), len(before - set(cell_ids))
            if added or dropped:
                print(f"sweep {spec.name} changed: {added} cells added, {dropped} dropped")
        for cell in cells:
            store.put_cell(cell)
        store.put_sweep(spec.name, text, cell_ids)
        if not args.detach:
            lease_s = args.lease_s or LEASE_S
            if spec.adaptive is not None:
                return _run_adaptive(args, spec, store, spec_cells, claim)
            planned = plan_cells(cells, store, lease_s=lease_s, retries=spec.retries)
            return _run(args, spec, store, planned, claim)
    return _detach(args, spec.name, store)  # released first: the background driver takes it


def _run_adaptive(
    args: argparse.Namespace,
    spec: SweepSpec,
    store: Store,
    spec_cells: list[CellConfig],
    claim: SweepClaim,
) -> int:
    """The autopilot's rounds (`orchestrator.autopilot`), each run as `_run` runs a sweep, on one
    Ray connection for all of them."""
    from orchestrator import autopilot
    from orchestrator.cluster import connect
    from orchestrator.driver import plan as plan_cells
    from orchestrator.tasks import LEASE_S

    def run_cells(cells: list[CellConfig]) -> int:
        lease_s = args.lease_s or LEASE_S
        planned = plan_cells(cells, store, lease_s=lease_s, retries=spec.retries)
        return _run(args, spec, store, planned, claim)

    started_ray = connect(args.address)
    try:
        return autopilot.run(spec, store, spec_cells, run_cells, say=_say)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _say(text: str) -> None:
    print(text, flush=True)


def _detach(args: argparse.Namespace, name: str, store: Store) -> int:
    """Start this same submit or rerun, without --detach, as a background process that outlives
    the shell."""
    if args.command == "submit":
        what = ["submit", os.path.abspath(args.spec)]
    else:
        what = ["rerun", args.sweep, *(["--cells", *args.cells] if args.cells else ["--failed"])]
        what += ["--force"] if args.force else []
    command = [sys.executable, "-m", "orchestrator.cli", *what]
    command += ["--store", store.uri, *_runner_flags(args)]
    local = "://" not in store.uri
    log = Path(store.layout.sweep(name).driver_log) if local else Path(f"{name}-driver.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    print(f"sweep {name}: driver started in the background, pid {process.pid}, log {log}")
    print(f"watch it with: compscale status {name} --store {store.uri}")
    return 0


STATUS_CAPTION = (
    "state: the latest status event (running, lease expired: its worker stopped reporting); "
    "attempt: the try number; step, loss: a running cell's newest loss row (training loss); "
    "ETA: its tokens left / its tokens per second (a pending ladder branch: its trunk's step, "
    "loss and the ETA of its fork); error: class and first line of the message "
    "(tracebacks below, or --json)"
)


def _running_detail(store: Store, cell_id: str) -> tuple[str, str, str]:
    """Step, last training loss and ETA of a running cell, from its newest loss row."""
    row = store.latest_loss(cell_id)
    if row is None:
        return "", "", ""
    left = store.load_cell(cell_id).tokens - row["tokens"]
    return str(row["step"]), f"{row['train_loss']:.4f}", _eta(left, row)


def _trunk_detail(store: Store, trunk: str, fork_step: int) -> tuple[str, str, str]:
    """Step and last training loss of the trunk a pending branch waits for, and the ETA of its
    fork step (when the branch starts), from the trunk's newest loss row."""
    row = store.latest_loss(trunk, paths=store.layout.trunk(trunk))
    if row is None:
        return "", "", ""
    left = (fork_step - row["step"] - 1) * row["tokens"] / (row["step"] + 1)
    return f"trunk {row['step']}", f"{row['train_loss']:.4f}", _eta(left, row)


def _eta(tokens_left: float, row: dict[str, Any]) -> str:
    """Minutes to train `tokens_left` at the speed of the loss row `row`; empty without one."""
    speed = row.get("tokens_per_s") or 0.0
    return f"{tokens_left / speed / 60:.1f} min" if speed > 0 else ""


def status(args: argparse.Namespace) -> int:
    from collections import Counter

    from orchestrator.tasks import LEASE_S

    store = open_store(args)
    statuses = [store.status(cell_id) for cell_id in store.manifest(args.sweep)]
    if args.json:
        for item in statuses:
            state = "running (lease expired)" if item.is_stale(LEASE_S) else item.state
            print(json.dumps(item.event | {"cell_id": item.cell_id, "state": state}, default=str))
        return 0
    rows = []
    for item in statuses:
        state = f"{item.state} (lease expired)" if item.is_stale(LEASE_S) else item.state
        error = item.event.get("error_class")
        first = next(iter(str(item.event.get("message") or "").splitlines()), "")
        detail = f"{error}: {first}" if error else ""
        running = ("",) * 3
        if item.state == "running":
            running = _running_detail(store, item.cell_id)
        elif item.state == "pending" and (trunk := item.event.get("trunk_id")):
            running = _trunk_detail(store, trunk, item.event["fork_step"])
            detail = f"waits for its ladder's trunk to reach step {item.event['fork_step']}"
        rows.append([item.cell_id, state, item.attempt, item.event.get("host"), *running, detail])
    columns = ["cell", "state", "attempt", "host", "step", "loss", "ETA", "error"]
    _print_table(f"sweep {args.sweep}", columns, rows, caption=STATUS_CAPTION)
    for item in statuses:
        if item.state == "failed" and item.event.get("traceback"):
            print(f"\n--- {item.cell_id}, attempt {item.attempt} ---\n{item.event['traceback']}")
    counts = Counter(item.state for item in statuses)
    print(", ".join(f"{state} {count}" for state, count in sorted(counts.items())))
    _print_rounds(store, args.sweep)
    return 0


def _print_rounds(store: Store, sweep: str) -> None:
    """An adaptive sweep's rounds (`orchestrator.rounds`), one line each; nothing otherwise."""
    from orchestrator.autopilot import describe

    rows = store.round_rows(sweep)
    if not rows:
        return
    from orchestrator.spec import parse_spec

    spec = parse_spec(store.spec_text(sweep), source=store.layout.sweep(sweep).spec)
    target = spec.adaptive.target if spec.adaptive is not None else None
    print(f'\nautopilot rounds ({len(rows)}; compscale query "select * from rounds"):')
    for row in rows:
        print(f"  {describe(row, target)}")
    if not rows[-1]["stopped"]:
        print(f"  round {len(rows)} is running or was interrupted (submit again to resume)")


def rerun(args: argparse.Namespace) -> int:
    from orchestrator.cells import expand
    from orchestrator.driver import plan as plan_cells
    from orchestrator.spec import parse_spec
    from orchestrator.tasks import LEASE_S

    store = open_store(args, claims=True)
    if args.detach:
        store.manifest(args.sweep)  # an unknown sweep fails here, not in the background
        return _detach(args, args.sweep, store)
    source = store.layout.sweep(args.sweep).spec
    spec = parse_spec(store.spec_text(args.sweep), source=source)
    members = store.manifest(args.sweep)
    cells = [cell for cell in expand(spec, source=source) if cell.cell_id in set(members)]
    known = {cell.cell_id for cell in cells}  # an adaptive sweep's rounds added the others
    cells += [store.load_cell(cell_id) for cell_id in members if cell_id not in known]
    members = set(members)
    if args.cells:
        unknown = sorted(set(args.cells) - members)
        if unknown:
            raise ValueError(f"--cells: {unknown[0]} is not a cell of sweep {args.sweep}")
        cells = [cell for cell in cells if cell.cell_id in set(args.cells)]
    force = args.cells if args.force and args.cells else ()
    with _hold_sweep(args, store, args.sweep) as claim:
        planned = plan_cells(
            cells, store, rerun_failed=True, force=force, lease_s=args.lease_s or LEASE_S
        )
        if args.failed:
            planned = [item for item in planned if item.status.state == "failed"]
        done = sum(item.action == "skip" for item in planned)
        if done:
            print(f"{done} of the given cells are done; add --force to rerun them")
        return _run(args, spec, store, planned, claim)


def query(args: argparse.Namespace) -> int:
    import duckdb
    import pyarrow as pa

    from orchestrator.store import VIEWS, ReadOnlyQuery, permission_reason
    from workers.layout import resolve

    store = open_store(args)
    target = resolve(args.parquet, what="--parquet") if args.parquet else None
    if target is not None and store.contains(target):
        raise ValueError(f"--parquet: {args.parquet} is inside the store; write it elsewhere")
    try:
        table = pa.table(store.query(args.sql))  # run here, so errors at run time are one line
    except duckdb.PermissionException as error:
        raise ReadOnlyQuery.because(permission_reason(error)) from None
    except duckdb.Error as error:
        views = ", ".join(VIEWS)
        raise ValueError(f"{str(error).splitlines()[0]} (views: {views})") from None
    if target is not None:
        import pyarrow.parquet as pq

        from workers.storage import write_atomic

        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        write_atomic(target.filesystem, target.root, buffer.getvalue().to_pybytes())
        print(f"wrote {args.parquet}")
    elif args.csv:
        table.to_pandas().to_csv(sys.stdout, index=False)
    else:
        frame = table.to_pandas()
        _print_table(args.sql, list(frame.columns), frame.values.tolist())
    return 0


def cancel(args: argparse.Namespace) -> int:
    store = open_store(args)
    cell_ids = store.manifest(args.sweep)
    store.request_cancel(args.sweep)
    queued = 0
    for cell_id in cell_ids:
        if store.status(cell_id).state == "pending":
            store.record(cell_id, "cancelled", 0, message="cancelled before it started")
            queued += 1
    print(
        f"sweep {args.sweep}: cancel requested; {queued} queued cells cancelled; "
        "a running driver stops its cells within a second"
    )
    return 0


def sweeps(args: argparse.Namespace) -> int:
    from orchestrator.api import sweep_summary

    store = open_store(args)
    table = sweep_summary(store)
    rows = [
        [row.sweep, row.cells, row.done, row.failed, f"{row.last_activity:%Y-%m-%d %H:%M} UTC"]
        for row in table.itertuples()
    ]
    columns = ["sweep", "cells", "done", "failed", "last activity"]
    _print_table(f"sweeps in {store.uri}", columns, rows)
    return 0


def delete(args: argparse.Namespace) -> int:
    store = open_store(args)
    members = store.manifest(args.sweep)
    if not args.yes:
        raise ValueError(
            f"sweep {args.sweep}: deleting it removes its folder and those of its {len(members)} "
            "cells that no other sweep uses; add --yes to delete"
        )
    running = [cell for cell in members if store.status(cell).state == "running"]
    if running:
        raise ValueError(
            f"sweep {args.sweep}: {len(running)} cells are running; "
            f"compscale cancel {args.sweep} first"
        )
    removed = store.delete_sweep(args.sweep)
    kept = len(members) - len(removed)
    print(f"deleted sweep {args.sweep} and {len(removed)} cells ({kept} kept: in other sweeps)")
    return 0
