"""Expansion of a sweep spec into cells: fully resolved `CellConfig`s with content-hashed ids."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from pydantic import BaseModel

from orchestrator.spec import SpecError, SweepSpec
from workers.config import CellConfig, TrackingConfig
from workers.data import DataShape, describe, validation_tokens_needed
from workers.ladder import with_horizon


@dataclass(frozen=True)
class _Origin:
    """The YAML paths a cell came from, so an error names the field to change."""

    entry: str  # the grid combination or the extra cell, for duplicates
    tokens: str  # the token budget
    model: str  # the model entry
    train: tuple[tuple[str, BaseModel], ...]  # training overrides, least specific first

    def train_field(self, name: str) -> str:
        """The path of the override that set a training field, else the sweep's `train`."""
        for path, overrides in reversed(self.train):
            if getattr(overrides, name) is not None:
                return f"{path}.{name}"
        return f"train.{name}"


def expand(spec: SweepSpec, source: str = "<spec>") -> list[CellConfig]:
    """The grid (models × token budgets × formats × seeds) then the extra cells, in spec order.

    A relative budget becomes `round(tokens_per_param * N)` tokens for each model's N. Two entries
    that resolve to the same cell are an error naming the second one's YAML path, and so is a cell
    that could not run (`_check_runnable`): better in `validate` than hours later on a worker.
    WSD cells get their ladder's shared horizon (`workers.ladder.with_horizon`), and every cell
    the spec's trackers, with the sweep's name for their group (neither changes a cell id).
    """
    cells: list[CellConfig] = []
    origin_of: dict[str, str] = {}
    shape = _data_shape(spec, source)
    tracking = (
        TrackingConfig(trackers=tuple(spec.trackers), sweep=spec.name)
        if spec.trackers
        else TrackingConfig()
    )

    def add(cell: CellConfig, origin: _Origin) -> None:
        _check_runnable(cell, origin, shape, source)
        if cell.cell_id in origin_of:
            raise SpecError(
                f"{source}: {origin.entry}: duplicates cell {cell.cell_id} "
                f"of {origin_of[cell.cell_id]}"
            )
        origin_of[cell.cell_id] = origin.entry
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
                tracking=tracking,
            )
            combination = f"models[{m}] × {where} × formats[{f}] × seeds[{s}]"
            layers = ((f"models[{m}].train", entry.train),)
            add(cell, _Origin(combination, where, f"models[{m}]", layers))
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
            tracking=tracking,
        )
        path = f"extra_cells[{e}]"
        budget = f"{path}.tokens" if extra.tokens else f"{path}.tokens_per_param"
        layers = ((f"{path}.model.train", extra.model.train), (f"{path}.train", extra.train))
        add(cell, _Origin(path, budget, f"{path}.model", layers))
    return with_horizon(cells)


def _data_shape(spec: SweepSpec, source: str) -> DataShape | None:
    """The data's vocabulary and validation split, from metadata (None: remote, not checked)."""
    try:
        return describe(spec.data)
    except (OSError, ValueError) as error:
        raise SpecError(f"{source}: {error}") from None


def _check_runnable(
    cell: CellConfig, origin: _Origin, shape: DataShape | None, source: str
) -> None:
    """One global batch of tokens at least, and data that holds the validation tokens asked for
    in a vocabulary the model covers: what the worker would otherwise find out at its start."""
    batch, seq_len = cell.train.batch_size, cell.model.seq_len
    if cell.tokens < batch * seq_len:
        raise SpecError(
            f"{source}: {origin.tokens}: {cell.tokens} tokens are less than one global batch of "
            f"{origin.model} (batch_size {batch} x seq_len {seq_len} = {batch * seq_len} tokens)"
        )
    if shape is None:
        return
    if cell.model.vocab_size < shape.vocab_size:
        raise SpecError(
            f"{source}: {origin.model}.vocab_size: {cell.model.vocab_size} is below the data's "
            f"vocabulary of {shape.vocab_size} tokens"
        )
    needed = validation_tokens_needed(cell.train.eval_tokens, seq_len)
    if needed > shape.val_tokens:
        raise SpecError(
            f"{source}: {origin.train_field('eval_tokens')}: {cell.train.eval_tokens} needs "
            f"{needed} validation tokens; the validation split of data.source "
            f"{cell.data.source!r} has {shape.val_tokens}"
        )
