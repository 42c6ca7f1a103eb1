"""`compscale data prepare` on real corpus formats: the same documents give the same tokens from
text files, jsonl and Parquet; a killed run resumes to the output of an uninterrupted one; bad
input is one line naming the file or field, and leaves nothing behind."""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from orchestrator.cli import main
from workers.prepare import prepare_shards
from workers.storage import read_bytes
from workers.tokenizer import END_OF_TEXT

REPO = Path(__file__).resolve().parents[2]
CHUNK = 512  # small, so long documents are cut into pieces in every format


def made_up_documents(count: int, seed: int = 0) -> list[str]:
    """Documents of made-up words: some multi-line, blank lines, non-ASCII, longer than CHUNK,
    one empty."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ru", "te", "sa", "no", "vi", "ze", "pu", "hø", "ñe", "→"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(500)]
    documents = []
    for _ in range(count):
        lines = [
            " ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 20))
        ]
        documents.append(rng.choice(["\n", "\n\n", "\n  "]).join(lines))
    documents[3] = ""
    return documents


def write_text_folder(folder: Path, documents: list[str]) -> Path:
    folder.mkdir()
    for index, text in enumerate(documents):
        (folder / f"doc-{index:04d}.txt").write_text(text, encoding="utf-8")
    return folder


def jsonl_bytes(documents: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({"id": i, field: t}) + "\n" for i, t in enumerate(documents)).encode()


def write_zst(path: Path, data: bytes) -> Path:
    with pa.CompressedOutputStream(str(path), "zstd") as stream:
        stream.write(data)
    return path


def write_parquet_folder(folder: Path, documents: list[str]) -> Path:
    """Two files, so a Parquet folder is read in order across them."""
    folder.mkdir()
    half = len(documents) // 2
    for index, rows in enumerate([documents[:half], documents[half:]]):
        table = pa.table({"id": list(range(len(rows))), "text": rows})
        pq.write_table(table, folder / f"part-{index}.parquet", row_group_size=50)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same 240 documents as text files, jsonl.gz, jsonl.zst and Parquet."""
    root = tmp_path_factory.mktemp("corpus")
    documents = made_up_documents(240)
    (root / "docs.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(documents)))
    return {
        "documents": documents,
        "text": write_text_folder(root / "texts", documents),
        "jsonl.gz": root / "docs.jsonl.gz",
        "jsonl.zst": write_zst(root / "docs.jsonl.zst", jsonl_bytes(documents)),
        "parquet": write_parquet_folder(root / "parquet", documents),
    }


@pytest.fixture(scope="module")
def bpe_json(corpus, tmp_path_factory):
    """A 512-token byte-level BPE with <|endoftext|>, trained once by `data prepare`."""
    out = tmp_path_factory.mktemp("bpe")
    prepare_shards(corpus["text"], out, tokenizer="bpe:512", workers=1)
    return str(out / "tokenizer.json")


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_the_same_documents_give_the_same_tokens_from_text_jsonl_and_parquet(
    corpus, bpe_json, tmp_path, tokenizer
):
    spec = bpe_json if tokenizer == "bpe" else "bytes"
    metas, shards = {}, {}
    for form in ("text", "jsonl.gz", "jsonl.zst", "parquet"):
        out = tmp_path / form
        metas[form] = prepare_shards(
            corpus[form], out, tokenizer=spec, workers=2, chunk_bytes=CHUNK, part_bytes=4096
        )
        shards[form] = [(out / split).read_bytes() for split in ("train.bin", "val.bin")]
    assert len(set(map(tuple, shards.values()))) == 1
    assert {meta["tokens"] for meta in metas.values()} == {metas["text"]["tokens"]}
    assert {meta["documents"] for meta in metas.values()} == {len(corpus["documents"])}
    digests = {meta["fingerprint"].split(":", 1)[1] for meta in metas.values()}
    assert len(digests) == 1  # only the input's name differs

    ids = b"".join(shards["text"])
    if tokenizer == "bytes":  # no end-of-text token: the documents back to back, as before
        assert ids[::2].decode() == "".join(corpus["documents"])
        return
    model = Tokenizer.from_file(spec)
    tokens = [int.from_bytes(ids[i : i + 2], "little") for i in range(0, len(ids), 2)]
    assert tokens.count(model.token_to_id(END_OF_TEXT)) == len(corpus["documents"]) - 1
    decoded = model.decode(tokens, skip_special_tokens=False)
    assert decoded.split(END_OF_TEXT) == corpus["documents"]


def run_prepare(source, out, *options: str, quiet: bool = True) -> subprocess.Popen:
    """`compscale data prepare` in its own process group, so a kill reaches its workers too."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "orchestrator.cli", "data", "prepare", str(source), str(out)]
    return subprocess.Popen(
        [*command, *options, *(["--quiet"] if quiet else [])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_killed_prepare_resumes_to_the_output_of_an_uninterrupted_run(bpe_json, tmp_path):
    source = tmp_path / "big.jsonl"
    source.write_bytes(jsonl_bytes(made_up_documents(6000, seed=1)))  # about 2 MB
    options = ("--tokenizer", bpe_json, "--part-bytes", "2048")
    out = tmp_path / "resumed"
    killed = run_prepare(source, out, *options, "--workers", "2")
    parts = out / ".partial" / "parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*.bin"))) < 5 and killed.poll() is None:
        assert time.monotonic() < deadline, "no part written in 120 s"
        time.sleep(0.005)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "finished before the kill: make the corpus larger"
    assert not (out / "meta.json").exists() and not (out / "train.bin").exists()

    resumed = run_prepare(source, out, *options, "--workers", "1", quiet=False)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "resuming: " in stderr and "resuming: 0 " not in stderr
    assert not (out / ".partial").exists()

    whole = tmp_path / "whole"
    prepare_shards(source, whole, tokenizer=bpe_json, workers=2)  # default part size
    for name in ("train.bin", "val.bin", "meta.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


def prepare_error(capsys, source, out, *options: str) -> str:
    """The one line a failing `data prepare` prints; it must leave no output behind."""
    code = main(["data", "prepare", str(source), str(out), "--quiet", *options])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    return error


def test_a_record_without_the_text_field_names_file_line_and_field(capsys, tmp_path):
    source = tmp_path / "docs.jsonl.gz"
    lines = jsonl_bytes(made_up_documents(400)).splitlines(keepends=True)
    lines.insert(300, b'{"id": 300, "body": "no text here"}\n')
    source.write_bytes(gzip.compress(b"".join(lines)))
    out = tmp_path / "out"
    out.mkdir()  # a folder of the user's stays, empty; parts written before the error are gone
    error = prepare_error(capsys, source, out, "--part-bytes", "1024", "--workers", "2")
    assert "docs.jsonl.gz:301: no string field 'text' (--text-field)" in error


def test_a_parquet_file_without_the_column_names_it(capsys, corpus, tmp_path):
    error = prepare_error(capsys, corpus["parquet"], tmp_path / "out", "--text-field", "body")
    assert "part-0.parquet: no column 'body' (--text-field); it has id, text" in error


@pytest.mark.parametrize("empty", ["folder", "jsonl", "parquet"])
def test_an_empty_input_is_one_clear_error(capsys, tmp_path, empty):
    source = {"folder": tmp_path / "empty", "jsonl": tmp_path / "empty.jsonl"}.get(empty)
    if empty == "folder":
        source.mkdir()
    elif empty == "jsonl":
        source.write_text("")
    else:
        source = tmp_path / "empty.parquet"
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), source)
    error = prepare_error(capsys, source, tmp_path / "out")
    assert str(source) in error and ("empty folder" in error or "no text" in error)


def test_a_file_neither_text_jsonl_nor_parquet_names_it(capsys, corpus, tmp_path):
    source = write_text_folder(tmp_path / "mixed", ["some text"])
    (source / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    error = prepare_error(capsys, source, tmp_path / "out")
    assert "image.png: not text (UTF-8), jsonl" in error


def test_a_tokenizer_json_that_does_not_load_names_it(capsys, corpus, tmp_path):
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"model": {"type": "BPE", "vocab": ')
    error = prepare_error(capsys, corpus["text"], tmp_path / "out", "--tokenizer", str(broken))
    assert f"--tokenizer '{broken}': not a loadable tokenizer.json" in error


# ---- inputs and output on S3 (a real moto server) -----------------------------------------------
@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A moto bucket, its AWS variables set here, and a cache folder of the test's own."""
    from s3 import moto_s3

    with moto_s3() as env:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("COMPSCALE_CACHE", str(tmp_path / "cache"))
        yield env["COMPSCALE_TEST_BUCKET"]


def s3_names(uri: str) -> list[str]:
    """Every object under `uri`, relative to it."""
    filesystem, root = pafs.FileSystem.from_uri(uri)
    found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(info.path.removeprefix(f"{root}/") for info in found if info.is_file)


def mixed_corpus(folder: Path, documents: list[str]) -> Path:
    """The documents as one jsonl, one jsonl.gz and a Parquet file, read in that order."""
    folder.mkdir()
    third = len(documents) // 3
    (folder / "a.jsonl").write_bytes(jsonl_bytes(documents[:third]))
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(documents[third : 2 * third])))
    pq.write_table(pa.table({"text": documents[2 * third :]}), folder / "c.parquet")
    return folder


