"""WSD ladders: every token budget of one model, format and seed from one constant-LR trunk.

Under the WSD schedule the learning rate before a cell's cooldown does not depend on its budget
(the warm-up and sparsity ramp are fractions of the shared `horizon_steps`), and batches, masks
and per-step seeds are pure functions of (seed, step). So the budgets' runs agree step for step
up to each one's cooldown start: the trunk is trained once, to the last fork step, with a kept
checkpoint at every fork, and each budget's cell is a branch that runs only its cooldown. Each
budget stays its own cell with its own id, loss rows (the trunk's, then its own) and result.
This module plans ladders and imports no torch; `workers.train.run_ladder` trains one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from workers.config import CellConfig
from workers.schedule import cooldown_start, total_steps


@dataclass(frozen=True)
class Ladder:
    """A run's part in a ladder. With `forks`, the run is the trunk: it stops after the last fork
    step and keeps a checkpoint at each (under `trunks/<trunk_id>`), writing no result. Without,
    it is a branch: a cell that, lacking a checkpoint of its own, starts from the trunk's
    checkpoint at its cooldown start, with the trunk's loss rows."""

    trunk_id: str
    forks: tuple[int, ...] = ()


@dataclass(frozen=True)
class Rung:
    """A budget's place on its ladder: the trunk, the ladder's largest budget (whose config the
    trunk trains with), every fork step of the ladder (ascending) and this budget's fork."""

    trunk_id: str
    top: CellConfig
    forks: tuple[int, ...]
    fork: int

    def forks_to(self, fork: int) -> tuple[int, ...]:
        """The forks a trunk segment that stops at `fork` keeps checkpoints at."""
        return tuple(step for step in self.forks if step <= fork)


def trunk_key(cell: CellConfig) -> str:
    """The cell's identity without its budget: cells with one key share a trunk."""
    identity = json.loads(cell.canonical_json())
    identity.pop("tokens")
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


def trunk_id(cell: CellConfig) -> str:
    """`trunk-<model>-<format>-s<seed>-<hash12>` of the trunk key."""
    digest = hashlib.sha256(trunk_key(cell).encode()).hexdigest()[:12]
    return f"trunk-{cell.cell_id.rsplit('-', 1)[0]}-{digest}"


def fork_step(cell: CellConfig) -> int:
    """The step at which the cell's branch leaves the trunk: its cooldown start."""
    return cooldown_start(total_steps(cell), cell.train)


def ladders(cells: Sequence[CellConfig]) -> list[list[CellConfig]]:
    """WSD cells grouped by trunk (budgets ascending); every other cell alone, in order."""
    alone = [[cell] for cell in cells if cell.train.schedule != "wsd"]
    wsd = sorted((cell for cell in cells if cell.train.schedule == "wsd"), key=trunk_key)
    grouped = [sorted(group, key=lambda c: c.tokens) for _, group in groupby(wsd, trunk_key)]
    return alone + grouped


def rungs(cells: Sequence[CellConfig]) -> dict[str, Rung]:
    """Each cell of a ladder of two or more budgets, by id, with its rung (a lone WSD cell trains
    on its own: a trunk would save nothing)."""
    placed = {}
    for ladder in ladders(cells):
        if len(ladder) < 2 or ladder[0].train.schedule != "wsd":
            continue
        forks = tuple(sorted({fork_step(cell) for cell in ladder}))
        for cell in ladder:
            placed[cell.cell_id] = Rung(trunk_id(cell), ladder[-1], forks, fork_step(cell))
    return placed


def ladder_tokens(ladder: Sequence[CellConfig]) -> int:
    """Tokens a ladder trains: the trunk once, to its last fork, plus each budget's cooldown."""
    trunk = max(fork_step(cell) for cell in ladder)
    cooldowns = sum(total_steps(cell) - fork_step(cell) for cell in ladder)
    return (trunk + cooldowns) * ladder[0].train.batch_size * ladder[0].model.seq_len


def ladder_savings(cells: Sequence[CellConfig]) -> tuple[int, int]:
    """(tokens trained cell by cell, tokens trained as ladders) for the WSD cells among `cells`."""
    groups = [group for group in ladders(cells) if group[0].train.schedule == "wsd"]
    alone = sum(total_steps(c) * c.train.batch_size * c.model.seq_len for g in groups for c in g)
    return alone, sum(ladder_tokens(group) for group in groups)


def with_horizon(cells: Sequence[CellConfig]) -> list[CellConfig]:
    """WSD cells with `horizon_steps` 0 get the steps of their ladder's smallest budget, so the
    warm-up and sparsity ramp are the same for every budget (what makes the trunk shared)."""
    horizons = {
        key: min(total_steps(c) for c in group)
        for key, group in groupby(
            sorted((c for c in cells if _needs_horizon(c)), key=trunk_key), trunk_key
        )
    }
    return [
        cell.model_copy(
            update={"train": cell.train.model_copy(update={"horizon_steps": horizons[key]})}
        )
        if _needs_horizon(cell) and (key := trunk_key(cell)) in horizons
        else cell
        for cell in cells
    ]


def _needs_horizon(cell: CellConfig) -> bool:
    return cell.train.schedule == "wsd" and cell.train.horizon_steps == 0
