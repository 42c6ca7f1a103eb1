"""Claims on object stores: on S3 (a moto server on 127.0.0.1) a claim is one conditional PUT with
exactly one winner among racing processes; stores without a conditional create are refused by the
commands that claim unless told `--unsafe-claims`; a missing bucket and refused credentials are
one line each, exit code 2, with nothing written."""

from collections import Counter

import boto3
import pytest
from helpers import race_at_once, write_spec
from s3 import moto_s3, unique_prefix

from orchestrator.cli import build_parser, main
from orchestrator.cli_sweep import _runner_flags
from orchestrator.store import Store

RACERS, NAMES = 12, 30

RACER = """
import json, sys, time
from orchestrator.store import Store
store = Store(sys.argv[1])
paths = [f"{store.root}/race/claim-{n:02d}.json" for n in range(int(sys.argv[3]))]
store.check_root(must_exist=False)  # the S3 client made and connected before the start
print("ready", flush=True)
start = float(sys.stdin.readline())
won = []
for k, path in enumerate(paths):  # every racer tries name k at the same moment
    time.sleep(max(0.0, start + 0.1 * k - time.time()))
    if store.create_json(path, {"racer": sys.argv[2]}):
        won.append(path)
print(json.dumps(won), flush=True)
"""


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as env:
        yield env


def point_at(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Set the AWS_* variables in this process (pyarrow reads the real environment)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def objects(env: dict, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    listing = client.list_objects_v2(Bucket=env["COMPSCALE_TEST_BUCKET"], Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.mark.slow  # over a few seconds
def test_racing_processes_claim_each_name_on_s3_exactly_once(s3, monkeypatch):
    point_at(monkeypatch, s3)
    store = Store(f"s3://compscale/{unique_prefix()}")
    answers = race_at_once(RACER, [[store.uri, str(n), str(NAMES)] for n in range(RACERS)], s3)
    won = dict(enumerate(answers))
    winners = Counter(path for paths in won.values() for path in paths)
    assert len(winners) == NAMES and set(winners.values()) == {1}
    for n, paths in won.items():
        for path in paths:
            assert store.read_json(path) == {"racer": str(n)}


def test_a_claim_on_s3_keeps_the_first_content_and_leaves_one_object(s3, monkeypatch):
    point_at(monkeypatch, s3)
    prefix = unique_prefix()
    store = Store(f"s3://compscale/{prefix}")
    path = store.layout.cell("c").claim(1)
    assert store.create_json(path, {"token": "a"})
    assert not store.create_json(path, {"token": "b"})
    assert store.read_json(path) == {"token": "a"}
    assert objects(s3, prefix) == [f"{prefix}/cells/c/claims/attempt-1.json"]


@pytest.mark.parametrize("uri", ["gs://bucket/store", "abfs://c@account.dfs.core.windows.net/s"])
@pytest.mark.parametrize("command", ["submit", "rerun"])
def test_a_store_without_conditional_create_is_refused_by_the_commands_that_claim(
    uri, command, tmp_path, capsys
):
    spec = write_spec(tmp_path / "s.yaml", "s", ["dense"])
    target = [str(spec)] if command == "submit" else ["s", "--failed"]
    assert main([command, *target, "--store", uri]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--unsafe-claims" in error and "twice" in error
    assert list(tmp_path.iterdir()) == [spec]  # nothing written, not even a log


def test_unsafe_claims_accepts_such_a_store_and_a_resumed_run_keeps_the_flag(tmp_path):
    Store("gs://bucket/store").check_claims(unsafe=True)
    with pytest.raises(ValueError, match="--unsafe-claims"):
        Store("mock:///store").check_claims(unsafe=False)
    Store(tmp_path).check_claims(unsafe=False)  # a disk: exact
    args = build_parser().parse_args(["submit", "s.yaml", "--unsafe-claims", "--lease-s", "5"])
    assert _runner_flags(args) == ["--lease-s", "5.0", "--unsafe-claims"]


@pytest.mark.parametrize("command", ["submit", "status"])
def test_a_store_in_a_missing_bucket_is_one_line_and_nothing_is_written(
    s3, command, tmp_path, capsys, monkeypatch
):
    point_at(monkeypatch, s3)
    spec = write_spec(tmp_path / "s.yaml", "s", ["dense"])
    target = str(spec) if command == "submit" else "s"
    assert main([command, target, "--store", "s3://no-such-bucket/store"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "store s3://no-such-bucket/store: bucket 'no-such-bucket' does not exist" in error
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1")
    assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["compscale"]
    assert list(tmp_path.iterdir()) == [spec]


@pytest.mark.parametrize("command", ["submit", "status"])
def test_refused_credentials_are_one_line_and_nothing_is_written(
    command, tmp_path, capsys, monkeypatch
):
    with moto_s3(check_credentials=True) as env:
        point_at(monkeypatch, env | {"AWS_ACCESS_KEY_ID": "unknown"})
        spec = write_spec(tmp_path / "s.yaml", "s", ["dense"])
        target = str(spec) if command == "submit" else "s"
        assert main([command, target, "--store", "s3://compscale/store"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1
        assert "store s3://compscale/store: the credentials were refused (InvalidAccessKeyId" in (
            error
        )
        assert list(tmp_path.iterdir()) == [spec]
