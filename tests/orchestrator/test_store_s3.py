"""The store on S3 (a moto server on 127.0.0.1): single-PUT writes, claims, reduce and report into
the store, and the sweep commands as a user runs them with `--store s3://bucket/prefix`."""

import json
import os
import signal
import subprocess
import time

import boto3
import pytest
from helpers import COMPSCALE, DOUBLE, compscale, environment, fill_store, kill_session, write_spec
from s3 import moto_s3, unique_prefix

from orchestrator.cli import main
from orchestrator.store import Store
from workers import storage


@pytest.fixture(scope="module")
def s3():
    """The AWS_* variables of a fresh moto server, set in this process for the module's tests."""
    with moto_s3() as env:
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def keys(env: dict, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=env["COMPSCALE_TEST_BUCKET"], Prefix=prefix
    )
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def test_an_object_store_write_is_one_put_without_temporary_objects_or_renames(s3):
    prefix = unique_prefix()
    store = Store(f"s3://compscale/{prefix}")
    assert storage.is_object_store(store.fs)
    assert not storage.is_object_store(Store("/tmp").fs)
    path = store.layout.cell("c").event("20260101T000000.000000Z", 1, "running")
    store.write_json(path, {"state": "running"})
    store.write_atomic(store.layout.cell("c").result, b"x" * (6 << 20))  # a multipart upload
    assert store.create_json(store.layout.cell("c").claim(1), {"token": "a"})
    assert not store.create_json(store.layout.cell("c").claim(1), {"token": "b"})
    assert store.read_json(store.layout.cell("c").claim(1)) == {"token": "a"}
    assert keys(s3, prefix) == [
        f"{prefix}/cells/c/claims/attempt-1.json",
        f"{prefix}/cells/c/result.parquet",
        f"{prefix}/cells/c/status/20260101T000000.000000Z-a1-running.json",
    ]  # no `.tmp-` object, no folder markers


@pytest.mark.slow  # over a few seconds
def test_reduce_and_report_write_their_tables_and_page_into_the_s3_store(s3, capsys):
    store = Store(f"s3://compscale/{unique_prefix()}")
    fill_store(store, "synthetic")
    common = ["synthetic", "--store", store.uri, "--bootstrap", "10", "--jobs", "1"]
    assert main(["reduce", *common]) == 0
    reduction = store.layout.sweep("synthetic").reduction
    assert {"reduction.json", "rho.parquet"} <= set(store.list_names(reduction))
    assert f"tables: {store.uri}/sweeps/synthetic/reduction" in capsys.readouterr().out

    assert main(["report", *common]) == 0  # reads the tables back from the store
    out = capsys.readouterr().out
    assert f"report: {store.uri}/sweeps/synthetic/report/report.html" in out
    report = store.layout.sweep("synthetic").report
    names = store.list_names(report)
    assert "report.html" in names and any(name.endswith(".png") for name in names)
    page = storage.read_bytes(store.fs, f"{report}/report.html")
    assert len(page) > 20_000


def json_rows(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


@pytest.mark.slow
def test_the_sweep_commands_run_against_a_store_on_s3(s3, tmp_path):
    uri = f"s3://compscale/{unique_prefix()}"
    control = tmp_path / "double"
    control.mkdir()
    env = environment(**s3, COMPSCALE_DOUBLE_DIR=str(control))
    spec = write_spec(tmp_path / "s3.yaml", "s3", ["dense", "int4", "int8"])
    submitted = compscale("submit", str(spec), "--store", uri, *DOUBLE, cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert f"store {uri}" in submitted.stdout
    store = Store(uri)
    cells = store.manifest("s3")
    assert {store.status(c).state for c in cells} == {"done"}
    assert not [key for key in keys(s3, uri[len("s3://compscale/") :]) if "/.tmp-" in key]

    status = compscale("status", "s3", "--json", "--store", uri, cwd=tmp_path, env=env)
    rows = json_rows(status.stdout)
    assert [row["state"] for row in rows] == ["done"] * 3 and all(row["host"] for row in rows)
    counted = compscale(
        "query", "select count(*) n from losses", "--csv", "--store", uri, cwd=tmp_path, env=env
    )
    assert counted.stdout.splitlines() == ["n", str(3 * 8)], counted.stderr

    rerun = compscale(
        "rerun", "s3", "--cells", cells[0], "--force", "--store", uri, *DOUBLE,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    running = [name for name in store.events(cells[0]) if name.endswith("-running.json")]
    assert len(running) == 2

    # A driver killed mid-sweep, the sweep cancelled, then submitted again: all done, done cells
    # never rerun, no loss row twice.
    formats = ["dense", "int4", "int8", "sp50"]
    slow = write_spec(tmp_path / "slow.yaml", "slow", formats, max_in_flight=1, seeds="[1]")
    (control / "sleep_s").write_text("1.5")
    command = [COMPSCALE, "submit", str(slow), "--store", uri, *DOUBLE]
    command += ["--heartbeat-s", "0.5", "--lease-s", "3"]
    driver = subprocess.Popen(
        command, cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline, done_before = time.monotonic() + 120, []
        while time.monotonic() < deadline and not done_before:
            time.sleep(0.5)
            if "slow" in store.sweep_names():
                done_before = [c for c in store.manifest("slow") if store.status(c).state == "done"]
        assert done_before, "the first driver finished no cell"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        kill_session(driver.pid)
    cancelled = compscale("cancel", "slow", "--store", uri, cwd=tmp_path, env=env)
    assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout
    (control / "sleep_s").write_text("0.2")
    again = compscale(
        "submit", str(slow), "--store", uri, *DOUBLE, "--heartbeat-s", "0.5", "--lease-s", "3",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert {store.status(c).state for c in store.manifest("slow")} == {"done"}
    for cell_id in done_before:
        assert sum(n.endswith("-running.json") for n in store.events(cell_id)) == 1
    duplicated = store.query(
        "select count(*) from (select cell_id, step from losses group by all having count(*) > 1)"
    )
    assert duplicated.fetchall() == [(0,)]
