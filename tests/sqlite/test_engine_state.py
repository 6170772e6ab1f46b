"""The database file's own state is never blamed on the statement: a writer killed mid-write (a real
hot journal, from a SIGKILLed child) is rolled back and every later call works; a missing file or a
locked database says what the state is and what to check."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlite_helpers import app, make_shop, rows
from support import call, connect, refused, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return make_shop(tmp_path)

# Begins a write in rollback-journal mode with a cache so small that changed pages spill into the
# database file before commit, says so, and waits to be killed.
WRITER = textwrap.dedent("""
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode = DELETE")
    db.execute("PRAGMA cache_size = 2")
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE big SET pad = 'CRASHED'")
    db.execute("UPDATE orders SET status = 'CRASHED'")
    print("ready", flush=True)
    time.sleep(120)
""")


def kill_a_writer(db: Path) -> None:
    """Leave a real hot journal behind: a child begins a big write and is SIGKILLed before COMMIT."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    journal = Path(str(db) + "-journal")
    assert journal.exists() and journal.stat().st_size > 0
    ro = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError):  # what every call met before: a read-only connection
            ro.execute("SELECT count(*) FROM orders").fetchone()
    finally:
        ro.close()


def big_shop(shop: Path) -> Path:
    db = shop.parent / "shop.db"
    app(db, "CREATE TABLE big (id INTEGER PRIMARY KEY, pad TEXT)")
    conn = sqlite3.connect(db)
    conn.executemany("INSERT INTO big (pad) VALUES (?)", [("x" * 300,) for _ in range(3000)])
    conn.commit()
    conn.close()
    return db


@pytest.mark.parametrize("first", ["sql_query", "sql_schema", "sql_execute", "undo"])
async def test_a_hot_journal_from_a_killed_writer_is_rolled_back(shop: Path, first: str) -> None:
    db = big_shop(shop)
    before = rows(db, "SELECT * FROM orders ORDER BY id")
    async with connect(shop) as c:
        # the server's connections are open and kept before the writer dies
        earlier = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 5 WHERE id = 1")
        await call(c, "sql_query", target="shop", sql="SELECT count(*) FROM orders")
        kill_a_writer(db)
        if first == "sql_query":
            r = await call(c, "sql_query", target="shop", sql="SELECT count(*) FROM big WHERE pad = 'CRASHED'")
            assert r["rows"] == [[0]]
        elif first == "sql_schema":
            r = await call(c, "sql_schema", target="shop")
            assert "big" in [t["name"] for t in r["tables"]]
        elif first == "sql_execute":
            await call(c, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 6 WHERE id = 2")
        else:
            await call(c, "undo", receipt_id=earlier["receipt_id"])
        r = await call(c, "sql_query", target="shop", sql="SELECT count(*) FROM orders WHERE status = 'CRASHED'")
        assert r["rows"] == [[0]]
    assert not Path(str(db) + "-journal").exists()
    assert rows(db, "SELECT count(*) FROM big WHERE pad = 'CRASHED'") == [(0,)]
    after = rows(db, "SELECT * FROM orders ORDER BY id")
    # the killed write left no trace; only the gate's own writes on rows 1 and 2 remain
    assert [r for r in after if r[0] not in (1, 2)] == [r for r in before if r[0] not in (1, 2)]
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]


async def test_a_hot_journal_left_before_the_server_starts(shop: Path) -> None:
    db = big_shop(shop)
    kill_a_writer(db)
    async with connect(shop) as c:
        r = await call(c, "sql_query", target="shop", sql="SELECT count(*) FROM orders WHERE status = 'CRASHED'")
        assert r["rows"] == [[0]]
    assert not Path(str(db) + "-journal").exists()


@pytest.mark.parametrize(("tool", "args"), [
    ("sql_query", {"target": "gone", "sql": "SELECT 1"}),
    ("sql_execute", {"target": "gone_rw", "sql": "UPDATE t SET a = 1"}),
    ("sql_schema", {"target": "gone"}),
])
async def test_a_missing_file_names_the_path_and_the_key(tmp_path: Path, tool: str, args: dict[str, str]) -> None:
    cfg = write_config(tmp_path, """
        [targets.gone]
        kind = "sqlite"
        path = "data/missing.db"

        [targets.gone_rw]
        kind = "sqlite"
        path = "data/missing.db"
        access = "read-write"
    """)
    async with connect(cfg) as c:
        text = await refused(c, tool, **args)
    assert "does not exist" in text and "missing.db" in text and "`path`" in text, text
    assert "fix the statement" not in text
    assert not (tmp_path / "data").exists(), "nothing was created"


async def test_a_locked_database_is_unavailable_not_the_statement(shop: Path) -> None:
    db = shop.parent / "shop.db"
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        async with connect(shop) as c:
            text = await refused(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'x' WHERE id = 1")
        assert "locked" in text and "fix the statement" not in text, text
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert rows(db, "SELECT status FROM orders WHERE id = 1") == [("paid",)]
