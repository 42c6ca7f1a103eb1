"""What a reader of the report sees: rounded numbers, dashes for unknowns, no empty tables, escaped
Markdown, no raw backticks, the cells that did not finish, and a partial page when no law fits."""

import os
import stat
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from compscale.files import write_text_atomic
from compscale.report import (
    DASH,
    Page,
    Section,
    Table,
    number,
    render_html,
    render_markdown,
    sweep_page,
)


def results(sizes=(1e5,)) -> pd.DataFrame:
    rows = [
        {
            "cell_id": f"{fmt}-{int(n)}", "params": int(n), "tokens": int(20 * n), "format": fmt,
            "seed": 0, "val_loss": 2.0 + i / 10, "wall_time_s": 12.5, "hardware": "cpu",
            "finished_at": datetime(2025, 1, 1, tzinfo=timezone.utc),
        }
        for i, fmt in enumerate(("dense", "int4"))
        for n in sizes
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_numbers_are_rounded_and_unknowns_are_a_dash():
    assert number(0.1 + 0.2) == "0.3"
    assert number(1 / 3) == "0.3333"
    assert number(float("nan")) == number(None) == DASH
    assert number(np.float64(123456.789)) == "1.235e+05"
    assert number(np.int64(1_234_567)) == "1,234,567" and number(7) == "7"
    assert number(True) == "yes" and number(False) == ""
    frame = pd.DataFrame({"rho": [0.1 + 0.2, np.nan], "note": ["a | b", "x"]})
    page = render_html(Page("t", [Section("s", tables=[Table("c", frame)])]))
    assert "0.30000000000000004" not in page and f">{DASH}<" in page and "nan" not in page


def test_markdown_escapes_pipes_and_html_has_no_raw_backticks():
    frame = pd.DataFrame({"a|b": ["x | y"], "n": [1.0]})
    page = Page("t", [Section("s", tables=[Table("c", frame)])], footer="made by `compscale x`")
    markdown = render_markdown(page, "figures")
    assert "x \\| y" in markdown and "a\\|b" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert {line.count("|") - line.count("\\|") for line in rows} == {3}, rows
    html = render_html(page)
    assert "`" not in html and "<code>compscale x</code>" in html


def test_an_empty_table_is_a_sentence_saying_why():
    empty = pd.DataFrame(columns=["format", "rho"])
    section = Section("Composition", tables=[Table("pairs", empty, "no composite format")])
    for text in (render_html(Page("t", [section])), render_markdown(Page("t", [section]), "f")):
        assert "pairs: no composite format" in text
        assert "<table" not in text and "| format" not in text


def test_unfit_sweep_gets_a_partial_page_with_its_unfinished_cells():
    unfinished = pd.DataFrame(
        {
            "cell_id": ["int4-x"], "state": ["failed"], "error_class": ["Diverged"],
            "message": ["loss is nan at step 12\nmore detail"],
        }
    )  # fmt: skip
    page = sweep_page(
        "one-size", "store", results(), None, [], "compscale report one-size",
        unfinished=unfinished, unfit="alpha: one model size",
    )  # fmt: skip
    assert [s.heading for s in page.sections] == [
        "No law fitted", "Cells", "Cells that did not finish",
    ]  # fmt: skip
    assert "alpha: one model size" in page.sections[0].text
    assert "2 of 3 cells of sweep one-size finished (store: store)" in page.sections[1].text
    (table,) = page.sections[2].tables
    row = table.frame.iloc[0]
    assert (row["state"], row["error"], row["message"]) == (
        "failed", "Diverged", "loss is nan at step 12",
    )  # fmt: skip
    assert row["rerun"] == "compscale rerun one-size --cells int4-x"


def test_reports_and_tables_are_written_world_readable(tmp_path):
    previous = os.umask(0o077)  # even a strict umask: the report is meant to be shared
    try:
        path = write_text_atomic(tmp_path / "r" / "report.html", "<p>hi</p>")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("low", "high"), [(1.4, 2.3), (1.2, 5.6), (2e4, 2e5), (1e3, 5e7), (0.02, 0.9)]
)
def test_log_ticks_are_few_and_inside_the_range(low, high):
    from compscale.plots import MAX_TICKS, _log_ticks, _short

    ticks = _log_ticks(low, high)
    assert 1 <= len(ticks) <= MAX_TICKS
    assert all(low <= tick * (1 + 1e-9) and tick <= high * (1 + 1e-9) for tick in ticks)
    assert all(len(_short(tick)) <= 4 for tick in ticks), [_short(t) for t in ticks]
