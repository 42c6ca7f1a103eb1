"""Claims of WSD trunk segments, without Ray: one trainer per attempt of a segment among racing
processes (on a local disk and on S3, a moto server on 127.0.0.1), a silent, dead or ended holder
taken over (its death recorded once), a live one waited for until its fork's checkpoint exists,
and the claim's lease held and ended by the segment's task."""

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from helpers import race_at_once
from s3 import moto_s3, unique_prefix

from orchestrator import claims
from orchestrator.claims import claim_segment, latest_segment_claim
from orchestrator.store import Store
from orchestrator.tasks import claim_segment_or_wait, execute_trunk

TRUNK, FORK, RACERS = "trunk-tiny-sp50-s0-0123456789ab", 40, 4

RACER = """
import json, sys, time
from orchestrator import claims
from orchestrator.store import Store
store = Store(sys.argv[1])
store.check_root(must_exist=False)  # the S3 client made and connected before the start
print("ready", flush=True)
start = float(sys.stdin.readline())
read = claims.latest_segment_claim

def read_then_wait(*args):  # the worst interleaving: every racer reads before any creates
    seen = read(*args)
    time.sleep(max(0.0, start + 0.5 - time.time()))
    return seen

claims.latest_segment_claim = read_then_wait
time.sleep(max(0.0, start - time.time()))
outcome, claim = claims.claim_segment(
    store, sys.argv[2], int(sys.argv[3]), f"racer-{sys.argv[4]}", lease_s=60, host="racers", pid=0
)
print(json.dumps([outcome, claim.number]), flush=True)
"""


@pytest.fixture(params=["local", "mock"])
def store(request, tmp_path):
    """A local store and one on an in-memory pyarrow filesystem (stands in for s3:// or gs://)."""
    return Store(tmp_path / "store" if request.param == "local" else "mock:///stores/s1")


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as env:
        yield env


def race(store: Store, env: dict[str, str]) -> list[tuple[str, int]]:
    """RACERS processes claim the segment (TRUNK, FORK) at one moment, each having seen the
    segment as it was before any of them created a claim: each one's (outcome, attempt number)."""
    arguments = [[store.uri, TRUNK, str(FORK), str(n)] for n in range(RACERS)]
    results = [tuple(answer) for answer in race_at_once(RACER, arguments, env)]
    return results


def stale_holder(store: Store) -> None:
    """Attempt 1 of the segment, claimed on another host, its heartbeat 10 minutes old."""
    path = store.layout.trunk(TRUNK).segment_claim(FORK, 1)
    silent = {"token": "silent", "host": "elsewhere", "pid": 1, "unix_time": time.time() - 600}
    assert store.create_json(path, silent)


def deaths(store: Store) -> list[dict]:
    return [e for e in store.trunk_events(TRUNK) if e.get("error_class") == "WorkerDied"]


def assert_one_winner(results: list[tuple[str, int]], number: int) -> None:
    assert Counter(outcome for outcome, _ in results) == {claims.CLAIMED: 1, claims.HELD: 3}
    assert {attempt for _, attempt in results} == {number}  # the losers wait for the winner's


@pytest.mark.slow  # over a few seconds
@pytest.mark.parametrize("stale", [False, True], ids=["first", "takeover"])
def test_racing_processes_claim_a_trunk_segment_on_a_local_disk_exactly_once(tmp_path, stale):
    store = Store(tmp_path / "store")
    if stale:
        stale_holder(store)
    assert_one_winner(race(store, {}), 2 if stale else 1)
    assert len(deaths(store)) == stale  # a taken-over holder's death, recorded once


@pytest.mark.slow  # over a few seconds
@pytest.mark.parametrize("stale", [False, True], ids=["first", "takeover"])
def test_racing_processes_claim_a_trunk_segment_on_s3_exactly_once(s3, monkeypatch, stale):
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    store = Store(f"s3://compscale/{unique_prefix()}")
    if stale:
        stale_holder(store)
    assert_one_winner(race(store, s3), 2 if stale else 1)
    assert len(deaths(store)) == stale


