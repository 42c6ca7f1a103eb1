"""`compscale reduce` / `report` over a store whose results follow a known multiplicative law."""

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import TRUE_RHO, fill_store, parquet_bytes

from orchestrator.cli import main
from orchestrator.store import RESULT_SCHEMA, Store


def store_dir(store: Store) -> Path:
    return Path(store.layout.sweep("synthetic").reduction)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    fill_store(store, "synthetic")
    return store


@pytest.mark.slow
def test_reduce_writes_tables_beside_the_sweep_and_recovers_capacities(store, capsys):
    assert main(["reduce", "synthetic", "--store", store.uri, "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "Capacity rho per format" in out
    document = json.loads((store_dir(store) / "reduction.json").read_text())
    fitted = {row["format"]: row["rho"] for row in document["rho"]}
    for fmt, rho in TRUE_RHO.items():
        assert fitted[fmt] == pytest.approx(rho, rel=0.03), fmt


@pytest.mark.slow
def test_report_writes_html_markdown_and_figures_with_the_claims_table(store, tmp_path):
    markdown = tmp_path / "docs" / "synthetic.md"
    argv = ["report", "synthetic", "--store", store.uri, "--bootstrap", "20"]
    assert main([*argv, "--markdown", str(markdown)]) == 0
    page = (store_dir(store).parent / "report" / "report.html").read_text()
    assert "The paper&#x27;s claims on this sweep" in page
    assert "sp50+int4" in page and "data:image/png;base64," in page
    text = markdown.read_text()
    assert "| claim" in text and "multiplicative" in text
    linked = [
        line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")
    ]
    assert linked and all((markdown.parent / link).exists() for link in linked)


def test_report_on_an_unknown_or_empty_sweep_is_a_one_line_error(store, capsys):
    assert main(["report", "nope", "--store", store.uri]) == 2
    assert "sweep 'nope': not in store" in capsys.readouterr().err
    store.put_sweep("empty", "name: empty\n", ["no-such-cell"])
    assert main(["reduce", "empty", "--store", store.uri]) == 2
    assert "no finished cells yet" in capsys.readouterr().err


def test_a_sweep_the_law_cannot_fit_gets_a_partial_report(tmp_path, capsys, monkeypatch):
    """One model size: no law, but cells, training curves and the failed cell, with a reason;
    the page names the store relative to where the command ran, never by an absolute path."""
    from workers.config import CellConfig, preset
    from workers.schema import LOSS_SCHEMA

    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "store")
    cells = [
        CellConfig(model=preset("tiny"), format=fmt, tokens=4096, seed=0)
        for fmt in ("dense", "int4", "sp50")
    ]
    for index, cell in enumerate(cells):
        store.put_cell(cell)
        rows = [
            {"cell_id": cell.cell_id, "attempt": 1, "step": s, "tokens": 512 * s,
             "train_loss": 5.0 - s / 10, "val_loss": 5.0 - s / 10 if s % 4 == 0 else None}
            for s in range(1, 9)
        ]  # fmt: skip
        store.write_atomic(
            store.layout.cell(cell.cell_id).loss_part(1, 0),
            parquet_bytes(pa.Table.from_pylist(rows, schema=LOSS_SCHEMA)),
        )
        if index < 2:
            row = {
                "cell_id": cell.cell_id, "params": cell.params, "tokens": cell.tokens,
                "format": cell.format, "seed": 0, "val_loss": 4.2 + index / 10,
                "wall_time_s": 3.0, "hardware": "cpu", "finished_at": datetime.now(timezone.utc),
            }  # fmt: skip
            table = pa.Table.from_pylist([row], schema=RESULT_SCHEMA)
            store.write_atomic(store.layout.cell(cell.cell_id).result, parquet_bytes(table))
    store.record(cells[2].cell_id, "failed", 1, error_class="Diverged", message="nan at step 9\nx")
    store.put_sweep("one", "name: one\n", [cell.cell_id for cell in cells])

    losses = store.losses("one")
    assert set(losses["format"]) == {"dense", "int4", "sp50"} and len(losses) == 24

    assert main(["report", "one", "--store", str(tmp_path / "store"), "--bootstrap", "0"]) == 0
    assert "law not fitted" in capsys.readouterr().err
    report = tmp_path / "store" / "sweeps" / "one" / "report"
    page = (report / "report.html").read_text()
    assert "No law fitted" in page and "Cells that did not finish" in page
    assert "nan at step 9" in page and f"compscale rerun one --cells {cells[2].cell_id}" in page
    assert str(tmp_path) not in page and "(store: store)" in page
    assert sorted(path.name for path in report.glob("*.png")) == [
        "loss_vs_params.png", "training_curves.png",
    ]  # fmt: skip
