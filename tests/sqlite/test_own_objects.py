"""safe-mcp's journal and trash live in the target; no agent statement reaches them, by any spelling,
directly or through a trigger or a view, and undo still works after every attack. Each case compares
the journal's and the trash's definitions and content in the file before and after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from safe_mcp_sqlite import SqliteAdapter
from sqlite_helpers import app, budget, internal, make_adapter, make_shop, rows, sql, untouched
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

J = "_safe_mcp_journal"

ATTACKS = [
    f"DROP TABLE {J}",
    'DROP TABLE "_SAFE_MCP_JOURNAL"',
    f"DROP TABLE IF EXISTS main.[{J}]",
    f"DELETE FROM {J}",
    f"DELETE FROM `{J.upper()}` WHERE 1",
    f"UPDATE {J} SET compensation = NULL",
    f"INSERT INTO {J} (intent_id, at, tool, affected, summary) VALUES ('x', 0, 't', 0, 's')",
    f"REPLACE INTO {J} SELECT * FROM {J}",
    f"ALTER TABLE {J} RENAME TO j2",
    f"ALTER TABLE {J} ADD COLUMN z",
    f"ALTER TABLE {J} DROP COLUMN summary",
    f"CREATE INDEX ji ON {J}(tool)",
    f"DROP INDEX sqlite_autoindex_{J}_1",
    f"SELECT * FROM {J}",
    f"CREATE TABLE copy AS SELECT * FROM {J}",
    f"INSERT INTO customers (name, email) SELECT tool, intent_id FROM {J}",
    f"WITH j AS (SELECT * FROM {J}) SELECT * FROM j",
    f"PRAGMA table_info({J})",
    "DROP TABLE {trash}",
    "DELETE FROM {trash}",
    "UPDATE {trash} SET name = 'x'",
    "INSERT INTO {trash} (name, price_cents) VALUES ('x', 1)",
    "ALTER TABLE {trash} RENAME TO products",
    "ALTER TABLE {trash} RENAME COLUMN name TO n",
    "CREATE INDEX ti ON {trash}(name)",
    "CREATE TRIGGER tt AFTER INSERT ON {trash} BEGIN SELECT 1; END",
    "SELECT * FROM {trash}",
    "DELETE FROM {undo}",
    "UPDATE {undo} SET c2 = 'forged'",
    "DROP TABLE {undo}",
    "CREATE TRIGGER forge AFTER UPDATE ON orders BEGIN UPDATE {undo} SET c4 = 'forged'; END",
    "CREATE TABLE _safe_mcp_mine (a)",
    "CREATE TABLE _Safe_Mcp_trash_x AS SELECT 1 AS a",
    "INSERT INTO temp._safe_mcp_cap_0 VALUES (1)",
    "DROP TRIGGER temp._safe_mcp_cap_0_d",
    "DROP TABLE temp._safe_mcp_cap_0",
    # code that would reach them later: refused, or held for a human (and then refused by the engine)
    f"CREATE TRIGGER bomb AFTER UPDATE ON orders BEGIN DELETE FROM {J}; END",
    "CREATE TRIGGER bomb AFTER INSERT ON customers BEGIN DROP TABLE x; END",
    f"CREATE VIEW leak AS SELECT * FROM {J}",
    "CREATE VIEW leak AS SELECT * FROM {trash}",
    "ALTER TABLE customers RENAME TO _safe_mcp_trash_fake",
    f"CREATE TABLE child (a REFERENCES {J}(intent_id) ON DELETE CASCADE)",
]


def _undo(db: Path) -> str:
    return next(n for n in internal(db) if n.startswith("_safe_mcp_undo_"))


async def _setup(shop: Path) -> tuple[Path, str, str]:
    """A dropped table in the trash and a journaled write; returns the db, the trash and the drop's receipt."""
    db = shop.parent / "shop.db"
    async with connect(shop) as c:
        await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'x' WHERE id = 1")
        p = await call(c, "sql_execute", target="admin", sql="DROP TABLE products")
        done = await call(c, "confirm", action_id=p["pending"]["action_id"])
    trash = next(n for n in internal(db) if n.startswith("_safe_mcp_trash_"))
    return db, trash, str(done["receipt_id"])


