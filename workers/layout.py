"""Where everything lives in a store: the one owner of every path of a cell and of a sweep.

A store is a root folder on a pyarrow filesystem: a local path (made absolute here, once) or a URI
such as `s3://bucket/prefix`. Every other module asks this one for a path instead of building it
from strings, so the layout in docs/contracts.md is written down in code exactly once:

    cells/<cell_id>/cell.json                              the canonical config
    cells/<cell_id>/losses/attempt-<k>/part-<n:06d>.parquet  loss rows, one file per flush
    cells/<cell_id>/checkpoints/step-<steps:09d>.pt       resume points (deleted when done)
    cells/<cell_id>/result.parquet                         the one result row, written last
    cells/<cell_id>/status/<utc-ts>-a<k>-<state>.json      append-only status events
    cells/<cell_id>/heartbeat.json                         the running attempt's lease
    cells/<cell_id>/claims/attempt-<k>.json                who started attempt k (created once)
    cells/<cell_id>/tensorboard/, wandb/                   tracker files, with `trackers` on
    trunks/<trunk_id>/checkpoints/, losses/, status/       a WSD ladder's shared trunk
    trunks/<trunk_id>/claims/fork-<f:09d>-attempt-<k>.json  who trains attempt k of the segment
                                                           to fork f (created once, then beats)
    sweeps/<name>/spec.yaml, manifest.json, cancel/<utc-ts>.json, driver.log
    sweeps/<name>/drivers/<generation:06d>.json            driver claims; the highest one holds
    sweeps/<name>/reduction/, report/                      reducer tables and the report
    sweeps/<name>/rounds/round-<r:06d>.json, .parquet      an adaptive sweep's rounds: the cells
                                                           a round adds (created once, before
                                                           they run), then its row (after)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

EVENT_NAME = re.compile(
    r"^(?P<stamp>\d{8}T\d{6}\.\d{6}Z)-a(?P<attempt>\d+)-(?P<state>[a-z]+)\.json$"
)
ATTEMPT_DIR = re.compile(r"^attempt-(?P<attempt>\d+)$")
CLAIM_NAME = re.compile(r"^attempt-(?P<attempt>\d+)\.json$")
SEGMENT_CLAIM_NAME = re.compile(r"^fork-(?P<fork>\d{9})-attempt-(?P<attempt>\d+)\.json$")
DRIVER_CLAIM_NAME = re.compile(r"^(?P<generation>\d{6})\.json$")
CHECKPOINT_NAME = re.compile(r"^step-(?P<steps>\d{9})\.pt$")
# Files found by listing the whole store (paths relative to its root).
LOSS_PART = re.compile(r"(^|/)cells/[^/]+/losses/attempt-\d+/part-\d+\.parquet$")
RESULT = re.compile(r"(^|/)cells/[^/]+/result\.parquet$")
ROUND_NAME = re.compile(r"^round-(?P<round>\d{6})\.(?P<kind>json|parquet)$")


@dataclass(frozen=True)
class StoreLocation:
    """A resolved store: its filesystem, its root path there, and the URI to hand to other
    processes (for a local store the absolute path, so Ray workers in other folders find it)."""

    filesystem: pafs.FileSystem
    root: str
    uri: str


def resolve(uri: str | os.PathLike[str], what: str = "store") -> StoreLocation:
    """The one resolver of URIs (stores, and token shards alike): `scheme://...` through pyarrow,
    anything else a local path made absolute (`~` expanded, symbolic links kept as written).
    `what` names the URI in the error."""
    text = os.fspath(uri)
    if "://" in text:
        try:
            filesystem, root = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, OSError) as error:
            raise ValueError(f"{what} {text!r}: {error}") from None
        return StoreLocation(filesystem, root.rstrip("/"), text)
    root = os.path.abspath(os.path.expanduser(text))
    return StoreLocation(pafs.LocalFileSystem(), root, root)


@dataclass(frozen=True)
class CellPaths:
    """Every path of one cell."""

    directory: str

    @property
    def config(self) -> str:
        return f"{self.directory}/cell.json"

    @property
    def losses(self) -> str:
        return f"{self.directory}/losses"

    def attempt(self, attempt: int) -> str:
        return f"{self.losses}/attempt-{attempt}"

    def loss_part(self, attempt: int, sequence: int) -> str:
        return f"{self.attempt(attempt)}/part-{sequence:06d}.parquet"

    @property
    def checkpoints(self) -> str:
        return f"{self.directory}/checkpoints"

    def checkpoint(self, steps: int) -> str:
        return f"{self.checkpoints}/step-{steps:09d}.pt"

    @property
    def result(self) -> str:
        return f"{self.directory}/result.parquet"

    @property
    def status(self) -> str:
        return f"{self.directory}/status"

    def event(self, stamp: str, attempt: int, state: str) -> str:
        """A status event's path; names sort in time because `stamp` is a `utc_stamp`."""
        return f"{self.status}/{stamp}-a{attempt}-{state}.json"

    @property
    def heartbeat(self) -> str:
        return f"{self.directory}/heartbeat.json"

    @property
    def claims(self) -> str:
        return f"{self.directory}/claims"

    def claim(self, attempt: int) -> str:
        """Created exclusively by the task that starts attempt `attempt`: one starter per number."""
        return f"{self.claims}/attempt-{attempt}.json"

    @property
    def tensorboard(self) -> str:
        """TensorBoard event files, one per attempt (`workers.trackers`); views of the loss
        rows, written in place, so `tensorboard --logdir <store>/cells` shows every cell."""
        return f"{self.directory}/tensorboard"

    @property
    def wandb(self) -> str:
        """W&B's run folders (`workers.trackers`): W&B makes `wandb/` in the folder it is given,
        the cell's."""
        return f"{self.directory}/wandb"


