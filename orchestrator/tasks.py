"""What runs inside Ray tasks: a cell's task body, a trunk segment's, and the lease they hold.

The driver (`orchestrator.driver`) submits these functions as Ray tasks, so their bodies run in a
worker process on some node of the cluster; in the driver it only picks the cell function
(`default_cell_function`) and wraps it for DDP (`ddp_cell_function`). Nothing here imports the
driver.

Each cell is one Ray task (`execute_cell`) that claims the cell's next attempt in the store
(`orchestrator.claims`), records `running` (host, pid, attempt), renews a heartbeat lease while
the cell function runs, and records `done`, or `failed` with the error class, message and
traceback. A cell already done, or running under another task's live lease (another driver's,
another sweep's), is not started: the task says so and the driver waits for it. A cell of world
size k > 1 runs its cell function in k Ray Train workers (TorchTrainer, DDP); world size 1 runs in
the task itself (TorchTrainer costs ~14 s to start here). A WSD ladder's trunk is trained in
segments, one task each (`execute_trunk`; the driver's bookkeeping of them is
`orchestrator.ladders`), each under a claim of its segment with a lease of its own; a task that
finds its segment held by another live task waits for that one's checkpoint instead of training.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator import claims
from orchestrator.spec import Resources
from orchestrator.store import Store, utc_stamp
from workers.config import CellConfig
from workers.errors import is_retryable
from workers.ladder import Ladder, fork_step

# (cell, store URI, attempt number) -> result row; the attempt is numbered by `execute_cell`.
CellFunction = Callable[[CellConfig, str, int], dict]

HEARTBEAT_S = 10.0  # seconds between lease renewals of a running cell
LEASE_S = 60.0  # a running cell whose heartbeat is older than this is dead


def default_cell_function() -> CellFunction:
    """`workers.run_cell`: what a cell's task runs unless the driver is given another function."""
    from workers import run_cell

    return run_cell


def execute_cell(
    cell_json: str,
    store_uri: str,
    cell_fn: CellFunction,
    token: str,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    lease_s: float = LEASE_S,
    force: bool = False,
    trunk: str | None = None,
    after: Any = None,
) -> dict[str, Any]:
    """The body of one cell's Ray task (`token` names this submission; Ray's retries of it share
    it): claim the cell's next attempt, which also numbers it (one number for the status events,
    the loss rows and the result row), hold its lease and record how it ended. A ladder's branch
    names its `trunk` (recorded in its `running` event) and takes its trunk segment's summary as
    `after`, so that Ray starts it once the segment has finished (`orchestrator.ladders`).

    Returns a small summary (`outcome`: trained, done elsewhere or held elsewhere; tokens,
    tokens_per_s, wall_time_s), not the whole result row, so the driver's memory does not grow
    with the number of cells.
    """
    store = Store(store_uri)
    cell = CellConfig.model_validate_json(cell_json)
    cell_id, host, pid = cell.cell_id, socket.gethostname(), os.getpid()
    outcome, attempt = claims.claim_attempt(
        store, cell_id, token, lease_s=lease_s, force=force, host=host, pid=pid
    )
    summary = {"outcome": outcome, "tokens": 0, "tokens_per_s": 0.0, "wall_time_s": 0.0}
    if outcome == claims.HELD:
        return summary
    if outcome == claims.DONE:
        if store.status(cell_id).state != "done":  # a later `pending` hides that it finished
            store.record(cell_id, "done", attempt, message=f"attempt {attempt} finished it")
        return summary
    started, node = time.perf_counter(), placement()
    branch = {"trunk_id": trunk, "fork_step": fork_step(cell)} if trunk else {}
    with heartbeat_lease(store, cell_id, attempt, host, pid, heartbeat_s):
        store.record(cell_id, "running", attempt, host=host, pid=pid, **node, **branch)
        try:
            options = {"ladder": Ladder(trunk)} if trunk else {}
            result = cell_fn(cell, store_uri, attempt, **options) or {}
        except Exception as error:
            store.record(
                cell_id,
                "failed",
                attempt,
                host=host,
                pid=pid,
                error_class=type(error).__name__,
                message=str(error),
                traceback=traceback.format_exc(),
                retryable=is_retryable(error),
                token=token,
            )
            raise
        except BaseException as stop:  # told to exit: its driver died, or it was cancelled
            if store.status(cell_id).state != "cancelled":  # a Ctrl-C's `cancelled` stands
                store.record(
                    cell_id,
                    "failed",
                    attempt,
                    host=host,
                    pid=pid,
                    error_class="WorkerDied",
                    message=f"attempt {attempt} stopped: its process was told to exit "
                    f"({type(stop).__name__}); the cell is not at fault",
                )
            raise
    wall = time.perf_counter() - started
    store.record(cell_id, "done", attempt, host=host, pid=pid, wall_time_s=wall, **node)
    return summary | {
        "tokens": int(result.get("tokens", 0) or 0),
        "tokens_per_s": float(result.get("tokens_per_s", 0.0) or 0.0),
        "wall_time_s": wall,
    }


