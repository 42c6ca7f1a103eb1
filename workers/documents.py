"""Documents for `compscale data prepare`: text files, jsonl (plain, .gz, .zst) and Parquet.

A document is a text file or the text field of one record. Every document reaches the tokenizer
as pieces: its UTF-8 bytes, cut at a line end (never inside a character) only where it is longer
than `chunk_bytes`, by the same rule whatever the input format. So the same documents make the
same pieces, hence the same tokens, from text files, jsonl or Parquet, and a text file larger than
memory streams. Every input is opened through `open_input`, which takes a local path or a URI
(`s3://bucket/key`, through pyarrow's filesystems and the AWS variables of `workers.objectstore`).
"""

from __future__ import annotations

import codecs
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers.layout import resolve

JSONL_CODECS = {".gz": "gzip", ".zst": "zstd"}
SNIFF_BYTES = 8192
PARQUET_MAGIC = b"PAR1"
KINDS_HELP = "text (UTF-8), jsonl (.jsonl, .jsonl.gz, .jsonl.zst, .json.gz) or Parquet (.parquet)"

Advance = Callable[[int], None]


class InputError(ValueError):
    """An input that cannot be prepared; the message names the file (and line, row or field)."""


@dataclass(frozen=True)
class InputFile:
    """One file of the input and how it is read."""

    path: str
    kind: str  # "text", "jsonl" or "parquet"
    size: int  # bytes on disk
    mtime_ns: int