@dataclass(frozen=True)
class TrunkPaths(CellPaths):
    """Every path of a WSD ladder's trunk: a cell's, and the claims of its segments."""

    def segment_claim(self, fork: int, attempt: int) -> str:
        """Created exclusively by the task that trains attempt `attempt` of the segment that
        stops at `fork`: one trainer per number; it then rewrites it as its heartbeat."""
        return f"{self.claims}/fork-{fork:09d}-attempt-{attempt}.json"


@dataclass(frozen=True)
class SweepPaths:
    """Every path of one sweep (its cells live under `cells/`, shared between sweeps)."""

    directory: str

    @property
    def spec(self) -> str:
        return f"{self.directory}/spec.yaml"

    @property
    def manifest(self) -> str:
        return f"{self.directory}/manifest.json"

    @property
    def cancel_requests(self) -> str:
        return f"{self.directory}/cancel"

    def cancel_request(self, stamp: str) -> str:
        return f"{self.cancel_requests}/{stamp}.json"

    @property
    def driver_log(self) -> str:
        return f"{self.directory}/driver.log"

    @property
    def drivers(self) -> str:
        return f"{self.directory}/drivers"

    def driver_claim(self, generation: int) -> str:
        """Created exclusively by the driver that takes the sweep; a takeover creates the next."""
        return f"{self.drivers}/{generation:06d}.json"

    @property
    def reduction(self) -> str:
        return f"{self.directory}/reduction"

    @property
    def report(self) -> str:
        return f"{self.directory}/report"

    @property
    def rounds(self) -> str:
        return f"{self.directory}/rounds"

    def round_cells(self, round_index: int) -> str:
        """The cells an adaptive round adds (created once, before they run)."""
        return f"{self.rounds}/round-{round_index:06d}.json"

    def round_row(self, round_index: int) -> str:
        """The round's row of the `rounds` table (written once, after its fit)."""
        return f"{self.rounds}/round-{round_index:06d}.parquet"


@dataclass(frozen=True)
class Layout:
    """The folders of a store rooted at `root` (a path on the store's filesystem)."""

    root: str

    @property
    def cells(self) -> str:
        return f"{self.root}/cells"

    @property
    def sweeps(self) -> str:
        return f"{self.root}/sweeps"

    def cell(self, cell_id: str) -> CellPaths:
        return CellPaths(f"{self.cells}/{cell_id}")

    def sweep(self, name: str) -> SweepPaths:
        return SweepPaths(f"{self.sweeps}/{name}")

    @property
    def trunks(self) -> str:
        return f"{self.root}/trunks"

    def trunk(self, trunk_id: str) -> TrunkPaths:
        """A WSD trunk shared by a ladder's cells (`workers.ladder`): its checkpoints at the fork
        steps and its loss rows, laid out as a cell's, outside `cells/` since it is no cell."""
        return TrunkPaths(f"{self.trunks}/{trunk_id}")


def event_attempt(name: str) -> int | None:
    """The attempt number in a status event's file name (None if it is not one)."""
    match = EVENT_NAME.match(name)
    return int(match["attempt"]) if match else None


def claim_number(name: str) -> int | None:
    """The attempt number of a `claims/attempt-<k>.json` file name (None if it is not one)."""
    match = CLAIM_NAME.match(name)
    return int(match["attempt"]) if match else None


def segment_claim_number(name: str, fork: int) -> int | None:
    """The attempt number of a `claims/fork-<fork>-attempt-<k>.json` file name (None if it is
    not one, or one of another fork's segment)."""
    match = SEGMENT_CLAIM_NAME.match(name)
    return int(match["attempt"]) if match and int(match["fork"]) == fork else None


def driver_generation(name: str) -> int | None:
    """The generation of a `drivers/<generation>.json` file name (None if it is not one)."""
    match = DRIVER_CLAIM_NAME.match(name)
    return int(match["generation"]) if match else None


def attempt_number(name: str) -> int | None:
    """The attempt number of a `losses/attempt-<k>` folder name (None if it is not one)."""
    match = ATTEMPT_DIR.match(name)
    return int(match["attempt"]) if match else None
