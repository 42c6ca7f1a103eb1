"""`compscale query` and `Store.query` only read the store's views: no statement writes a file,
reads one outside the views, or unlocks the settings that forbid it; export goes through --csv
and --parquet OUT, never into the store."""

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main
from orchestrator.store import LOSS_SCHEMA, RESULT_SCHEMA, ReadOnlyQuery, Store
from workers.config import CellConfig, preset

REFUSED = "only reads of the store's views are allowed"


def parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    return buffer.getvalue()


@pytest.fixture
def store(tmp_path) -> Store:
    """A local store with one cell: its config, a result row and two loss rows."""
    store = Store(tmp_path / "store")
    cell = CellConfig(model=preset("tiny"), format="int4", tokens=1000)
    store.put_cell(cell)
    row = {"cell_id": cell.cell_id, "params": cell.params, "tokens": cell.tokens, "val_loss": 2.5}
    store.write_atomic(store.layout.cell(cell.cell_id).result, parquet([row], RESULT_SCHEMA))
    losses = [{"cell_id": cell.cell_id, "attempt": 1, "step": s, "train_loss": 3.0} for s in (0, 1)]
    part = store.layout.cell(cell.cell_id).loss_part(1, 0)
    store.write_atomic(part, parquet(losses, LOSS_SCHEMA))
    (tmp_path / "outside.csv").write_text("secret\n42\n")
    return store


def result_path(store: Store) -> str:
    return store.layout.cell(store.cell_ids()[0]).result


def test_the_views_still_answer_after_the_lock(store):
    assert store.query("select val_loss from results").fetchall() == [(2.5,)]
    assert store.query("select count(*) from losses").fetchall() == [(2,)]  # an Arrow dataset
    assert store.query("select count(*) from cells join results using (cell_id)").fetchall() == [
        (1,)
    ]


def test_copy_cannot_rewrite_a_stored_result(store, capsys):
    path = result_path(store)
    before = Path(path).read_bytes()
    cell_id = store.cell_ids()[0]
    sql = (
        "COPY (SELECT * REPLACE (val_loss*0.5 AS val_loss) FROM results "
        f"WHERE cell_id='{cell_id}') TO '{path}' (FORMAT parquet)"
    )
    with pytest.raises(ReadOnlyQuery, match=REFUSED):
        store.query(sql)
    assert main(["query", sql, "--store", store.uri]) == 2
    error = capsys.readouterr().err
    assert REFUSED in error and "--parquet" in error and len(error.strip().splitlines()) == 1
    assert Path(path).read_bytes() == before
    assert store.query("select val_loss from results").fetchall() == [(2.5,)]


@pytest.mark.parametrize(
    "sql",
    [
        "select * from read_csv('{outside}')",
        "select * from read_text('/etc/hostname')",
        "select * from '{outside}'",
        "select * from read_parquet('{result}')",  # a store file, but not through a view
        "select * from glob('{root}/*')",
        "select count(*) from results, read_csv('{outside}')",
        "ATTACH '{root}/attached.db'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "EXPORT DATABASE '{root}/exported'",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "CREATE TABLE t AS SELECT * FROM results",
        "select 1; COPY (select 1) TO '{root}/x.csv'",
    ],
)
def test_statements_that_write_or_read_outside_the_views_are_refused(store, sql, capsys):
    root = store.root
    sql = sql.format(outside=f"{root}/../outside.csv", result=result_path(store), root=root)
    listing = sorted(p.name for p in Path(store.root).rglob("*"))
    with pytest.raises(ReadOnlyQuery, match=REFUSED):
        store.query(sql)
    assert main(["query", sql, "--store", store.uri]) == 2
    error = capsys.readouterr().err
    assert error.startswith("compscale query: error: " + REFUSED) and error.count("\n") == 1
    assert sorted(p.name for p in Path(store.root).rglob("*")) == listing


def test_settings_stay_locked_for_the_next_statement(store):
    with pytest.raises(ReadOnlyQuery):
        store.query("SET enable_external_access = true")
    connection = store.connect(["results"])
    with pytest.raises(Exception, match="locked"):
        connection.execute("SET enable_external_access = true")
    with pytest.raises(Exception, match="disabled by configuration"):
        connection.execute(f"COPY results TO '{store.root}/copy.parquet'")


def test_export_through_csv_and_parquet_still_works(store, tmp_path, capsys):
    out = tmp_path / "exports" / "results.parquet"
    out.parent.mkdir()
    sql = "select cell_id, val_loss from results"
    assert main(["query", sql, "--parquet", str(out), "--store", store.uri]) == 0
    assert pq.read_table(out).column("val_loss").to_pylist() == [2.5]
    assert main(["query", "select val_loss from results", "--csv", "--store", store.uri]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["val_loss", "2.5"]


@pytest.mark.parametrize("inside", ["{root}/cells/{cell}/result.parquet", "{root}/export.parquet"])
def test_parquet_export_into_the_store_is_refused(store, inside, capsys):
    out = inside.format(root=store.root, cell=store.cell_ids()[0])
    before = Path(result_path(store)).read_bytes()
    assert main(["query", "select * from results", "--parquet", out, "--store", store.uri]) == 2
    error = capsys.readouterr().err
    assert "--parquet" in error and "inside the store" in error and error.count("\n") == 1
    assert Path(result_path(store)).read_bytes() == before
    assert not (Path(store.root) / "export.parquet").exists()
