"""Token data: the bundled corpus, shards, and batches that are pure functions of (seed, step)."""

import gzip
import hashlib
import json

import numpy as np
import pytest

from orchestrator.cli import main
from workers.config import DataConfig
from workers.data import (
    CORPUS_DIR,
    batch_windows,
    load_shards,
    load_tokens,
    validation_windows,
)


def test_bundled_corpus_matches_its_recorded_sha256_and_is_byte_level():
    meta = json.loads((CORPUS_DIR / "cpython311-stdlib.json").read_text())
    text = gzip.decompress((CORPUS_DIR / "cpython311-stdlib.txt.gz").read_bytes())
    assert hashlib.sha256(text).hexdigest() == meta["sha256"]
    source = load_tokens(DataConfig())
    assert source.vocab_size == 256 and source.train.dtype == np.uint8
    assert len(source.train) + len(source.val) == meta["bytes"] > 8_000_000
    assert meta["sha256"][:16] in source.fingerprint


def test_a_batch_is_a_pure_function_of_seed_and_step():
    tokens = load_tokens(DataConfig()).train
    first = batch_windows(tokens, seed=3, step=7, batch_size=8, seq_len=32)
    again = batch_windows(tokens, seed=3, step=7, batch_size=8, seq_len=32)
    assert first.shape == (8, 33)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(
        first, batch_windows(tokens, seed=3, step=8, batch_size=8, seq_len=32)
    )
    assert not np.array_equal(
        first, batch_windows(tokens, seed=4, step=7, batch_size=8, seq_len=32)
    )


def test_ranks_take_disjoint_slices_that_make_up_the_global_batch():
    tokens = load_tokens(DataConfig()).train
    whole = batch_windows(tokens, seed=0, step=5, batch_size=8, seq_len=16)
    parts = [
        batch_windows(tokens, seed=0, step=5, batch_size=8, seq_len=16, rank=r, world_size=4)
        for r in range(4)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_validation_windows_are_fixed_and_split_across_ranks():
    val = load_tokens(DataConfig()).val
    whole = validation_windows(val, eval_tokens=1024, seq_len=64)
    assert whole.shape == (16, 65)
    np.testing.assert_array_equal(whole[0, :64], val[:64])
    halves = [
        validation_windows(val, eval_tokens=1024, seq_len=64, rank=r, world_size=2) for r in (0, 1)
    ]
    assert sorted(map(bytes, np.concatenate(halves))) == sorted(map(bytes, whole))
    with pytest.raises(ValueError, match="eval_tokens"):
        validation_windows(val[:100], eval_tokens=1024, seq_len=64)


def test_data_prepare_writes_byte_level_shards_that_load_back(tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("hello world " * 100)
    (texts / "b.txt").write_text("second file " * 100)
    assert (
        main(["data", "prepare", str(texts), str(tmp_path / "shards"), "--val-fraction", "0.1"])
        == 0
    )
    source = load_shards(str(tmp_path / "shards"))
    joined = np.concatenate([source.train, source.val])
    assert (
        bytes(joined.astype(np.uint8))
        == (texts / "a.txt").read_bytes() + (texts / "b.txt").read_bytes()
    )
    assert source.train.dtype == np.uint16 and len(source.val) == 240
    meta = json.loads(capsys.readouterr().out)
    assert meta["fingerprint"] == source.fingerprint and meta["tokenizer"] == "bytes"
    assert meta["vocab_size"] == 256 and ":bytes:" in source.fingerprint
    assert (
        load_tokens(DataConfig(source=str(tmp_path / "shards"))).fingerprint == source.fingerprint
    )


def test_a_missing_shard_directory_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no meta\.json"):
        load_shards(str(tmp_path / "nowhere"))
