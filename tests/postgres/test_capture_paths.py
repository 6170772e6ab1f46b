"""Every way an UPDATE's old rows are read (the snapshot filtered by the UPDATE's own WHERE, or the whole
table when that WHERE may not be evaluated twice): the write changes what the same statement changes
without safe-mcp, its measurement is right, and undo restores exactly, or refuses when rows moved on."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from postgres_support import Pg
from safe_mcp_postgres import PostgresAdapter, PostgresSettings
from safe_mcp_postgres.capture import capture_sql, table_info

from safe_mcp.adapter import Budget, Call
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, Drifted


def budget(**kw: Any) -> Budget:
    return Budget(rows_returned=100, rows_affected=100_000, allowed_effect=Effect.DESTRUCTIVE, **kw)


def sql(text: str, params: list[Any] | None = None) -> Call:
    return Call(target="t", tool="sql_execute", args={"sql": text, **({"params": params} if params else {})})


def rows(pg: Pg, query: str) -> list[tuple[Any, ...]]:
    with pg.connect() as conn:
        return [tuple(r) for r in conn.execute(query).fetchall()]


@pytest.fixture
def a(pg: Pg) -> Iterator[PostgresAdapter]:
    adapter = PostgresAdapter("t", PostgresSettings(dsn=pg.dsn("postgres"), pool_min_size=0), {}, base_dir=".",
                              state_dir=".")
    yield adapter
    adapter.close()


@pytest.fixture
def t(pg: Pg) -> Iterator[str]:
    """A table with a key, NULLs, a column named like the table, a generated column and a side table."""
    name = f"cap_{uuid.uuid4().hex[:8]}"
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS capside; CREATE TABLE {name} (id int PRIMARY KEY, {name} text, "
                     f"qty int, note text, twice int GENERATED ALWAYS AS (qty * 2) STORED)")
        conn.execute(f"INSERT INTO {name} (id, {name}, qty, note) SELECT g, 'n' || g, g, "
                     f"CASE WHEN g % 4 = 0 THEN NULL ELSE 'x' || g END FROM generate_series(1, 3000) g")
        conn.execute(f"CREATE TABLE {name}_side (id int PRIMARY KEY, bump int)")
        conn.execute(f"INSERT INTO {name}_side SELECT g, g % 7 FROM generate_series(1, 3000, 3) g")
        conn.execute(f"CREATE TABLE capside.{name} (id int PRIMARY KEY, qty int)")
        conn.execute(f"INSERT INTO capside.{name} SELECT g, g FROM generate_series(1, 50) g")
    yield name
    with pg.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_side, capside.{name}")


# Each shape of UPDATE; `pushed` says whether its WHERE also filters the snapshot of old rows.
UPDATES = [
    ("UPDATE {t} SET qty = qty + 1 WHERE id <= 2000", True),
    ("UPDATE {t} AS x SET qty = x.qty - 1, note = NULL WHERE x.id BETWEEN $1 AND $2", True),
    ("UPDATE ONLY public.{t} SET {t} = upper({t}) WHERE public.{t}.id > 2500", True),
    ("UPDATE {t} SET note = 'odd' WHERE note IS NULL OR qty % 2 = 1", True),
    ("UPDATE {t} SET qty = 0 WHERE id IN (SELECT id FROM {t}_side WHERE bump = 3)", True),
    ("UPDATE {t} SET qty = qty * 2 WHERE EXISTS (SELECT 1 FROM {t}_side s WHERE s.id = {t}.id)", True),
    ("UPDATE {t} SET id = id + 10000 WHERE id <= 300", True),
    ("UPDATE {t} SET qty = qty + s.bump FROM {t}_side AS s WHERE s.id = {t}.id", False),
    ("UPDATE {t} SET note = 'r' WHERE id <= 200 AND random() < 2", False),
    ("UPDATE {t} SET note = upper(note) WHERE length(note) > 3", False),
    ("UPDATE {t} SET qty = -qty", False),
    ("UPDATE capside.{t} SET qty = qty + 1 WHERE capside.{t}.id < 10", True),
]
PARAMS = {1: [100, 1900]}


@pytest.mark.parametrize("i", range(len(UPDATES)))
def test_update_changes_what_the_statement_changes_and_undo_restores_exactly(pg: Pg, a: PostgresAdapter, t: str,
                                                                              i: int) -> None:
    text, pushed = UPDATES[i]
    statement, params = text.format(t=t), PARAMS.get(i)
    table = f"capside.{t}" if "capside." in statement else t
    look = f"SELECT * FROM {table} ORDER BY id"
    original = rows(pg, look)
    # What the same statement does without safe-mcp, rolled back.
    with pg.connect(cursor_factory=psycopg.RawCursor) as conn, conn.transaction(force_rollback=True):
        conn.execute(statement, params)
        expected = rows_in(conn, look)
    info = _info(pg, table)
    rewritten, _ = capture_sql(statement, info)
    assert (f"FROM {'ONLY ' if 'ONLY' in statement else ''}public" in rewritten
            or "FROM capside" in rewritten or "FROM ONLY capside" in rewritten)
    snapshot = re.split(r"\) AS __safe_mcp_o\b", rewritten.split("FROM (SELECT", 1)[1])[0]
    assert ("WHERE" in snapshot) is pushed

    call = sql(statement, params)
    preview = a.preview(call, a.classify(call), budget())
    assert rows(pg, look) == original, "a preview changes nothing"
    out = a.execute(call, a.classify(call), budget(expect=preview))
    assert rows(pg, look) == expected
    changed = len(set(original) - set(expected))
    assert out.affected == preview.affected and out.affected >= changed > 0
    assert out.compensation is not None
    back = a.compensate(out.compensation, budget())
    assert back.affected == out.affected
    assert rows(pg, look) == original


def rows_in(conn: psycopg.Connection[Any], query: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(query).fetchall()]


def _info(pg: Pg, table: str) -> Any:
    schema, _, name = table.rpartition(".")
    with pg.connect(cursor_factory=psycopg.RawCursor) as conn:
        return table_info(conn, schema or None, name)


def test_the_measurement_comes_with_the_write(pg: Pg, a: PostgresAdapter, t: str) -> None:
    call = sql(f"UPDATE {t} SET qty = qty + 1 WHERE id <= 3 RETURNING id, qty")
    out = a.execute(call, a.classify(call), budget())
    assert out.affected == 3
    assert out.result["columns"] == ["id", "qty"] and sorted(out.result["returning"]) == [[1, 2], [2, 3], [3, 4]]
    preview = a.preview(sql(f"UPDATE {t} SET qty = 7 WHERE id = 5"), a.classify(sql(f"UPDATE {t} SET qty = 7")),
                        budget())
    assert preview.affected == 1 and preview.sample[0]["before"]["qty"] == 5 and preview.sample[0]["after"]["qty"] == 7
    nothing = a.execute(sql(f"UPDATE {t} SET qty = 1 WHERE id < 0 RETURNING id"),
                        a.classify(sql(f"UPDATE {t} SET qty = 1 WHERE id < 0 RETURNING id")), budget())
    assert nothing.affected == 0 and nothing.result["returning"] == []
    assert rows(pg, f"SELECT qty FROM {t} WHERE id = 5") == [(5,)]


@pytest.mark.parametrize("where", ["id > 0", "qty IS NOT NULL OR qty IS NULL", "length({t}) > 0"])
@pytest.mark.parametrize("verb", ["UPDATE {t} SET qty = qty WHERE {w}", "DELETE FROM {t} WHERE {w}"])
def test_a_write_that_reaches_every_row_is_destructive_on_every_path(pg: Pg, a: PostgresAdapter, t: str,
                                                                      where: str, verb: str) -> None:
    call = sql(verb.format(t=t, w=where.format(t=t)))
    preview = a.preview(call, a.classify(call), budget())
    assert preview.affected == 3000 and preview.effect is Effect.DESTRUCTIVE
    assert any("every row" in n for n in preview.notes)
    most = sql(verb.format(t=t, w=f"id > 1 AND ({where.format(t=t)})"))
    assert not any("every row" in n for n in a.preview(most, a.classify(most), budget()).notes)
    assert rows(pg, f"SELECT count(*) FROM {t}") == [(3000,)]


@pytest.mark.parametrize("statement", ["UPDATE {t} SET qty = qty + 1 WHERE id <= 100",
                                       "UPDATE {t} SET qty = qty + s.bump FROM {t}_side s WHERE s.id = {t}.id"])
def test_a_row_written_in_between_refuses_undo_and_confirm(pg: Pg, a: PostgresAdapter, t: str,
                                                           statement: str) -> None:
    call = sql(statement.format(t=t))
    preview = a.preview(call, a.classify(call), budget())
    with pg.connect() as conn:
        conn.execute(f"UPDATE {t} SET qty = 999 WHERE id = 4")
    with pytest.raises(Drifted):
        a.execute(call, a.classify(call), budget(expect=preview))
    out = a.execute(call, a.classify(call), budget())
    assert out.compensation is not None
    with pg.connect() as conn:
        conn.execute(f"UPDATE {t} SET note = 'later' WHERE id = 4")
    now = rows(pg, f"SELECT * FROM {t} ORDER BY id")
    with pytest.raises(AdapterError) as err:
        a.compensate(out.compensation, budget())
    assert "id=4 was changed" in str(err.value)
    assert rows(pg, f"SELECT * FROM {t} ORDER BY id") == now, "a refused undo changes nothing"


DELETES = [
    "DELETE FROM {t} AS x USING {t}_side AS s WHERE s.id = x.id AND s.bump > $1",
    "DELETE FROM {t} WHERE id IN (SELECT id FROM {t}_side WHERE bump = 2) RETURNING id, twice",
    "DELETE FROM ONLY public.{t} WHERE note IS NULL",
]


@pytest.mark.parametrize("i", range(len(DELETES)))
def test_delete_changes_what_the_statement_changes_and_undo_restores_exactly(pg: Pg, a: PostgresAdapter, t: str,
                                                                              i: int) -> None:
    statement, params = DELETES[i].format(t=t), [4] if "$1" in DELETES[i] else None
    look = f"SELECT * FROM {t} ORDER BY id"
    original = rows(pg, look)
    with pg.connect(cursor_factory=psycopg.RawCursor) as conn, conn.transaction(force_rollback=True):
        conn.execute(statement, params)
        expected = rows_in(conn, look)
    call = sql(statement, params)
    preview = a.preview(call, a.classify(call), budget())
    out = a.execute(call, a.classify(call), budget(expect=preview))
    assert rows(pg, look) == expected and out.affected == len(original) - len(expected) > 0
    assert out.compensation is not None
    assert a.compensate(out.compensation, budget()).affected == out.affected
    assert rows(pg, look) == original, "generated columns included"


def test_no_key_table_is_not_captured_and_says_so(pg: Pg, a: PostgresAdapter, t: str) -> None:
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t}_nokey (a int, b text); INSERT INTO {t}_nokey VALUES (1, 'x'), (2, 'y')")
    call = sql(f"UPDATE {t}_nokey SET b = 'z' WHERE a = 1")
    preview = a.preview(call, a.classify(call), budget())
    assert preview.effect is Effect.IRREVERSIBLE and "no primary key" in preview.notes[0]
    assert rows(pg, f"SELECT * FROM {t}_nokey ORDER BY a") == [(1, "x"), (2, "y")]
    with pg.connect() as conn:
        conn.execute(f"DROP TABLE {t}_nokey")
