"""`compscale advise SOURCE` (which format, at which N and D, for a budget) and `compscale next
SWEEP` (which cells to train next). Both fit the unified law with its bootstrap to the cells, as
`reduce` does: a reduction keeps intervals but not the resamples both commands need."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from compscale.advise import Ensemble
    from compscale.design import Candidate
    from orchestrator.spec import SweepSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `advise` and `next` to the `compscale` parser."""
    from compscale.cli_fit import bootstrap_options
    from compscale.table import column_options
    from orchestrator.cli_sweep import store_parent

    fitting = argparse.ArgumentParser(add_help=False, parents=[store_parent(), bootstrap_options()])

    command = subparsers.add_parser(
        "advise",
        parents=[fitting, column_options()],
        help="best N, D and predicted loss per format within a memory / compute / data budget",
        description="Fits the unified law (with bootstrap) to a sweep's results or a table, then "
        "for every format finds the N and D of least predicted loss within the budget and ranks "
        "the formats, with 95% intervals from the bootstrap.",
    )
    command.add_argument("source", metavar="SOURCE", help="a sweep in the store, or a CSV/Parquet")
    command.add_argument("--memory-bytes", type=float, help="bytes of weights (N bits / 8)")
    command.add_argument("--flops", type=float, help="training compute 6 N D")
    command.add_argument("--tokens", type=float, help="training tokens D (fixed data)")
    command.add_argument(
        "--formats", nargs="+", default=[], metavar="FORMAT",
        help="formats never trained, predicted by the capacity law from their parts",
    )  # fmt: skip
    command.add_argument("--json", action="store_true", help="print the rows as JSON")
    command.set_defaults(func=advise_command)

    command = subparsers.add_parser(
        "next",
        parents=[fitting],
        help="propose the cells that most shrink an interval per FLOP, as a sweep YAML",
        description="Greedy linearised design on the bootstrap ensemble: each candidate cell "
        "is valued by how much observing it would shrink the target's variance, per 6ND FLOPs.",
    )
    command.add_argument("sweep", help="sweep name")
    command.add_argument("--budget-flops", type=float, required=True, help="FLOPs (6ND) to spend")
    command.add_argument(
        "--target", choices=("rho", "composition", "law"), default="rho",
        help="rho: every format's rho; composition: rho(A+B)/(rho(A)rho(B)); law: alpha, beta",
    )  # fmt: skip
    command.add_argument(
        "--candidates", metavar="GRID.yaml",
        help="a sweep YAML whose cells are the candidates (default: the sweep's own grid)",
    )  # fmt: skip
    command.add_argument(
        "--noise", type=float,
        help="log-loss scatter of a new cell (default: the fit's RMSE of log loss)",
    )  # fmt: skip
    command.add_argument(
        "--max-copies", type=int, default=4,
        help="most new seeds of one cell (default 4): spreads the budget over cells",
    )  # fmt: skip
    command.add_argument("--out", help="proposal YAML (default: SWEEP-next.yaml)")
    command.set_defaults(func=next_command)


def _fit(results: pd.DataFrame, args: argparse.Namespace) -> Ensemble:
    from compscale.advise import fit_ensemble
    from compscale.cli_fit import fit_options, fit_progress

    with fit_progress() as progress:
        ensemble, _ = fit_ensemble(results, fit_options(args), progress=progress)
    return ensemble


def _table_results(path: Path, args: argparse.Namespace) -> pd.DataFrame:
    from compscale.table import column, loss_column, read_table

    table = read_table(path)
    columns = {
        "params": (args.params_col, "--params-col"),
        "tokens": (args.tokens_col, "--tokens-col"),
        "format": (args.format_col, "--format-col"),
    }
    named = {name: column(table, path, header, flag) for name, (header, flag) in columns.items()}
    return table.assign(**named, val_loss=loss_column(table, path, args.loss_col))


