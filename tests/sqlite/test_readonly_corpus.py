"""THREATS.md, the SQLite edition: nothing sent through sql_query (or to a read-only target) changes
the database, whatever the statement looks like. Each case also checks the file afterwards."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from support import call, connect, refused, write_config

from safe_mcp.adapter import Budget, Call, Classification
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError
from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

CONFIG = """
[targets.ro]
kind = "sqlite"
path = "shop.db"

[targets.rw]
kind = "sqlite"
path = "shop.db"
access = "read-write"
"""

# (statement, a word the refusal must contain)
BYPASSES = [
    # 1. escaping the transaction with more statements
    ("COMMIT; DROP TABLE orders", "one SQL statement"),
    ("ROLLBACK; DELETE FROM orders", "one SQL statement"),
    ("END; DELETE FROM orders", "one SQL statement"),
    ("SELECT 1; DROP TABLE orders", "one SQL statement"),
    ("SELECT 1 /* ; */; DELETE FROM orders", "one SQL statement"),
    ("SELECT '--'; \nDROP TABLE orders", "one SQL statement"),
    ("-- comment\nCOMMIT; DROP TABLE orders", "one SQL statement"),
    ("BEGIN", "transaction"),
    ("COMMIT", "transaction"),
    ("SAVEPOINT s", "transaction"),
    # 2. writes hidden in read-looking SQL
    ("WITH d AS (SELECT id FROM orders) DELETE FROM orders WHERE id IN (SELECT id FROM d)", "write"),
    ("INSERT INTO orders (customer_id, product_id, quantity, status) VALUES (1, 1, 1, 'x') RETURNING id", "write"),
    ("REPLACE INTO customers (id, name, email) VALUES (1, 'x', 'x@example.com')", "write"),
    ("UPDATE orders SET status = 'x' WHERE id = 1 RETURNING *", "write"),
    ("CREATE TABLE stolen AS SELECT * FROM customers", "write"),
    ("CREATE TRIGGER t AFTER INSERT ON orders BEGIN DELETE FROM customers; END", "write"),
    ("DROP TABLE orders", "destructive"),
    ("DELETE FROM orders", "destructive"),
    ("ALTER TABLE orders RENAME TO o2", "irreversible"),
    # 3. side effects beyond the database
    ("ATTACH DATABASE 'evil.db' AS evil", "forbidden"),
    ("VACUUM INTO 'copy.db'", "forbidden"),
    ("VACUUM", "forbidden"),
    ("SELECT load_extension('/tmp/evil')", "forbidden"),
    ('SELECT "load_extension"(\'/tmp/evil\')', "forbidden"),
    ("SELECT load_extension/**/('/tmp/evil')", "forbidden"),
    ("SELECT LOAD_EXTENSION('/tmp/evil')", "forbidden"),
    ("PRAGMA query_only = 0", "forbidden"),
    ("PRAGMA writable_schema = 1", "forbidden"),
    ("PRAGMA journal_mode = DELETE", "forbidden"),
    ("PRAGMA main.user_version = 7", "forbidden"),
    ("PRAGMA foreign_keys = OFF", "forbidden"),
    ("SELECT * FROM pragma_table_info('orders') WHERE 0; PRAGMA user_version = 3", "one SQL statement"),
    ("CREATE TEMP TRIGGER t AFTER INSERT ON main.orders BEGIN DELETE FROM customers; END", "forbidden"),
    ("CREATE VIRTUAL TABLE v USING fts5(x)", "forbidden"),
    ("ANALYZE", "forbidden"),
    ("REINDEX", "forbidden"),
    ("DETACH DATABASE main", "forbidden"),
]


def _fingerprint(directory: Path) -> tuple[str, list[str]]:
    db = sqlite3.connect(directory / "shop.db")
    parts = [repr(db.execute("PRAGMA user_version").fetchone())]
    for (name, sql) in db.execute("SELECT name, sql FROM sqlite_schema ORDER BY name").fetchall():
        parts.append(f"{name}:{sql}")
        if sql and sql.startswith("CREATE TABLE"):
            parts.append(repr(db.execute(f'SELECT * FROM "{name}" ORDER BY rowid').fetchall()))
    db.close()
    files = sorted(p.name for p in directory.iterdir() if p.name not in {".safe-mcp", "shop.db-wal", "shop.db-shm"})
    return hashlib.sha256("\n".join(parts).encode()).hexdigest(), files


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    create_shop(d / "shop.db")
    return write_config(d, CONFIG)


@pytest.mark.parametrize(("sql", "word"), BYPASSES, ids=[b[0][:40] for b in BYPASSES])
async def test_sql_query_never_writes(shop: Path, sql: str, word: str) -> None:
    before = _fingerprint(shop.parent)
    async with connect(shop, "memory") as client:
        text = await refused(client, "sql_query", target="rw", sql=sql)
        assert word in text, text
        text = await refused(client, "sql_execute", target="ro", sql=sql)
        assert "refused" in text
    assert _fingerprint(shop.parent) == before


async def test_reads_that_look_odd_still_work(shop: Path) -> None:
    async with connect(shop, "memory") as client:
        r = await call(client, "sql_query", target="ro", sql="WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
                                                         "FROM n WHERE x < 3) SELECT x FROM n")
        assert r["rows"] == [[1], [2], [3]]
        r = await call(client, "sql_query", target="ro", sql="SELECT name FROM pragma_table_info('orders')")
        assert ["status"] in r["rows"]
        r = await call(client, "sql_query", target="ro", sql="PRAGMA table_info(orders)")
        assert r["row_count"] == 5
        r = await call(client, "sql_query", target="ro", sql="EXPLAIN QUERY PLAN SELECT * FROM orders WHERE id = 1")
        assert r["row_count"] >= 1
        r = await call(client, "sql_query", target="ro", sql="SELECT '--; DROP TABLE orders' AS s")
        assert r["rows"] == [["--; DROP TABLE orders"]]


async def test_rows_returned_caps_reads_with_truncated_flag(tmp_path: Path) -> None:
    create_shop(tmp_path / "shop.db")
    cfg = write_config(tmp_path, CONFIG + "\n[limits]\nrows_returned = 5\n")
    async with connect(cfg, "memory") as client:
        r = await call(client, "sql_query", target="ro", sql="SELECT id FROM orders ORDER BY id")
        assert r["row_count"] == 5 and r["truncated"] is True and r["rows"][-1] == [5]
        r = await call(client, "sql_query", target="ro", sql="SELECT id FROM orders WHERE id <= 5")
        assert r["truncated"] is False


def test_engine_refuses_a_write_even_when_classified_as_read(tmp_path: Path) -> None:
    """If the classifier were fooled, the read connection still cannot write: mode=ro, query_only, authorizer."""
    from safe_mcp_sqlite import SqliteAdapter, SqliteSettings

    create_shop(tmp_path / "shop.db")
    before = _fingerprint(tmp_path)
    adapter = SqliteAdapter("t", SqliteSettings(path="shop.db"), {}, base_dir=str(tmp_path), state_dir=str(tmp_path))
    lie = Classification(effect=Effect.READ, reason="fooled", detail={"op": "read"})
    budget = Budget(rows_returned=10, rows_affected=10, allowed_effect=Effect.READ)
    try:
        for sql in ("DELETE FROM orders", "DROP TABLE orders", "INSERT INTO customers (name, email) VALUES ('x', 'y')",
                    "PRAGMA user_version = 9", "CREATE TABLE x (a)"):
            with pytest.raises(AdapterError):
                adapter.execute(Call(target="t", tool="sql_query", args={"sql": sql}), lie, budget)
    finally:
        adapter.close()
    assert _fingerprint(tmp_path) == before
