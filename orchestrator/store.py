"""The results store: the layout of `workers.layout` on a local path or any pyarrow filesystem URI.

Every file is written once under a temporary name and renamed into place, and state changes are new
files (status events), so a crash leaves the old state or the new one and no file is rewritten by
every task. The only rewritten files are per cell (its heartbeat) or per sweep (its manifest).
Reads go through DuckDB views: `cells`, `status` (latest event per cell), `events` (all of them),
`losses` (one row per step, highest attempt), `losses_raw` (every row), `results`, `sweeps`,
`rounds` (adaptive sweeps' rounds, `orchestrator.rounds`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers import objectstore, storage
from workers.config import CellConfig
from workers.ladder import trunk_id
from workers.layout import (
    EVENT_NAME,
    LOSS_PART,
    RESULT,
    ROUND_NAME,
    CellPaths,
    Layout,
    StoreLocation,
    attempt_number,
    resolve,
)
from workers.schema import LOSS_SCHEMA, RESULT_SCHEMA, ROUND_SCHEMA

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

STATES = ("pending", "running", "done", "failed", "cancelled")

STATUS_SCHEMA = pa.schema(
    [
        ("cell_id", pa.string()),
        ("state", pa.string()),
        ("attempt", pa.int64()),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
        ("host", pa.string()),
        ("pid", pa.int64()),
        ("error_class", pa.string()),
        ("message", pa.string()),
        ("traceback", pa.string()),
    ]
)


class ReadOnlyQuery(ValueError):
    """SQL that would write, or read anything but the store's views: refused, one line."""

    @classmethod
    def because(cls, reason: str) -> ReadOnlyQuery:
        return cls(
            f"only reads of the store's views are allowed: {reason}; "
            "export with --csv or --parquet OUT"
        )


VIEWS = ("cells", "status", "events", "losses_raw", "losses", "results", "sweeps", "rounds")
READ_STATEMENTS = {"SELECT", "EXPLAIN"}  # DuckDB statement types that only read


def permission_reason(error: Exception) -> str:
    """DuckDB's refusal of a file or an extension, as a reason in one line."""
    return str(error).splitlines()[0].removeprefix("Permission Error: ")


STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def utc_stamp(moment: datetime | None = None) -> str:
    """A UTC timestamp that sorts as text: `20261126T043129.123456Z`."""
    return (moment or datetime.now(timezone.utc)).strftime(STAMP_FORMAT)


@dataclass(frozen=True)
class CellStatus:
    """What the store knows of one cell: its latest event, whether its result exists, its lease."""

    cell_id: str
    state: str  # one of STATES; "pending" when no event exists yet
    attempt: int = 0
    event: dict[str, Any] = field(default_factory=dict)
    heartbeat_age_s: float | None = None  # seconds since the running attempt last reported

    def is_stale(self, lease_s: float) -> bool:
        """A `running` cell whose worker stopped reporting for longer than the lease is dead."""
        return self.state == "running" and (
            self.heartbeat_age_s is None or self.heartbeat_age_s > lease_s
        )