def advise_command(args: argparse.Namespace) -> int:
    from compscale.advise import Budget, advise, extrapolation_note

    budget = Budget(args.memory_bytes, args.flops, args.tokens)
    path = Path(args.source)
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        results, origin = _table_results(path, args), str(path)
    else:
        from orchestrator.cli_report import _results
        from orchestrator.cli_sweep import open_store

        store = open_store(args)
        results, origin = _results(store, args.source), f"sweep {args.source} ({_shown(store.uri)})"
    ensemble = _fit(results, args)
    table = advise(ensemble, budget, args.formats)
    table["note"] = [extrapolation_note(row, ensemble) for _, row in table.iterrows()]
    if args.json:
        rows = json.loads(table.to_json(orient="records"))  # NaN and infinity become null
        print(json.dumps(rows, indent=2))
        return 0
    limits = ", ".join(
        f"{name} {value:.3g}"
        for name, value in (
            ("memory bytes", budget.memory_bytes),
            ("FLOPs", budget.flops),
            ("tokens", budget.tokens),
        )
        if value is not None
    )
    print(
        f"{origin}: {len(results)} cells, unified law with {args.bootstrap} bootstrap "
        f"resamples; budget: {limits}"
    )
    print(_text(table))
    for text in ensemble.warnings:
        print(f"warning: {text}")
    return 0


def _text(table: pd.DataFrame) -> str:
    """The advisor's rows as fixed-width text."""

    def number(value: float) -> str:
        return "inf" if math.isinf(value) else "" if math.isnan(value) else f"{value:.3g}"

    header = (
        f"{'#':>2} {'format':<14}{'source':<14}{'bits':>6}{'rho':>7}{'N':>10}{'D':>10}"
        f"{'N*rho':>10}{'loss':>8}  {'95% interval':<16}{'of bound':>9}  note"
    )
    lines = [header]
    for rank, row in enumerate(table.itertuples(index=False), 1):
        interval = f"[{number(row.loss_ci_low)}, {number(row.loss_ci_high)}]"
        lines.append(
            f"{rank:>2} {row.format:<14}{row.source:<14}{row.bits_per_param:>6.3g}"
            f"{row.rho:>7.3f}{number(row.params):>10}{number(row.tokens):>10}"
            f"{number(row.effective_params):>10}{row.loss:>8.4f}  {interval:<16}"
            f"{number(row.fraction_of_bound):>9}  {row.note}"
        )
    return "\n".join(lines)


def candidates_of(
    spec: SweepSpec, fitted: set[str]
) -> tuple[list[Candidate], list[dict], list[str]]:
    """Distinct (model, tokens, format) cells of a spec's grid and extra cells whose format the
    fit has a rho for: as design candidates, as `extra_cells` entries without a seed, and the
    formats left out."""
    from compscale.design import Candidate
    from orchestrator.spec import canonical_format

    entries: dict[str, tuple[Candidate, dict]] = {}
    skipped: set[str] = set()

    def add(model, tokens: int, fmt: str) -> None:
        fmt = canonical_format(fmt)
        if fmt not in fitted:
            skipped.add(fmt)
            return
        entry = {"model": model.model_dump(exclude_none=True, exclude_defaults=True)}
        entry |= {"format": fmt, "tokens": max(int(tokens), 1)}
        key = json.dumps(entry, sort_keys=True)
        params = model.resolve().non_embedding_params
        entries.setdefault(key, (Candidate(params, entry["tokens"], fmt), entry))

    for model in spec.models:
        params = model.resolve().non_embedding_params
        budgets = list(spec.tokens) + [round(r * params) for r in spec.tokens_per_param]
        for tokens in budgets:
            for fmt in spec.formats:
                add(model, tokens, fmt)
    for extra in spec.extra_cells:
        params = extra.model.resolve().non_embedding_params
        add(extra.model, extra.tokens or round(extra.tokens_per_param * params), extra.format)
    values = list(entries.values())
    return [c for c, _ in values], [e for _, e in values], sorted(skipped)


