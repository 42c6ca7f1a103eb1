"""The notebook API: a store's sweeps, results and loss curves as pandas DataFrames, and its
reductions with the fitted law, without the command line.

    from compscale import open_store
    store = open_store("store")
    store.sweeps(); store.results("smoke"); store.losses("smoke")
    law = store.reduce("smoke").fitted; law.predict([1e6], [2e7], ["int4"])

It lives in the orchestrator layer (it reads the store); `compscale.open_store` re-exports it
lazily, the one sanctioned upward import (docs/design.md, "Layers").
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.store import STAMP_FORMAT, Store

if TYPE_CHECKING:
    import pandas as pd

    from compscale.reduce import Reduction


def open_store(uri: str | os.PathLike[str] | None = None) -> StoreView:
    """A read-only view of the store at `uri` (default $COMPSCALE_STORE, else ./store), which
    must exist."""
    return StoreView(uri or os.environ.get("COMPSCALE_STORE") or "store")


class StoreView:
    """Reads a store; never writes to it (`reduce` fits in memory unless a reduction is stored)."""

    def __init__(self, uri: str | os.PathLike[str]):
        self.store = Store(uri)
        self.store.check_root(must_exist=True)

    def __repr__(self) -> str:
        return f"open_store({self.store.uri!r})"

    def sweeps(self) -> pd.DataFrame:
        """One row per sweep: `sweep`, `cells`, `done`, `failed`, `last_activity` (UTC)."""
        return sweep_summary(self.store)

    def results(self, sweep: str) -> pd.DataFrame:
        """The result rows of the sweep's finished cells (the reducer's input)."""
        return self.store.results(sweep)

    def losses(self, sweep: str) -> pd.DataFrame:
        """Loss rows per cell and step (highest attempt) with `model`, `format`, `params`."""
        return self.store.losses(sweep)

    def reduce(
        self, sweep: str, *, bootstrap: int = 200, seed: int = 0, refit: bool = False
    ) -> Reduction:
        """The sweep's reduction: the stored one (`compscale reduce`) unless `refit`, else fitted
        here with the CLI's defaults. `.fitted.predict(params, tokens, formats)` is the law."""
        from compscale.laws import FitOptions
        from compscale.reduce import JSON_NAME, Reduction, reduce

        stored = Path(self.store.layout.sweep(sweep).reduction)
        if not refit and "://" not in self.store.uri and (stored / JSON_NAME).exists():
            return Reduction.read(stored)
        results = self.results(sweep)
        if results.empty:
            raise ValueError(f"sweep {sweep!r}: no finished cells yet")
        return reduce(results, FitOptions(bootstrap=bootstrap, seed=seed, jobs=os.cpu_count() or 1))


def sweep_summary(store: Store) -> pd.DataFrame:
    """Per sweep: its cells, how many are done and failed, and its latest status event or manifest
    write (`last_activity`)."""
    import pandas as pd

    rows = []
    for name in store.sweep_names():
        cell_ids = store.manifest(name)
        statuses = [store.status(cell_id) for cell_id in cell_ids]
        moments = [pd.Timestamp(s.event["at"]) for s in statuses if "at" in s.event]
        written = store.read_json(store.layout.sweep(name).manifest).get("written_at")
        if written:
            moments.append(pd.Timestamp(datetime.strptime(written, STAMP_FORMAT), tz="UTC"))
        rows.append(
            {
                "sweep": name,
                "cells": len(cell_ids),
                "done": sum(s.state == "done" for s in statuses),
                "failed": sum(s.state == "failed" for s in statuses),
                "last_activity": max(moments) if moments else pd.NaT,
            }
        )
    columns = ["sweep", "cells", "done", "failed", "last_activity"]
    return pd.DataFrame(rows, columns=columns)