class Piece(NamedTuple):
    """A run of one document's bytes; `starts` is true for the first piece of a document."""

    starts: bool
    data: bytes


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `location` (a local path or a URI) and its path there."""
    resolved = resolve(location, what="input")
    return resolved.filesystem, resolved.root


def _named(location: str, path: str) -> str:
    """What a file found under `location` is called: its URI where `location` is one (so that
    `open_input` finds it again, and errors name it as the user would), else its path."""
    scheme, separator, _ = location.partition("://")
    return f"{scheme}://{path}" if separator else path


def open_input(location: str) -> pa.NativeFile:
    """The one door to input bytes: a random-access file (Parquet needs to seek)."""
    filesystem, path = _filesystem(location)
    return filesystem.open_input_file(path)


def list_inputs(location: str) -> list[InputFile]:
    """The file at `location`, or every file under it in sorted path order, each classified."""
    filesystem, root = _filesystem(location)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input {location!r} does not exist")
    if info.type == pafs.FileType.Directory:
        found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        infos = sorted(
            (file for file in found if file.type == pafs.FileType.File),
            key=lambda file: PurePosixPath(file.path).parts,
        )
        if not infos:
            raise InputError(f"input {location!r}: an empty folder")
    else:
        infos = [info]
    named = [(_named(location, file.path), file) for file in infos]
    return [InputFile(name, _kind(name), file.size, file.mtime_ns) for name, file in named]


def _jsonl_codec(path: str) -> tuple[bool, str | None]:
    """(is jsonl, compression codec) from the file name: .jsonl, or .jsonl/.json with .gz or .zst
    (C4 ships .json.gz). A plain .json file is text, as it always was in a folder of text."""
    suffixes = PurePosixPath(path).suffixes[-2:]
    if suffixes[-1:] == [".jsonl"]:
        return True, None
    if len(suffixes) == 2 and suffixes[0] in (".jsonl", ".json") and suffixes[1] in JSONL_CODECS:
        return True, JSONL_CODECS[suffixes[1]]
    return False, None


def _kind(path: str) -> str:
    """What a file is: by its name for jsonl and Parquet, by its first bytes for text."""
    if _jsonl_codec(path)[0]:
        return "jsonl"
    with open_input(path) as file:
        head = file.read(SNIFF_BYTES)
    if path.endswith(".parquet") or head.startswith(PARQUET_MAGIC):
        return "parquet"
    try:  # the cut at SNIFF_BYTES may split a character: only a whole file must end whole
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        raise InputError(f"{path}: not {KINDS_HELP}") from None
    if b"\0" in head:
        raise InputError(f"{path}: not {KINDS_HELP} (it holds NUL bytes)")
    return "text"


def _cut(buffer: bytes) -> int:
    """Where to end a piece: after the last newline, else before a possibly incomplete UTF-8
    character at the end (its lead byte is at most 3 bytes back)."""
    newline = buffer.rfind(b"\n")
    if newline >= 0:
        return newline + 1
    start = len(buffer) - 1
    while start > 0 and buffer[start] & 0xC0 == 0x80 and len(buffer) - start < 4:
        start -= 1
    return start if buffer[start] >= 0xC0 else len(buffer)


def cut_pieces(blocks: Iterator[bytes]) -> Iterator[Piece]:
    """One document's pieces from its bytes in blocks of `chunk_bytes`: the last block ends the
    document whole; before it, each piece ends at a line end where there is one."""
    carry, block = b"", next(blocks, None)
    starts = True
    while block is not None:
        buffer, block = carry + block, next(blocks, None)
        cut = len(buffer) if block is None else _cut(buffer)
        if cut:
            yield Piece(starts, buffer[:cut])
            starts = False
        carry = buffer[cut:]
    if starts:  # an empty document is still a document
        yield Piece(True, b"")


def _text_pieces(source: InputFile, chunk_bytes: int, advance: Advance) -> Iterator[Piece]:
    with open_input(source.path) as file:

        def blocks() -> Iterator[bytes]:
            while block := file.read(chunk_bytes):
                advance(len(block))
                yield block

        yield from cut_pieces(blocks())


def _record_pieces(text: str, chunk_bytes: int) -> Iterator[Piece]:
    data = text.encode("utf-8")
    starts = range(0, len(data), chunk_bytes)
    yield from cut_pieces(data[start : start + chunk_bytes] for start in starts)


def _jsonl_texts(source: InputFile, text_field: str, advance: Advance) -> Iterator[str]:
    codec = _jsonl_codec(source.path)[1]
    with open_input(source.path) as raw:
        stream = raw if codec is None else pa.CompressedInputStream(raw, codec)
        consumed = 0
        for number, line in enumerate(io.BufferedReader(stream, 1 << 20), 1):
            advance(raw.tell() - consumed)
            consumed = raw.tell()
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{source.path}:{number}: not JSON ({error.msg})") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise InputError(
                    f"{source.path}:{number}: no string field {text_field!r} (--text-field)"
                )
            yield text


def _parquet_texts(source: InputFile, text_field: str, advance: Advance) -> Iterator[str]:
    with open_input(source.path) as raw:
        try:
            parquet = pq.ParquetFile(raw)
        except pa.ArrowException as error:
            raise InputError(f"{source.path}: not a Parquet file ({error})") from None
        schema = parquet.schema_arrow
        if text_field not in schema.names:
            raise InputError(
                f"{source.path}: no column {text_field!r} (--text-field); it has "
                f"{', '.join(schema.names)}"
            )
        kind = schema.field(text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"{source.path}: column {text_field!r} is not text")
        rows, done = max(parquet.metadata.num_rows, 1), 0
        for batch in parquet.iter_batches(batch_size=4096, columns=[text_field]):
            column = batch.column(0)
            if column.null_count:
                row = done + column.is_null().index(True).as_py()
                raise InputError(f"{source.path}: row {row}: {text_field!r} is null")
            yield from column.to_pylist()
            advance(source.size * (done + len(batch)) // rows - source.size * done // rows)
            done += len(batch)


def pieces(
    inputs: list[InputFile], text_field: str, chunk_bytes: int, advance: Advance
) -> Iterator[Piece]:
    """Every document's pieces, input by input; `advance(n)` is told of n bytes read from disk."""
    for source in inputs:
        if source.kind == "text":
            yield from _text_pieces(source, chunk_bytes, advance)
            continue
        read = _jsonl_texts if source.kind == "jsonl" else _parquet_texts
        for text in read(source, text_field, advance):
            yield from _record_pieces(text, chunk_bytes)
