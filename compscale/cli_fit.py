"""`compscale fit TABLE [--law chinchilla|unified|unified-gmse] [--json]`: fit a scaling law to any
CSV or Parquet table of (params, tokens, loss[, format]) cells."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fit` subcommand to the `compscale` parser."""
    parser = subparsers.add_parser(
        "fit",
        help="fit a scaling law (Chinchilla or unified with per-format rho) to a table of cells",
        description="Huber (delta 1e-3) fit of log loss through log-sum-exp, from a grid of "
        "starts, best kept; 95%% CIs by bootstrapping cells. Columns: params (N), tokens (D), "
        "loss, optional format; map other names with the --*-col flags.",
    )
    parser.add_argument("table", metavar="TABLE", help="a .csv or .parquet file")
    parser.add_argument(
        "--law", choices=("chinchilla", "unified", "unified-gmse"), default="chinchilla"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--params-col", default="params", help="column of N (parameters)")
    parser.add_argument("--tokens-col", default="tokens", help="column of D (training tokens)")
    parser.add_argument(
        "--flops-col", default=None, help="column of training FLOP C; tokens are C / (6 N)"
    )
    parser.add_argument("--loss-col", default="loss", help="column of the loss (nats)")
    parser.add_argument("--format-col", default="format", help="column of the format string")
    parser.add_argument(
        "--gmse-col", default=None, help="column of GMSE (unified-gmse); else computed per format"
    )
    parser.add_argument("--dense", default="dense", help="name of the dense reference format")
    parser.add_argument(
        "--drop-highest-loss",
        type=int,
        default=0,
        metavar="K",
        help="drop the K highest-loss rows first (Besiroglu et al. dropped 5)",
    )
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples")
    parser.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log loss")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.set_defaults(func=run)


def _read_table(path: Path):
    import pandas as pd

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unknown table type {path.suffix!r}; give a .csv or .parquet file")


def _column(table, path: Path, name: str, flag: str):
    if name not in table.columns:
        raise ValueError(
            f"{path}: no column {name!r} (columns: {', '.join(map(str, table.columns))}); "
            f"name it with {flag}"
        )
    return table[name]


def run(args: argparse.Namespace) -> int:
    from compscale import laws

    path = Path(args.table)
    table = _read_table(path)
    loss_name = _column(table, path, args.loss_col, "--loss-col").name
    if args.drop_highest_loss:
        table = table.sort_values(loss_name).iloc[: -args.drop_highest_loss]
    params = _column(table, path, args.params_col, "--params-col").to_numpy(dtype=float)
    if args.flops_col:
        tokens = _column(table, path, args.flops_col, "--flops-col").to_numpy(dtype=float)
        tokens = tokens / (6 * params)
    else:
        tokens = _column(table, path, args.tokens_col, "--tokens-col").to_numpy(dtype=float)
    formats = None
    if args.law != "chinchilla" or args.format_col in table.columns:
        formats = _column(table, path, args.format_col, "--format-col").astype(str).tolist()
    gmse = None
    if args.law == "unified-gmse":
        gmse = _gmse_of_formats(table, path, args, formats)
    result = laws.fit(
        params,
        tokens,
        table[loss_name].to_numpy(dtype=float),
        formats,
        law=args.law,
        gmse=gmse,
        dense=args.dense,
        delta=args.delta,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    else:
        print(f"{path}: {len(params)} cells")
        print(result.summary())
    return 0


def _gmse_of_formats(table, path: Path, args: argparse.Namespace, formats: list[str]) -> dict:
    names = sorted(set(formats) - {args.dense})
    if args.gmse_col:
        values = _column(table, path, args.gmse_col, "--gmse-col")
        by_format = values.groupby(table[args.format_col].astype(str)).first()
        return {name: float(by_format[name]) for name in names}
    from compscale.gmse import gmse

    return {name: gmse(name) for name in names}


def as_json(result) -> dict:
    """The `--json` object: A, alpha, B, beta, E (and L, F, C), rho, ci, fit_error, warnings."""

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
        "warnings": list(result.warnings),
    }
    return document
