"""The Ray driver on a real local Ray, with a cell double that really sleeps and writes Parquet: a
SIGKILLed worker is retried, a raising cell ends failed with its traceback, done cells
are skipped."""

import json
import threading
import time
from pathlib import Path

import doubles
import pytest

from orchestrator.cells import expand
from orchestrator.cli import main
from orchestrator.cluster import auto_in_flight, unplaceable
from orchestrator.driver import drive, plan
from orchestrator.spec import Resources, parse_spec
from orchestrator.store import Store
from orchestrator.tasks import execute_cell

SPEC = """
name: faults
models: [tiny]
tokens: [8000]
formats: [dense, int4, int8]
retries: 1
"""


def submit(store: Store, **plan_options) -> dict[str, int]:
    """What `compscale submit` does, in process, with the double as the cell function."""
    spec = parse_spec(SPEC)
    cells = expand(spec)
    for cell in cells:
        store.put_cell(cell)
    store.put_sweep(spec.name, SPEC, [cell.cell_id for cell in cells])
    planned = plan(cells, store, **plan_options)
    return drive(
        spec.name,
        planned,
        store,
        resources=spec.resources,
        retries=spec.retries,
        cell_fn=doubles.run_cell,
        heartbeat_s=0.5,
    )


def mark(tmp_path: Path, kind: str, cell_id: str) -> Path:
    marker = tmp_path / "double" / kind / cell_id
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return marker


