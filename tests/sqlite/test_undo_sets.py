"""Undo puts the file back exactly as it was before the write, for every kind of write, whichever way it
restores (set-based over the journal tables, or row by row); and it refuses, changing nothing, when a row
moved on since the write, however small the change (one row among many, a change only a case-insensitive
collation or a type hides)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from safe_mcp_sqlite import SqliteAdapter, SqliteSettings
from sqlite_helpers import app, budget, content, rows, sql

from safe_mcp.adapter import Outcome
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError

N = 300  # rows per table: enough for set-based undo, small enough to stay fast

SCHEMAS = {
    "rowid": ["CREATE TABLE t (a TEXT, b, c REAL)"],
    "integer primary key": ["CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b, c REAL)"],
    "without rowid, two-column key": ["CREATE TABLE t (k1 TEXT COLLATE NOCASE, k2 INTEGER, a TEXT, b, c REAL, "
                                      "PRIMARY KEY (k1, k2)) WITHOUT ROWID"],
    "generated column": ["CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b, c REAL, "
                         "g TEXT GENERATED ALWAYS AS (a || '!') STORED, v GENERATED ALWAYS AS (c * 2))"],
    "nocase text, unique": ["CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT COLLATE NOCASE UNIQUE, b, c REAL)"],
    "keys that replace or ignore on conflict": ["CREATE TABLE t (id INTEGER PRIMARY KEY ON CONFLICT REPLACE, "
                                                "a TEXT UNIQUE ON CONFLICT IGNORE, b, c REAL)"],
    "trigger writing another table": [
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b, c REAL)",
        "CREATE TABLE log (id INTEGER PRIMARY KEY, what TEXT, n INTEGER)",
        "CREATE TRIGGER t_d AFTER DELETE ON t BEGIN INSERT INTO log (what, n) VALUES ('d', old.id); END",
        "CREATE TRIGGER t_u AFTER UPDATE ON t BEGIN UPDATE log SET n = n + 1 WHERE what = 'seed'; END",
        "INSERT INTO log (what, n) VALUES ('seed', 0)"],
    "foreign key cascades": [
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b, c REAL)",
        "CREATE TABLE child (id INTEGER PRIMARY KEY, t_id INTEGER REFERENCES t(id) ON DELETE CASCADE "
        "ON UPDATE CASCADE, note TEXT)"],
}


def fill(db: Path, schema: list[str]) -> None:
    conn = sqlite3.connect(db)
    for s in schema:
        conn.execute(s)
    cols = [r[1] for r in conn.execute("PRAGMA table_xinfo(t)") if r[6] == 0]
    for i in range(1, N + 1):
        # values of every storage class, in the untyped column b most of all
        b: object = [i, str(i), float(i) + 0.5, bytes([i % 256, 0, 7]), None][i % 5]
        row = {"id": i, "k1": f"k{i % 7}", "k2": i, "a": f"name{i}", "b": b, "c": i / 4}
        conn.execute(f"INSERT INTO t ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                     [row.get(c) for c in cols])
    if "child" in {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}:
        conn.executemany("INSERT INTO child (t_id, note) VALUES (?, ?)", [(i, f"n{i}") for i in range(1, N + 1, 3)])
    conn.commit()
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "t.db"


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[SqliteAdapter]:
    a = SqliteAdapter("t", SqliteSettings(path="t.db"), {}, base_dir=str(tmp_path),
                      state_dir=str(tmp_path / ".safe-mcp"))
    yield a
    a.close()


def write(adapter: SqliteAdapter, text: str) -> Outcome:
    call = sql(text, target="t")
    out = adapter.execute(call, adapter.classify(call), budget(rows_affected=10 * N))
    assert out.compensation is not None and out.compensation["op"] == "journal", out
    return out


def undo(adapter: SqliteAdapter, out: Outcome) -> int:
    assert out.compensation is not None
    return adapter.compensate(out.compensation, budget(rows_affected=10 * N)).affected


WRITES = {
    "delete many": "DELETE FROM t WHERE c > 10",
    "delete all": "DELETE FROM t",
    "update many, keys kept": "UPDATE t SET a = upper(a), b = NULL, c = c + 1 WHERE c > 10",
    "update to other types": "UPDATE t SET b = CASE typeof(b) WHEN 'integer' THEN b || '' WHEN 'text' THEN 1 "
                             "ELSE x'00' END",
    "update with a subquery on the same table": "UPDATE t SET c = (SELECT max(c) FROM t) - c "
                                                "WHERE c < (SELECT avg(c) FROM t)",
    "update ... from the same table": "UPDATE t SET a = o.a || '+' FROM (SELECT a, c FROM t) AS o "
                                      "WHERE o.c = t.c AND t.c > 20",
    "insert many": "INSERT INTO t (a, b, c) SELECT 'new' || c, b, c + 1000 FROM t WHERE c <= 30",
    "replace": "REPLACE INTO t (a, b, c) SELECT a, 'r', c FROM t WHERE c <= 30",
    "upsert": "INSERT INTO t (a, b, c) SELECT a, 'u', c FROM t WHERE c <= 30 ON CONFLICT DO UPDATE SET b = 'up'",
    "delete with limit": "DELETE FROM t WHERE c > 5 ORDER BY c DESC LIMIT 100",
    "update with limit": "UPDATE t SET b = 'l' WHERE c > 5 ORDER BY c LIMIT 100",
}


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("statement", WRITES)
def test_undo_restores_the_exact_prior_file(adapter: SqliteAdapter, db: Path, schema: str, statement: str) -> None:
    fill(db, SCHEMAS[schema])
    text = WRITES[statement]
    if "without rowid" in schema:  # its keys have no default: the inserts name k1 and k2
        text = text.replace("INTO t (a, b, c)", "INTO t (k1, k2, a, b, c)").replace(
            "SELECT 'new' || c, b, c + 1000", "SELECT k1, k2 + 1000, 'new' || c, b, c + 1000").replace(
            "SELECT a, 'r', c", "SELECT k1, k2, a, 'r', c").replace("SELECT a, 'u', c", "SELECT k1, k2, a, 'u', c")
    before = content(db)
    try:
        out = write(adapter, text)
    except AdapterError as exc:
        # a write safe-mcp refuses leaves the file as it was
        assert content(db) == before, exc
        pytest.skip(f"refused: {exc}")
    assert out.affected > 0 and content(db) != before
    undo(adapter, out)
    after = content(db)
    if schema == "trigger writing another table" and statement in {"insert many", "replace", "upsert"}:
        # undo deletes the rows the write inserted, which fires the app's delete trigger as the app's own
        # DELETE would: log gains its rows
        log_before, log_after = before.pop("log"), after.pop("log")
        assert all(r in log_after for r in log_before) and len(log_after) > len(log_before)
    assert after == before


# Writes whose own row count (what the driver reports) is not the number of row events they leave: rows a
# RETURNING clause reports (the driver then counts 0), rows changed through a view's INSTEAD OF trigger (not
# counted at all), one row.
COUNTED_APART = {
    "update returning": "UPDATE t SET a = a || '?' WHERE c > 10 RETURNING a",
    "delete returning": "DELETE FROM t WHERE c > 60 RETURNING c",
    "update one row": "UPDATE t SET b = 'one' WHERE c = 5",
    "update through a view": "UPDATE tv SET a = 'v' WHERE c > 50",
    "delete through a view": "DELETE FROM tv WHERE c > 50",
}
VIEW = ["CREATE VIEW tv AS SELECT * FROM t",
        "CREATE TRIGGER tv_u INSTEAD OF UPDATE ON tv BEGIN UPDATE t SET a = new.a WHERE c = old.c; END",
        "CREATE TRIGGER tv_d INSTEAD OF DELETE ON tv BEGIN DELETE FROM t WHERE c = old.c; END"]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("statement", [*WRITES, *COUNTED_APART])
def test_the_counts_a_write_reports_are_the_row_events_in_its_journal(
        adapter: SqliteAdapter, db: Path, schema: str, statement: str) -> None:
    """The compensation's counts (deleted / updated / inserted per table, and what the receipt calls affected)
    are what the journal really holds, however they were worked out: from the statement's own row count when
    only its own rows left events, by reading the journal back otherwise (triggers, cascades, REPLACE's
    deletes, upserts, RETURNING, views)."""
    fill(db, SCHEMAS[schema] + VIEW)
    text = {**WRITES, **COUNTED_APART}[statement]
    if "without rowid" in schema:
        text = text.replace("INTO t (a, b, c)", "INTO t (k1, k2, a, b, c)").replace(
            "SELECT 'new' || c, b, c + 1000", "SELECT k1, k2 + 1000, 'new' || c, b, c + 1000").replace(
            "SELECT a, 'r', c", "SELECT k1, k2, a, 'r', c").replace("SELECT a, 'u', c", "SELECT k1, k2, a, 'u', c")
    try:
        out = write(adapter, text)
    except AdapterError as exc:
        # refused (a constraint of this layout): nothing was journaled for it
        assert "constraint failed" in str(exc), exc
        return
    assert out.compensation is not None
    conn = sqlite3.connect(db)
    try:
        events = 0
        for cap in out.compensation["captures"]:
            got = dict(conn.execute(f'SELECT op, count(*) FROM "{cap["store"]}" WHERE seq > ? AND seq <= ? '
                                    "GROUP BY op", (cap["after"], cap["upto"])).fetchall())
            assert (cap["deleted"], cap["updated"], cap["inserted"]) == (
                got.get("D", 0), got.get("U", 0), got.get("I", 0)), (cap["table"], got)
            assert conn.execute(f'SELECT count(*) FROM "{cap["store"]}" WHERE seq > ?', (cap["upto"],)).fetchone()[0] == 0
            events += sum(got.values())
        assert out.affected == events > 0
    finally:
        conn.close()


@pytest.mark.parametrize("schema", ["rowid", "without rowid, two-column key", "trigger writing another table"])
def test_undo_of_the_later_of_two_writes_then_the_earlier(adapter: SqliteAdapter, db: Path, schema: str) -> None:
    fill(db, SCHEMAS[schema])
    before = content(db)
    first = write(adapter, "UPDATE t SET a = 'one' WHERE c > 10")
    middle = content(db)
    second = write(adapter, "DELETE FROM t WHERE c > 40")
    undo(adapter, second)
    assert content(db) == middle
    undo(adapter, first)
    assert content(db) == before


def test_undo_after_the_schema_changed_between_two_writes_on_one_connection(adapter: SqliteAdapter, db: Path) -> None:
    """The capture triggers kept on the write connection were made for the old table; the second write must
    be captured whole all the same."""
    fill(db, SCHEMAS["integer primary key"])
    write(adapter, "UPDATE t SET a = 'x' WHERE id = 1")
    app(db, "DROP TABLE t")
    fill(db, ["CREATE TABLE t (id INTEGER PRIMARY KEY, z BLOB, a TEXT, b, c REAL)"])
    app(db, "UPDATE t SET z = x'0102'")
    before = content(db)
    out = write(adapter, "DELETE FROM t WHERE c > 3")
    undo(adapter, out)
    assert content(db) == before
    # and when safe-mcp itself changes the schema between two writes
    write(adapter, "UPDATE t SET a = 'y' WHERE id = 2")
    call = sql("ALTER TABLE t ADD COLUMN w TEXT DEFAULT 'd'", target="t")
    adapter.execute(call, adapter.classify(call), budget(Effect.IRREVERSIBLE, rows_affected=10 * N))
    before = content(db)
    out = write(adapter, "UPDATE t SET w = a, a = NULL WHERE c > 3")
    undo(adapter, out)
    assert content(db) == before


@pytest.mark.parametrize(("statement", "meanwhile", "conflict"), [
    # deleted rows: a newer row took the place of one of them
    ("DELETE FROM t WHERE c > 10", "INSERT INTO t (id, a, b, c) VALUES (200, 'app', 1, 50)", "took the place"),
    # updated rows: one changed again, one only by case (a NOCASE column), one only by type, one deleted
    ("UPDATE t SET a = a || '!', b = 7 WHERE c > 10", "UPDATE t SET c = 1 WHERE id = 150", "changed again"),
    ("UPDATE t SET a = a || '!', b = 7 WHERE c > 10", "UPDATE t SET a = upper(a) WHERE id = 150", "changed again"),
    ("UPDATE t SET a = a || '!', b = 7 WHERE c > 10", "UPDATE t SET b = '7' WHERE id = 150", "changed again"),
    ("UPDATE t SET a = a || '!', b = 7 WHERE c > 10", "UPDATE t SET b = 7.0 WHERE id = 150", "changed again"),
    ("UPDATE t SET a = a || '!', b = 7 WHERE c > 10", "DELETE FROM t WHERE id = 150", "was deleted"),
    # the same when keys change (undo goes row by row)
    ("UPDATE t SET id = id + 1000, b = 7 WHERE c > 10", "UPDATE t SET b = 7.0 WHERE id = 1150", "changed again"),
    ("UPDATE t SET id = id + 1000, b = 7 WHERE c > 10", "UPDATE t SET a = upper(a) WHERE id = 1150", "changed again"),
    # inserted rows: one changed, one deleted
    ("INSERT INTO t (a, b, c) SELECT a || '+', b, c + 1000 FROM t", "UPDATE t SET b = 'app' WHERE id = 450",
     "changed since"),
    ("INSERT INTO t (a, b, c) SELECT a || '+', b, c + 1000 FROM t", "DELETE FROM t WHERE id = 450", "gone already"),
])
def test_undo_refuses_and_changes_nothing_when_one_row_of_many_moved_on(
        adapter: SqliteAdapter, db: Path, statement: str, meanwhile: str, conflict: str) -> None:
    fill(db, SCHEMAS["nocase text, unique"])
    out = write(adapter, statement)
    app(db, meanwhile)
    state = content(db)
    with pytest.raises(AdapterError) as err:
        undo(adapter, out)
    assert conflict in str(err.value) and "t (" in str(err.value), err.value
    assert content(db) == state
    # the refusal used nothing up: once the app puts the row back as the write left it, undo works
    if "UPDATE" in meanwhile and "INSERT" not in statement and "1000" not in statement:
        app(db, "UPDATE t SET a = 'name150!', b = 7, c = 37.5 WHERE id = 150")
        undo(adapter, out)
        assert rows(db, "SELECT count(*) FROM t WHERE b = 7") == [(0,)]


@pytest.mark.parametrize(("schema", "newer"), [
    ("integer primary key", "same key"),
    ("keys that replace or ignore on conflict", "same key"),
    ("keys that replace or ignore on conflict", "same unique value"),
    ("without rowid, two-column key", "same key"),  # 'K3' is 'k3' to the NOCASE key
])
def test_undo_of_a_delete_never_replaces_a_newer_row(adapter: SqliteAdapter, db: Path, schema: str,
                                                     newer: str) -> None:
    """A row the app wrote since, in the place of a deleted one, stays: undo refuses and changes nothing, even
    where the table itself would replace (or silently skip) a row on a conflict."""
    fill(db, SCHEMAS[schema])
    out = write(adapter, "DELETE FROM t WHERE c > 10")
    if "without rowid" in schema:
        app(db, "INSERT INTO t (k1, k2, a, b, c) VALUES ('K3', 150, 'app', 'app', 1)")
    else:
        app(db, "INSERT INTO t (id, a, b, c) VALUES (?, ?, 'app', 1)",
            (150, "app") if newer == "same key" else (1000, "name151"))
    state = content(db)
    with pytest.raises(AdapterError) as err:
        undo(adapter, out)
    assert "t (" in str(err.value), err.value
    assert content(db) == state


def test_a_trigger_that_refills_a_restored_key_is_undone_row_by_row(adapter: SqliteAdapter, db: Path) -> None:
    """Putting back deleted row 2 makes the app's trigger insert row 1 before undo puts row 1 back: the set-based
    insert fails on the key, and the row-by-row way puts row 1 back over the trigger's row."""
    fill(db, SCHEMAS["integer primary key"])
    before = content(db)
    out = write(adapter, "DELETE FROM t WHERE id <= 40")
    app(db, "CREATE TRIGGER refill AFTER INSERT ON t WHEN new.id = 2 BEGIN "
            "INSERT OR IGNORE INTO t (id, a, b, c) VALUES (1, 'trigger', NULL, 0); END")
    seen: list[str] = []
    adapter._connect_rw().set_trace_callback(seen.append)
    undo(adapter, out)
    adapter._connect_rw().set_trace_callback(None)
    assert any(s.startswith("ROLLBACK TO") for s in seen)  # the set-based insert failed, and was undone
    app(db, "DROP TRIGGER refill")
    assert content(db) == before


@pytest.mark.parametrize(("statement", "most"), [
    ("DELETE FROM t WHERE c > 1", 25),
    ("UPDATE t SET a = 'x', b = 2 WHERE c > 1", 25),
    ("INSERT INTO t (a, b, c) SELECT a, b, c + 1000 FROM t", 25),
])
def test_a_large_undo_takes_a_few_statements_not_some_per_row(adapter: SqliteAdapter, db: Path, statement: str,
                                                              most: int) -> None:
    """Undo of a write of many rows of one kind is set-based: its statements do not grow with the rows."""
    fill(db, SCHEMAS["integer primary key"])
    before = content(db)
    out = write(adapter, statement)
    seen: list[str] = []
    adapter._connect_rw().set_trace_callback(seen.append)
    undo(adapter, out)
    adapter._connect_rw().set_trace_callback(None)
    assert content(db) == before
    assert len(seen) <= most, (len(seen), seen[:40])
