"""The autopilot of adaptive sweeps: rounds until the question is answered, in the store, resumable;
its interval is the reducer's; bad `adaptive:` blocks fail in one line before anything runs."""

import signal
import subprocess
import time

import pytest
from doubles import law_cell
from helpers import COMPSCALE, compscale, environment, kill_session

from compscale.laws import FitOptions
from compscale.questions import answer, parse_question
from compscale.reduce import reduce
from orchestrator import autopilot, rounds
from orchestrator.cells import expand
from orchestrator.spec import parse_spec
from orchestrator.store import Store

LAW_CELL = ["--cell-fn", "doubles:law_cell"]


def adaptive_spec(name="ad", question="composition sp50 int4", extra="target: 0.005", **fields):
    """48 round-0 cells (3 sizes x 2 budgets x 4 formats x 2 seeds): 7.2e11 FLOPs; at most 3
    looks with the default budget; the target is out of reach so the looks run out."""
    values = {"budget_flops": "1.2e+12", "round_flops": "2.0e+11", "bootstrap": 40} | fields
    block = ", ".join([f"question: {question}", extra, *(f"{k}: {v}" for k, v in values.items())])
    return (
        f"name: {name}\nmodels: [tiny, 100k, 200k]\ntokens: [8192, 32768]\n"
        f"formats: [dense, sp50, int4, sp50+int4]\nseeds: [0, 1]\nadaptive: {{{block}}}\n"
    )


class Interrupted(Exception):
    """A driver killed mid-loop."""


def trainer(store, trained, stop_after_calls=None):
    """Runs what the driver would: every cell without a result, with the law double."""
    calls = []

    def run_cells(cells):
        calls.append(len(cells))
        if stop_after_calls is not None and len(calls) > stop_after_calls:
            raise Interrupted
        for cell in cells:
            if not store.has_result(cell.cell_id):
                law_cell(cell, store.uri, 1)
                store.record(cell.cell_id, "done", 1)
                trained.append(cell.cell_id)
        return 0

    return run_cells


def registered(tmp_path, text):
    (tmp_path / "double").mkdir(exist_ok=True)
    (tmp_path / "double" / "sleep_s").write_text("0")
    store = Store(tmp_path / "store")
    store.create()
    spec = parse_spec(text)
    cells = expand(spec)
    for cell in cells:
        store.put_cell(cell)
    store.put_sweep(spec.name, text, [cell.cell_id for cell in cells])
    return spec, store, cells


@pytest.mark.slow  # real Ray, three rounds of fits: tens of seconds
def test_a_loop_killed_after_round_1_resumes_there_and_trains_no_cell_twice(tmp_path):
    spec, store, cells = registered(tmp_path, adaptive_spec())
    trained: list[str] = []
    with pytest.raises(Interrupted):  # killed when round 2's cells were about to run
        autopilot.run(spec, store, cells, trainer(store, trained, 2), say=lambda _: None)
    before = store.round_rows("ad")
    assert [row["round"] for row in before] == [0, 1] and not before[-1]["stopped"]
    assert 2 in rounds.added_cells(store, "ad")  # round 2's cells were recorded before running

    code = autopilot.run(spec, store, cells, trainer(store, trained), say=lambda _: None)
    assert code == 0
    after = store.round_rows("ad")
    assert [row["round"] for row in after] == [0, 1, 2]
    assert after[:2] == before  # rows already in the table are not redone
    assert after[-1]["stopped"] == "last look the budget allows" and not after[-1]["decided"]
    assert len(trained) == len(set(trained)) == len(store.manifest("ad"))
    assert after[-1]["cells"] == len(store.manifest("ad")) > len(cells)
    assert all(row["flops"] <= 1.2e12 for row in after)
    assert after[0]["cells_added"] == len(cells)
    # every added (N, D, seed) group has every format: the paired fit keeps pairing
    added = [cell for group in rounds.added_cells(store, "ad").values() for cell in group]
    groups = {}
    for cell in added:
        groups.setdefault((cell.params, cell.tokens, cell.seed), set()).add(cell.format)
    assert all(found == set(spec.formats) for found in groups.values())
    # a third start finds the loop stopped and runs nothing
    assert autopilot.run(spec, store, cells, trainer(store, trained, 0), say=print) == 0


