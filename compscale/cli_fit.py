"""`compscale fit TABLE [--law chinchilla|unified|unified-gmse|unified-effd|unified-gamma]
[--select] [--json]`: fit a scaling law to any CSV or Parquet table of (params, tokens, loss[,
format][, on_n, on_d]) cells."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
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
    """The `FitOptions` that `bootstrap_options`' flags give (`--jobs 0`: every core), and
    `--select` where the command has it (`fit`, `reduce`)."""
    from compscale.laws import FitOptions

    return FitOptions(
        bootstrap=args.bootstrap,
        seed=args.seed,
        jobs=args.jobs or os.cpu_count() or 1,
        select=getattr(args, "select", False),
    )


SELECT_FLAG = {
    "action": "store_true",
    "help": "also print every law form's leave-one-size-out held-out error (refits each form "
    "once per model size)",
}
LAW_CHOICES = ("chinchilla", "unified", "unified-gmse", "unified-effd", "unified-gamma")


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
        "--law",
        choices=LAW_CHOICES,
        default="chinchilla",
        help="unified-effd: effN (rho) and effD per format, in (0, 1.2] (a table's on_n / on_d "
        "columns say which a format scales; default on_n); unified-gamma: "
        "(A (N rho)^-alpha + B D^-beta)^gamma + E",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--select", **SELECT_FLAG)
    parser.add_argument(
        "--flops-col", default=None, help="column of training FLOP C; tokens are C / (6 N)"
    )
    parser.add_argument(
        "--gmse-col",
        default=None,
        help="column of GMSE (unified-gmse): one part per format, of the family the format's "
        "grammar gives (quantization when it does not parse); else every part's GMSE computed "
        "from the grammar (weights, activations, sparsity), which a format it does not know "
        "lacks. unified-effd: the GMSE of each backward format's gradient quantizer, for the "
        "effD capacity law",
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
    from compscale.table import column, loss_column, multiplier_columns, read_table

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
    if args.gmse_col and (args.law == "unified-gmse" or args.select):
        parts = _parts_from_column(table, path, args, formats)
    if args.law == "unified-gmse" and parts is None:
        _check_grammar_knows(formats, args.dense, path)
    multipliers = multiplier_columns(table, path, formats) if formats else None
    loss = table[loss_name].to_numpy(dtype=float)
    options = replace(fit_options(args), dense=args.dense, delta=args.delta)
    with fit_progress() as progress:
        result = laws.fit(
            params,
            tokens,
            loss,
            formats,
            law=args.law,
            options=options,
            parts=parts,
            progress=progress,
            multipliers=multipliers,
        )
    eff_d_capacity = None
    if result.fitted.eff_d:
        eff_d_capacity = _effective_data_capacity(result, table, path, args)
    scores = None
    if options.select:
        from compscale.laws.selection import leave_one_size_out

        scores = leave_one_size_out(
            params, tokens, loss, formats, options=options, parts=parts, multipliers=multipliers
        )
    if args.json:
        document = as_json(result)
        if eff_d_capacity is not None:
            document["eff_d_capacity"] = _capacity_json(eff_d_capacity)
        if scores is not None:
            document["selection"] = [asdict(score) for score in scores]
        print(json.dumps(document, indent=2))
    else:
        print(f"{path}: {len(params)} cells")
        print(result.summary())
        if eff_d_capacity is not None:
            print("effD capacity law (effD = L tanh(F log_1/4 GMSE)^C over backward formats):")
            print(eff_d_capacity if isinstance(eff_d_capacity, str) else eff_d_capacity.summary())
        if scores is not None:
            from compscale.laws.selection import selection_text

            print(selection_text(scores))
    return 0


def _check_grammar_knows(formats: list[str], dense: str, path: Path) -> None:
    """unified-gmse without --gmse-col takes every GMSE from the format grammar: a format it does
    not parse has none, and the error says which flag gives it."""
    from compscale.formats import parse

    for name in sorted(set(formats) - {dense}):
        try:
            parse(name)
        except ValueError:
            raise ValueError(
                f"{path}: format {name!r} is not in compscale's grammar, so its GMSE is unknown; "
                "name a GMSE column with --gmse-col"
            ) from None


def _effective_data_capacity(result, table, path: Path, args: argparse.Namespace):
    """The effD capacity law over the GMSE of each backward format: `--gmse-col`, else the
    grammar's backward part (`compscale.effective_data.backward_gmse`)."""
    from compscale.effective_data import backward_gmse, effective_data_capacity
    from compscale.table import column

    if args.gmse_col:
        values = column(table, path, args.gmse_col, "--gmse-col")
        by_format = values.groupby(table[args.format_col].astype(str)).first()
        gmse = {name: float(by_format[name]) for name in result.fitted.eff_d}
    else:
        gmse = {name: backward_gmse(name) for name in result.fitted.eff_d}
    gmse = {name: value for name, value in gmse.items() if value is not None and value > 0}
    return effective_data_capacity(result, gmse)


def _capacity_json(fitted) -> dict | str:
    if isinstance(fitted, str):
        return fitted
    return {
        "params": fitted.values,
        "ci": {name: list(pair) for name, pair in fitted.ci.items()},
        "at_bound": list(fitted.at_bound),
        "rmse_log_eff_d": fitted.rmse_log_rho,
    }


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
    """The `--json` object: A, alpha, B, beta, E (and gamma, L, F, C), rho, eff_d, ci, notes
    (parameters at a bound or not identified, and why), fitted (the law to predict with),
    fit_error, warnings."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else value

    document: dict = {"law": result.law, **result.params}
    if result.rho:
        document["rho"] = dict(result.rho)
    if result.fitted.eff_d:
        document["eff_d"] = dict(result.fitted.eff_d)
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