def test_prepare_from_an_s3_prefix_into_s3_gives_the_local_shards_and_a_cell_trains_on_them(
    bucket, tmp_path, capsys
):
    from s3 import unique_prefix

    from workers.sink import read_result

    corpus = mixed_corpus(tmp_path / "corpus", made_up_documents(240))
    prefix = f"s3://{bucket}/{unique_prefix()}"
    filesystem, root = pafs.FileSystem.from_uri(f"{prefix}/corpus")
    pafs.copy_files(str(corpus), root, pafs.LocalFileSystem(), filesystem)
    options = ["--tokenizer", "bpe:300", "--workers", "1", "--part-bytes", "4096", "--quiet"]
    assert main(["data", "prepare", f"{prefix}/corpus/", f"{prefix}/shards", *options]) == 0
    meta = json.loads(capsys.readouterr().out)

    local = tmp_path / "local"
    assert prepare_shards(corpus, local, tokenizer="bpe:300", workers=1, part_bytes=4096) == meta
    names = ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert s3_names(f"{prefix}/shards") == names
    shards, shards_root = pafs.FileSystem.from_uri(f"{prefix}/shards")
    for name in names:
        assert read_bytes(shards, f"{shards_root}/{name}") == (local / name).read_bytes(), name
    assert not any((tmp_path / "cache" / "prepare").iterdir()), "the staging folder stayed"

    cell = tmp_path / "cell.yaml"
    cell.write_text(
        "model: {preset: tiny, seq_len: 32, vocab_size: 300}\nformat: dense\ntokens: 2048\n"
        f"train: {{batch_size: 4, eval_tokens: 256}}\ndata: {{source: {prefix}/shards}}\n"
    )
    assert main(["train-cell", str(cell), "--store", str(tmp_path / "store")]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["data_fingerprint"] == meta["fingerprint"] and row["steps"] == 16
    assert read_result(str(tmp_path / "store"), row["cell_id"])["val_loss"] == row["val_loss"]
    (cached,) = (tmp_path / "cache" / "shards").iterdir()  # the cell read the node's copy
    assert (cached / "train.bin").read_bytes() == (local / "train.bin").read_bytes()


def test_a_failed_prepare_into_s3_writes_nothing_there(bucket, tmp_path, capsys):
    from s3 import unique_prefix

    lines = jsonl_bytes(made_up_documents(100)).splitlines(keepends=True)
    lines.insert(60, b'{"id": 60, "body": "no text here"}\n')
    prefix = f"s3://{bucket}/{unique_prefix()}"
    filesystem, root = pafs.FileSystem.from_uri(f"{prefix}/docs.jsonl")
    with filesystem.open_output_stream(root) as stream:
        stream.write(b"".join(lines))
    code = main(["data", "prepare", f"{prefix}/docs.jsonl", f"{prefix}/shards", "--quiet"])
    assert code == 2
    assert f"{prefix}/docs.jsonl:61: no string field 'text'" in capsys.readouterr().err
    assert s3_names(f"{prefix}/shards") == []
    assert not any((tmp_path / "cache" / "prepare").iterdir())