@pytest.mark.slow  # real Ray and two 40-resample fits
def test_the_rounds_interval_is_the_one_a_fresh_reduction_of_the_same_cells_gives(tmp_path):
    spec, store, cells = registered(tmp_path, adaptive_spec(budget_flops="7.5e+11"))
    autopilot.run(spec, store, cells, trainer(store, []), say=lambda _: None)
    (row,) = store.round_rows("ad")
    assert row["stopped"] == "last look the budget allows"  # one look: at 95%
    reduction = reduce(store.results("ad"), FitOptions(seed=spec.adaptive.seed, bootstrap=40))
    again = answer(parse_question("composition sp50 int4"), reduction.unified, row["level"])
    assert (again.estimate, again.low, again.high) == (row["estimate"], row["low"], row["high"])
    table = reduction.composition.set_index("format").loc["sp50+int4"]
    assert table["ratio"] == pytest.approx(row["estimate"], rel=1e-9)
    assert (table["ratio_ci_low"], table["ratio_ci_high"]) == pytest.approx(
        (row["low"], row["high"]), rel=5e-3
    )  # the same draws; the table interpolates percentiles of the ratio, the question of its log


@pytest.mark.slow  # over a few seconds
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (adaptive_spec(question="rho int8"), "adaptive.question: 'rho int8' needs format int8"),
        (adaptive_spec(budget_flops="1.0e+11"), "adaptive.budget_flops: 1e+11 FLOPs is below"),
        (adaptive_spec(extra="target: 0"), "adaptive.target: Input should be greater than 0"),
        (adaptive_spec(extra="target: -0.1"), "adaptive.target: Input should be greater than 0"),
        (
            adaptive_spec().replace(", sp50+int4]", "]"),
            "adaptive.question: 'composition sp50 int4' needs format sp50+int4",
        ),
        (
            adaptive_spec().replace("[dense, ", "["),
            "adaptive.question: 'composition sp50 int4' needs format dense",
        ),
        (adaptive_spec(question="compose sp50"), "adaptive.question: expected one of"),
        (adaptive_spec(extra="level: 0.95"), "adaptive.target: expected a positive half-width"),
    ],
)
def test_a_bad_adaptive_block_fails_in_one_line_naming_the_field_and_nothing_runs(
    tmp_path, text, message
):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    done = compscale("submit", str(spec), *LAW_CELL, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "store" / "sweeps").exists()


def test_order_needs_no_target(tmp_path):
    spec = parse_spec(adaptive_spec(question="order sp50+int4 sp50 int4", extra="level: 0.9"))
    assert spec.adaptive.target is None


def running_events(store, cell_id):
    return sum(path.endswith("-running.json") for path in store.events(cell_id))


@pytest.mark.slow
def test_submit_runs_the_loop_on_ray_and_a_driver_killed_after_round_1_resumes(tmp_path):
    spec = tmp_path / "ad.yaml"
    spec.write_text(adaptive_spec())
    (tmp_path / "double").mkdir()
    (tmp_path / "double" / "sleep_s").write_text("1")
    store = Store(tmp_path / "store")
    flags = [*LAW_CELL, "--heartbeat-s", "0.5", "--lease-s", "3"]
    driver = subprocess.Popen(
        [COMPSCALE, "submit", str(spec), *flags],
        cwd=tmp_path,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        row_1 = tmp_path / "store" / "sweeps" / "ad" / "rounds" / "round-000001.parquet"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not row_1.exists():
            time.sleep(0.2)
        assert row_1.exists(), "round 1 never reached the table"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        kill_session(driver.pid)
    done_before = [c for c in store.manifest("ad") if store.status(c).state == "done"]
    assert len(store.round_rows("ad")) == 2

    again = compscale("submit", str(spec), *flags, cwd=tmp_path, timeout=400)
    assert again.returncode == 0, again.stderr
    assert "stopped: last look the budget allows" in again.stdout
    rows = store.round_rows("ad")
    assert [row["round"] for row in rows] == [0, 1, 2]
    members = store.manifest("ad")
    assert {store.status(c).state for c in members} == {"done"}
    for cell_id in done_before:
        assert running_events(store, cell_id) == 1  # never trained twice
    assert all(running_events(store, c) <= 2 for c in members)  # killed mid-cell at most once

    status = compscale("status", "ad", cwd=tmp_path)
    assert status.returncode == 0 and "round 2: +" in status.stdout, status.stdout
    query = compscale(
        "query", "select round, stopped from rounds order by 1", "--csv", cwd=tmp_path
    )
    assert query.stdout.splitlines()[1:] == ["0,", "1,", "2,last look the budget allows"]
    rerun = compscale("rerun", "ad", "--failed", *flags, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert store.round_rows("ad") == rows  # rerun keeps the rounds
