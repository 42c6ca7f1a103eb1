"""Token data: the bundled corpora, shards, and batches that are pure functions of (seed, step)."""

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
    describe,
    load_shards,
    load_tokens,
    validation_tokens_needed,
    validation_windows,
)

# sha256 of every token of `bundled` (train then validation): the data every committed cell id and
# result was trained on, so no change to the loader may alter it.
BUNDLED_TOKENS_SHA256 = "4d279ba2aaa23a0aa5cb29cc06417380eb7bc19db5df9c77f0411d563f82bae0"


def test_bundled_corpus_matches_its_recorded_sha256_and_is_byte_level():
    meta = json.loads((CORPUS_DIR / "cpython311-stdlib.json").read_text())
    text = gzip.decompress((CORPUS_DIR / "cpython311-stdlib.txt.gz").read_bytes())
    assert hashlib.sha256(text).hexdigest() == meta["sha256"]
    source = load_tokens(DataConfig())
    assert source.vocab_size == 256 and source.train.dtype == np.uint8
    assert len(source.train) + len(source.val) == meta["bytes"] > 8_000_000
    assert meta["sha256"][:16] in source.fingerprint


def test_bundled_gives_exactly_the_tokens_the_committed_results_were_trained_on():
    source = load_tokens(DataConfig(source="bundled"))
    tokens = np.concatenate([source.train, source.val])
    assert hashlib.sha256(tokens.tobytes()).hexdigest() == BUNDLED_TOKENS_SHA256
    assert len(source.val) == 419316
    assert source.fingerprint == "cpython311-stdlib:sha256:4d279ba2aaa23a0a:val0.05"


def test_bundled_kjv_is_the_english_text_its_json_records_read_byte_level():
    meta = json.loads((CORPUS_DIR / "kjv-bible.json").read_text())
    text = gzip.decompress((CORPUS_DIR / "kjv-bible.txt.gz").read_bytes())
    assert hashlib.sha256(text).hexdigest() == meta["sha256"]
    assert text.startswith(b"In the beginning God created the heaven and the earth.\n")
    assert text.count(b"\n") == meta["verses"] == 31102
    source = load_tokens(DataConfig(source="bundled-kjv"))
    assert source.vocab_size == 256 and source.train.dtype == np.uint8
    assert bytes(np.concatenate([source.train, source.val])) == text
    assert source.fingerprint == f"kjv-bible:sha256:{meta['sha256'][:16]}:val0.05"


def test_bundled_kjv_holds_the_validation_tokens_a_smoke_cell_asks_for():
    config = DataConfig(source="bundled-kjv")
    val = load_tokens(config).val
    assert describe(config).val_tokens == len(val)
    assert len(val) >= validation_tokens_needed(16384, 64)
    windows = validation_windows(val, eval_tokens=16384, seq_len=64)
    assert windows.shape == (256, 65)
    assert bytes(windows[0, :64].astype(np.uint8)).isascii()


def test_bundled_kjv_batches_are_the_same_for_the_same_seed_and_step():
    text = gzip.decompress((CORPUS_DIR / "kjv-bible.txt.gz").read_bytes())
    independent = np.frombuffer(text, dtype=np.uint8)[: int(len(text) * 0.95)]
    loaded = load_tokens(DataConfig(source="bundled-kjv")).train
    for step in (0, 1, 99):
        np.testing.assert_array_equal(
            batch_windows(loaded, seed=5, step=step, batch_size=16, seq_len=64),
            batch_windows(independent, seed=5, step=step, batch_size=16, seq_len=64),
        )
    assert not np.array_equal(
        batch_windows(loaded, seed=5, step=0, batch_size=16, seq_len=64),
        batch_windows(loaded, seed=6, step=0, batch_size=16, seq_len=64),
    )


def test_an_unknown_bundled_name_is_refused_with_the_names_there_are():
    with pytest.raises(ValueError, match=r"no such bundled corpus \(one of bundled, bundled-kjv\)"):
        describe(DataConfig(source="bundled-text"))


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