class Store:
    """A results store rooted at a local path or a pyarrow filesystem URI (s3://, gs://, file://)."""

    def __init__(self, uri: str | os.PathLike[str]):
        location = resolve(uri)
        self.fs, self.root, self.uri = location.filesystem, location.root, location.uri
        self.layout = Layout(self.root)

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    # ---- primitive I/O -------------------------------------------------------------------------
    def write_atomic(self, path: str, data: bytes) -> None:
        """Write to a temporary sibling, then rename: readers see the old file or the new one."""
        storage.write_atomic(self.fs, path, data)

    def write_json(self, path: str, value: Any) -> None:
        self.write_atomic(path, json.dumps(value, indent=1, sort_keys=True, default=str).encode())

    def create_json(self, path: str, value: Any) -> bool:
        """Create `path` holding `value` unless it exists (`workers.storage.create_exclusive`);
        True if this call created it."""
        data = json.dumps(value, indent=1, sort_keys=True, default=str).encode()
        return storage.create_exclusive(self.fs, path, data)

    def read_json(self, path: str) -> Any:
        """A JSON file's value; a torn or corrupt one is a ValueError naming the file."""
        with self.fs.open_input_stream(path) as stream:
            data = stream.read()
        try:
            return json.loads(data)
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None

    def read_event(self, path: str) -> dict[str, Any]:
        """One status event; anything but an object with a known state names the file."""
        event = self.read_json(path)
        if not isinstance(event, dict) or event.get("state") not in STATES:
            raise ValueError(f"{path}: not a status event (an object with a state in {STATES})")
        return event

    def check_claims(self, unsafe: bool) -> None:
        """Refuse, in one line, a store where a claim could have two winners (`workers.storage.
        exact_creates`: GCS, Azure, ...), unless the user accepts that with `unsafe` (then a
        claim is a write re-read, and two drivers may train a cell twice)."""
        if unsafe or storage.exact_creates(self.fs):
            return
        raise ValueError(
            f"store {self.uri}: {self.fs.type_name} offers no conditional create, so two "
            "drivers could both claim a cell and train it twice; use a disk or s3://, or pass "
            "--unsafe-claims to accept that"
        )

    def check_root(self, must_exist: bool) -> None:
        """The root must be a folder, and exist where `must_exist` (commands that only read: an
        empty answer from a mistyped path would read as a fact). On S3 a missing bucket or
        refused credentials are named first, instead of surfacing as "no store" or as the error
        of whichever request came first."""
        if storage.is_s3(self.fs):
            problem = objectstore.bucket_problem(f"s3://{self.root}")
            if problem:
                raise ValueError(f"store {self.uri}: {problem}")
        kind = self.fs.get_file_info(self.root).type
        if kind == pafs.FileType.File:
            raise ValueError(f"store {self.uri} is a file, not a folder")
        if must_exist and kind == pafs.FileType.NotFound:
            raise FileNotFoundError(
                f"no store at {self.uri} (give --store or set $COMPSCALE_STORE)"
            )

    def create(self) -> None:
        """Create the root if needed and prove it writable with a probe file, so a submit fails
        in one line before it registers cells or starts Ray."""
        self.check_root(must_exist=False)
        probe = f"{self.root}/{storage.TEMP_PREFIX}probe-{os.getpid()}"
        try:
            storage.write_atomic(self.fs, probe, b"")
            self.fs.delete_file(probe)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
            raise ValueError(f"store {self.uri}: cannot write there ({reason})") from None

    def contains(self, target: StoreLocation) -> bool:
        """Whether a resolved path (`workers.layout.resolve`) lies inside this store, links
        resolved, so that an export can be kept from overwriting the files it was read from."""
        if type(target.filesystem) is not type(self.fs):
            return False
        inner, root = target.root, self.root
        if isinstance(self.fs, pafs.LocalFileSystem):
            inner, root = os.path.realpath(inner), os.path.realpath(root)
        return inner == root or inner.startswith(root.rstrip("/") + "/")

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def round_indices(self, sweep: str, kind: str) -> list[int]:
        """The numbers of an adaptive sweep's rounds that have a `kind` file ("json": the cells
        the round adds; "parquet": its row), in order."""
        names = self.list_names(self.layout.sweep(sweep).rounds)
        return sorted(
            int(match["round"])
            for name in names
            if (match := ROUND_NAME.match(name)) and match["kind"] == kind
        )

    def round_rows(self, sweep: str) -> list[dict[str, Any]]:
        """The sweep's rows of the `rounds` table, oldest first (none for a sweep that is not
        adaptive; `orchestrator.rounds` writes them)."""
        paths = self.layout.sweep(sweep)
        return [
            pq.read_table(paths.round_row(r), filesystem=self.fs).to_pylist()[0]
            for r in self.round_indices(sweep, "parquet")
        ]

    def list_names(self, directory: str) -> list[str]:
        """Names of the finished (non-temporary) entries of a directory; empty if it is absent."""
        return storage.list_names(self.fs, directory)

    def _files_matching(self, pattern: re.Pattern[str]) -> list[str]:
        selector = pafs.FileSelector(self.layout.cells, recursive=True, allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and pattern.search(info.path)
        )

    # ---- cells and sweeps ----------------------------------------------------------------------
    def put_cell(self, cell: CellConfig) -> None:
        """Record a cell's canonical config once; an existing cell.json is left as it is."""
        storage.write_cell_config(self.fs, self.layout, cell)

    def load_cell(self, cell_id: str) -> CellConfig:
        path = self.layout.cell(cell_id).config
        if not self.exists(path):
            raise FileNotFoundError(f"{path}: no such cell in the store")
        with self.fs.open_input_stream(path) as stream:
            return CellConfig.model_validate_json(stream.read())

    def put_sweep(self, name: str, spec_text: str, cell_ids: list[str]) -> None:
        """Write a sweep's spec and manifest (its cell ids; a cell may be in several sweeps)."""
        paths = self.layout.sweep(name)
        self.write_atomic(paths.spec, spec_text.encode())
        self.write_json(
            paths.manifest,
            {"sweep": name, "cell_ids": cell_ids, "written_at": utc_stamp()},
        )

    def sweep_names(self) -> list[str]:
        """Sweeps with a manifest (a folder left without one, e.g. by a crash, is not a sweep)."""
        names = self.list_names(self.layout.sweeps)
        return [n for n in names if self.exists(self.layout.sweep(n).manifest)]

    def manifest(self, name: str) -> list[str]:
        path = self.layout.sweep(name).manifest
        if not self.exists(path):
            known = ", ".join(self.sweep_names()) or "none"
            raise FileNotFoundError(f"no sweep {name!r} in store {self.uri} (sweeps: {known})")
        return list(self.read_json(path)["cell_ids"])

    def spec_text(self, name: str) -> str:
        self.manifest(name)  # the one-line error for an unknown sweep
        with self.fs.open_input_stream(self.layout.sweep(name).spec) as stream:
            return stream.read().decode()

    def delete_sweep(self, name: str) -> list[str]:
        """Delete the sweep's folder, then its cells that no other sweep lists; returns those
        cells. The manifest goes first, so a crash midway leaves no half sweep, only cells that
        a later submit reuses by id."""
        own = set(self.manifest(name))
        others = {c for sweep in self.sweep_names() if sweep != name for c in self.manifest(sweep)}
        self.fs.delete_dir(self.layout.sweep(name).directory)
        removed = sorted(own - others)
        trunks = {self._trunk_of(c) for c in removed} - {None}
        if trunks:  # a trunk goes with the last cell that branches from it
            trunks -= {self._trunk_of(c) for c in others}
        for cell_id in removed:
            if self.exists(self.layout.cell(cell_id).directory):
                self.fs.delete_dir(self.layout.cell(cell_id).directory)
        for trunk in trunks:
            if self.exists(self.layout.trunk(trunk).directory):
                self.fs.delete_dir(self.layout.trunk(trunk).directory)
        return removed

    def _trunk_of(self, cell_id: str) -> str | None:
        """The trunk a WSD cell would branch from; None for other cells (or no cell.json)."""
        try:
            cell = self.load_cell(cell_id)
        except FileNotFoundError:
            return None
        return trunk_id(cell) if cell.train.schedule == "wsd" else None

    def request_cancel(self, name: str) -> None:
        """Ask the sweep's running driver to stop (a new file per request: append-only)."""
        self.manifest(name)
        self.write_json(self.layout.sweep(name).cancel_request(utc_stamp()), {"sweep": name})

    def cancel_requested_since(self, name: str, stamp: str) -> bool:
        """Whether a cancel request newer than `stamp` (a `utc_stamp`) exists for the sweep."""
        requests = self.list_names(self.layout.sweep(name).cancel_requests)
        return any(entry > stamp for entry in requests)

    # ---- status events and heartbeats ----------------------------------------------------------
    def record(self, cell_id: str, state: str, attempt: int, **details: Any) -> None:
        """Append one status event (`CellPaths.event`): a new file per state change."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        moment = datetime.now(timezone.utc)
        event = {"cell_id": cell_id, "state": state, "attempt": attempt, "at": moment.isoformat()}
        path = self.layout.cell(cell_id).event(utc_stamp(moment), attempt, state)
        self.write_json(path, event | details)

    def record_trunk(self, trunk_id: str, state: str, fork: int, **details: Any) -> None:
        """Append one event of a ladder's trunk segment (the one that stops at `fork`): trunks
        are no cells, but when and where each segment ran is on record beside their cells'.
        Named attempt 0: the trunk's loss rows number their attempts on their own."""
        moment = datetime.now(timezone.utc)
        event = {"trunk_id": trunk_id, "state": state, "fork": fork, "at": moment.isoformat()}
        path = self.layout.trunk(trunk_id).event(utc_stamp(moment), 0, state)
        self.write_json(path, event | details)

    def trunk_events(self, trunk_id: str) -> list[dict[str, Any]]:
        """The trunk's segment events, oldest first."""
        paths = storage.list_paths(self.fs, self.layout.trunk(trunk_id).status)
        return [self.read_json(path) for path in paths if EVENT_NAME.match(path.rsplit("/", 1)[1])]

    def events(self, cell_id: str) -> list[str]:
        """The cell's status event file paths, oldest first."""
        paths = storage.list_paths(self.fs, self.layout.cell(cell_id).status)
        return [path for path in paths if EVENT_NAME.match(path.rsplit("/", 1)[1])]

    def next_attempt(self, cell_id: str) -> int:
        """The number the next attempt of the cell gets (`workers.storage.next_attempt`)."""
        return storage.next_attempt(self.fs, self.layout.cell(cell_id))

    def heartbeat(self, cell_id: str, attempt: int, host: str, pid: int) -> None:
        """Renew the lease of a running attempt (one small per-cell file, rewritten atomically)."""
        self.write_json(
            self.layout.cell(cell_id).heartbeat,
            {"attempt": attempt, "host": host, "pid": pid, "unix_time": time.time()},
        )

    def has_result(self, cell_id: str) -> bool:
        return self.exists(self.layout.cell(cell_id).result)

    def status(self, cell_id: str) -> CellStatus:
        """The cell's current state: its latest event's, or done if it has none but a result (a
        cell trained outside the orchestrator), else pending."""
        paths = self.events(cell_id)
        event = self.read_event(paths[-1]) if paths else {}
        state = event.get("state") or ("done" if self.has_result(cell_id) else "pending")
        age = None
        if state == "running":
            beat_path = self.layout.cell(cell_id).heartbeat
            if self.exists(beat_path):
                age = time.time() - self.read_json(beat_path)["unix_time"]
        return CellStatus(cell_id, state, int(event.get("attempt", 0)), event, age)

    # ---- reads for the reducer and for SQL -----------------------------------------------------
    def results(self, sweep: str) -> pd.DataFrame:
        """The result rows of a sweep's finished cells, one per cell: compscale.reduce's input."""
        paths = [self.layout.cell(c).result for c in self.manifest(sweep)]
        tables = [pq.read_table(p, filesystem=self.fs) for p in paths if self.exists(p)]
        if not tables:
            return RESULT_SCHEMA.empty_table().to_pandas()
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def latest_loss(self, cell_id: str, paths: CellPaths | None = None) -> dict[str, Any] | None:
        """The newest loss row of the cell's (or the trunk's at `paths`) highest attempt (None
        before its first flush): what `compscale status` shows of a running cell, reading one
        small file."""
        paths = paths or self.layout.cell(cell_id)
        attempts = [attempt_number(name) for name in self.list_names(paths.losses)]
        attempts = [attempt for attempt in attempts if attempt is not None]
        if not attempts:
            return None
        parts = self.list_names(paths.attempt(max(attempts)))
        if not parts:
            return None
        table = pq.read_table(f"{paths.attempt(max(attempts))}/{parts[-1]}", filesystem=self.fs)
        return table.slice(table.num_rows - 1).to_pylist()[0] if table.num_rows else None

    def losses(self, sweep: str) -> pd.DataFrame:
        """The loss rows of a sweep's cells (one per cell and step, the highest attempt's) with
        each cell's `model`, `format` and `params`: training curves, also of unfinished cells."""
        members = set(self.manifest(sweep))
        paths = [
            path
            for path in self._files_matching(LOSS_PART)
            if path.split("/cells/")[-1].split("/", 1)[0] in members
        ]
        if not paths:
            frame = LOSS_SCHEMA.empty_table().to_pandas()
            return frame.assign(model="", format="", params=0).iloc[:0]
        frame = ds.dataset(paths, schema=LOSS_SCHEMA, filesystem=self.fs).to_table().to_pandas()
        frame = frame.sort_values(["cell_id", "step", "attempt"])
        frame = frame.drop_duplicates(["cell_id", "step"], keep="last").reset_index(drop=True)
        cells = {cell_id: self.load_cell(cell_id) for cell_id in frame["cell_id"].unique()}
        return frame.assign(
            model=frame["cell_id"].map(lambda c: cells[c].model_label),
            format=frame["cell_id"].map(lambda c: cells[c].format),
            params=frame["cell_id"].map(lambda c: cells[c].params).astype("int64"),
        )

    def connect(self, views: Iterable[str] = VIEWS) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the named views over this store, locked read-only.

        The views read Arrow tables and datasets registered first; then external access is
        turned off and the configuration locked, so no statement on this connection can write a
        file (COPY, EXPORT, ATTACH), read one past the views (read_csv, glob, a path in FROM),
        load an extension or turn the lock off again.
        """
        import duckdb

        connection = duckdb.connect()
        views = list(views)
        if "losses" in views and "losses_raw" not in views:
            views.insert(0, "losses_raw")
        for view in sorted(views, key=VIEWS.index):
            if view == "losses":  # one row per (cell, step): the highest attempt's
                connection.execute(
                    "CREATE VIEW losses AS SELECT * FROM losses_raw QUALIFY row_number() "
                    "OVER (PARTITION BY cell_id, step ORDER BY attempt DESC) = 1"
                )
                continue
            table = getattr(self, f"_{view}_relation")()
            connection.register(f"{view}_source", table)
            connection.execute(f"CREATE VIEW {view} AS SELECT * FROM {view}_source")
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
        return connection

    def query(self, sql: str) -> duckdb.DuckDBPyRelation:
        """Run read-only SQL (SELECT, EXPLAIN) over the views it names (only those are built:
        building one reads the store). Any other statement, or a read outside the views, raises
        `ReadOnlyQuery`: stored results are facts, and `compscale query` must not rewrite them."""
        import duckdb

        named = [view for view in VIEWS if re.search(rf"\b{view}\b", sql, re.IGNORECASE)]
        connection = self.connect(named)
        try:
            statements = connection.extract_statements(sql)
            if not statements:
                raise ValueError("no SQL statement given")
            for statement in statements:
                if statement.type.name not in READ_STATEMENTS:
                    raise ReadOnlyQuery.because(f"{statement.type.name} statements are refused")
            return connection.sql(sql)
        except duckdb.PermissionException as error:
            raise ReadOnlyQuery.because(permission_reason(error)) from None

    def cell_ids(self) -> list[str]:
        return self.list_names(self.layout.cells)

    def _cells_relation(self) -> pa.Table:
        rows = []
        for cell_id in self.cell_ids():
            if not self.exists(self.layout.cell(cell_id).config):
                continue
            cell = self.load_cell(cell_id)
            rows.append(
                {
                    "cell_id": cell_id,
                    "model": cell.model_label,
                    "params": cell.params,
                    "tokens": cell.tokens,
                    "format": cell.format,
                    "seed": cell.seed,
                    "flops": cell.flops,
                    "d_model": cell.model.d_model,
                    "n_layers": cell.model.n_layers,
                    "n_heads": cell.model.n_heads,
                    "lr": cell.train.lr,
                    "batch_size": cell.train.batch_size,
                    "data_source": cell.data.source,
                    "world_size": cell.world_size,
                    "config": cell.model_dump_json(),
                }
            )
        return (
            pa.Table.from_pylist(rows) if rows else pa.table({"cell_id": pa.array([], pa.string())})
        )

    def _status_relation(self) -> pa.Table:
        return self._status_table(self.status(c) for c in self.cell_ids())

    def _events_relation(self) -> pa.Table:
        events = []
        for cell_id in self.cell_ids():
            for path in self.events(cell_id):
                event = self.read_event(path)
                events.append(CellStatus(cell_id, event["state"], event["attempt"], event))
        return self._status_table(events)

    @staticmethod
    def _status_table(statuses: Iterable[CellStatus]) -> pa.Table:
        rows = [
            {
                "cell_id": s.cell_id,
                "state": s.state,
                "attempt": s.attempt,
                "recorded_at": datetime.fromisoformat(s.event["at"]) if "at" in s.event else None,
            }
            | {
                key: s.event.get(key)
                for key in ("host", "pid", "error_class", "message", "traceback")
            }
            for s in statuses
        ]
        return pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)

    def _losses_raw_relation(self) -> ds.Dataset | pa.Table:
        paths = self._files_matching(LOSS_PART)
        if not paths:
            return LOSS_SCHEMA.empty_table()
        return ds.dataset(paths, schema=LOSS_SCHEMA, filesystem=self.fs, format="parquet")

    def _results_relation(self) -> pa.Table:
        paths = self._files_matching(RESULT)
        if not paths:
            return RESULT_SCHEMA.empty_table()
        tables = [pq.read_table(p, filesystem=self.fs) for p in paths]
        return pa.concat_tables(tables, promote_options="permissive")

    def _rounds_relation(self) -> pa.Table:
        rows = [row for sweep in self.sweep_names() for row in self.round_rows(sweep)]
        return pa.Table.from_pylist(rows, schema=ROUND_SCHEMA)

    def _sweeps_relation(self) -> pa.Table:
        rows = [{"sweep": s, "cell_id": c} for s in self.sweep_names() for c in self.manifest(s)]
        schema = pa.schema([("sweep", pa.string()), ("cell_id", pa.string())])
        return pa.Table.from_pylist(rows, schema=schema)
