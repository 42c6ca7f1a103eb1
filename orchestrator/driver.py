"""The Ray driver: plans a sweep's cells from the store and runs them as Ray tasks, in the driver
process, keeping all of its state in the store.

`plan` decides from the store alone what happens to each cell; `Driver` (and `drive`) submits the
cells to be run and accounts for how they end. What runs inside those tasks is
`orchestrator.tasks`; connecting to the cluster is `orchestrator.cluster`; the bookkeeping of WSD
ladders' trunk segments is `orchestrator.ladders`.

Failures: Ray retries a task whose worker process died (SIGKILL, lost node) up to the spec's
`retries` (`max_retries`); the driver resubmits a cell whose function raised while its failures in
the store (since it was last done or rerun) number at most `retries`, so a restarted driver does
not grant a fresh budget, and never resubmits a configuration error (`workers.errors`). Since the
driver keeps nothing the store lacks, a killed driver restarted on the same spec skips done cells,
reruns dead ones (a `running` cell whose lease expired) and waits for live ones.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator import claims
from orchestrator.cluster import auto_in_flight, unplaceable
from orchestrator.ladders import Trunks
from orchestrator.progress import Progress
from orchestrator.spec import Resources
from orchestrator.store import CellStatus, Store, utc_stamp
from orchestrator.tasks import (
    HEARTBEAT_S,
    LEASE_S,
    CellFunction,
    ddp_cell_function,
    default_cell_function,
    execute_cell,
    execute_trunk,
)
from workers.config import CellConfig
from workers.errors import is_retryable
from workers.ladder import Rung, rungs

CANCEL_POLL_S = 1.0  # seconds between checks for a cancel request
PLACEABLE_POLL_S = 30.0  # seconds between checks that some node fits a cell, while cells run


@dataclass(frozen=True)
class Planned:
    """A cell with its state in the store and what the driver would do with it.

    Actions: `skip` (done), `run` (never ran, cancelled, its worker died, or it failed with retries
    left), `rerun` (failed or forced, when asked), `wait` (running under a live lease), `hold`
    (failed for good: out of retries, a configuration error, or Ray gave up; needs `rerun`).
    """

    cell: CellConfig
    status: CellStatus
    action: str


def plan(
    cells: Iterable[CellConfig],
    store: Store,
    *,
    rerun_failed: bool = False,
    force: Iterable[str] = (),
    lease_s: float = LEASE_S,
    retries: int | None = None,
) -> list[Planned]:
    """Decide, from the store alone, what happens to each cell (one status read per cell). With
    `retries`, a failed cell whose driver stopped before retrying it runs if its budget allows."""
    forced = set(force)
    planned = []
    for cell in cells:
        status = store.status(cell.cell_id)
        if cell.cell_id in forced:
            action = "rerun"
        elif status.state == "done":
            action = "skip"
        elif status.is_stale(lease_s) and store.has_result(cell.cell_id):
            action = "skip"  # it finished, then its task died before recording `done`
        elif status.state == "failed":
            if rerun_failed:
                action = "rerun"
            elif status.event.get("error_class") == "WorkerDied":
                action = "run"  # the heir that recorded the death stopped before it started
            elif retries is not None and claims.retry_budget_left(store, cell.cell_id, retries):
                action = "run"
            else:
                action = "hold"
        elif status.state == "running" and not status.is_stale(lease_s):
            action = "wait"
        else:
            action = "run"
        planned.append(Planned(cell, status, action))
    return planned


@dataclass
class _InFlight:
    cell: CellConfig
    force: bool = False  # a forced rerun: train it even though it is done
    rerun: bool = False  # a requested rerun: its next `pending` event resets the retry budget
    token: str = ""  # the current submission's (`execute_cell`)


class Driver:
    """Runs planned cells on the connected Ray cluster, keeping every fact in the store.

    `run()` loops: honour a cancel request, adopt or requeue cells another task held
    (`poll_waiting`), `submit` queued cells up to `max_in_flight`, `finish` completed ones. Each
    completion costs O(1) store writes and no listing, so overhead is flat in the cell count.
    With a `claim` (the sweep's, `orchestrator.claims.hold_sweep`) it stops if another driver took
    the sweep over. When the cell function takes a `ladder` (as `workers.run_cell` does), WSD cells
    that differ only in their budget run as one trunk and a branch per budget
    (`orchestrator.ladders`); otherwise every cell trains on its own.
    """

    def __init__(
        self,
        sweep: str,
        store: Store,
        *,
        resources: Resources,
        retries: int,
        max_in_flight: int = 0,
        cell_fn: CellFunction | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        lease_s: float = LEASE_S,
        progress: Progress | None = None,
        claim: claims.SweepClaim | None = None,
    ):
        import ray
        import ray.cloudpickle

        self.sweep, self.store, self.resources, self.retries = sweep, store, resources, retries
        self.max_in_flight, self.heartbeat_s, self.lease_s = max_in_flight, heartbeat_s, lease_s
        self.cell_fn = cell_fn or default_cell_function()
        module = getattr(self.cell_fn, "__module__", "") or ""
        if (
            module.split(".")[0] not in ("workers", "orchestrator", "__main__")
            and module in sys.modules
        ):  # workers need not be able to import it
            ray.cloudpickle.register_pickle_by_value(sys.modules[module])
        self.ddp_fn = ddp_cell_function(self.cell_fn, resources)
        # Driver memory flat in the cell count: no task events (buffered for the dashboard's task
        # table, ~12 MiB here) and one task name for all cells (Ray keeps ~5 KiB per distinct
        # name for good: 40 MiB at 8,000 cells). The store is this driver's record.
        self.task = ray.remote(enable_task_events=False, name="compscale-cell")(execute_cell)
        trunk_task = ray.remote(enable_task_events=False, name="compscale-trunk")
        self.trunk_task = trunk_task(execute_trunk)
        self.ladders = "ladder" in inspect.signature(self.cell_fn).parameters
        self.trunks = Trunks(store, {}, self._start_segment)
        self.progress: Progress | None = progress
        self.claim = claim
        self.queue: deque[_InFlight] = deque()
        self.waiting: dict[str, _InFlight] = {}
        self.in_flight: dict[Any, _InFlight] = {}
        self.counts = {"done": 0, "failed": 0, "cancelled": 0}
        self.unplaceable: str | None = None  # the last warning that no node fits a cell

    def run(self, planned: list[Planned]) -> dict[str, int]:
        """Run the planned cells; returns the final count per state. Stops early, recording
        `cancelled`, when `compscale cancel` asks; raises `SweepHeld` if its claim was lost."""
        import ray

        self.progress = self.progress or Progress(self.sweep, len(planned), quiet=True)
        if self.ladders:
            self.trunks.rungs = rungs([item.cell for item in planned])
        if self.max_in_flight <= 0:
            self.max_in_flight = auto_in_flight(
                ray.cluster_resources(), self.resources, (item.cell for item in planned)
            )
        for item in planned:
            if item.action in ("run", "rerun"):  # a dead attempt's death is recorded by its heir
                rerun = item.action == "rerun"
                force = rerun and item.status.state == "done"
                self.queue.append(_InFlight(item.cell, force=force, rerun=rerun))
            elif item.action == "wait":
                self.waiting[item.cell.cell_id] = _InFlight(item.cell)
            elif item.action == "skip" and item.status.state == "running":
                self.store.record(  # its result landed, then its task died before `done`
                    item.cell.cell_id,
                    "done",
                    item.status.attempt,
                    message=f"attempt {item.status.attempt} wrote its result, then stopped",
                )
        for state, action in (("skipped", "skip"), ("held", "hold")):
            self.progress.set(state, sum(p.action == action for p in planned))
        self.progress.set("pending", len(self.queue))
        self.progress.set("waiting", len(self.waiting))

        started = utc_stamp()
        next_cancel_check = next_wait_check = next_placeable_check = 0.0
        try:
            while self.queue or self.in_flight or self.waiting:
                if self.claim is not None and self.claim.lost.is_set():
                    raise claims.SweepHeld(
                        f"sweep {self.sweep}: another driver took it over while this one was "
                        "silent longer than the lease; this driver stops"
                    )
                now = time.monotonic()
                if now >= next_cancel_check:
                    next_cancel_check = now + CANCEL_POLL_S
                    if self.store.cancel_requested_since(self.sweep, started):
                        self.cancel()
                        break
                if self.waiting and now >= next_wait_check:
                    next_wait_check = now + min(self.lease_s / 4, 5.0)
                    self.poll_waiting()
                while self.queue and len(self.in_flight) < self.max_in_flight:
                    self.submit(self.queue.popleft())
                if self.in_flight and now >= next_placeable_check:
                    next_placeable_check = now + PLACEABLE_POLL_S
                    self.check_placeable()
                if not self.in_flight:
                    time.sleep(0.2)
                    continue
                refs = list(self.in_flight)
                ready, _ = ray.wait(refs, num_returns=1, timeout=CANCEL_POLL_S)
                if ready:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    self.finish(ref)
        finally:
            self.progress.close()
        return self.counts

    def check_placeable(self) -> None:
        """Warn when no node can run a cell (and again once one can): one `ray.nodes()` call."""
        import ray

        problem = unplaceable(ray.nodes(), self.resources)
        if problem != self.unplaceable:
            self.progress.warn(problem or "a node that fits a cell is in the cluster now")
            self.unplaceable = problem

    def submit(self, item: _InFlight) -> None:
        """Start one cell's Ray task (`pending` is recorded first, attempt 0: not started), after
        its trunk's segment when it is a ladder's branch whose fork is not trained yet."""
        cell = item.cell
        rung, after = self.trunks.rung(cell), self.trunks.before(cell)
        details = {"rerun": True} if item.rerun else {}
        if after is not None:  # `compscale status` shows the trunk it waits for
            details |= {"trunk_id": rung.trunk_id, "fork_step": rung.fork}
        self.store.record(
            cell.cell_id, "pending", 0, host=socket.gethostname(), pid=os.getpid(), **details
        )
        item.rerun, item.token = False, uuid.uuid4().hex
        options, function = self._placed(cell)
        ref = self.task.options(**options).remote(
            cell.model_dump_json(),
            self.store.uri,
            function,
            item.token,
            heartbeat_s=self.heartbeat_s,
            lease_s=self.lease_s,
            force=item.force,
            trunk=rung.trunk_id if rung else None,
            after=after,
        )
        self.in_flight[ref] = item
        self.progress.move("pending", "running")

    def _start_segment(self, rung: Rung, fork: int, previous: Any) -> Any:
        """Start the task that trains `rung`'s trunk up to `fork`, after `previous` (a segment),
        under a token of its own (shared by Ray's retries of it, `claims.claim_segment`)."""
        options, function = self._placed(rung.top)
        return self.trunk_task.options(**options).remote(
            rung.top.model_dump_json(),
            self.store.uri,
            function,
            rung.trunk_id,
            rung.forks_to(fork),
            previous,
            token=uuid.uuid4().hex,
            heartbeat_s=self.heartbeat_s,
            lease_s=self.lease_s,
        )

    def _placed(self, cell: CellConfig) -> tuple[dict[str, Any], CellFunction]:
        """The task options and the function that train `cell`: in the task itself, or, for world
        size > 1, in Ray Train workers that hold the resources (the task holds none)."""
        retries = {"max_retries": self.retries, "retry_exceptions": False}
        if cell.world_size > 1:
            return {"num_cpus": 0, "num_gpus": 0} | retries, self.ddp_fn
        resources = {"num_cpus": self.resources.cpus, "num_gpus": self.resources.gpus}
        return resources | retries, self.cell_fn

    def finish(self, ref: Any) -> None:
        """Account for a completed task: done (here or elsewhere), held elsewhere, retried after
        an application error, or failed."""
        import ray

        item = self.in_flight.pop(ref)
        cell_id = item.cell.cell_id
        try:
            summary = ray.get(ref)
        except ray.exceptions.RayError as error:
            if (rung := self.trunks.rung(item.cell)) is not None:
                self.trunks.forget_failed(rung.trunk_id)  # its trunk's segment may have failed
            self._failure(item, error)
        else:
            if summary["outcome"] == claims.HELD:
                self.waiting[cell_id] = item
                self.progress.move("running", "waiting", f"held elsewhere {cell_id}")
                return
            self.counts["done"] += 1
            self.progress.add_tokens(summary["tokens"])
            how = f"{summary['wall_time_s']:.1f} s" if summary["outcome"] == claims.CLAIMED else ""
            self.progress.move("running", "done", f"done {cell_id} ({how or 'elsewhere'})")

    def _failure(self, item: _InFlight, error: Any) -> None:
        """An application error (the cell function, or its trunk's, raised), or a worker that
        died more often than Ray retries it."""
        import ray

        cell_id = item.cell.cell_id
        if isinstance(error, ray.exceptions.RayTaskError):
            self._application_error(item, error)
        else:
            latest = claims.latest_attempt(self.store, cell_id)
            self.store.record(
                cell_id,
                "failed",
                latest.number if latest else 0,
                error_class=type(error).__name__,
                message=str(error).splitlines()[0] if str(error) else "",
                retryable=False,
            )
            self._failed(cell_id, type(error).__name__)

    def _application_error(self, item: _InFlight, error: Any) -> None:
        """Retry the cell while the store says its budget allows (a restarted driver counts the
        failures of the drivers before it), unless the error is a configuration error."""
        cell_id = item.cell.cell_id
        kind = type(error.cause).__name__ if error.cause else "error"
        failures, latest = claims.application_failures(self.store, cell_id)
        if latest is None or latest.get("token") != item.token:  # it failed before the cell ran
            latest = {
                "error_class": kind,
                "message": str(error.cause or error).splitlines()[0],
                "traceback": str(error),
                "retryable": error.cause is None or is_retryable(error.cause),
                "token": item.token,
            }
            self.store.record(cell_id, "failed", 0, **latest)
            failures += 1
        if latest.get("retryable") and failures <= self.retries:
            self.queue.append(item)
            self.progress.move("running", "pending", f"retry {cell_id} after {kind}")
            return
        self._failed(cell_id, kind)

    def _failed(self, cell_id: str, kind: str) -> None:
        self.counts["failed"] += 1
        message = self.store.status(cell_id).event.get("message") or ""
        self.progress.fail(cell_id, kind, str(message))

    def poll_waiting(self) -> None:
        """Cells held by another task: count them done when they finish, or queue them again
        when their lease expires (the next task records the silent attempt's death)."""
        for cell_id, item in list(self.waiting.items()):
            latest = claims.latest_attempt(self.store, cell_id)
            if latest is not None and latest.ended == "done":
                del self.waiting[cell_id]
                self.counts["done"] += 1
                self.progress.move("waiting", "done", f"done elsewhere {cell_id}")
            elif latest is None or not latest.alive(self.lease_s):
                del self.waiting[cell_id]
                self.queue.append(item)
                self.progress.move("waiting", "pending", f"lease expired {cell_id}")

    def cancel(self) -> None:
        """Stop every running task and drop the queue, recording each cell `cancelled`."""
        import ray

        for ref, item in self.in_flight.items():
            ray.cancel(ref, force=True)
            self.store.record(item.cell.cell_id, "cancelled", 0, message="cancelled while running")
            self.progress.move("running", "cancelled")
        for item in self.queue:
            self.store.record(
                item.cell.cell_id, "cancelled", 0, message="cancelled before it started"
            )
            self.progress.move("pending", "cancelled")
        self.counts["cancelled"] += len(self.in_flight) + len(self.queue)
        self.trunks.cancel()
        self.in_flight.clear()
        self.queue.clear()
        self.waiting.clear()


def drive(sweep: str, planned: list[Planned], store: Store, **options: Any) -> dict[str, int]:
    """Run `planned` with a `Driver` (options: its keyword arguments); the count per state."""
    return Driver(sweep, store, **options).run(planned)
