"""A table of runs (CSV or Parquet, one row per cell) as every command that reads one reads it:
the same column flags, the same defaults, the same errors, so a table `fit` reads, `advise` reads.

The loss defaults to `val_loss`, the column a sweep's results hold and `reduce` fits, and to
`loss` in a table without it (the Chinchilla tables and most published ones).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

LOSS_COLUMNS = ("val_loss", "loss")  # the loss column by default: the first the table has


def column_options() -> argparse.ArgumentParser:
    """`--params-col`, `--tokens-col`, `--loss-col`, `--format-col`: the column flags of every
    command that reads a table of runs (`fit`, `advise`), with one set of defaults."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--params-col", default="params", help="column of N (parameters)")
    parent.add_argument("--tokens-col", default="tokens", help="column of D (training tokens)")
    parent.add_argument(
        "--loss-col",
        default=None,
        help="column of the loss (nats); default val_loss when present (as `reduce` uses), "
        "else loss",
    )
    parent.add_argument("--format-col", default="format", help="column of the format string")
    return parent


def read_table(path: Path) -> pd.DataFrame:
    """The table at `path`, a .csv or .parquet file."""
    import pandas as pd

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unknown table type {path.suffix!r}; give a .csv or .parquet file")


def column(table: pd.DataFrame, path: Path, name: str, flag: str) -> pd.Series:
    """The column `name`, or an error that lists the table's columns and names the flag."""
    if name not in table.columns:
        raise ValueError(
            f"{path}: no column {name!r} (columns: {', '.join(map(str, table.columns))}); "
            f"name it with {flag}"
        )
    return table[name]


def loss_column(table: pd.DataFrame, path: Path, name: str | None) -> pd.Series:
    """The loss: column `name` (`--loss-col`), else the first of LOSS_COLUMNS the table has (the
    error for a table with neither names the last)."""
    if name is None:
        name = next((c for c in LOSS_COLUMNS if c in table.columns), LOSS_COLUMNS[-1])
    return column(table, path, name, "--loss-col")


MULTIPLIER_COLUMNS = ("on_n", "on_d")  # optional: whether a row's format scales N, D
MULTIPLIER_DEFAULTS = (True, False)
TRUE_WORDS, FALSE_WORDS = {"true", "1", "1.0", "yes"}, {"false", "0", "0.0", "no"}


def multiplier_columns(
    table: pd.DataFrame, path: Path, formats: list[str]
) -> dict[str, tuple[bool, bool]] | None:
    """Each format's (on_n, on_d) from the optional boolean columns `on_n` and `on_d` (the
    `unified-effd` law: does the format's compression scale N, D or both); a column the table
    lacks takes its default (on_n true, on_d false); None when it has neither (the format grammar
    then says). Every row of a format must agree."""
    present = [name for name in MULTIPLIER_COLUMNS if name in table.columns]
    if not present:
        return None
    flags = {}
    for name, default in zip(MULTIPLIER_COLUMNS, MULTIPLIER_DEFAULTS, strict=True):
        values = table[name] if name in present else [default] * len(table)
        flags[name] = [_boolean(value, path, name) for value in values]
    by_format: dict[str, tuple[bool, bool]] = {}
    for row, format_name in enumerate(formats):
        pair = (flags["on_n"][row], flags["on_d"][row])
        if by_format.setdefault(format_name, pair) != pair:
            raise ValueError(
                f"{path}: format {format_name!r} has rows of different on_n / on_d; a format "
                "scales the same multipliers in every row"
            )
    return by_format


def _boolean(value: object, path: Path, name: str) -> bool:
    text = str(value).strip().lower()
    if text in TRUE_WORDS or text in FALSE_WORDS:
        return text in TRUE_WORDS
    raise ValueError(f"{path}: column {name!r} holds {value!r}; give true or false")
