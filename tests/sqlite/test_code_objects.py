"""Triggers and views are code that runs (or is read) later: creating one waits for a human, dropping one
is destructive with an undo that recreates it. Temporary objects and settings never stay on safe-mcp's
kept connection, whatever the spelling. Every case checks the database file (or the kept connection)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from safe_mcp_sqlite import SqliteAdapter
from sqlite_helpers import app, budget, make_adapter, make_shop, objects, rows, sql
from support import call, connect, refused

from safe_mcp.adapter import Classification
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError

pytestmark = pytest.mark.anyio


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return make_shop(tmp_path)


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[SqliteAdapter]:
    yield from make_adapter(tmp_path)

CREATES = [
    ("CREATE TRIGGER t1 AFTER INSERT ON orders BEGIN UPDATE customers SET name = 'x'; END", "t1"),
    ("create trigger if not exists \"t2\" before delete on main.orders begin select 1; end", "t2"),
    ("CREATE TRIGGER t3 INSTEAD OF INSERT ON v0 BEGIN DELETE FROM customers; END", "t3"),
    ("CREATE VIEW v1 AS SELECT * FROM customers", "v1"),
    ("CREATE VIEW IF NOT EXISTS main.v2 (a, b) AS SELECT id, name FROM customers", "v2"),
]


@pytest.mark.parametrize(("statement", "name"), CREATES)
async def test_creating_a_trigger_or_view_waits_for_a_human(shop: Path, statement: str, name: str) -> None:
    db = shop.parent / "shop.db"
    app(db, "CREATE VIEW v0 AS SELECT * FROM orders")
    before = objects(db)
    async with connect(shop) as c:
        r = await call(c, "sql_execute", target="admin", sql=statement)
        assert r["status"] == "pending" and r["effect"] == "irreversible", r
        assert r["pending"]["confirm_by"] == "human"
        text = await refused(c, "confirm", action_id=r["pending"]["action_id"])
        assert "human" in text
    assert objects(db) == before and name not in objects(db)


@pytest.mark.parametrize(("kind", "create", "drop"), [
    ("trigger", "CREATE TRIGGER audit AFTER UPDATE ON orders BEGIN UPDATE products SET price_cents = 1; END",
     "DROP TRIGGER audit"),
    ("trigger", "CREATE TRIGGER audit AFTER UPDATE ON orders BEGIN UPDATE products SET price_cents = 1; END",
     'drop trigger if exists main."audit"'),
    ("view", "CREATE VIEW audit AS SELECT id, status FROM orders", "DROP VIEW audit"),
    ("view", "CREATE VIEW audit AS SELECT id, status FROM orders", "DROP VIEW IF EXISTS [audit]"),
])
async def test_dropping_a_trigger_or_view_is_destructive_and_undo_recreates_it(
        shop: Path, kind: str, create: str, drop: str) -> None:
    db = shop.parent / "shop.db"
    app(db, create)
    definition = rows(db, "SELECT sql FROM sqlite_schema WHERE name = 'audit'")
    async with connect(shop) as c:
        p = await call(c, "sql_execute", target="admin", sql=drop)
        assert p["status"] == "pending" and p["effect"] == "destructive", p
        assert objects(db).get("audit") == kind, "nothing runs before the confirmation"
        done = await call(c, "confirm", action_id=p["pending"]["action_id"])
        assert done["status"] == "ok" and done["undo"]
        assert "audit" not in objects(db)
        await call(c, "undo", receipt_id=done["receipt_id"])
    assert rows(db, "SELECT sql FROM sqlite_schema WHERE name = 'audit'") == definition


async def test_dropping_an_index_is_a_write_with_undo(shop: Path) -> None:
    db = shop.parent / "shop.db"
    app(db, "CREATE INDEX orders_status ON orders(status)")
    async with connect(shop) as c:
        r = await call(c, "sql_execute", target="admin", sql="DROP INDEX orders_status")
        assert r["status"] == "ok" and r["effect"] == "write" and r["undo"]
        assert "orders_status" not in objects(db)
        await call(c, "undo", receipt_id=r["receipt_id"])
    assert objects(db)["orders_status"] == "index"


async def test_undo_of_a_dropped_view_refuses_when_its_name_is_taken(shop: Path) -> None:
    db = shop.parent / "shop.db"
    app(db, "CREATE VIEW audit AS SELECT id FROM orders")
    async with connect(shop) as c:
        p = await call(c, "sql_execute", target="admin", sql="DROP VIEW audit")
        done = await call(c, "confirm", action_id=p["pending"]["action_id"])
        app(db, "CREATE TABLE audit (x)")
        app(db, "INSERT INTO audit VALUES (1)")
        text = await refused(c, "undo", receipt_id=done["receipt_id"])
        assert "audit exists again" in text
    assert objects(db)["audit"] == "table" and rows(db, "SELECT x FROM audit") == [(1,)]


TEMP_AND_SETTINGS = [
    "CREATE TEMP TABLE t (a)",
    "CREATE TEMPORARY TABLE t AS SELECT * FROM customers",
    "CREATE TABLE temp.t (a)",
    'CREATE TABLE "TEMP".t (a)',
    "CREATE TEMP VIEW v AS SELECT 1",
    "CREATE VIEW temp.v AS SELECT * FROM orders",
    "CREATE TEMP TRIGGER t AFTER INSERT ON main.orders BEGIN DELETE FROM customers; END",
    "CREATE TRIGGER temp.t AFTER INSERT ON main.orders BEGIN DELETE FROM customers; END",
    "CREATE INDEX temp.i ON orders(status)",
    "ATTACH DATABASE ':memory:' AS temp2",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA recursive_triggers = 0",
    "PRAGMA legacy_alter_table = ON",
    "PRAGMA defer_foreign_keys = 1",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA main.cache_size = 1",
    "PRAGMA query_only = 1",
    "PRAGMA writable_schema = 1",
]


@pytest.mark.parametrize("statement", TEMP_AND_SETTINGS)
async def test_state_that_would_outlive_the_call_is_refused_through_the_gate(shop: Path, statement: str) -> None:
    db = shop.parent / "shop.db"
    before = objects(db)
    async with connect(shop) as c:
        text = await refused(c, "sql_execute", target="admin", sql=statement)
        assert "forbidden" in text.lower() or "temp" in text.lower(), text
        # the kept connection still works as before: a write and its undo
        w = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'x' WHERE id = 1")
        await call(c, "undo", receipt_id=w["receipt_id"])
    assert objects(db) == before
    assert rows(db, "SELECT status FROM orders WHERE id = 1") == [("paid",)]


@pytest.mark.parametrize("statement", TEMP_AND_SETTINGS)
def test_the_engine_refuses_them_even_when_the_classifier_is_fooled(adapter: SqliteAdapter, statement: str) -> None:
    forged = Classification(effect=Effect.IRREVERSIBLE, reason="forged", detail={"op": "irreversible"})
    adapter.execute(sql("UPDATE orders SET status = 'y' WHERE id = 2"), adapter.classify(sql(
        "UPDATE orders SET status = 'y' WHERE id = 2")), budget())
    with pytest.raises(AdapterError):
        adapter.execute(sql(statement), forged, budget(Effect.IRREVERSIBLE))
    conn = adapter._rw
    assert conn is not None
    temp = [r[0] for r in conn.execute("SELECT name FROM temp.sqlite_schema").fetchall()]
    assert all(n.startswith("_safe_mcp_cap_") for n in temp), temp
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert conn.execute("PRAGMA recursive_triggers").fetchone() == (1,)
    assert conn.execute("PRAGMA legacy_alter_table").fetchone() == (0,)
    assert conn.execute("PRAGMA query_only").fetchone() == (0,)
    assert [r[1] for r in conn.execute("PRAGMA database_list")] == ["main", "temp"]


@pytest.mark.parametrize(("statement", "effect", "compensable"), [
    ("UPDATE orders SET status = 'x' WHERE id = 1", Effect.WRITE, True),
    ("INSERT INTO customers (name, email) VALUES ('a', 'a@example.com')", Effect.WRITE, True),
    ("DELETE FROM orders", Effect.DESTRUCTIVE, True),
    ("DROP TABLE orders", Effect.DESTRUCTIVE, True),
    ("CREATE TABLE t (a)", Effect.WRITE, True),
    ("CREATE INDEX i ON orders(status)", Effect.WRITE, True),
    ("CREATE TRIGGER t AFTER INSERT ON orders BEGIN SELECT 1; END", Effect.IRREVERSIBLE, False),
    ("CREATE VIEW v AS SELECT 1", Effect.IRREVERSIBLE, False),
    ("ALTER TABLE orders ADD COLUMN note TEXT", Effect.IRREVERSIBLE, False),
    ("ALTER TABLE orders RENAME TO o2", Effect.IRREVERSIBLE, False),
])
def test_compensable_exactly_where_an_undo_is_recorded(adapter: SqliteAdapter, statement: str, effect: Effect,
                                                        compensable: bool) -> None:
    cls = adapter.classify(sql(statement))
    assert (cls.effect, cls.compensable) == (effect, compensable)
    if compensable:
        out = adapter.execute(sql(statement), cls, budget())
        assert out.compensation is not None