@pytest.mark.slow
def test_faults_are_retried_recorded_and_rerun_on_request(ray_local, tmp_path, capsys):
    store = Store(tmp_path / "store")
    killed, failing, healthy = (cell.cell_id for cell in expand(parse_spec(SPEC)))
    mark(tmp_path, "kill", killed)
    fail_marker = mark(tmp_path, "fail", failing)

    assert submit(store) == {"done": 2, "failed": 1, "cancelled": 0}

    # The SIGKILLed worker was retried by Ray and finished; its first attempt is on record.
    assert store.status(killed).state == "done"
    assert store.status(killed).attempt == 2
    events = store.query(f"select state, error_class from events where cell_id = '{killed}'")
    assert ("failed", "WorkerDied") in events.fetchall()
    losses = store.query(
        f"select step, attempt from losses where cell_id = '{killed}' order by step"
    )
    assert losses.fetchall() == [(step, 2) for step in range(1, 9)]  # one row per step
    raw_steps = store.query(f"select count(*) from losses_raw where cell_id = '{killed}'")
    assert raw_steps.fetchall() == [(8 + 3,)]  # attempt 1 flushed 3 steps before it died

    # The raising cell was tried 1 + retries times and ends failed with its traceback.
    status = store.status(failing)
    assert (status.state, status.attempt, status.event["error_class"]) == (
        "failed",
        2,
        "InjectedFailure",
    )
    assert "raise InjectedFailure" in status.event["traceback"]
    assert store.status(healthy).attempt == 1

    # Submitting again runs nothing: done cells are skipped, the failed one is held.
    actions = {item.cell.cell_id: item.action for item in plan(expand(parse_spec(SPEC)), store)}
    assert actions == {killed: "skip", failing: "hold", healthy: "skip"}
    assert submit(store) == {"done": 0, "failed": 0, "cancelled": 0}

    # `compscale status --json` carries the traceback; after the cause is fixed, `compscale rerun
    # --failed` makes the cell done (in process: the CLI reuses the Ray this module started).
    cli = ["--store", store.uri]
    capsys.readouterr()
    assert main(["status", "faults", "--json", *cli]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {row["cell_id"]: row for row in map(json.loads, lines)}
    assert "InjectedFailure: injected failure" in rows[failing]["traceback"]
    fail_marker.unlink()
    assert main(["rerun", "faults", "--failed", *cli, "--cell-fn", "doubles:run_cell"]) == 0
    assert store.status(failing).state == "done"
    assert store.status(failing).attempt == 3
    assert store.status(healthy).attempt == 1  # never rerun
    assert len(store.results("faults")) == 3

    # A done cell reruns only when forced.
    rerun_healthy = ["rerun", "faults", "--cells", healthy, *cli, "--cell-fn", "doubles:run_cell"]
    assert main(rerun_healthy) == 0
    assert "add --force" in capsys.readouterr().out
    assert store.status(healthy).attempt == 1
    assert main([*rerun_healthy, "--force"]) == 0
    assert store.status(healthy).attempt == 2


def test_a_cell_running_under_a_live_lease_is_waited_for_then_run_once_the_lease_expires(
    ray_local, tmp_path
):
    store = Store(tmp_path / "store")
    spec = parse_spec(SPEC)
    cell = expand(spec)[0]
    store.put_cell(cell)
    store.record(cell.cell_id, "running", 1, host="elsewhere", pid=1)
    store.heartbeat(cell.cell_id, 1, "elsewhere", 1)  # then that worker goes silent
    planned = plan([cell], store, lease_s=2)
    assert [item.action for item in planned] == ["wait"]
    started = time.monotonic()
    counts = drive(
        spec.name,
        planned,
        store,
        resources=spec.resources,
        retries=0,
        cell_fn=doubles.run_cell,
        lease_s=2,
    )
    assert counts["done"] == 1
    assert time.monotonic() - started >= 2  # it did not steal the cell while the lease held
    events = store.query(
        f"select state, attempt, error_class from events where cell_id = '{cell.cell_id}' "
        "and state in ('running', 'failed', 'done') order by recorded_at"
    ).fetchall()
    assert events == [
        ("running", 1, None),
        ("failed", 1, "WorkerDied"),
        ("running", 2, None),
        ("done", 2, None),
    ]


def test_the_running_and_done_events_name_the_ray_node_of_the_attempt(ray_local, tmp_path):
    import ray

    store = Store(tmp_path / "store")
    spec = parse_spec(SPEC)
    cell = expand(spec)[0]
    counts = drive(
        spec.name,
        plan([cell], store),
        store,
        resources=spec.resources,
        retries=0,
        cell_fn=doubles.run_cell,
    )
    assert counts["done"] == 1
    node = (ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address())
    events = {event["state"]: event for event in map(store.read_json, store.events(cell.cell_id))}
    for state in ("running", "done"):  # `done` too: what `status --json` shows of a done cell
        assert (events[state]["node_id"], events[state]["node_ip"]) == node


@pytest.mark.slow
def test_a_cell_of_world_size_two_runs_ddp_in_two_ray_train_workers(ray_local, tmp_path):
    store = Store(tmp_path / "store")
    spec = parse_spec("name: ddp\nmodels: [tiny]\ntokens: [8000]\nformats: [int4]\nworld_size: 2\n")
    (cell,) = expand(spec)
    counts = drive(
        spec.name,
        plan([cell], store),
        store,
        resources=spec.resources,
        retries=0,
        cell_fn=doubles.run_cell,
    )
    assert counts["done"] == 1, store.status(cell.cell_id).event
    rows = store.query("select count(*), count(distinct step) from losses_raw").fetchall()
    assert rows == [(8, 8)]  # rank 0 alone wrote each step once
    assert store.query("select world_size from results").fetchall() == [(2,)]


def test_an_attempt_that_wrote_its_result_then_died_is_not_rerun(tmp_path):
    store = Store(tmp_path / "store")
    cell = expand(parse_spec(SPEC))[0]
    store.record(cell.cell_id, "running", 1, host="h", pid=1)
    doubles.run_cell(cell, store.uri)  # the result lands; then the task dies before `done`
    stale = {"attempt": 1, "host": "h", "pid": 1, "unix_time": time.time() - 120}
    store.write_json(store.layout.cell(cell.cell_id).heartbeat, stale)
    planned = plan([cell], store, lease_s=60)
    assert [item.action for item in planned] == ["skip"]
    options = {"resources": Resources(), "retries": 0, "max_in_flight": 1}
    assert drive("faults", planned, store, cell_fn=doubles.run_cell, **options)["done"] == 0
    assert store.status(cell.cell_id).state == "done"  # no longer shown running forever


def test_cells_in_flight_default_to_twice_what_the_cluster_runs_at_once():
    cells = expand(parse_spec(SPEC))
    cpu_only, gpus = Resources(cpus=1), Resources(cpus=2, gpus=1)
    assert auto_in_flight({"CPU": 16.0}, cpu_only, cells) == 32
    assert auto_in_flight({"CPU": 16.0, "GPU": 4.0}, gpus, cells) == 8  # GPUs bind first
    ddp = [cell.model_copy(update={"world_size": 4}) for cell in cells]
    assert auto_in_flight({"CPU": 16.0}, cpu_only, ddp) == 8
    assert auto_in_flight({"CPU": 1.0}, Resources(cpus=4), cells) == 2  # never below 2


def attempts_started(store: Store, cell_id: str) -> list[int]:
    return [
        row[0]
        for row in store.query(
            f"select attempt from events where cell_id = '{cell_id}' and state = 'running' "
            "order by attempt"
        ).fetchall()
    ]


@pytest.mark.parametrize("died_after", ["pending", "failed"])
def test_a_restarted_driver_spends_what_is_left_of_a_failing_cells_retry_budget(
    ray_local, tmp_path, died_after
):
    store = Store(tmp_path / "store")
    spec = parse_spec(SPEC)
    cell = expand(spec)[0]
    mark(tmp_path, "fail", cell.cell_id)
    # A driver before this one saw two application failures, then was killed before (failed) or
    # after (pending) it queued the cell again.
    for attempt in (1, 2):
        store.record(cell.cell_id, "running", attempt, host="h", pid=1)
        store.record(cell.cell_id, "failed", attempt, error_class="InjectedFailure", retryable=True)
    if died_after == "pending":
        store.record(cell.cell_id, "pending", 0)
    planned = plan([cell], store, retries=2)
    assert [item.action for item in planned] == ["run"]
    counts = drive(
        spec.name, planned, store, resources=spec.resources, retries=2, cell_fn=doubles.run_cell
    )
    assert counts == {"done": 0, "failed": 1, "cancelled": 0}
    assert attempts_started(store, cell.cell_id) == [1, 2, 3]  # one more try, not 1 + retries
    assert [item.action for item in plan([cell], store, retries=2)] == ["hold"]


def test_a_configuration_error_is_recorded_once_and_never_retried(ray_local, tmp_path):
    store = Store(tmp_path / "store")
    spec = parse_spec(SPEC)
    cell = expand(spec)[0]
    mark(tmp_path, "misconfigured", cell.cell_id)
    counts = drive(
        spec.name,
        plan([cell], store),
        store,
        resources=spec.resources,
        retries=3,
        cell_fn=doubles.run_cell,
    )
    assert counts == {"done": 0, "failed": 1, "cancelled": 0}
    assert attempts_started(store, cell.cell_id) == [1]
    status = store.status(cell.cell_id)
    assert (status.event["error_class"], status.event["retryable"]) == ("FileNotFoundError", False)
    assert [item.action for item in plan([cell], store, retries=3)] == ["hold"]


def test_a_cell_another_task_claimed_is_held_until_it_finishes_there(ray_local, tmp_path):
    store = Store(tmp_path / "store")
    spec = parse_spec(SPEC)
    cell = expand(spec)[0]
    # Another sweep's driver started attempt 1 and is alive; then this driver's `pending` landed.
    other = {"token": "other-task", "host": "elsewhere", "pid": 1, "unix_time": time.time()}
    store.create_json(store.layout.cell(cell.cell_id).claim(1), other)
    store.record(cell.cell_id, "running", 1, host="elsewhere", pid=1)
    store.heartbeat(cell.cell_id, 1, "elsewhere", 1)
    store.record(cell.cell_id, "pending", 0)
    planned = plan([cell], store, lease_s=8)
    assert [item.action for item in planned] == ["run"]  # its latest event says pending

    finisher = threading.Timer(3, store.record, (cell.cell_id, "done", 1))
    finisher.start()
    counts = drive(
        spec.name,
        planned,
        store,
        resources=spec.resources,
        retries=0,
        cell_fn=doubles.run_cell,
        lease_s=8,
    )
    finisher.join()
    assert counts["done"] == 1
    assert attempts_started(store, cell.cell_id) == [1]  # this driver never started it
    assert store.status(cell.cell_id).state == "done"


def test_a_death_as_the_last_word_runs_again_and_a_cell_ray_gave_up_on_is_held(tmp_path):
    store = Store(tmp_path / "store")
    dead, crashing = expand(parse_spec(SPEC))[:2]
    store.record(dead.cell_id, "failed", 1, error_class="WorkerDied")  # its heir stopped too
    store.record(crashing.cell_id, "failed", 7, error_class="WorkerCrashedError", retryable=False)
    actions = [item.action for item in plan([dead, crashing], store, retries=6)]
    assert actions == ["run", "hold"]


def test_a_task_told_to_exit_records_its_attempt_dead_and_the_cell_runs_again(tmp_path):
    """Ray makes a task's process exit (SystemExit) when the driver that owns it dies."""
    store = Store(tmp_path / "store")
    cell = expand(parse_spec(SPEC))[0]

    def told_to_exit(cell, store_uri: str, attempt: int) -> dict:
        raise SystemExit(1)

    with pytest.raises(SystemExit):
        execute_cell(cell.model_dump_json(), store.uri, told_to_exit, "task")
    status = store.status(cell.cell_id)
    assert (status.state, status.event["error_class"]) == ("failed", "WorkerDied")
    assert [item.action for item in plan([cell], store, retries=0)] == ["run"]


def test_a_task_interrupted_after_its_driver_cancelled_the_cell_leaves_it_cancelled(tmp_path):
    """Ctrl-C reaches the driver and its workers at once; the driver's `cancelled` may land
    before the worker's handler runs, and then stands."""
    store = Store(tmp_path / "store")
    cell = expand(parse_spec(SPEC))[0]

    def interrupted_after_cancel(cell, store_uri: str, attempt: int) -> dict:
        Store(store_uri).record(cell.cell_id, "cancelled", 0, message="cancelled while running")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute_cell(cell.model_dump_json(), store.uri, interrupted_after_cancel, "task")
    assert store.status(cell.cell_id).state == "cancelled"


def test_no_node_fits_is_none_when_one_does_and_names_the_shortfall_otherwise():
    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 2.0}},  # lost: its GPUs do not count
        {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
    ]
    assert unplaceable(nodes, Resources(cpus=4)) is None
    assert unplaceable(nodes, Resources(cpus=2, gpus=1)) is None
    problem = unplaceable(nodes, Resources(cpus=4, gpus=1))
    assert "(2 nodes; at most 8 CPU, 1 GPU on one) has the 4 CPU and 1 GPU one cell" in problem
    assert "at most 0 CPU" in unplaceable([], Resources(cpus=1))


def test_a_sweep_no_node_can_run_says_so_instead_of_waiting_in_silence(ray_local, tmp_path, capfd):
    spec = parse_spec(SPEC + "resources: {cpus: 1, gpus: 1}\n")  # ray_local has no GPU
    cells = expand(spec)
    store = Store(tmp_path / "store")
    store.put_sweep(spec.name, SPEC, [cell.cell_id for cell in cells])
    options = {"resources": spec.resources, "retries": 0, "cell_fn": doubles.run_cell}
    counts: dict[str, int] = {}
    driver = threading.Thread(
        target=lambda: counts.update(drive(spec.name, plan(cells, store), store, **options))
    )
    driver.start()
    deadline = time.monotonic() + 60
    while "has the 1 CPU and 1 GPU one cell asks for" not in capfd.readouterr().err:
        assert driver.is_alive() and time.monotonic() < deadline
        time.sleep(0.2)
    store.request_cancel(spec.name)
    driver.join(timeout=30)
    assert counts == {"done": 0, "failed": 0, "cancelled": 3}
