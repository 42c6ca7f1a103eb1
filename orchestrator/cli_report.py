"""`compscale reduce SWEEP` and `compscale report SWEEP`: the store's results through the reducer.

Outputs go beside the sweep in the store (`<store>/sweeps/<name>/reduction/` and `.../report/`) or
to `--out`. On an object store (s3://, gs://) the tables, figures and page are written to a local
temporary folder first and then uploaded into the store, each file by one PUT (`workers.storage`).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from compscale.reduce import Reduction
    from orchestrator.store import Store
    from workers.layout import SweepPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `reduce` and `report` to the `compscale` parser."""
    from compscale.cli_fit import SELECT_FLAG, bootstrap_options
    from orchestrator.cli_sweep import store_parent

    common = argparse.ArgumentParser(add_help=False, parents=[store_parent(), bootstrap_options()])
    common.add_argument("sweep", help="sweep name")
    common.add_argument("--out", help="output folder (default: beside the sweep in the store)")

    command = subparsers.add_parser(
        "reduce",
        parents=[common],
        help="fit the unified law, capacities, composition; write tables",
    )
    command.add_argument("--select", **SELECT_FLAG)
    command.set_defaults(func=reduce_command)

    command = subparsers.add_parser(
        "report", parents=[common], help="HTML report (figures inline) plus PNGs and tables"
    )
    command.add_argument("--refit", action="store_true", help="refit even if tables exist")
    command.add_argument("--markdown", help="also write the report as Markdown to this file")
    command.set_defaults(func=report_command)


def _sweep_paths(store: Store, sweep: str, out: str | None) -> SweepPaths:
    """The sweep's folders in the store, or the same layout under `--out`."""
    from workers.layout import SweepPaths

    if out:
        return SweepPaths(str(Path(out)))
    return store.layout.sweep(sweep)


@contextmanager
def _local_folders(store: Store, sweep: str, out: str | None) -> Iterator[tuple[SweepPaths, str]]:
    """Local folders to write the sweep's reduction and report in, and how to name them. On a
    disk they are the real ones; for an object store a temporary copy (its reduction downloaded
    first) that is uploaded into the store when the block ends without an error."""
    from workers.layout import SweepPaths
    from workers.storage import is_object_store, read_bytes

    paths = _sweep_paths(store, sweep, out)
    if out or not is_object_store(store.fs):
        yield paths, paths.directory
        return
    uri = store.uri.rstrip("/") + paths.directory.removeprefix(store.root)
    with tempfile.TemporaryDirectory(prefix="compscale-") as temp:
        local = SweepPaths(temp)
        Path(local.reduction).mkdir(parents=True)
        for name in store.list_names(paths.reduction):
            data = read_bytes(store.fs, f"{paths.reduction}/{name}")
            (Path(local.reduction) / name).write_bytes(data)
        yield local, uri
        for folder, remote in ((local.reduction, paths.reduction), (local.report, paths.report)):
            for file in sorted(Path(folder).rglob("*")) if Path(folder).is_dir() else []:
                if file.is_file():
                    relative = file.relative_to(folder).as_posix()
                    store.write_atomic(f"{remote}/{relative}", file.read_bytes())


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
    from compscale.cli_fit import fit_options, fit_progress
    from compscale.reduce import reduce

    with fit_progress() as progress:
        reduction = reduce(results, fit_options(args), progress=progress)
    reduction.write(out)
    return reduction


def reduce_command(args: argparse.Namespace) -> int:
    from orchestrator.cli_sweep import open_store

    store = open_store(args)
    results = _results(store, args.sweep)
    with _local_folders(store, args.sweep, args.out) as (paths, where):
        reduction = _reduce(results, args, Path(paths.reduction))
    print(reduction.summary())
    print(f"tables: {where}/reduction")
    return 0


def store_label(store: Store) -> str:
    """The store as a report names it: a remote URI as it is, a local path relative to the
    working folder, or just its folder name if it lies outside (no path from this machine)."""
    if "://" in store.uri:
        return store.uri
    relative = os.path.relpath(store.uri)
    return Path(store.uri).name if relative.startswith("..") else relative


def unfinished(store: Store, sweep: str) -> pd.DataFrame:
    """The sweep's cells that are not done: state, error class and message of the latest event."""
    import pandas as pd

    rows = []
    for cell_id in store.manifest(sweep):
        status = store.status(cell_id)
        if status.state != "done":
            event = status.event
            rows.append(
                (cell_id, status.state, event.get("error_class") or "", event.get("message") or "")
            )
    return pd.DataFrame(rows, columns=["cell_id", "state", "error_class", "message"])


def _report_command(args: argparse.Namespace, store: Store) -> str:
    """The command that regenerates the page, with the store as `store_label` names it."""
    words = ["compscale", "report", args.sweep]
    words += ["--store", store_label(store)] if args.store else []
    words += ["--bootstrap", str(args.bootstrap)] if args.bootstrap != 200 else []
    return shlex.join(words + (["--refit"] if args.refit else []))


def report_command(args: argparse.Namespace) -> int:
    from compscale.files import write_text_atomic
    from compscale.plots import write_figures
    from compscale.reduce import Reduction
    from compscale.report import render_markdown, sweep_page, write_report
    from orchestrator.cli_sweep import open_store

    store = open_store(args)
    results = _results(store, args.sweep)
    with _local_folders(store, args.sweep, args.out) as (paths, where):
        tables = Path(paths.reduction)
        reduction, unfit = None, ""
        if args.refit or not (tables / "reduction.json").exists():
            try:
                reduction = _reduce(results, args, tables)
            except ValueError as error:  # e.g. one model size: alpha and A are not identified
                unfit = str(error)
                print(f"law not fitted ({unfit}); writing a partial report", file=sys.stderr)
        else:
            reduction = Reduction.read(tables)
        out = Path(paths.report)
        figures = write_figures(reduction, results, out, losses=store.losses(args.sweep))
        page = sweep_page(
            args.sweep,
            store_label(store),
            results,
            reduction,
            figures,
            _report_command(args, store),
            unfinished=unfinished(store, args.sweep),
            unfit=unfit,
        )
        path = write_report(out, page)
        if args.markdown:
            markdown = Path(args.markdown)
            figure_dir = markdown.with_suffix("")
            figure_dir.mkdir(parents=True, exist_ok=True)
            for figure in figures:
                shutil.copyfile(figure, figure_dir / figure.name)
            write_text_atomic(markdown, render_markdown(page, figure_dir.name))
            print(f"markdown: {markdown}")
    print(f"report: {where}/report/{path.relative_to(paths.report).as_posix()}")
    return 0
