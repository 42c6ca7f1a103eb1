"""`compscale reduce SWEEP` and `compscale report SWEEP`: the store's results through the reducer.

Outputs go beside the sweep in a local store (`<store>/sweeps/<name>/reduction/` and `.../report/`)
or to `--out` (required for object-store URIs, since figures are rendered locally).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from compscale.reduce import Reduction
    from orchestrator.store import Store


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `reduce` and `report` to the `compscale` parser."""
    from orchestrator.cli_sweep import store_parent

    common = argparse.ArgumentParser(add_help=False, parents=[store_parent()])
    common.add_argument("sweep", help="sweep name")
    common.add_argument("--out", help="output folder (default: beside the sweep in the store)")
    common.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap resamples of cells (default 200)"
    )
    common.add_argument("--seed", type=int, default=0, help="seed of bootstrap and held-out split")

    command = subparsers.add_parser(
        "reduce",
        parents=[common],
        help="fit the unified law, capacities, composition; write tables",
    )
    command.set_defaults(func=reduce_command)

    command = subparsers.add_parser(
        "report", parents=[common], help="HTML report (figures inline) plus PNGs and tables"
    )
    command.add_argument("--refit", action="store_true", help="refit even if tables exist")
    command.add_argument("--markdown", help="also write the report as Markdown to this file")
    command.set_defaults(func=report_command)


def _sweep_dir(store: Store, sweep: str, out: str | None) -> Path:
    if out:
        return Path(out)
    if "://" in store.uri and not store.uri.startswith("file://"):
        raise ValueError(f"--out: required for a remote store ({store.uri})")
    return Path(store.path("sweeps", sweep))


def _results(store: Store, sweep: str) -> pd.DataFrame:
    if sweep not in store.sweep_names():
        raise ValueError(f"sweep {sweep!r}: not in store {store.uri}; known: {store.sweep_names()}")
    results = store.results(sweep)
    diverged = ~results["val_loss"].apply(math.isfinite)
    if diverged.any():
        names = ", ".join(results.loc[diverged, "cell_id"])
        print(f"left out of the fit, non-finite validation loss: {names}", file=sys.stderr)
        results = results[~diverged].reset_index(drop=True)
    if results.empty:
        raise ValueError(f"sweep {sweep!r}: no finished cells yet; see `compscale status {sweep}`")
    return results


def _reduce(results: pd.DataFrame, args: argparse.Namespace, out: Path) -> Reduction:
    from compscale.reduce import reduce

    reduction = reduce(results, bootstrap=args.bootstrap, seed=args.seed)
    reduction.write(out)
    return reduction


def reduce_command(args: argparse.Namespace) -> int:
    from orchestrator.cli_sweep import open_store

    store = open_store(args)
    out = _sweep_dir(store, args.sweep, args.out) / "reduction"
    reduction = _reduce(_results(store, args.sweep), args, out)
    print(reduction.summary())
    print(f"tables: {out}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from compscale.plots import write_figures
    from compscale.reduce import Reduction
    from orchestrator.cli_sweep import open_store

    store = open_store(args)
    base = _sweep_dir(store, args.sweep, args.out)
    results = _results(store, args.sweep)
    tables = base / "reduction"
    if args.refit or not (tables / "reduction.json").exists():
        reduction = _reduce(results, args, tables)
    else:
        reduction = Reduction.read(tables)
    out = base / "report"
    figures = write_figures(reduction, results, out)
    title, sections, footer = _sections(args.sweep, store, results, reduction, figures)

    from compscale.files import write_text_atomic
    from compscale.report import render_markdown, write_report

    page = write_report(out, title, sections, footer)
    if args.markdown:
        markdown = Path(args.markdown)
        figure_dir = markdown.with_suffix("")
        figure_dir.mkdir(parents=True, exist_ok=True)
        for figure in figures:
            shutil.copyfile(figure, figure_dir / figure.name)
        text = render_markdown(title, sections, figure_dir.name, footer)
        write_text_atomic(markdown, text)
        print(f"markdown: {markdown}")
    print(f"report: {page}")
    return 0


def _sections(sweep, store, results, reduction, figures):
    """The report's title, sections and footer, in the paper's order."""
    import pandas as pd

    from compscale import findings
    from compscale.report import Section

    by_name = {figure.stem: figure for figure in figures}

    def pick(*words: str) -> list[Path]:
        return [path for stem, path in by_name.items() if any(word in stem for word in words)]

    metrics = reduction.metrics
    overview = results.groupby("format", sort=False).agg(
        cells=("cell_id", "count"),
        params=("params", lambda s: f"{s.min():,} - {s.max():,}"),
        tokens=("tokens", lambda s: f"{s.min():,} - {s.max():,}"),
        val_loss=("val_loss", "mean"),
        wall_time_s=("wall_time_s", "sum"),
    )
    hardware = ", ".join(sorted(results["hardware"].astype(str).unique()))
    finished = pd.to_datetime(results["finished_at"], utc=True)
    started = finished - pd.to_timedelta(results["wall_time_s"], unit="s")
    wall_minutes = (finished.max() - started.min()).total_seconds() / 60
    run_text = (
        f"{len(results)} finished cells of sweep {sweep} in {store.uri}\n"
        f"hardware: {hardware}\n"
        f"wall time: {wall_minutes:.1f} min, from the first cell's start "
        f"({started.min():%Y-%m-%d %H:%M} UTC) to the last cell's end\n"
        f"compute: {results['wall_time_s'].sum() / 60:.1f} cell-minutes; "
        f"{(results['params'] * results['tokens'] * 6).sum():.3g} training FLOPs (6ND)"
    )
    checks = findings.check(reduction)
    sections = [
        Section("The paper's claims on this sweep", tables=[("", findings.as_table(checks))]),
        Section("Cells", run_text, [("per format", overview.reset_index())]),
        Section(
            "Unified law L = A (N rho)^-alpha + B D^-beta + E",
            "\n".join(metrics.warnings) or "no warnings",
            [("parameters, 95% bootstrap CIs", reduction.law), ("rho per format", reduction.rho)],
            pick("loss_vs"),
        ),
        Section(
            "Capacity law rho = L tanh(F log_1/4 GMSE)^C",
            tables=[
                ("parameters", reduction.capacity),
                ("fitted, law and left-out predictions", reduction.capacity_rho),
            ],
            figures=pick("rho_vs", "capacity"),
        ),
        Section(
            "Composition rho(A+B) vs rho(A) rho(B)",
            tables=[("pairs", reduction.composition)],
            figures=pick("composition"),
        ),
        Section(
            "Held-out prediction",
            f"fit on the other cells; RMSE of log loss {metrics.heldout_rmse_log_loss}, "
            f"mean |pred/obs - 1| {metrics.heldout_mean_abs_rel_error}",
            [("held-out cells", reduction.heldout)],
            pick("predicted"),
        ),
        Section("Summary (text)", reduction.summary()),
    ]
    caveats = sorted({f.caveat for f in checks if f.caveat})
    footer = "Where this sweep disagrees with the paper, or cannot tell: " + " ".join(caveats)
    footer = footer if caveats else ""
    command = " ".join(["compscale", *sys.argv[1:]])
    footer += (
        f"\nCells trained by `compscale submit` on the spec stored in the sweep's folder "
        f"(sweeps/{sweep}/spec.yaml in the store); this page generated by `{command}`."
    )
    return f"compscale report: {sweep}", sections, footer
