"""Experiment trackers: a cell's loss rows mirrored to TensorBoard event files and to W&B.

The store's Parquet rows stay the record and a tracker is a view of them, so a tracker never fails
a cell: one that cannot open or write is dropped with one warning and training goes on. The sink
hands rows over as it flushes them (every few seconds, as floats, after their Parquet part is
written), so tracking costs no device sync per step and never shows a row the store lacks.

Files go beside the cell (`CellPaths.tensorboard`, `CellPaths.wandb`), so `tensorboard --logdir
<store>/cells` shows every cell. Neither writer can write to an object store: the cells of a remote
store write theirs on the worker's disk, laid out as a store under $COMPSCALE_TRACKER_DIR (default
`~/.cache/compscale/trackers`), which one warning names. One attempt is one run: a resumed
attempt's event file hides the steps it logs again (TensorBoard's purge step), and in W&B it is a
new run of the same name. W&B runs offline unless $WANDB_MODE says otherwise, in project
$WANDB_PROJECT (default `compscale`), grouped by the sweep that started the run.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
import weakref
from typing import Any, Protocol

import pyarrow.fs as pafs

from workers.config import CellConfig, Tracker
from workers.layout import CellPaths, Layout, resolve
from workers.schema import LOSS_SCHEMA

# The module each tracker's extra installs (`pip install 'compscale[<tracker>]'`).
MODULES: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb"}
LOCAL_ROOT = "~/.cache/compscale/trackers"  # a remote store's tracker files, on the worker
SCALARS = LOSS_SCHEMA.names[3:]  # the loss-row columns after cell_id, attempt and step

Row = dict[str, Any]


def missing_extra(tracker: Tracker) -> str | None:
    """One line telling how to install `tracker`'s extra, or None if it is installed; found
    without importing it, so checking a spec does not pay wandb's import."""
    if importlib.util.find_spec(MODULES[tracker]) is None:
        return f"{tracker} is not installed: pip install 'compscale[{tracker}]'"
    return None


class _Tracker(Protocol):
    def log(self, rows: list[Row]) -> None: ...

    def close(self, failed: bool) -> None: ...


class _TensorBoard:
    """One event file per attempt; each loss-row column is a scalar of its own name at x = step."""

    def __init__(self, paths: CellPaths, attempt: int, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            paths.tensorboard, purge_step=start_step, filename_suffix=f".attempt-{attempt}"
        )

    def log(self, rows: list[Row]) -> None:
        for row in rows:
            for name in SCALARS:
                if row[name] is not None:
                    self.writer.add_scalar(name, row[name], row["step"])
        self.writer.flush()  # as durable as the Parquet part just written

    def close(self, failed: bool) -> None:
        self.writer.close()


class _WandB:
    """One W&B run per attempt: named by the cell id, grouped by sweep, the cell's config."""

    def __init__(self, paths: CellPaths, cell: CellConfig, attempt: int):
        import wandb

        os.makedirs(paths.directory, exist_ok=True)
        self.run = wandb.init(
            dir=paths.directory,  # W&B writes into `wandb/` there: paths.wandb
            mode=os.environ.get("WANDB_MODE", "offline"),
            project=os.environ.get("WANDB_PROJECT", "compscale"),
            group=cell.tracking.sweep or None,
            name=cell.cell_id,
            config=cell.model_dump(mode="json", exclude={"tracking"})
            | {"cell_id": cell.cell_id, "params": cell.params, "attempt": attempt},
            reinit="create_new",  # a Ray worker trains cell after cell in one process
            settings=wandb.Settings(console="off"),  # the cell's output is Ray's to collect
        )

    def log(self, rows: list[Row]) -> None:
        for row in rows:
            scalars = {name: row[name] for name in SCALARS if row[name] is not None}
            self.run.log(scalars, step=row["step"])

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Trackers:
    """The open trackers of one attempt; a tracker that raises is dropped with one warning.

    `close` ends them when the attempt succeeds. An attempt that raises closes them as failed when
    its sink is let go (a finalizer, also run at exit), since the training loop has no cleanup
    block; nothing is lost meanwhile, as each batch is handed over when the store gets it.
    """

    def __init__(self, cell_id: str, opened: dict[str, _Tracker]):
        self.cell_id, self.opened = cell_id, opened
        self._finalizer = weakref.finalize(self, _close, cell_id, opened, True)

    def log(self, rows: list[Row]) -> None:
        for name, tracker in list(self.opened.items()):
            try:
                tracker.log(rows)
            except Exception as error:
                del self.opened[name]
                _warn(name, self.cell_id, f"stopped logging: {error}")

    def close(self) -> None:
        self._finalizer.detach()
        _close(self.cell_id, self.opened, False)


def _close(cell_id: str, opened: dict[str, _Tracker], failed: bool) -> None:
    for name, tracker in opened.items():
        try:
            tracker.close(failed)
        except Exception as error:
            _warn(name, cell_id, f"did not close: {error}")
    opened.clear()


def _warn(tracker: str, cell_id: str, what: str) -> None:
    warnings.warn(f"{tracker} tracker of {cell_id} {what}", stacklevel=3)


def tracker_paths(store_uri: str, cell_id: str) -> CellPaths:
    """Where a cell's tracker files go: beside the cell in a local store; for a remote one, the
    same layout under $COMPSCALE_TRACKER_DIR on this machine (one warning per store says so)."""
    location = resolve(store_uri)
    if isinstance(location.filesystem, pafs.LocalFileSystem):
        return Layout(location.root).cell(cell_id)
    root = os.path.abspath(os.path.expanduser(os.environ.get("COMPSCALE_TRACKER_DIR", LOCAL_ROOT)))
    warnings.warn(
        f"store {store_uri} is remote: tracker files go to {root} on this machine "
        "(set COMPSCALE_TRACKER_DIR to choose the folder)",
        stacklevel=3,
    )
    return Layout(root).cell(cell_id)


def open_trackers(
    cell: CellConfig, store_uri: str, attempt: int, start_step: int
) -> Trackers | None:
    """The trackers `cell.tracking` asks for, opened for attempt `attempt` (whose first step is
    `start_step`) on the main rank; None if it asks for none. One that cannot open is left out
    with a warning (naming the extra to install if that is why)."""
    if not cell.tracking.trackers:
        return None
    paths = tracker_paths(store_uri, cell.cell_id)
    opened: dict[str, _Tracker] = {}
    for name in dict.fromkeys(cell.tracking.trackers):
        try:
            if name == "tensorboard":
                opened[name] = _TensorBoard(paths, attempt, start_step)
            else:
                opened[name] = _WandB(paths, cell, attempt)
        except Exception as error:
            _warn(name, cell.cell_id, f"is off: {missing_extra(name) or error}")
    return Trackers(cell.cell_id, opened)
