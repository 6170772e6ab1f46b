"""The target records its own undo: every write commits with its intent id and compensation in
_safe_mcp_journal, and `reconcile` answers from it after a crash (here: a fresh adapter)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from safe_mcp_sqlite import SqliteAdapter, SqliteSettings
from sqlite_helpers import budget, make_adapter, rows, sql

from safe_mcp.adapter import Budget, Call
from safe_mcp.effects import Effect
from safe_mcp.errors import TargetUnavailable, TooManyRows


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[SqliteAdapter]:
    yield from make_adapter(tmp_path)



def fresh(tmp_path: Path) -> SqliteAdapter:
    """The adapter of a restarted server: nothing in memory but the file."""
    return SqliteAdapter("admin", SqliteSettings(path="shop.db"), {}, base_dir=str(tmp_path),
                         state_dir=str(tmp_path / ".safe-mcp"))


@pytest.mark.parametrize("statement", [
    "UPDATE orders SET status = 'x' WHERE id < 4",
    "INSERT INTO customers (name, email) VALUES ('n', 'n@example.com')",
    "DELETE FROM orders WHERE id > 10",
    "DROP TABLE orders",
    "CREATE TABLE t AS SELECT * FROM products",
])
def test_a_committed_write_reconciles_as_executed_with_an_undo_that_works(
        adapter: SqliteAdapter, tmp_path: Path, statement: str) -> None:
    db = tmp_path / "shop.db"
    snapshot = {t: rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in ("orders", "customers", "products")}
    call = sql(statement)
    out = adapter.execute(call, adapter.classify(call), budget(intent_id="intent_a"))
    adapter.close()  # the process died before its outcome receipt
    again = fresh(tmp_path)
    r = again.reconcile("intent_a", call)
    assert r.state == "executed" and r.outcome is not None
    assert r.outcome.affected == out.affected and r.outcome.compensation == out.compensation
    assert r.outcome.compensation is not None
    again.compensate(r.outcome.compensation, budget(Effect.WRITE, intent_id="intent_undo"))
    assert {t: rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in snapshot} == snapshot
    undo = fresh(tmp_path).reconcile("intent_undo", Call(target="admin", tool="undo"))
    assert undo.state == "executed", "undo journals its own intent"
    again.close()


def test_never_run_and_rolled_back_intents_are_not_executed(adapter: SqliteAdapter, tmp_path: Path) -> None:
    call = sql("UPDATE orders SET status = 'x'")
    assert adapter.reconcile("intent_never", call).state == "not_executed"  # no journal yet at all
    small = sql("UPDATE orders SET status = 'y' WHERE id = 1")
    adapter.execute(small, adapter.classify(small), budget(intent_id="intent_ok"))
    with pytest.raises(TooManyRows):
        adapter.execute(call, adapter.classify(call), budget(intent_id="intent_big", rows_affected=2))
    assert adapter.reconcile("intent_big", call).state == "not_executed"
    assert adapter.reconcile("intent_never", call).state == "not_executed"
    assert adapter.reconcile("intent_ok", small).state == "executed"
    assert rows(tmp_path / "shop.db", "SELECT count(*) FROM orders WHERE status = 'x'") == [(0,)]


def test_a_preview_journals_nothing(adapter: SqliteAdapter) -> None:
    call = sql("UPDATE orders SET status = 'x' WHERE id = 1")
    adapter.preview(call, adapter.classify(call), budget(intent_id="intent_p"))
    assert adapter.reconcile("intent_p", call).state == "not_executed"


def test_irreversible_writes_are_journaled_without_a_compensation(adapter: SqliteAdapter) -> None:
    call = sql("ALTER TABLE orders ADD COLUMN note TEXT")
    adapter.execute(call, adapter.classify(call), budget(Effect.IRREVERSIBLE, intent_id="intent_alter"))
    r = adapter.reconcile("intent_alter", call)
    assert r.state == "executed" and r.outcome is not None and r.outcome.compensation is None


def test_reconcile_on_a_missing_file_says_unavailable(tmp_path: Path) -> None:
    a = SqliteAdapter("gone", SqliteSettings(path="nope.db"), {}, base_dir=str(tmp_path), state_dir=str(tmp_path))
    with pytest.raises(TargetUnavailable):
        a.reconcile("intent_x", sql("UPDATE t SET a = 1", "gone"))
    assert not (tmp_path / "nope.db").exists()


def test_a_read_stops_at_bytes_returned_as_well_as_rows(adapter: SqliteAdapter, tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO blobs (body) VALUES (?)", [("x" * 10_000,) for _ in range(50)])
    conn.commit()
    conn.close()
    call = Call(target="admin", tool="sql_query", args={"sql": "SELECT * FROM blobs"})
    b = Budget(rows_returned=500, rows_affected=0, allowed_effect=Effect.READ, bytes_returned=35_000)
    out = adapter.execute(call, adapter.classify(call), b)
    assert out.result["truncated"] and out.result["row_count"] == 3
    assert "bytes_returned" in out.summary
    one = Budget(rows_returned=500, rows_affected=0, allowed_effect=Effect.READ, bytes_returned=1024)
    assert adapter.execute(call, adapter.classify(call), one).result["row_count"] == 1, "one row always comes back"
