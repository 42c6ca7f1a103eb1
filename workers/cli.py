"""`compscale train-cell` (one cell, no Ray; also under torchrun) and `compscale data prepare`.

torch is imported inside the handlers, so building the `compscale` parser stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from workers.config import CellConfig


def load_cell_file(path: str | Path) -> CellConfig:
    """Read a CellConfig from YAML or JSON; `model` may be a preset name such as `tiny`, or a
    mapping with a `preset` key and fields that override it (e.g. `{preset: tiny, seq_len: 64}`).
    `CellConfig` resolves the preset and canonicalises the format, so the cell id matches the one
    a sweep would give the same cell."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cell file {str(path)!r} does not exist")
    fields: Any = yaml.safe_load(path.read_text())
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a mapping of cell fields, got {type(fields).__name__}")
    try:
        return CellConfig.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "cell"
        raise ValueError(f"{path}: {location}: {first['msg']}") from None


def _train_cell(args: argparse.Namespace) -> int:
    cell = load_cell_file(args.cell)
    from workers.train import run_cell

    result = run_cell(cell, args.store)
    if result.get("attempt") is not None:  # rank 0 prints the row; other ranks stay quiet
        print(json.dumps(result, default=str))
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from workers.prepare import prepare_shards

    meta = prepare_shards(
        args.source,
        args.out_dir,
        val_fraction=args.val_fraction,
        tokenizer=args.tokenizer,
        text_field=args.text_field,
        workers=args.workers,
        part_bytes=args.part_bytes,
        progress=not args.quiet,
    )
    print(json.dumps(meta))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train-cell` and `data prepare` to the `compscale` parser."""
    train = subparsers.add_parser(
        "train-cell",
        help="train one cell without Ray (also under torchrun --nproc_per_node=k)",
        description="Train one cell into a store; prints its result row as JSON.",
    )
    train.add_argument("cell", help="CellConfig as YAML/JSON (model may be a preset name)")
    train.add_argument("--store", required=True, help="store directory or pyarrow filesystem URI")
    train.set_defaults(func=_train_cell)

    data_parser = subparsers.add_parser("data", help="token data tools")
    data_commands = data_parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prepare = data_commands.add_parser(
        "prepare",
        help="turn text files, jsonl or Parquet into token shards (bytes, a trained BPE, or yours)",
        description="Tokenize the documents at SOURCE (a text file is one document, a jsonl or "
        "Parquet record another; a folder is read in sorted order) in parallel into "
        "OUT_DIR/train.bin, val.bin (the last --val-fraction of the tokens) and meta.json "
        "(tokenizer, its fingerprint, vocab_size); prints meta.json. A killed run resumes when "
        "run again. SOURCE and OUT_DIR may be s3:// URIs. Progress on stderr. See docs/data.md.",
    )
    prepare.add_argument(
        "source",
        help="a folder or prefix, or one text, jsonl(.gz/.zst) or Parquet file (path or s3://)",
    )
    prepare.add_argument("out_dir", help="a folder or an s3:// prefix")
    prepare.add_argument("--val-fraction", type=float, default=0.05)
    prepare.add_argument(
        "--tokenizer",
        default="bytes",
        help="bytes (one token per byte, vocab 256; default) | bpe:{vocab} (train a byte-level "
        "BPE on SOURCE, saved as OUT_DIR/tokenizer.json) | PATH/tokenizer.json (your own)",
    )
    prepare.add_argument(
        "--text-field", default="text", help="the text of a jsonl or Parquet record (default text)"
    )
    prepare.add_argument(
        "--workers", type=int, default=None, help="tokenizing processes (default: every core)"
    )
    prepare.add_argument(
        "--part-bytes",
        type=int,
        default=None,
        help="text bytes per part, the unit of parallel work and of resuming (default 8 MiB)",
    )
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(func=_data_prepare)
