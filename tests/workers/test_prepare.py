"""`compscale data prepare` with real tokenizers: streamed, fingerprinted, and trainable on."""

import json
import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from orchestrator.cli import main
from workers.data import load_shards
from workers.documents import list_inputs, pieces
from workers.prepare import prepare_shards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """About 140 KB of made-up words in three files: enough for a 2048-token BPE."""
    folder = tmp_path_factory.mktemp("texts")
    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ru", "te", "sa", "no", "vi", "ze", "pu", "da", "fe", "hø"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(2000)]
    for index in range(3):
        lines = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(1000)]
        (folder / f"part{index}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def joined_text(folder) -> str:
    return "".join(path.read_text(encoding="utf-8") for path in sorted(folder.iterdir()))


def test_bpe_shards_decode_to_the_text_and_a_cell_trains_on_them(texts, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["data", "prepare", str(texts), str(out), "--tokenizer", "bpe:2048"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["tokenizer"] == "bpe:2048" and 256 < meta["vocab_size"] <= 2048
    assert meta["tokenizer_fingerprint"].startswith(f"bpe{meta['vocab_size']}:sha256:")
    assert meta["tokenizer_fingerprint"] in meta["fingerprint"]
    source = load_shards(str(out))
    ids = np.concatenate([source.train, source.val])
    assert len(ids) == meta["tokens"] < meta["bytes"] / 2  # merges at work
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tokenizer.decode(ids.tolist()) == joined_text(texts)

    cell = tmp_path / "cell.yaml"
    cell.write_text(
        "model: {preset: tiny, vocab_size: 2048, seq_len: 32}\nformat: int4\ntokens: 2560\n"
        f"train: {{batch_size: 4, eval_tokens: 1024}}\ndata: {{source: {out}}}\n"
    )
    assert main(["train-cell", str(cell), "--store", str(tmp_path / "store")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data_fingerprint"] == meta["fingerprint"]
    assert np.isfinite(result["val_loss"]) and result["val_loss"] < np.log(2048) + 0.5


def test_a_users_tokenizer_json_gives_the_same_tokens_and_fingerprint(texts, tmp_path):
    trained = prepare_shards(texts, tmp_path / "a", tokenizer="bpe:1024")
    reused = prepare_shards(texts, tmp_path / "b", tokenizer=str(tmp_path / "a" / "tokenizer.json"))
    assert reused["tokenizer_fingerprint"] == trained["tokenizer_fingerprint"]
    assert reused["fingerprint"] == trained["fingerprint"]
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / split).read_bytes() == (tmp_path / "b" / split).read_bytes()


def test_a_model_smaller_than_the_data_vocabulary_is_refused(texts, tmp_path, capsys):
    prepare_shards(texts, tmp_path / "shards", tokenizer="bpe:1024")
    cell = tmp_path / "cell.yaml"
    cell.write_text(
        "model: {preset: tiny, seq_len: 32}\nformat: dense\ntokens: 2560\n"
        f"train: {{batch_size: 4, eval_tokens: 1024}}\ndata: {{source: {tmp_path / 'shards'}}}\n"
    )
    assert main(["train-cell", str(cell), "--store", str(tmp_path / "store")]) != 0
    assert "data vocabulary 1024 exceeds model vocab_size=256" in capsys.readouterr().err


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe:512"])
def test_small_chunks_change_nothing(texts, tmp_path, tokenizer):
    """Streaming in 4 KiB chunks (cut at line ends) writes the shards one read would."""
    whole = prepare_shards(texts, tmp_path / "whole", tokenizer=tokenizer)
    streamed = prepare_shards(texts, tmp_path / "chunks", tokenizer=tokenizer, chunk_bytes=4096)
    assert streamed == whole
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "whole" / split).read_bytes() == (
            tmp_path / "chunks" / split
        ).read_bytes()


def test_chunks_never_split_a_character_and_join_to_the_files(tmp_path):
    text = "ünïcødé→" * 500 + "\nshort\n" + "€" * 700  # long lines without a newline to cut at
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    chunks = list(pieces(list_inputs(str(tmp_path / "a.txt")), "text", 10, lambda n: None))
    assert len(chunks) > 100 and [chunk.starts for chunk in chunks].count(True) == 1
    assert "".join(chunk.data.decode("utf-8") for chunk in chunks) == text


@pytest.mark.parametrize("spec", ["bpe:100", "bpe:", "words", "/nowhere/tokenizer.json"])
def test_a_bad_tokenizer_is_one_clear_error(texts, tmp_path, spec):
    with pytest.raises(ValueError, match="tokenizer"):
        prepare_shards(texts, tmp_path / "out", tokenizer=spec)
