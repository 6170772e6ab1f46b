"""Confirm re-measures before commit (more rows, other rows or changed rows: a new pending action, the
table unchanged), and undo refuses when the target is no longer as the write left it, inserts included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from safe_mcp_sqlite import SqliteAdapter
from sqlite_helpers import app, budget, make_adapter, make_shop, rows, sql
from support import call, connect, refused

from safe_mcp.effects import Effect
from safe_mcp.errors import Drifted

pytestmark = pytest.mark.anyio


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return make_shop(tmp_path)


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[SqliteAdapter]:
    yield from make_adapter(tmp_path)

STATEMENT = "UPDATE orders SET status = 'archived' WHERE status = 'paid'"


def orders(db: Path) -> list[tuple[object, ...]]:
    return rows(db, "SELECT * FROM orders ORDER BY id")


@pytest.mark.parametrize(("meanwhile", "why"), [
    ("UPDATE orders SET status = 'paid' WHERE id = 2", "now change"),                  # more rows
    ("UPDATE orders SET status = 'paid' WHERE id = 2 OR id = 3", "now change"),
    ("UPDATE orders SET status = CASE id WHEN 1 THEN 'shipped' ELSE 'paid' END WHERE id IN (1, 2)", "not the ones"),
    ("UPDATE orders SET quantity = 7 WHERE id = 1", "not the ones"),                   # same rows, new content
    ("DELETE FROM orders WHERE id = 1; INSERT INTO orders VALUES (1, 2, 2, 1, 'paid')", "not the ones"),
])
def test_drift_between_preview_and_confirm_commits_nothing(adapter: SqliteAdapter, tmp_path: Path,
                                                          meanwhile: str, why: str) -> None:
    db = tmp_path / "shop.db"
    call_ = sql(STATEMENT)
    cls = adapter.classify(call_)
    shown = adapter.preview(call_, cls, budget())
    assert shown.fingerprint
    for part in meanwhile.split("; "):
        app(db, part)
    before = orders(db)
    confirmed = budget(Effect.WRITE).model_copy(update={"expect": shown})
    with pytest.raises(Drifted) as err:
        adapter.execute(call_, cls, confirmed)
    assert why in err.value.reason
    assert err.value.preview.fingerprint and err.value.preview.fingerprint != shown.fingerprint
    assert orders(db) == before


def test_no_drift_commits_and_a_smaller_change_of_the_same_rows_is_other(adapter: SqliteAdapter,
                                                                        tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    call_ = sql(STATEMENT)
    cls = adapter.classify(call_)
    shown = adapter.preview(call_, cls, budget())
    out = adapter.execute(call_, cls, budget(Effect.WRITE).model_copy(update={"expect": shown}))
    assert out.affected == shown.affected
    assert rows(db, "SELECT count(*) FROM orders WHERE status = 'paid'") == [(0,)]


def test_a_dropped_table_that_grew_since_the_preview_drifts(adapter: SqliteAdapter, tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    call_ = sql("DROP TABLE orders")
    cls = adapter.classify(call_)
    shown = adapter.preview(call_, cls, budget())
    app(db, "INSERT INTO orders (customer_id, product_id, quantity, status) VALUES (1, 1, 1, 'new')")
    with pytest.raises(Drifted):
        adapter.execute(call_, cls, budget().model_copy(update={"expect": shown}))
    assert rows(db, "SELECT count(*) FROM orders") == [(13,)]


async def test_drift_at_confirm_gives_a_new_pending_action_through_the_gate(shop: Path) -> None:
    db = shop.parent / "shop.db"
    async with connect(shop) as c:
        p = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders")
        assert p["status"] == "pending" and p["affected"] == 12
        app(db, "INSERT INTO orders (customer_id, product_id, quantity, status) VALUES (1, 1, 1, 'new')")
        again = await call(c, "confirm", action_id=p["pending"]["action_id"])
        assert again["status"] == "pending" and again["affected"] == 13, again
        assert again["pending"]["action_id"] != p["pending"]["action_id"]
        assert rows(db, "SELECT count(*) FROM orders") == [(13,)], "nothing was committed"
        done = await call(c, "confirm", action_id=again["pending"]["action_id"])
        assert done["status"] == "ok" and done["affected"] == 13
    assert rows(db, "SELECT count(*) FROM orders") == [(0,)]


INSERT = "INSERT INTO customers (name, email) VALUES ('Zed', 'zed@example.com')"


@pytest.mark.parametrize(("meanwhile", "conflict"), [
    ("UPDATE customers SET name = 'Zed Jr' WHERE email = 'zed@example.com'", "changed since"),
    ("DELETE FROM customers WHERE email = 'zed@example.com'", "gone already"),
])
async def test_undo_of_an_insert_refuses_when_the_app_changed_or_deleted_the_row(
        shop: Path, meanwhile: str, conflict: str) -> None:
    db = shop.parent / "shop.db"
    async with connect(shop) as c:
        w = await call(c, "sql_execute", target="admin", sql=INSERT)
        app(db, meanwhile)
        state = rows(db, "SELECT * FROM customers ORDER BY id")
        text = await refused(c, "undo", receipt_id=w["receipt_id"])
        assert conflict in text and "customers" in text, text
        assert rows(db, "SELECT * FROM customers ORDER BY id") == state
        # the refusal did not use up the undo: once the row is back as inserted, undo works
        if "UPDATE" in meanwhile:
            app(db, "UPDATE customers SET name = 'Zed' WHERE email = 'zed@example.com'")
            await call(c, "undo", receipt_id=w["receipt_id"])
            assert rows(db, "SELECT count(*) FROM customers WHERE email = 'zed@example.com'") == [(0,)]


@pytest.mark.parametrize(("meanwhile", "conflict"), [
    ("UPDATE orders SET status = 'app' WHERE id = 1", "changed again"),
    ("DELETE FROM orders WHERE id = 1", "was deleted"),
])
async def test_undo_of_an_update_refuses_when_the_app_moved_on(shop: Path, meanwhile: str, conflict: str) -> None:
    db = shop.parent / "shop.db"
    async with connect(shop) as c:
        w = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'x' WHERE id IN (1, 2)")
        app(db, meanwhile)
        state = orders(db)
        text = await refused(c, "undo", receipt_id=w["receipt_id"])
        assert conflict in text and "orders" in text, text
    assert orders(db) == state


async def test_undo_of_an_insert_a_trigger_changed_in_the_same_write_works(shop: Path) -> None:
    db = shop.parent / "shop.db"
    app(db, "CREATE TRIGGER stamp AFTER INSERT ON customers BEGIN "
            "UPDATE customers SET name = upper(new.name) WHERE id = new.id; END")
    async with connect(shop) as c:
        w = await call(c, "sql_execute", target="admin", sql=INSERT)
        assert rows(db, "SELECT name FROM customers WHERE email = 'zed@example.com'") == [("ZED",)]
        await call(c, "undo", receipt_id=w["receipt_id"])
    assert rows(db, "SELECT count(*) FROM customers WHERE email = 'zed@example.com'") == [(0,)]


async def test_capture_follows_schema_changes_the_app_makes_between_writes(shop: Path) -> None:
    db = shop.parent / "shop.db"
    before = orders(db)
    async with connect(shop) as c:
        first = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'a' WHERE id = 1")
        app(db, "ALTER TABLE orders ADD COLUMN note TEXT")
        second = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET note = 'n', status = 'b' WHERE id = 1")
        assert rows(db, "SELECT status, note FROM orders WHERE id = 1") == [("b", "n")]
        await call(c, "undo", receipt_id=second["receipt_id"])
        assert rows(db, "SELECT status, note FROM orders WHERE id = 1") == [("a", None)]
        app(db, "ALTER TABLE orders DROP COLUMN note")
        await call(c, "undo", receipt_id=first["receipt_id"])
    assert orders(db) == before


async def test_a_write_through_a_view_is_captured_in_the_tables_its_trigger_writes(shop: Path) -> None:
    db = shop.parent / "shop.db"
    app(db, "CREATE VIEW open_orders AS SELECT id, status FROM orders WHERE status = 'paid'")
    app(db, "CREATE TRIGGER close_order INSTEAD OF UPDATE ON open_orders BEGIN "
            "UPDATE orders SET status = new.status WHERE id = old.id; END")
    before = orders(db)
    async with connect(shop) as c:
        w = await call(c, "sql_execute", target="admin", sql="UPDATE open_orders SET status = 'closed' WHERE id = 1")
        assert w["affected"] == 1 and w["undo"]
        assert rows(db, "SELECT status FROM orders WHERE id = 1") == [("closed",)]
        await call(c, "undo", receipt_id=w["receipt_id"])
    assert orders(db) == before


@pytest.mark.parametrize("setup", [
    # a trigger of the app writes another table
    # (it fires again when undo restores orders; undo puts products back all the same)
    ["CREATE TRIGGER audit AFTER UPDATE ON orders BEGIN UPDATE products SET price_cents = price_cents + 1 "
     "WHERE id = new.product_id; END"],
    # a trigger that deletes a row of another table when an order changes
    ["CREATE TABLE flags (id INTEGER PRIMARY KEY, order_id INTEGER)",
     "INSERT INTO flags (order_id) VALUES (1), (2), (3)",
     "CREATE TRIGGER unflag AFTER UPDATE ON orders BEGIN DELETE FROM flags WHERE order_id = old.id; END"],
    # a foreign key cascades into a table the statement never names
    ["CREATE TABLE notes (id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES orders(id) ON UPDATE CASCADE, body TEXT)",
     "INSERT INTO notes (order_id, body) VALUES (1, 'a'), (1, 'b'), (2, 'c')"],
])
async def test_undo_restores_rows_moved_by_triggers_and_cascades(shop: Path, setup: list[str]) -> None:
    db = shop.parent / "shop.db"
    for s in setup:
        app(db, s)
    tables = [t for (t,) in rows(db, "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\'")]
    before = {t: rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in tables}
    async with connect(shop) as c:
        w = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET id = id + 100, status = 'z' WHERE id IN (1, 2)")
        assert {t: rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in tables} != before
        await call(c, "undo", receipt_id=w["receipt_id"])
    assert {t: rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in tables} == before


async def test_undo_refuses_when_a_trigger_keeps_moving_a_restored_row(shop: Path) -> None:
    db = shop.parent / "shop.db"
    async with connect(shop) as c:
        w = await call(c, "sql_execute", target="admin", sql="UPDATE products SET price_cents = 1 WHERE id = 1")
        # the app adds a trigger that rewrites every change of products
        app(db, "CREATE TRIGGER stuck AFTER UPDATE ON products BEGIN "
                "UPDATE products SET price_cents = 777 WHERE id = new.id AND new.price_cents <> 777; END")
        app(db, "UPDATE products SET price_cents = 1 WHERE id = 1")  # leaves it as the write did (the trigger: 777)
        app(db, "DROP TRIGGER stuck")
        app(db, "UPDATE products SET price_cents = 1 WHERE id = 1")
        app(db, "CREATE TRIGGER stuck AFTER UPDATE ON products BEGIN "
                "UPDATE products SET price_cents = 777 WHERE id = new.id AND new.price_cents <> 777; END")
        state = rows(db, "SELECT * FROM products ORDER BY id")
        text = await refused(c, "undo", receipt_id=w["receipt_id"])
        assert "moves it again" in text, text
    assert rows(db, "SELECT * FROM products ORDER BY id") == state
