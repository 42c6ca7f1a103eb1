"""Expansion of a sweep spec into cells: fully resolved `CellConfig`s with content-hashed ids."""

from __future__ import annotations

import itertools

from orchestrator.spec import SpecError, SweepSpec
from workers.config import CellConfig


def expand(spec: SweepSpec, source: str = "<spec>") -> list[CellConfig]:
    """The grid (models × token budgets × formats × seeds) then the extra cells, in spec order.

    A relative budget becomes `round(tokens_per_param * N)` tokens for each model's N. Two entries
    that resolve to the same cell are an error naming the second one's YAML path.
    """
    cells: list[CellConfig] = []
    origin_of: dict[str, str] = {}

    def add(cell: CellConfig, origin: str) -> None:
        if cell.cell_id in origin_of:
            raise SpecError(
                f"{source}: {origin}: duplicates cell {cell.cell_id} of {origin_of[cell.cell_id]}"
            )
        origin_of[cell.cell_id] = origin
        cells.append(cell)

    for m, entry in enumerate(spec.models):
        model = entry.resolve()
        train = spec.train_for(entry.train)
        budgets = [(f"tokens[{i}]", tokens) for i, tokens in enumerate(spec.tokens)] + [
            (f"tokens_per_param[{i}]", round(ratio * model.non_embedding_params))
            for i, ratio in enumerate(spec.tokens_per_param)
        ]
        for (where, tokens), (f, fmt), (s, seed) in itertools.product(
            budgets, enumerate(spec.formats), enumerate(spec.seeds)
        ):
            cell = CellConfig(
                model=model,
                format=fmt,
                tokens=max(tokens, 1),
                seed=seed,
                train=train,
                data=spec.data,
                world_size=spec.world_size,
            )
            add(cell, f"models[{m}] × {where} × formats[{f}] × seeds[{s}]")
    for e, extra in enumerate(spec.extra_cells):
        model = extra.model.resolve()
        tokens = extra.tokens or round(extra.tokens_per_param * model.non_embedding_params)
        cell = CellConfig(
            model=model,
            format=extra.format,
            tokens=max(tokens, 1),
            seed=extra.seed,
            train=spec.train_for(extra.model.train, extra.train),
            data=spec.data,
            world_size=spec.world_size,
        )
        add(cell, f"extra_cells[{e}]")
    return cells
