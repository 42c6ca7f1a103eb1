"""The stretch of steps one run trains, and where it keeps its checkpoints and loss rows.

A run is a whole cell, a WSD ladder's trunk segment or a ladder's branch (`workers.ladder.Ladder`).
All three train the same loop (`workers.train`); they differ only here: where they start (the
cell's own newest checkpoint; the trunk's newest up to its last fork; for a branch without a
checkpoint of its own, the trunk's at its fork, with the trunk's loss rows before it), where they
stop (a trunk at its last fork), where they write (`cells/<cell_id>/` or `trunks/<trunk_id>/`) and
when a checkpoint is due (a trunk also keeps one at every fork).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import torch

from workers import checkpoint, storage
from workers.config import CellConfig
from workers.ladder import Ladder, fork_step
from workers.layout import Layout, resolve
from workers.schedule import total_steps
from workers.schema import LOSS_SCHEMA
from workers.sink import LossSink, read_losses
from workers.trackers import open_trackers


@dataclass(frozen=True)
class Start:
    """The checkpoint a run resumes from (None: step 0), and whether it is the trunk's fork that
    a branch starts from on its first attempt (then the trunk's rows are its first steps)."""

    state: dict[str, Any] | None
    forked: bool = False


@dataclass(frozen=True)
class Segment:
    """`cell` trained into the store at `store_uri`: alone, or as its `ladder` part (a trunk
    segment when the ladder has forks, else a branch)."""

    cell: CellConfig
    store_uri: str
    ladder: Ladder | None = None

    @property
    def is_trunk(self) -> bool:
        return self.ladder is not None and bool(self.ladder.forks)

    @property
    def is_branch(self) -> bool:
        return self.ladder is not None and not self.ladder.forks

    @property
    def stop(self) -> int:
        """The steps completed when the run ends: a trunk's last fork, else the cell's all."""
        return max(self.ladder.forks) if self.is_trunk else total_steps(self.cell)

    def start(self, device: torch.device) -> Start:
        """The run's own newest checkpoint (a trunk's, up to its last fork); failing that, a
        branch's fork checkpoint, which must exist."""
        if self.is_trunk:
            trunk = self.ladder.trunk_id
            steps = [s for s in checkpoint.trunk_steps(self.store_uri, trunk) if s <= self.stop]
            return Start(
                checkpoint.load_trunk(self.store_uri, trunk, steps[-1], device) if steps else None
            )
        state = checkpoint.load_latest(self.store_uri, self.cell.cell_id, device)
        if state is not None or not self.is_branch:
            return Start(state)
        fork = fork_step(self.cell)
        state = checkpoint.load_trunk(self.store_uri, self.ladder.trunk_id, fork, device)
        if state is None:
            raise FileNotFoundError(
                f"trunk {self.ladder.trunk_id} has no checkpoint at step {fork}"
            )
        return Start(state, forked=True)

    def open_sink(self, attempt: int | None, start_step: int, forked: bool) -> LossSink:
        """The main rank's sink of this run's loss rows. A cell's config is written first and
        its trackers opened; a trunk segment is always its trunk's next attempt (the driver
        numbers cells' attempts, not trunks'). A forked branch begins with the trunk's rows."""
        location = resolve(self.store_uri)
        layout = Layout(location.root)
        paths = (
            layout.trunk(self.ladder.trunk_id) if self.is_trunk else layout.cell(self.cell.cell_id)
        )
        if not self.is_trunk:
            storage.write_cell_config(location.filesystem, layout, self.cell)
        if attempt is None or self.is_trunk:
            attempt = storage.next_attempt(location.filesystem, paths)
        trackers = (
            None if self.is_trunk else open_trackers(self.cell, self.store_uri, attempt, start_step)
        )
        sink = LossSink(self.store_uri, self.cell.cell_id, attempt, paths=paths, trackers=trackers)
        if forked:
            trunk_rows = read_losses(self.store_uri, "", paths=layout.trunk(self.ladder.trunk_id))
            for row in trunk_rows.filter(pc.less(trunk_rows["step"], start_step)).to_pylist():
                sink.append(**{name: row[name] for name in LOSS_SCHEMA.names[2:]})
        return sink

    def checkpoint_due(self, done: int) -> bool:
        """Whether a checkpoint is kept after `done` steps: every `checkpoint_every` before the
        end, and at each of a trunk's forks."""
        every = self.cell.train.checkpoint_every
        if every and done % every == 0 and done < self.stop:
            return True
        return self.is_trunk and done in self.ladder.forks

    def save(self, done: int, state: dict[str, Any]) -> None:
        if self.is_trunk:
            checkpoint.save_trunk(self.store_uri, self.ladder.trunk_id, done, state)
        else:
            checkpoint.save(self.store_uri, self.cell.cell_id, done, state)
