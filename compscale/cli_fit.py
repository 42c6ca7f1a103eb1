"""`compscale fit TABLE [--law chinchilla|unified|unified-gmse] [--json]`: fit a scaling law to any
CSV or Parquet table of (params, tokens, loss[, format]) cells."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compscale.laws import FitOptions


def bootstrap_options() -> argparse.ArgumentParser:
    """`--bootstrap`, `--seed`, `--jobs`: the options every fitting command shares (`fit`,
    `reduce`, `report`, `advise`, `next`), so they mean the same and default the same."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap resamples of cells (default 200)"
    )
    parent.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap (and of a held-out split)"
    )
    parent.add_argument(
        "--jobs", type=int, default=0, help="processes for the bootstrap (default: every core)"
    )
    return parent


def fit_options(args: argparse.Namespace) -> FitOptions:
    """The `FitOptions` that `bootstrap_options`' flags give (`--jobs 0`: every core)."""
    from compscale.laws import FitOptions

    return FitOptions(
        bootstrap=args.bootstrap, seed=args.seed, jobs=args.jobs or os.cpu_count() or 1
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fit` subcommand to the `compscale` parser."""
    from compscale.table import column_options

    parser = subparsers.add_parser(
        "fit",
        parents=[bootstrap_options(), column_options()],
        help="fit a scaling law (Chinchilla or unified with per-format rho) to a table of cells",
        description="Huber (delta 1e-3) fit of log loss through log-sum-exp, from a grid of "
        "starts, best kept; 95% CIs by bootstrapping cells. Columns: params (N), tokens (D), "
        "loss, optional format; map other names with the --*-col flags.",
    )
    parser.add_argument("table", metavar="TABLE", help="a .csv or .parquet file")
    parser.add_argument(
        "--law", choices=("chinchilla", "unified", "unified-gmse"), default="chinchilla"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--flops-col", default=None, help="column of training FLOP C; tokens are C / (6 N)"
    )
    parser.add_argument(
        "--gmse-col",
        default=None,
        help="column of GMSE (unified-gmse): one part per format, of the family the format's "
        "grammar gives (quantization when it does not parse); else every part's GMSE computed "
        "from the grammar (weights, activations, sparsity)",
    )
    parser.add_argument("--dense", default="dense", help="name of the dense reference format")
    parser.add_argument(
        "--drop-highest-loss",
        type=int,
        default=0,
        metavar="K",
        help="drop the K highest-loss rows first (Besiroglu et al. dropped 5)",
    )
    parser.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log loss")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compscale import laws
    from compscale.table import column, loss_column, read_table

    path = Path(args.table)
    table = read_table(path)
    if table.empty:
        raise ValueError(f"{path}: no rows (only a header?); nothing to fit")
    loss_name = loss_column(table, path, args.loss_col).name
    if not 0 <= args.drop_highest_loss < len(table):
        raise ValueError(
            f"--drop-highest-loss: must be in [0, {len(table) - 1}] for {len(table)} rows, "
            f"got {args.drop_highest_loss}"
        )
    if args.drop_highest_loss:
        table = table.sort_values(loss_name).iloc[: -args.drop_highest_loss]
    params = column(table, path, args.params_col, "--params-col").to_numpy(dtype=float)
    if args.flops_col:
        tokens = column(table, path, args.flops_col, "--flops-col").to_numpy(dtype=float)
        tokens = tokens / (6 * params)
    else:
        tokens = column(table, path, args.tokens_col, "--tokens-col").to_numpy(dtype=float)
    formats = None
    if args.law != "chinchilla" or args.format_col in table.columns:
        formats = column(table, path, args.format_col, "--format-col").astype(str).tolist()
    parts = None
    if args.law == "unified-gmse" and args.gmse_col:
        parts = _parts_from_column(table, path, args, formats)
    with fit_progress() as progress:
        result = laws.fit(
            params,
            tokens,
            table[loss_name].to_numpy(dtype=float),
            formats,
            law=args.law,
            options=replace(fit_options(args), dense=args.dense, delta=args.delta),
            parts=parts,
            progress=progress,
        )
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    else:
        print(f"{path}: {len(params)} cells")
        print(result.summary())
    return 0


def _parts_from_column(table, path: Path, args: argparse.Namespace, formats: list[str]) -> dict:
    """One part per format from the GMSE column; its family from the grammar when it parses."""
    from compscale.formats import parse
    from compscale.table import column

    values = column(table, path, args.gmse_col, "--gmse-col")
    by_format = values.groupby(table[args.format_col].astype(str)).first()
    parts = {}
    for name in sorted(set(formats) - {args.dense}):
        try:
            components = parse(name).components()
            family = components[0].family if len(components) == 1 else "quantization"
        except ValueError:
            family = "quantization"
        parts[name] = ((family, float(by_format[name])),)
    return parts


@contextlib.contextmanager
def fit_progress(after_s: float = 2.0) -> Iterator[Callable[..., None]]:
    """A progress callback (`done, total` or `stage, done, total`) that shows a rich bar on
    stderr once the work has taken `after_s` seconds: short fits stay silent."""
    from rich.progress import Progress

    started = time.monotonic()
    bar: Progress | None = None
    tasks: dict[str, int] = {}

    def report(*args: object) -> None:
        nonlocal bar
        stage, done, total = args if len(args) == 3 else ("bootstrap", *args)
        if bar is None:
            if time.monotonic() - started < after_s:
                return
            bar = Progress(console=Console(stderr=True), transient=True)
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(f"{stage} resamples", total=total)
        bar.update(tasks[stage], completed=done)

    from rich.console import Console

    try:
        yield report
    finally:
        if bar is not None:
            bar.stop()


def as_json(result) -> dict:
    """The `--json` object: A, alpha, B, beta, E (and L, F, C), rho, ci, notes (parameters at a
    bound or not identified, and why), fitted (the law to predict with), fit_error, warnings."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else value

    document: dict = {"law": result.law, **result.params}
    if result.rho:
        document["rho"] = dict(result.rho)
    document["ci"] = {name: [number(low), number(high)] for name, (low, high) in result.ci.items()}
    document["fit_error"] = dict(result.fit_error)
    document["fit_error_metric"] = (
        "rmse_log_loss: sqrt(mean((log predicted - log observed)^2)) over cells; "
        "mean_abs_rel_error: mean |predicted / observed - 1| over cells"
    )
    document |= {
        "objective": result.objective,
        "huber_delta": result.delta,
        "cells": len(result.residuals),
        "bootstrap": result.bootstrap,
        "notes": dict(result.notes),
        "fitted": result.fitted.to_dict(),
        "warnings": list(result.warnings),
    }
    return document
