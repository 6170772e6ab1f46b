"""Which hooks a statement triggers comes from the adapters' own classification: every kind `before` can
name, as SQLite and PostgreSQL classify real statements, with the tables a hook is given."""

from __future__ import annotations

from pathlib import Path

import pytest
from hook_helpers import make_shop
from safe_mcp_postgres.classify import classify_sql
from safe_mcp_sqlite import SqliteAdapter, SqliteSettings

from safe_mcp.adapter import Call
from safe_mcp.gate.hooks_run import statement_of
from safe_mcp.hooks import STATEMENT_KINDS

POSTGRES = [
    ("DROP TABLE orders", {"DROP TABLE"}, ["orders"]),
    ("drop table if exists shop.orders, notes", {"DROP TABLE"}, ["shop.orders", "notes"]),
    ("TRUNCATE orders", {"TRUNCATE"}, ["orders"]),
    ("TRUNCATE TABLE orders, notes", {"TRUNCATE"}, ["orders", "notes"]),
    ("TRUNCATE orders CASCADE", {"TRUNCATE"}, [None]),  # irreversible: named, but no table list is kept
    ("DELETE FROM orders", {"DELETE"}, ["orders"]),
    ("delete from shop.orders where id = 1", {"DELETE"}, ["shop.orders"]),
    ("UPDATE orders SET qty = 0", {"UPDATE"}, ["orders"]),
    ("INSERT INTO orders (id) VALUES (9)", {"INSERT"}, ["orders"]),
    ("ALTER TABLE orders ADD COLUMN note text", {"ALTER TABLE"}, [None]),
    ("CREATE TABLE extra (id int)", {"CREATE TABLE"}, ["extra"]),
    ("CREATE INDEX orders_qty ON orders (qty)", {"CREATE INDEX"}, [None]),
    ("DROP INDEX orders_qty", {"DROP INDEX"}, [None]),
    ("DROP VIEW v", {"DROP VIEW"}, [None]),
    ("SELECT * FROM orders", set(), [None]),
    # A DELETE inside a SELECT's writable CTE is named by no kind: it is irreversible and waits for a human.
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", set(), [None]),
]

SQLITE = [
    ("DROP TABLE orders", {"DROP TABLE"}, ["orders"]),
    ("DELETE FROM orders", {"DELETE"}, ["orders"]),
    ("DELETE FROM orders WHERE id = 1", {"DELETE"}, ["orders"]),
    ("UPDATE orders SET qty = 0 WHERE id = 2", {"UPDATE"}, ["orders"]),
    ("INSERT INTO notes VALUES (5, 'x')", {"INSERT"}, ["notes"]),
    ("ALTER TABLE orders ADD COLUMN note TEXT", {"ALTER TABLE"}, [None]),
    ("REPLACE INTO notes VALUES (1, 'new')", {"INSERT"}, ["notes"]),
    ("CREATE TABLE extra (id INTEGER)", {"CREATE TABLE"}, ["extra"]),
    ("CREATE INDEX orders_qty ON orders (qty)", {"CREATE INDEX"}, [None]),
    ("SELECT * FROM orders", set(), [None]),
]


@pytest.mark.parametrize(("statement", "kinds", "tables"), POSTGRES)
def test_postgres_statements(statement: str, kinds: set[str], tables: list[str | None]) -> None:
    assert statement_of(classify_sql(statement, "_safe_mcp_trash")) == (kinds, tables)


@pytest.mark.parametrize(("statement", "kinds", "tables"), SQLITE)
def test_sqlite_statements(tmp_path: Path, statement: str, kinds: set[str], tables: list[str | None]) -> None:
    make_shop(tmp_path)
    adapter = SqliteAdapter("shop", SqliteSettings(path="shop.db"), {}, base_dir=str(tmp_path), state_dir=str(tmp_path))
    try:
        found = statement_of(adapter.classify(Call(target="shop", tool="sql_execute", args={"sql": statement})))
    finally:
        adapter.close()
    assert found == (kinds, tables)


def test_every_kind_a_hook_can_name_is_reached_by_some_statement() -> None:
    reached = {k for _s, kinds, _t in POSTGRES + SQLITE for k in kinds}
    assert reached | {"DROP TRIGGER"} == STATEMENT_KINDS