def test_a_segment_is_held_done_or_taken_over_as_its_holder_stands(store):
    def claim(token: str, **where) -> tuple[str, int | None]:
        where = {"host": "h", "pid": 1} | where
        outcome, held = claim_segment(store, TRUNK, FORK, token, lease_s=60, **where)
        return outcome, held.number if held else None

    assert claim("task-a") == (claims.CLAIMED, 1)
    assert claim("task-b") == (claims.HELD, 1)  # another driver's task, live
    assert claim("task-a") == (claims.CLAIMED, 2)  # Ray's retry of task-a: its process died
    (death,) = deaths(store)
    assert (death["fork"], death["attempt"]) == (FORK, 1) and "Ray retried" in death["message"]

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = store.layout.trunk(TRUNK).segment_claim(FORK, 2)
    here = {"token": "task-a", "host": socket.gethostname(), "pid": dead.pid}
    store.write_json(path, here | {"unix_time": time.time()})
    assert claim("task-b") == (claims.CLAIMED, 3)  # its process is gone from this host
    assert f"its process {dead.pid} is gone" in deaths(store)[-1]["message"]

    claims.renew_segment(store, latest_segment_claim(store, TRUNK, FORK), ended="failed")
    assert claim("task-c") == (claims.CLAIMED, 4)  # an ended attempt is no one's: no death
    assert len(deaths(store)) == 2
    assert claim_segment(store, TRUNK, 24, "task-c", lease_s=60, host="h", pid=1)[1].number == 1
    store.write_atomic(store.layout.trunk(TRUNK).checkpoint(FORK), b"trained")
    assert claim("task-d") == (claims.DONE, None)


def test_a_task_waits_for_a_live_holder_until_the_fork_checkpoint_exists(store):
    assert claim_segment(store, TRUNK, FORK, "holder", lease_s=60, host="h", pid=1)[0] == "claimed"
    trained = threading.Timer(
        1.0, store.write_atomic, (store.layout.trunk(TRUNK).checkpoint(FORK), b"trained")
    )
    trained.start()
    began = time.monotonic()
    assert claim_segment_or_wait(store, TRUNK, FORK, "waiter", lease_s=2) is None
    assert time.monotonic() - began >= 1.0
    (held,) = store.trunk_events(TRUNK)
    assert (held["state"], held["attempt"]) == ("held", 1) and "host h, pid 1" in held["message"]


def test_a_task_waiting_for_a_holder_that_goes_silent_takes_it_over(store):
    assert claim_segment(store, TRUNK, FORK, "holder", lease_s=1, host="h", pid=1)[0] == "claimed"
    began = time.monotonic()
    taken = claim_segment_or_wait(store, TRUNK, FORK, "waiter", lease_s=1)
    assert taken.number == 2 and taken.content["token"] == "waiter"
    assert time.monotonic() - began >= 1.0  # not before the holder's lease expired
    states = [event["state"] for event in store.trunk_events(TRUNK)]
    assert states == ["held", "failed"]
    message = deaths(store)[0]["message"]
    assert "its heartbeat is" in message and "(lease 1 s)" in message


def test_a_segment_task_beats_while_it_trains_and_ends_its_claim(tmp_path):
    store = Store(tmp_path / "store")  # the task opens the store by its URI: a disk, not mock

    def train(cell, store_uri, attempt, ladder) -> dict:
        first = latest_segment_claim(store, TRUNK, FORK).content["unix_time"]
        time.sleep(0.4)
        assert latest_segment_claim(store, TRUNK, FORK).content["unix_time"] > first
        if ladder.forks == (FORK,):
            raise RuntimeError("the trunk's first try fails")
        store.write_atomic(store.layout.trunk(TRUNK).checkpoint(FORK), b"trained")
        return {}

    top = json.dumps({"model": "tiny", "format": "sp50", "tokens": 10240})
    with pytest.raises(RuntimeError):
        execute_trunk(top, store.uri, train, TRUNK, (FORK,), heartbeat_s=0.05)
    assert latest_segment_claim(store, TRUNK, FORK).content["ended"] == "failed"
    summary = execute_trunk(top, store.uri, train, TRUNK, (24, FORK), heartbeat_s=0.05)
    assert summary == {"trunk_id": TRUNK, "fork": FORK}
    claim = latest_segment_claim(store, TRUNK, FORK)
    assert (claim.number, claim.content["ended"]) == (2, "done")
    events = [(e["state"], e["attempt"]) for e in store.trunk_events(TRUNK)]
    assert events == [("running", 1), ("failed", 1), ("running", 2), ("done", 2)]  # no death
