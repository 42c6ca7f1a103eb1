"""Shards on S3 (a real moto server): each node downloads a shard once, every worker memory-maps it.

Downloads are counted from the server's own request log (GETs of each shard object), which the
code under test cannot write to.
"""

import json
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from s3 import moto_s3, unique_prefix

from workers.data import load_shards
from workers.shardcache import CACHE_ENV

WORKERS = 4


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A moto server logging its requests, its variables set here (spawned children inherit
    them), and a cache folder of the test's own."""
    log = tmp_path / "moto.log"
    with moto_s3(log=log) as env:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
        yield env["COMPSCALE_TEST_BUCKET"], log


def write_shards(folder: Path, seed: int, tokens: int = 1 << 20) -> None:
    """A shard folder by hand: random uint16 tokens, 10% of them the validation split."""
    folder.mkdir(parents=True)
    ids = np.random.default_rng(seed).integers(0, 50_000, tokens, dtype=np.uint16)
    ids[: tokens * 9 // 10].tofile(folder / "train.bin")
    ids[tokens * 9 // 10 :].tofile(folder / "val.bin")
    meta = {"dtype": "uint16", "vocab_size": 50_000, "fingerprint": f"random:{seed}"}
    (folder / "meta.json").write_text(json.dumps(meta))


def upload(folder: Path, uri: str) -> None:
    remote, root = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(folder), root, pafs.LocalFileSystem(), remote)


def gets(log: Path, key: str) -> int:
    """GET requests the server logged for `key` (`bucket/path`)."""
    return len(re.findall(rf"GET /{re.escape(key)} HTTP", log.read_text()))


def load_and_describe(uri: str, barrier, results) -> None:
    """In a worker process: wait for the others, load the shards, report what came back."""
    barrier.wait()
    source = load_shards(uri)
    results.put(
        {
            split: (isinstance(array, np.memmap), array.filename, bytes(array))
            for split, array in (("train", source.train), ("val", source.val))
        }
    )


def test_concurrent_workers_download_each_remote_shard_once_and_map_the_same_bytes(tmp_path, s3):
    bucket, log = s3
    write_shards(tmp_path / "local", seed=0)
    prefix = f"{bucket}/{unique_prefix()}/shards"
    upload(tmp_path / "local", f"s3://{prefix}")

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WORKERS), context.Queue()
    processes = [
        context.Process(target=load_and_describe, args=(f"s3://{prefix}", barrier, results))
        for _ in range(WORKERS)
    ]
    for process in processes:
        process.start()
    loaded = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert gets(log, f"{prefix}/train.bin") == 1 and gets(log, f"{prefix}/val.bin") == 1
    cache = tmp_path / "cache"
    for split in ("train", "val"):
        expected = (tmp_path / "local" / f"{split}.bin").read_bytes()
        assert all(each[split][0] for each in loaded), "a worker holds a copy, not a memmap"
        assert {each[split][1] for each in loaded} == {each[split][1] for each in loaded[:1]}
        assert Path(loaded[0][split][1]).is_relative_to(cache)
        assert all(each[split][2] == expected for each in loaded)
    assert not list(cache.rglob(".tmp-*")), "a temporary download was left behind"


def test_re_prepared_shards_are_downloaded_afresh_and_a_damaged_copy_is_replaced(tmp_path, s3):
    bucket, log = s3
    prefix = f"{bucket}/{unique_prefix()}/shards"
    write_shards(tmp_path / "first", seed=1)
    upload(tmp_path / "first", f"s3://{prefix}")
    first = load_shards(f"s3://{prefix}")
    assert bytes(first.train) == (tmp_path / "first" / "train.bin").read_bytes()
    assert load_shards(f"s3://{prefix}").train.filename == first.train.filename  # cached
    assert gets(log, f"{prefix}/train.bin") == 1

    write_shards(tmp_path / "second", seed=2)  # same URI, other tokens and meta.json
    upload(tmp_path / "second", f"s3://{prefix}")
    second = load_shards(f"s3://{prefix}")
    assert bytes(second.train) == (tmp_path / "second" / "train.bin").read_bytes()
    assert second.fingerprint == "random:2" and second.train.filename != first.train.filename
    assert gets(log, f"{prefix}/train.bin") == 2

    with open(second.train.filename, "r+b") as damaged:
        damaged.truncate(100)  # a copy whose size no longer matches the store's
    again = load_shards(f"s3://{prefix}")
    assert bytes(again.train) == (tmp_path / "second" / "train.bin").read_bytes()
    assert gets(log, f"{prefix}/train.bin") == 3 and gets(log, f"{prefix}/val.bin") == 3
