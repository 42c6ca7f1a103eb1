"""Claims in the store: one driver per sweep, one starter per attempt of a cell or trunk segment.

Both rest on `Store.create_json`, a create that fails when the name exists, with exactly one
winner among racers (`workers.storage.create_exclusive`: a hard link on a disk, a conditional PUT
on S3; a store without either is refused unless told `--unsafe-claims`, `Store.check_claims`).
Nothing is ever deleted, so a claim file is also the record of who ran what.

- A driver takes `sweeps/<name>/drivers/<generation>.json`, renews its heartbeat while it runs
  and marks it released when it stops. A second driver finds the highest generation live and
  refuses (`SweepHeld`); a stale one (heartbeat older than the lease, or its pid gone on this
  host) is taken over by creating the next generation, so two drivers racing for a takeover
  cannot both win. A driver that finds a newer generation than its own on renewal has been taken
  over (it was silent longer than the lease) and stops.
- A cell's Ray task (`claim_attempt`) takes `cells/<id>/claims/attempt-<k>.json` before it records
  `running`. It does not start a cell whose latest attempt is done, or is running under a live
  lease of another task (held elsewhere: another driver's, or another sweep's); it takes over a
  silent one, and only the task that wins attempt k + 1 records attempt k's death, so a death is
  recorded once and only for an attempt that stopped.
- A WSD ladder's trunk segment (`claim_segment`, the one that stops at fork f) is trained under
  `trunks/<id>/claims/fork-<f>-attempt-<k>.json`, which its task then rewrites as its heartbeat
  and marks ended. A fork whose checkpoint exists is done; a live claim of another task (two
  sweeps sharing the ladder) is waited for; a silent or dead one is taken over, and its death
  recorded in the trunk's events by the task that wins the next number.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from orchestrator.store import Store
from workers.layout import (
    EVENT_NAME,
    attempt_number,
    claim_number,
    driver_generation,
    segment_claim_number,
)

# Failed events that are not the cell's own fault: they never use up its retry budget.
NOT_APPLICATION_ERRORS = ("WorkerDied", "TaskCancelledError", "KeyboardInterrupt", "SystemExit")


class SweepHeld(ValueError):
    """Another live driver runs the sweep (the CLI prints it as one line, exit code 2)."""


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (a zombie, killed, not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust kill(0)


def _stopped_because(claim: dict[str, Any], lease_s: float) -> str | None:
    """Why the holder of a claim with a heartbeat (`unix_time`) has stopped, or None if it runs."""
    if claim.get("released"):
        return "it finished"
    if claim.get("host") == socket.gethostname() and not pid_alive(int(claim.get("pid", 0))):
        return f"its process {claim.get('pid')} is gone"
    age = time.time() - float(claim.get("unix_time", 0))
    if age > lease_s:
        return f"its heartbeat is {age:.0f} s old (lease {lease_s:g} s)"
    return None


def _describe_driver(claim: dict[str, Any]) -> str:
    age = time.time() - float(claim.get("unix_time", 0))
    return (
        f"host {claim.get('host')}, pid {claim.get('pid')}, since {claim.get('since')} "
        f"(last heartbeat {age:.0f} s ago)"
    )


class SweepClaim:
    """This driver's claim on a sweep: `acquire`, `renew` (a daemon thread does it in
    `hold_sweep`), `release`. `lost` is set when another driver took the sweep over."""

    def __init__(self, store: Store, sweep: str, *, lease_s: float):
        self.store, self.sweep, self.lease_s = store, sweep, lease_s
        self.paths = store.layout.sweep(sweep)
        self.generation = 0
        self.lost = threading.Event()
        self.content = {
            "sweep": sweep,
            "token": os.urandom(8).hex(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }

    def _generations(self) -> list[int]:
        names = self.store.list_names(self.paths.drivers)
        return sorted(g for g in map(driver_generation, names) if g is not None)

    def holder(self) -> dict[str, Any] | None:
        """The live driver holding the sweep, if any (its claim file's content)."""
        generations = self._generations()
        if not generations:
            return None
        claim = self.store.read_json(self.paths.driver_claim(generations[-1]))
        return None if _stopped_because(claim, self.lease_s) else claim

    def acquire(self) -> str | None:
        """Take the sweep, or raise `SweepHeld` naming the live driver that has it. Returns a
        note when it took over from a driver that stopped without releasing it."""
        for _ in range(5):  # each lost race re-reads the winner, then refuses or retries
            generations = self._generations()
            note = None
            if generations:
                current = self.store.read_json(self.paths.driver_claim(generations[-1]))
                why = _stopped_because(current, self.lease_s)
                if why is None:
                    raise SweepHeld(
                        f"sweep {self.sweep} is already being run by a driver on "
                        f"{_describe_driver(current)}; a second driver would train its cells "
                        f"twice (stop it with `compscale cancel {self.sweep}`)"
                    )
                if not current.get("released"):
                    note = (
                        f"sweep {self.sweep}: taking over from the driver on host "
                        f"{current.get('host')}, pid {current.get('pid')} (since "
                        f"{current.get('since')}): {why}"
                    )
            generation = (generations[-1] if generations else 0) + 1
            if self.store.create_json(self.paths.driver_claim(generation), self._beat()):
                self.generation = generation
                return note
        raise SweepHeld(f"sweep {self.sweep}: other drivers keep taking it; try again")

    def _beat(self) -> dict[str, Any]:
        return self.content | {"unix_time": time.time()}

    def renew(self) -> bool:
        """Renew the heartbeat; False (and `lost` set) if another driver took the sweep over."""
        path = self.paths.driver_claim(self.generation)
        newer = max(self._generations(), default=0) > self.generation
        if newer or self.store.read_json(path).get("token") != self.content["token"]:
            self.lost.set()
            return False
        self.store.write_json(path, self._beat())
        return True

    def release(self) -> None:
        """Mark the claim released, so the next driver starts without waiting for the lease."""
        if self.generation and not self.lost.is_set():
            self.store.write_json(
                self.paths.driver_claim(self.generation), self._beat() | {"released": True}
            )


@contextmanager
def hold_sweep(
    store: Store, sweep: str, *, lease_s: float, heartbeat_s: float
) -> Iterator[SweepClaim]:
    """Hold the sweep for the block: acquire (or raise `SweepHeld`), renew every `heartbeat_s`
    on a daemon thread, release at the end."""
    claim = SweepClaim(store, sweep, lease_s=lease_s)
    note = claim.acquire()
    if note:
        print(note, flush=True)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(heartbeat_s):
            try:
                if not claim.renew():
                    return
            except OSError as error:  # a missed beat is survivable; the lease is generous
                print(f"heartbeat of sweep {sweep} failed: {error}", file=sys.stderr)

    threading.Thread(target=renew, daemon=True, name=f"sweep-{sweep}").start()
    try:
        yield claim
    finally:
        stop.set()
        claim.release()


# ---- cells ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """The highest-numbered attempt of a cell, as the store shows it."""

    cell_id: str
    number: int
    ended: str | None  # done / failed / cancelled; None while it runs, or if it died silently
    token: str | None  # the task that claimed it (None: started outside a driver's task)
    host: str | None
    pid: int | None
    last_seen: float | None  # unix time of its latest sign of life (claim, running, heartbeat)

    def alive(self, lease_s: float) -> bool:
        """Not ended, and a sign of life within the lease."""
        return (
            self.ended is None
            and self.last_seen is not None
            and time.time() - self.last_seen <= lease_s
        )


def _stamp_time(stamp: str) -> float:
    moment = datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    return moment.timestamp()


def latest_attempt(store: Store, cell_id: str) -> Attempt | None:
    """The cell's highest attempt (from its claims, status events and loss folders) and how it
    stands; None if it never started. Lists three folders; reads two small files at most."""
    paths = store.layout.cell(cell_id)
    events = [m for m in map(EVENT_NAME.match, store.list_names(paths.status)) if m]
    claimed = {k for k in map(claim_number, store.list_names(paths.claims)) if k is not None}
    folders = [k for k in map(attempt_number, store.list_names(paths.losses)) if k is not None]
    number = max([int(m["attempt"]) for m in events] + [*claimed, *folders], default=0)
    if number == 0:
        return None
    mine = [m for m in events if int(m["attempt"]) == number]
    states = {m["state"] for m in mine}
    started = min((m["stamp"] for m in mine if m["state"] == "running"), default=None)
    claim = store.read_json(paths.claim(number)) if number in claimed else {}
    ended = next((s for s in ("done", "failed") if s in states), None)
    if ended is None and started is not None:
        cancels = (m["stamp"] for m in events if m["state"] == "cancelled")
        ended = "cancelled" if any(stamp > started for stamp in cancels) else None
    if ended is None and started is None and not claim:  # a run outside the orchestrator
        ended = "done" if store.has_result(cell_id) else "failed"
    seen = [float(claim["unix_time"])] if claim else []
    if ended is None:
        if started is not None:
            seen.append(_stamp_time(started))
        if store.exists(paths.heartbeat):
            beat = store.read_json(paths.heartbeat)
            if beat.get("attempt") == number:
                seen.append(float(beat["unix_time"]))
    return Attempt(
        cell_id,
        number,
        ended,
        claim.get("token"),
        claim.get("host"),
        claim.get("pid"),
        max(seen, default=None),
    )


def record_death(store: Store, attempt: Attempt, how: str) -> None:
    """Record that an attempt ended without a word, so the history shows every failure."""
    store.record(
        attempt.cell_id,
        "failed",
        attempt.number,
        host=attempt.host,
        pid=attempt.pid,
        error_class="WorkerDied",
        message=f"attempt {attempt.number} stopped: {how}",
    )


CLAIMED, HELD, DONE = "claimed", "held", "done"


def claim_attempt(
    store: Store,
    cell_id: str,
    token: str,
    *,
    lease_s: float,
    force: bool = False,
    host: str,
    pid: int,
) -> tuple[str, int]:
    """Claim the cell's next attempt for the task `token`. Returns (`CLAIMED`, its number), or
    (`DONE`, the attempt that finished the cell; `force` reruns one another task finished), or
    (`HELD`, the attempt of another task that runs under a live lease). A silent attempt is taken
    over and its death recorded."""
    for _ in range(3):  # a lost race for a number re-reads who won it
        latest = latest_attempt(store, cell_id)
        if latest is not None:
            if latest.ended == "done" and (not force or latest.token == token):
                return DONE, latest.number
            if latest.ended is None and latest.token != token and latest.alive(lease_s):
                return HELD, latest.number
        number = latest.number + 1 if latest else 1
        claim = {"token": token, "host": host, "pid": pid, "unix_time": time.time()}
        if store.create_json(store.layout.cell(cell_id).claim(number), claim):
            if latest is not None and latest.ended is None:
                how = (
                    "its process died (killed or node lost); Ray retried the task"
                    if latest.token == token
                    else "its heartbeat lease expired"
                )
                record_death(store, latest, how)
            return CLAIMED, number
    return HELD, number


# ---- trunk segments ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentClaim:
    """One claim of a trunk segment (the one that stops at `fork`): its attempt `number` and
    content (`token`, `host`, `pid`, `unix_time` of its latest heartbeat, `ended` once over)."""

    trunk_id: str
    fork: int
    number: int
    content: dict[str, Any]

    def stopped(self, lease_s: float) -> str | None:
        """Why its holder no longer trains (it ended, its process is gone, its heartbeat is older
        than the lease), or None while it does."""
        if self.content.get("ended"):
            return f"it ended ({self.content['ended']})"
        return _stopped_because(self.content, lease_s)


def latest_segment_claim(store: Store, trunk_id: str, fork: int) -> SegmentClaim | None:
    """The segment's highest-numbered claim (one listing, one small read); None if unclaimed."""
    paths = store.layout.trunk(trunk_id)
    numbers = [segment_claim_number(name, fork) for name in store.list_names(paths.claims)]
    number = max((k for k in numbers if k is not None), default=0)
    if number == 0:
        return None
    return SegmentClaim(trunk_id, fork, number, store.read_json(paths.segment_claim(fork, number)))


def claim_segment(
    store: Store, trunk_id: str, fork: int, token: str, *, lease_s: float, host: str, pid: int
) -> tuple[str, SegmentClaim | None]:
    """Claim the next attempt of the trunk segment that stops at `fork` for the task `token`.
    Returns (`CLAIMED`, its claim), (`DONE`, None) when the fork's checkpoint exists, or (`HELD`,
    the claim of another task that trains it under a live lease). A stopped holder is taken over,
    and so is one of `token`'s own (Ray retries a task whose process died with the same token)."""
    paths = store.layout.trunk(trunk_id)
    for _ in range(3):  # a lost race for a number re-reads who won it
        if store.exists(paths.checkpoint(fork)):
            return DONE, None
        latest = latest_segment_claim(store, trunk_id, fork)
        why = latest.stopped(lease_s) if latest else None
        if latest is not None and why is None and latest.content.get("token") != token:
            return HELD, latest
        number = latest.number + 1 if latest else 1
        content = {"token": token, "host": host, "pid": pid, "unix_time": time.time()}
        if store.create_json(paths.segment_claim(fork, number), content):
            if latest is not None and not latest.content.get("ended"):
                _record_segment_death(store, latest, why or "its process died; Ray retried it")
            return CLAIMED, SegmentClaim(trunk_id, fork, number, content)
    return HELD, latest


def _record_segment_death(store: Store, claim: SegmentClaim, how: str) -> None:
    """Record, once (by the task that won the next number), that a segment's attempt stopped
    without a word."""
    store.record_trunk(
        claim.trunk_id,
        "failed",
        claim.fork,
        attempt=claim.number,
        host=claim.content.get("host"),
        pid=claim.content.get("pid"),
        error_class="WorkerDied",
        message=f"segment attempt {claim.number} stopped: {how}",
    )


def renew_segment(store: Store, claim: SegmentClaim, ended: str | None = None) -> None:
    """Renew the heartbeat of a claim this task holds, or mark it `ended` (done, failed), so a
    task waiting for the segment takes over without waiting for the lease."""
    content = claim.content | {"unix_time": time.time()} | ({"ended": ended} if ended else {})
    path = store.layout.trunk(claim.trunk_id).segment_claim(claim.fork, claim.number)
    store.write_json(path, content)


def application_failures(store: Store, cell_id: str) -> tuple[int, dict[str, Any] | None]:
    """The cell's application failures since it was last done or a rerun was asked for (failed
    events other than deaths and cancellations), and its latest failed event. Reads the failed
    and pending events, newest first, up to the last `done` or rerun request."""
    failures, latest = 0, None
    for path in reversed(store.events(cell_id)):
        state = EVENT_NAME.match(path.rsplit("/", 1)[1])["state"]
        if state == "done":
            break
        if state not in ("failed", "pending"):
            continue
        event = store.read_json(path)
        if state == "pending":
            if event.get("rerun"):
                break
            continue
        latest = latest or event
        failures += event.get("error_class") not in NOT_APPLICATION_ERRORS
    return failures, latest


def retry_budget_left(store: Store, cell_id: str, retries: int) -> bool:
    """Whether a failed cell may run again without a `rerun`: its latest failure was a retryable
    application error and it failed at most `retries` times since it was last done or rerun."""
    failures, latest = application_failures(store, cell_id)
    return (
        latest is not None
        and bool(latest.get("retryable"))
        and latest.get("error_class") not in NOT_APPLICATION_ERRORS
        and failures <= retries
    )