def with_extra_cells(spec_text: str, entries: list[dict]) -> tuple[str, list[int]]:
    """The sweep's YAML with `entries` appended to its extra cells, each given the lowest seed
    that makes it a new cell (so `submit` runs it; done cells are skipped), and the seeds."""
    import yaml

    from orchestrator.cells import expand
    from orchestrator.spec import ExtraCell, parse_spec
    from workers.config import CellConfig

    spec = parse_spec(spec_text)
    taken = {cell.cell_id for cell in expand(spec)}
    seeds = []
    for entry in entries:
        extra = ExtraCell.model_validate(entry)
        seed = 0
        while True:
            cell = CellConfig(
                model=extra.model.resolve(),
                format=extra.format,
                tokens=extra.tokens,
                seed=seed,
                train=spec.train_for(extra.model.train, extra.train),
                data=spec.data,
                world_size=spec.world_size,
            )
            if cell.cell_id not in taken:
                break
            seed += 1
        taken.add(cell.cell_id)
        seeds.append(seed)
    document = yaml.safe_load(spec_text)
    document["extra_cells"] = list(document.get("extra_cells") or []) + [
        json.loads(json.dumps(entry)) | {"seed": seed}  # copies: no YAML anchors
        for entry, seed in zip(entries, seeds, strict=True)
    ]
    return yaml.safe_dump(document, sort_keys=False, width=100), seeds


def next_command(args: argparse.Namespace) -> int:
    from compscale.design import propose
    from compscale.files import write_text_atomic
    from orchestrator.cli_report import _results
    from orchestrator.cli_sweep import open_store
    from orchestrator.spec import load_spec, parse_spec

    store = open_store(args)
    results = _results(store, args.sweep)
    spec_text = store.spec_text(args.sweep)
    grid = load_spec(args.candidates) if args.candidates else parse_spec(spec_text, args.sweep)
    ensemble = _fit(results, args)
    candidates, entries, skipped = candidates_of(grid, set(ensemble.fitted_formats()))
    if skipped:
        print(f"not candidates (no fitted rho): {', '.join(skipped)}", file=sys.stderr)
    proposal = propose(
        ensemble, candidates, args.budget_flops, args.target, args.noise, args.max_copies
    )
    if not proposal.picks:
        raise ValueError(
            f"--budget-flops: {args.budget_flops:.3g} buys no candidate that helps "
            f"(cheapest: {min(c.flops for c in candidates):.3g} FLOPs)"
        )
    text, seeds = with_extra_cells(spec_text, [entries[i] for i in proposal.picks])
    out = Path(args.out or f"{args.sweep}-next.yaml")
    command = " ".join(["compscale", *sys.argv[1:]])
    write_text_atomic(out, f"# proposed by: {command}\n{text}")
    print(
        f"sweep {args.sweep}: {len(results)} cells, {args.bootstrap} resamples, noise "
        f"{args.noise or ensemble.noise:.3g} (log loss); {len(candidates)} candidates, "
        f"target {args.target}"
    )
    print(f"{'N':>9} {'D':>10} {'format':<14}{'cells':>6}  {'seeds':<12}{'FLOPs':>10}{'gain':>10}")
    groups: dict[int, list[tuple[int, float]]] = {}
    for index, seed, gain in zip(proposal.picks, seeds, proposal.gains, strict=True):
        groups.setdefault(index, []).append((seed, gain))
    for index, picked in groups.items():
        cell, seed_list = candidates[index], [seed for seed, _ in picked]
        span = f"{min(seed_list)}-{max(seed_list)}" if len(seed_list) > 1 else str(seed_list[0])
        print(
            f"{cell.params:>9.3g} {cell.tokens:>10.3g} {cell.format:<14}{len(picked):>6}  "
            f"{span:<12}{cell.flops * len(picked):>10.3g}{sum(g for _, g in picked):>10.3g}"
        )
    print(
        f"{len(proposal.picks)} cells, {proposal.flops:.3g} of {args.budget_flops:.3g} FLOPs; "
        "95% interval widths (after: linearised prediction)"
    )
    for name, before, after in zip(
        proposal.targets, proposal.width_before, proposal.width_after, strict=True
    ):
        print(f"  {name:<28}{before:>9.4f} -> {after:.4f}")
    print(f"proposal: {out} (run it: compscale submit {out})")
    return 0


def _shown(uri: str) -> str:
    """A local store as a path relative to the working folder (as the user typed it), else the
    URI: output pasted into notes and docs names no machine's absolute paths."""
    return uri if "://" in uri else os.path.relpath(uri)
