"""Claims in the store, without Ray: one driver per sweep (refusal, release, takeover of a stale
claim, a taken-over driver noticing), one starter per attempt of a cell, and the retry budget
counted from status events."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import claims
from orchestrator.claims import SweepClaim, SweepHeld, claim_attempt, hold_sweep
from orchestrator.store import Store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "mock"])
def store(request, tmp_path):
    """A local store and one on an in-memory pyarrow filesystem (stands in for s3:// or gs://)."""
    return Store(tmp_path / "store" if request.param == "local" else "mock:///stores/s1")


def test_an_exclusive_create_succeeds_once_and_keeps_the_first_content(store):
    path = f"{store.root}/x/claim.json"
    assert store.create_json(path, {"who": "first"})
    assert not store.create_json(path, {"who": "second"})
    assert store.read_json(path) == {"who": "first"}
    assert store.list_names(f"{store.root}/x") == ["claim.json"]  # no temporary file left


def test_racing_processes_on_a_local_disk_create_a_claim_exactly_once(tmp_path):
    path = tmp_path / "claim.json"
    racer = (
        "import sys, pyarrow.fs as fs; from workers.storage import create_exclusive; "
        f"print(create_exclusive(fs.LocalFileSystem(), {str(path)!r}, sys.argv[1].encode()))"
    )
    env = os.environ | {"PYTHONPATH": str(REPO)}
    racers = [
        subprocess.Popen([sys.executable, "-c", racer, str(n)], stdout=subprocess.PIPE, env=env)
        for n in range(6)
    ]
    wins = [racer.communicate()[0].decode().strip() == "True" for racer in racers]
    assert sum(wins) == 1
    assert path.read_text() == str(wins.index(True))
    assert [p.name for p in tmp_path.iterdir()] == ["claim.json"]  # no temporary file left


def test_a_second_driver_of_a_sweep_is_refused_naming_the_first(store):
    first = SweepClaim(store, "s", lease_s=60)
    assert first.acquire() is None
    with pytest.raises(SweepHeld) as refused:
        SweepClaim(store, "s", lease_s=60).acquire()
    message = str(refused.value)
    assert "\n" not in message
    for fact in (socket.gethostname(), f"pid {os.getpid()}", first.content["since"]):
        assert fact in message
    assert first.renew() and not first.lost.is_set()
    first.release()
    second = SweepClaim(store, "s", lease_s=60)
    assert second.acquire() is None  # a released claim is no one's: no takeover note
    assert second.generation == 2


def test_a_stale_or_dead_driver_is_taken_over_and_the_old_one_notices(store):
    silent = SweepClaim(store, "s", lease_s=2)
    silent.acquire()
    path = store.layout.sweep("s").driver_claim(1)
    store.write_json(path, store.read_json(path) | {"unix_time": time.time() - 10})
    note = SweepClaim(store, "s", lease_s=2).acquire()
    assert "taking over" in note and "heartbeat is 10 s old" in note
    assert not silent.renew() and silent.lost.is_set()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = {"host": socket.gethostname(), "pid": dead.pid, "unix_time": time.time()}
    store.write_json(store.layout.sweep("t").driver_claim(1), gone | {"token": "x"})
    assert f"process {dead.pid} is gone" in SweepClaim(store, "t", lease_s=60).acquire()


def test_hold_sweep_renews_the_heartbeat_and_releases_at_the_end(store):
    with hold_sweep(store, "s", lease_s=60, heartbeat_s=0.05) as claim:
        path = store.layout.sweep("s").driver_claim(claim.generation)
        first = store.read_json(path)["unix_time"]
        time.sleep(0.3)
        assert store.read_json(path)["unix_time"] > first
    assert store.read_json(path)["released"] is True


def test_an_attempt_has_one_starter_and_a_silent_one_is_taken_over_once(store):
    claim = {"lease_s": 60, "host": "h", "pid": 1}
    assert claim_attempt(store, "c", "task-a", **claim) == (claims.CLAIMED, 1)
    store.heartbeat("c", 1, "h", 1)
    store.record("c", "running", 1, host="h", pid=1)
    assert claim_attempt(store, "c", "task-b", **claim) == (claims.HELD, 1)  # another driver's
    assert claim_attempt(store, "c", "task-a", **claim) == (claims.CLAIMED, 2)  # Ray's retry
    deaths = [p for p in store.events("c") if p.endswith("-a1-failed.json")]
    assert [store.read_json(p)["error_class"] for p in deaths] == ["WorkerDied"]

    store.write_json(store.layout.cell("c").claim(2), {"token": "task-a", "unix_time": 0})
    assert claim_attempt(store, "c", "task-b", **claim) == (claims.CLAIMED, 3)  # a silent one
    store.record("c", "running", 3)
    store.record("c", "done", 3)
    assert claim_attempt(store, "c", "task-c", **claim) == (claims.DONE, 3)
    assert claim_attempt(store, "c", "task-c", force=True, **claim) == (claims.CLAIMED, 4)
    events = [p.rsplit("-", 2)[1:] for p in store.events("c")]
    assert events.count(["a1", "failed.json"]) == 1 and events.count(["a2", "failed.json"]) == 1
    assert store.next_attempt("c") == 5


def test_a_cancelled_attempt_is_over_without_a_death(store):
    store.record("c", "running", 1)
    store.heartbeat("c", 1, "h", 1)
    store.record("c", "cancelled", 0)
    outcome = claim_attempt(store, "c", "t", lease_s=60, host="h", pid=1)
    assert outcome == (claims.CLAIMED, 2)
    assert not any(p.endswith("-failed.json") for p in store.events("c"))


def test_the_retry_budget_counts_application_failures_since_done_or_rerun(store):
    def failed(attempt: int, error: str, retryable: bool = True) -> None:
        store.record("c", "failed", attempt, error_class=error, retryable=retryable)

    failed(1, "RuntimeError")
    store.record("c", "done", 2)
    failed(3, "RuntimeError")
    failed(4, "WorkerDied")  # not the cell's fault
    failed(5, "RuntimeError")
    store.record("c", "pending", 0)
    assert claims.application_failures(store, "c")[0] == 2
    assert claims.retry_budget_left(store, "c", retries=2)
    assert not claims.retry_budget_left(store, "c", retries=1)
    store.record("c", "pending", 0, rerun=True)  # `compscale rerun`: a fresh budget
    assert claims.application_failures(store, "c") == (0, None)
    failed(6, "FileNotFoundError", retryable=False)
    assert not claims.retry_budget_left(store, "c", retries=5)