def execute_trunk(
    top_json: str,
    store_uri: str,
    cell_fn: Callable[..., dict],
    trunk_id: str,
    forks: tuple[int, ...],
    after: Any = None,
    *,
    token: str | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    lease_s: float = LEASE_S,
) -> dict[str, Any]:
    """The body of one trunk segment's Ray task (`token` names this submission; Ray's retries of
    it share it; a call without one gets its own): train the trunk with the config of its
    ladder's largest budget (`top_json`) up to the last of `forks` under a claim of the segment
    (`orchestrator.claims.claim_segment`), holding its lease and recording the segment's events
    beside the trunk. Nothing is trained when the fork's checkpoint exists already, or once it
    does after waiting for another task (another sweep's driver) that holds the segment. `after`
    is the previous segment's summary, an argument only so Ray orders them."""
    store = Store(store_uri)
    fork = forks[-1]
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    claim = claim_segment_or_wait(store, trunk_id, fork, token or uuid.uuid4().hex, lease_s)
    if claim is None:
        return {"trunk_id": trunk_id, "fork": fork}  # trained since: another driver, or a retry
    cell = CellConfig.model_validate_json(top_json)
    attempt = {"attempt": claim.number}
    with segment_lease(store, claim, heartbeat_s):
        store.record_trunk(trunk_id, "running", fork, **attempt, **where, **placement())
        try:
            cell_fn(cell, store_uri, 0, ladder=Ladder(trunk_id, forks))
        except BaseException as error:
            store.record_trunk(
                trunk_id,
                "failed",
                fork,
                **attempt,
                **where,
                error_class=type(error).__name__,
                message=str(error),
                traceback=traceback.format_exc(),
            )
            raise
    store.record_trunk(trunk_id, "done", fork, **attempt, **where)
    return {"trunk_id": trunk_id, "fork": fork}


def claim_segment_or_wait(
    store: Store, trunk_id: str, fork: int, token: str, lease_s: float
) -> claims.SegmentClaim | None:
    """This task's claim of the trunk segment that stops at `fork`, or None once the fork's
    checkpoint exists. While another task trains it under a live lease (a driver of another sweep
    sharing the ladder), wait, recording `held` once per attempt waited for, and poll until the
    checkpoint exists or the holder stops (then take it over)."""
    host, pid = socket.gethostname(), os.getpid()
    waited_for = 0
    while True:
        outcome, claim = claims.claim_segment(
            store, trunk_id, fork, token, lease_s=lease_s, host=host, pid=pid
        )
        if outcome != claims.HELD:
            return claim
        if claim.number != waited_for:
            holder = claim.content
            store.record_trunk(
                trunk_id,
                "held",
                fork,
                attempt=claim.number,
                host=host,
                pid=pid,
                message=f"segment attempt {claim.number} runs on host {holder.get('host')}, "
                f"pid {holder.get('pid')}: waiting for its checkpoint at step {fork}",
            )
            waited_for = claim.number
        time.sleep(min(lease_s / 4, 5.0))


@contextmanager
def heartbeat_lease(
    store: Store, cell_id: str, attempt: int, host: str, pid: int, every_s: float
) -> Iterator[None]:
    """Hold the lease of a running attempt of a cell, so a driver can tell a live attempt from
    a dead one."""
    with beating(lambda: store.heartbeat(cell_id, attempt, host, pid), every_s, cell_id):
        yield


@contextmanager
def segment_lease(store: Store, claim: claims.SegmentClaim, every_s: float) -> Iterator[None]:
    """Hold the lease of a claimed trunk segment while it trains, then mark its claim ended
    (done, or failed when the block raised), so a task waiting for it need not wait the lease."""
    ended = "failed"
    try:
        with beating(lambda: claims.renew_segment(store, claim), every_s, claim.trunk_id):
            yield
        ended = "done"
    finally:
        claims.renew_segment(store, claim, ended=ended)


@contextmanager
def beating(beat: Callable[[], None], every_s: float, what: str) -> Iterator[None]:
    """Call `beat` (renew a lease) now and every `every_s` seconds on a daemon thread until the
    block ends; the thread is joined, so no beat lands after the block."""
    beat()
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every_s):
            try:
                beat()
            except OSError as error:  # a missed beat is survivable; the lease is generous
                print(f"heartbeat of {what} failed: {error}", file=sys.stderr)

    thread = threading.Thread(target=renew, daemon=True, name=f"lease-{what}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def placement() -> dict[str, str]:
    """The Ray node this task runs on (`node_id`, `node_ip`), for the `running` and `done` events
    (so `status --json` shows where a cell ran, and finished); empty outside Ray."""
    import ray

    if not ray.is_initialized():
        return {}
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
    }


def ddp_cell_function(cell_fn: CellFunction, resources: Resources) -> CellFunction:
    """Run `cell_fn` in `cell.world_size` Ray Train workers, each in a torch process group."""

    def run_ddp(cell: CellConfig, store_uri: str, attempt: int, **options: Any) -> dict:
        import ray.train
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        def train_loop() -> None:
            result = cell_fn(cell, store_uri, attempt, **options) or {}
            ray.train.report({k: v for k, v in result.items() if isinstance(v, (int, float))})

        per_worker = {"CPU": resources.cpus} | ({"GPU": resources.gpus} if resources.gpus else {})
        trainer = TorchTrainer(
            train_loop,
            scaling_config=ScalingConfig(
                num_workers=cell.world_size,
                use_gpu=resources.gpus > 0,
                resources_per_worker=per_worker,
            ),
            run_config=RunConfig(name=f"{cell.cell_id}-{utc_stamp()}"),
        )
        return dict(trainer.fit().metrics or {})

    return run_ddp
