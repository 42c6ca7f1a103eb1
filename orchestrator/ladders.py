"""WSD ladders on Ray, the driver's side: which trunk segments one driver started, and which one
each budget's branch waits for (`Trunks`, in the driver process; each segment's task body is
`orchestrator.tasks.execute_trunk`).

A ladder (`workers.ladder`) is a sweep's WSD cells that differ only in their token budget. Its
trunk is trained in segments, one Ray task per fork step, each taking the one before as an
argument (Ray starts a task only once the tasks it takes have finished): the segment that stops at
fork k resumes from the trunk's newest checkpoint and keeps one at every fork up to k. A branch
(the cell of one budget) is submitted with its own fork's segment as an argument, so it starts as
soon as that checkpoint exists while the trunk trains on to the next fork. A fork whose checkpoint
is already in the store needs no segment: a rerun of one branch, or a driver restarted after its
trunk finished, does not retrain the trunk. A segment whose process dies is retried by Ray and
resumes from the trunk's newest checkpoint (kept every `checkpoint_every` steps). `Trunks` knows
only this driver's segments: a segment that another driver (a sweep sharing the ladder) starts at
the same time is told apart in the task, by the segment's claim (`orchestrator.claims`), so one
of them trains it and the other waits for its checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.store import Store
from workers.config import CellConfig
from workers.ladder import Rung

# (the ladder's largest budget, the segment's last fork, the previous segment or None) -> ref
StartSegment = Callable[[Rung, int, Any], Any]


class Trunks:
    """The trunk segments one driver started, by (trunk id, fork): what each branch waits for."""

    def __init__(self, store: Store, rungs: dict[str, Rung], start: StartSegment):
        self.store, self.rungs, self.start = store, rungs, start
        self.segments: dict[tuple[str, int], Any] = {}

    def rung(self, cell: CellConfig) -> Rung | None:
        return self.rungs.get(cell.cell_id)

    def before(self, cell: CellConfig) -> Any:
        """The segment the cell's branch must wait for, starting it (and the segments before it
        whose checkpoints are missing) if none is running; None when the cell is no branch or its
        fork's checkpoint exists."""
        rung = self.rungs.get(cell.cell_id)
        if rung is None or self._kept(rung, rung.fork):
            return None
        previous = None
        for fork in rung.forks_to(rung.fork):
            key = (rung.trunk_id, fork)
            if key not in self.segments:
                if self._kept(rung, fork):
                    continue
                self.segments[key] = self.start(rung, fork, previous)
            previous = self.segments[key]
        return previous

    def forget_failed(self, trunk_id: str) -> None:
        """Drop the trunk's segments from the first that failed on, so the next branch submitted
        starts them again (a branch whose segment failed fails with it)."""
        keys = sorted(key for key in self.segments if key[0] == trunk_id)
        for index, key in enumerate(keys):
            if _failed(self.segments[key]):
                for later in keys[index:]:
                    del self.segments[later]
                return

    def cancel(self) -> None:
        """Stop every segment (a finished one is left as it is)."""
        import ray

        for ref in self.segments.values():
            ray.cancel(ref, force=True)
        self.segments.clear()

    def _kept(self, rung: Rung, fork: int) -> bool:
        return self.store.exists(self.store.layout.trunk(rung.trunk_id).checkpoint(fork))


def _failed(ref: Any) -> bool:
    """Whether the task behind `ref` has ended in an error (without waiting for it)."""
    import ray

    if not ray.wait([ref], timeout=0)[0]:
        return False
    try:
        ray.get(ref)
    except ray.exceptions.RayError:
        return True
    return False