@pytest.mark.parametrize("attack", ATTACKS)
async def test_attacks_on_the_journal_and_trash_change_nothing(shop: Path, attack: str) -> None:
    db, trash, dropped = await _setup(shop)
    before = internal(db)
    assert J in before and trash in before
    async with connect(shop) as c:
        for target in ("admin", "shop"):
            r = await c.call_tool("sql_execute" if target == "admin" else "sql_query",
                                  {"target": target, "sql": attack.format(trash=trash, undo=_undo(db))})
            if not r.is_error:
                assert r.structured_content is not None
                assert r.structured_content["status"] == "pending", r.structured_content
                assert r.structured_content["pending"]["confirm_by"] == "human"
            assert untouched(before, internal(db)), attack
        # the recovery area still works: the dropped table comes back whole
        await call(c, "undo", receipt_id=dropped)
    assert rows(db, "SELECT count(*) FROM products") == [(3,)]


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.startswith(("CREATE TRIGGER bomb", "CREATE VIEW leak",
                                                                        "CREATE TRIGGER forge",
                                                                        "ALTER TABLE customers", "CREATE TABLE child",
                                                                        "ALTER TABLE"))])
async def test_a_human_approval_does_not_open_them_either(shop: Path, adapter: SqliteAdapter, attack: str) -> None:
    db, trash, _ = await _setup(shop)
    before = internal(db)
    statement = sql(attack.format(trash=trash, undo=_undo(db)))
    try:
        cls = adapter.classify(statement)
    except AdapterError:
        cls = Classification(effect=Effect.IRREVERSIBLE, reason="forged", detail={"op": "irreversible"})
    if cls.effect is Effect.FORBIDDEN:
        cls = Classification(effect=Effect.IRREVERSIBLE, reason="forged", detail={"op": "irreversible"})
    with pytest.raises(AdapterError):
        adapter.execute(statement, cls, budget(Effect.IRREVERSIBLE))
    assert untouched(before, internal(db))


async def test_triggers_and_views_the_app_made_cannot_reach_them(shop: Path) -> None:
    db, trash, _ = await _setup(shop)
    async with connect(shop) as c:
        earlier = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 9 WHERE id = 3")
    app(db, f"CREATE TRIGGER wipe AFTER UPDATE ON orders BEGIN DELETE FROM {J}; DELETE FROM {trash}; END")
    app(db, f"CREATE VIEW peek AS SELECT * FROM {J}")
    before = internal(db)
    status = rows(db, "SELECT status FROM orders WHERE id = 2")
    async with connect(shop) as c:
        text = await refused(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'y' WHERE id = 2")
        assert "safe-mcp" in text
        text = await refused(c, "sql_query", target="shop", sql="SELECT * FROM peek")
        assert "safe-mcp" in text or "forbidden" in text
        # undo fires the app's trigger too: it is refused rather than let the trigger wipe the journal
        await refused(c, "undo", receipt_id=earlier["receipt_id"])
    assert untouched(before, internal(db))
    assert rows(db, "SELECT status FROM orders WHERE id = 2") == status
    assert rows(db, "SELECT quantity FROM orders WHERE id = 3") == [(9,)]


async def test_a_cascade_into_the_trash_is_refused(shop: Path) -> None:
    db = shop.parent / "shop.db"
    app(db, "CREATE TABLE notes (id INTEGER PRIMARY KEY, customer_id REFERENCES customers(id) ON DELETE CASCADE)")
    app(db, "INSERT INTO notes (customer_id) VALUES (1)")
    app(db, "DELETE FROM orders WHERE customer_id = 1")
    async with connect(shop) as c:
        p = await call(c, "sql_execute", target="admin", sql="DROP TABLE notes")
        await call(c, "confirm", action_id=p["pending"]["action_id"])
        before = internal(db)
        await refused(c, "sql_execute", target="admin", sql="DELETE FROM customers WHERE id = 1")
    assert untouched(before, internal(db))
    assert rows(db, "SELECT count(*) FROM customers WHERE id = 1") == [(1,)]
