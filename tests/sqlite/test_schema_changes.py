"""Classification on a connection kept across calls follows the schema: a trigger another process adds is seen on
the very next call, so its writes get before-images and undo restores them. Each case checks the file afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlite_helpers import app, make_adapter, make_shop, rows
from support import call, connect, refused, write_config
from test_readonly_corpus import BYPASSES, CONFIG, _fingerprint

from safe_mcp.adapter import Call
from safe_mcp.effects import Effect
from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

INSERT = "INSERT INTO notes (text) VALUES (?)"
TRIGGER = "CREATE TRIGGER wipe AFTER INSERT ON notes BEGIN UPDATE orders SET status = 'gone'; END"


def test_a_trigger_added_by_another_process_is_seen_on_the_next_call(tmp_path: Path) -> None:
    create_shop(tmp_path / "shop.db")
    app(tmp_path / "shop.db", "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    for adapter in make_adapter(tmp_path):
        insert = Call(target="admin", tool="sql_execute", args={"sql": INSERT, "params": ["x"]})
        assert adapter.classify(insert).detail["tables"] == ["notes"]
        assert adapter.classify(insert).detail["tables"] == ["notes"]  # the connection now holds this schema
        app(tmp_path / "shop.db", TRIGGER)
        assert adapter.classify(insert).detail["tables"] == ["notes", "orders"]
        app(tmp_path / "shop.db", "DROP TRIGGER wipe")
        assert adapter.classify(insert).detail["tables"] == ["notes"]
        # A read-looking statement that now reaches a write through a new trigger: never a read.
        app(tmp_path / "shop.db", "CREATE VIEW v AS SELECT id, text FROM notes")
        write_view = Call(target="admin", tool="sql_execute", args={"sql": "INSERT INTO v (text) VALUES ('y')"})
        assert adapter.classify(Call(target="admin", tool="sql_query", args={"sql": "SELECT * FROM v"})).effect \
            is Effect.READ
        app(tmp_path / "shop.db", "CREATE TRIGGER vi INSTEAD OF INSERT ON v BEGIN DELETE FROM orders; END")
        assert adapter.classify(write_view).effect is not Effect.READ
        assert "orders" in adapter.classify(write_view).detail.get("tables", [])


async def test_undo_after_a_trigger_appeared_restores_what_it_changed(tmp_path: Path) -> None:
    cfg = make_shop(tmp_path)
    db = tmp_path / "shop.db"
    app(db, "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    statuses = rows(db, "SELECT id, status FROM orders ORDER BY id")
    async with connect(cfg, "memory") as client:
        first = await call(client, "sql_execute", target="admin", sql=INSERT, params=["before the trigger"])
        assert first["status"] == "ok"
        app(db, TRIGGER)
        second = await call(client, "sql_execute", target="admin", sql=INSERT, params=["after the trigger"])
        assert second["status"] == "ok"
        assert {s for _, s in rows(db, "SELECT id, status FROM orders")} == {"gone"}
        undone = await call(client, "undo", receipt_id=second["receipt_id"])
        assert undone["status"] == "ok", undone
    assert rows(db, "SELECT id, status FROM orders ORDER BY id") == statuses
    assert rows(db, "SELECT text FROM notes") == [("before the trigger",)]


async def test_the_corpus_twice_in_one_session_never_writes(tmp_path: Path) -> None:
    """Every bypass, sent twice to the same server (the second time on connections and prepared statements kept
    from the first): the same refusal each time, and the file unchanged."""
    create_shop(tmp_path / "shop.db")
    cfg = write_config(tmp_path, CONFIG)
    before = _fingerprint(tmp_path)
    async with connect(cfg, "memory") as client:
        for _ in range(2):
            for sql, word in BYPASSES:
                text = await refused(client, "sql_query", target="rw", sql=sql)
                assert word in text, (sql, text)
            r = await call(client, "sql_query", target="rw", sql="SELECT count(*) FROM orders")
            assert r["row_count"] == 1
    assert _fingerprint(tmp_path) == before
