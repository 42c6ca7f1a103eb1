"""`compscale gmse FORMAT ... [--standard] [--json]`: the GMSE table of representations."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `gmse` subcommand to the `compscale` parser."""
    parser = subparsers.add_parser(
        "gmse",
        help="Gaussian MSE, bits per parameter and effective bits of formats",
        description="GMSE = E||x - R(x)||^2 / E||x||^2 for x ~ N(0, 1) laid out as a weight "
        "matrix; "
        "effective bits = log_{1/4}(GMSE). Exact integration where a closed form applies, "
        "otherwise Monte Carlo with its standard error.",
    )
    parser.add_argument(
        "formats", nargs="*", metavar="FORMAT", help="format strings, e.g. int4 sp50"
    )
    parser.add_argument("--standard", action="store_true", help="add every standard format")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--rows", type=int, default=None, help="Monte Carlo matrix rows")
    parser.add_argument("--cols", type=int, default=None, help="Monte Carlo matrix columns")
    parser.add_argument("--seed", type=int, default=0, help="Monte Carlo seed")
    parser.add_argument(
        "--monte-carlo",
        action="store_true",
        help="sample every format, even those with a closed form",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compscale.formats import STANDARD_FORMATS, parse
    from compscale.gmse import DEFAULT_COLS, DEFAULT_ROWS, components, estimate

    names = list(args.formats) + (list(STANDARD_FORMATS) if args.standard else [])
    if not names:
        raise ValueError("give at least one FORMAT (e.g. int4 sp50+int4) or --standard")
    formats = [parse(name) for name in names]  # fail on a typo before computing anything
    rows = DEFAULT_ROWS if args.rows is None else args.rows
    cols = DEFAULT_COLS if args.cols is None else args.cols
    method = "monte-carlo" if args.monte_carlo else "auto"
    estimates = [estimate(fmt, rows, cols, args.seed, method) for fmt in formats]
    parts = [
        components(fmt, rows, cols, args.seed, method)
        if len(fmt.components()) > 1 or fmt.has_backward
        else ()
        for fmt in formats
    ]
    if args.json:
        rows_json = [
            e.as_json() | {"components": [asdict(part) for part in p]}
            for e, p in zip(estimates, parts, strict=True)
        ]
        print(json.dumps(rows_json, indent=2))
    else:
        _print_table(estimates, parts, rows, cols, args.seed)
    return 0


def _print_table(estimates: list, parts: list, rows: int, cols: int, seed: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Gaussian MSE of representations",
        caption=f"effective bits = log_1/4(GMSE); stderr of Monte Carlo over a {rows} x {cols} "
        f"N(0, 1) matrix (seed {seed}); 'exact': closed-form integral, long-row limit. A format "
        "of several parts (sparsity + quantization, weights + activations) or with a backward part "
        "(g:, the backward GEMMs' quantizer) lists each part's own GMSE below it: capacities "
        "multiply over forward parts. The format's GMSE is its weights'.",
    )
    for header in ("format", "bits/param", "GMSE", "stderr", "effective bits"):
        table.add_column(header, justify="left" if header == "format" else "right", no_wrap=True)
    for e, components in zip(estimates, parts, strict=True):
        table.add_row(
            e.format,
            f"{e.bits_per_param:.3f}",
            f"{e.gmse:.4g}",
            "exact" if e.method == "exact" else f"{e.stderr:.2g}",
            f"{e.effective_bits:.3f}" if e.gmse > 0 else "lossless",
        )
        for part in components:
            table.add_row(
                f"  {part.tensor} {part.family}: {part.format}",
                "",
                f"{part.gmse:.4g}",
                "exact" if part.stderr == 0 else f"{part.stderr:.2g}",
                f"{math.log(part.gmse, 0.25):.3f}" if part.gmse > 0 else "lossless",
            )
    import sys

    Console(width=None if sys.stdout.isatty() else 120).print(table)
