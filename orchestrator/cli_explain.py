"""`compscale explain`: which cells an edit of a spec changes, and what a cell's id hashes.

A cell's id is a hash of its canonical configuration (`workers.config.CellConfig.canonical_json`),
so an edit that changes a field of the identity makes a new cell, which trains from scratch. Before
submitting an edited spec, `explain OLD.yaml NEW.yaml` says which cells that is and why; `explain
SPEC --cell ID` prints what the id hashes.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.spec import SweepSpec
from workers.config import CellConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `explain` to the `compscale` parser."""
    command = subparsers.add_parser(
        "explain", help="the cells an edit of a spec changes, or what a cell's id hashes"
    )
    command.add_argument("spec", help="sweep YAML (the old version, with NEW)")
    command.add_argument("new", nargs="?", help="the edited sweep YAML to compare with")
    command.add_argument("--cell", metavar="ID", help="print this cell's canonical configuration")
    command.set_defaults(func=explain)


def explain(args: argparse.Namespace) -> int:
    if (args.new is None) == (args.cell is None):
        raise ValueError("give NEW.yaml to compare SPEC with, or --cell ID")
    spec, cells = _placed(args.spec)
    if args.cell:
        print(_canonical(spec, cells, args.cell))
        return 0
    new_spec, new_cells = _placed(args.new)
    if new_spec.name != spec.name:
        raise ValueError(
            f"{args.spec} is sweep {spec.name!r} but {args.new} is sweep {new_spec.name!r}: "
            "explain compares two versions of one sweep"
        )
    print("\n".join(_differences(spec.name, cells, new_cells)))
    return 0


def places(spec: SweepSpec) -> list[str]:
    """Where each cell of `orchestrator.cells.expand(spec)` sits on the spec's axes, in its order:
    the model entry, token budget and extra cell by position (an entry edited in place stays the
    same place), the format and seed by value (inserting one moves no other cell)."""
    budgets = [f"tokens[{i}]" for i in range(len(spec.tokens))]
    budgets += [f"tokens_per_param[{i}]" for i in range(len(spec.tokens_per_param))]
    grid = [
        f"models[{m}] × {budget} × {fmt} × seed {seed}"
        for m in range(len(spec.models))
        for budget in budgets
        for fmt in spec.formats
        for seed in spec.seeds
    ]
    return grid + [f"extra_cells[{e}]" for e in range(len(spec.extra_cells))]


def _placed(path: str) -> tuple[SweepSpec, dict[str, CellConfig]]:
    """The spec at `path` and its cells by place."""
    from orchestrator.cells import expand
    from orchestrator.spec import load_spec

    spec = load_spec(path)
    return spec, dict(zip(places(spec), expand(spec, source=path), strict=True))


def _canonical(spec: SweepSpec, cells: dict[str, CellConfig], cell_id: str) -> str:
    """The cell's id and the canonical configuration its hash is taken of, byte for byte (on one
    line, so that `sha256sum` of it gives the id's digest)."""
    by_id = {cell.cell_id: cell for cell in cells.values()}
    if cell_id not in by_id:
        raise ValueError(
            f"{cell_id} is not a cell of sweep {spec.name} ({len(by_id)} cells; "
            "`compscale plan SPEC` lists them)"
        )
    slug, digest = cell_id.rsplit("-", 1)
    return (
        f"{cell_id}: {slug} and {digest}, the first 12 hex digits of the SHA-256 of its "
        f"canonical JSON:\n{by_id[cell_id].canonical_json()}"
    )


def _differences(sweep: str, old: dict[str, CellConfig], new: dict[str, CellConfig]) -> list[str]:
    """Counts, then one line per changed, added and removed cell; each changed cell's fields."""
    changed = [p for p in old if p in new and old[p].cell_id != new[p].cell_id]
    added = [p for p in new if p not in old]
    removed = [p for p in old if p not in new]
    same = len(old) - len(changed) - len(removed)
    lines = [
        f"sweep {sweep}: {len(changed)} cells changed, {len(added)} added, "
        f"{len(removed)} removed, {same} unchanged"
    ]
    for place in changed:
        lines.append(f"changed {place}: {old[place].cell_id} -> {new[place].cell_id}")
        before, after = _fields(old[place]), _fields(new[place])
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                lines.append(f"  {key} {_shown(before, key)} -> {_shown(after, key)}")
    lines += [f"added {place}: {new[place].cell_id}" for place in added]
    lines += [f"removed {place}: {old[place].cell_id}" for place in removed]
    return lines


def _fields(cell: CellConfig) -> dict[str, Any]:
    """The cell's identity as dotted keys (`train.lr`) and their values."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    walk("", json.loads(cell.canonical_json()))
    return flat


def _shown(fields: dict[str, Any], key: str) -> str:
    return json.dumps(fields[key]) if key in fields else "(absent)"
