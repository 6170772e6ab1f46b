"""Statement-level capture of a plain UPDATE (one INSERT .. SELECT instead of a trigger per row) records exactly
what the per-row triggers record: the same before- and after-images, of the same types, the same counts, the
same file afterwards, and an undo that puts the file back byte for byte. Each write below runs twice on two
copies of one database, once as it runs in safe-mcp and once with the triggers forced, and everything is
compared. Statements it must not take (triggers, cascades, REPLACE, non-deterministic functions, subqueries,
keys, RETURNING, LIMIT, ...) are run the same way and must have gone through the triggers."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safe_mcp_sqlite import SqliteAdapter, SqliteSettings, write
from safe_mcp_sqlite.capture import load
from safe_mcp_sqlite.guard import Guard
from safe_mcp_sqlite.statement import parse_update
from sqlite_helpers import app, budget, content, sql

from safe_mcp.adapter import Outcome
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError

N = 600  # rows: well over the statement path's threshold for the writes below

LAYOUTS = {
    "rowid, untyped": "CREATE TABLE t (a TEXT, b, c REAL, d NUMERIC, e INT)",
    "integer primary key": "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b, c REAL, d NUMERIC, e INT)",
    "nocase and unique": "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT COLLATE NOCASE UNIQUE, b, c REAL, "
                         "d NUMERIC, e INT)",
    "strict": "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b ANY, c REAL, d INTEGER, e INT) STRICT",
    "generated column": "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b, c REAL, d NUMERIC, e INT, "
                        "g TEXT GENERATED ALWAYS AS (a || '/' || e) STORED, v GENERATED ALWAYS AS (c * 2))",
    "odd column names": 'CREATE TABLE t ("x y" TEXT, a TEXT, "b""q" , b, c REAL, d NUMERIC, e INT, [where] TEXT)',
}

# (statement, params): each is taken by statement-level capture on every layout above.
TAKEN: dict[str, tuple[str, Any]] = {
    "constant": ("UPDATE t SET a = 'same' WHERE c > 10", None),
    "expressions": ("UPDATE t SET a = upper(a) || '!', c = c * 2 + 0.5, e = e + 1 WHERE c > 10", None),
    "positional params in SET and WHERE": ("UPDATE t SET a = ?, e = e + ? WHERE c > ? AND a IS NOT ?",
                                           ["p", 3, 10, "nothing"]),
    "numbered params": ("UPDATE t SET a = ?2, e = ?1 WHERE c > ?1", [10, "n"]),
    "named params": ("UPDATE t SET a = :name, c = c + :inc WHERE c > :floor", {"name": "x", "inc": 1, "floor": 10}),
    "alias and indexed by nothing": ("UPDATE t AS x NOT INDEXED SET a = x.a || '+' WHERE x.c > 10", None),
    "or abort, comments, tricky strings": (
        "UPDATE OR ABORT t /* SET a = 1 WHERE */ SET a = 'WHERE, x = 1 -- ''quoted'' ' || a, -- , LIMIT 1\n"
        " e = e WHERE c > 10 /* ORDER BY c */;", None),
    "no where: every row": ("UPDATE t SET e = e + 1", None),
    "affinity: text into numbers": ("UPDATE t SET c = '3.5', d = '10', e = '12' WHERE c > 10", None),
    "affinity: numbers into text and reals": ("UPDATE t SET a = 12, c = 7, d = 3.0, e = 2.0 WHERE c > 10", None),
    "affinity: not numbers": ("UPDATE t SET d = 'abc', e = ' 5 ', c = '0x10' WHERE c > 10", None),
    "untyped keeps types": ("UPDATE t SET b = CASE typeof(b) WHEN 'integer' THEN b || '' WHEN 'text' THEN 7.0 "
                            "ELSE x'00ff' END WHERE c > 10", None),
    "nulls and blobs": ("UPDATE t SET a = NULL, b = zeroblob(3), e = NULL WHERE c > 10", None),
    "json and math": ("UPDATE t SET a = json_object('n', e, 'r', round(c, 1)), c = sqrt(abs(c)) WHERE c > 10", None),
    "case and iif": ("UPDATE t SET e = CASE WHEN e % 2 = 0 THEN iif(e > 100, -e, e) ELSE NULL END WHERE c > 10", None),
}

# Statements that must keep the per-row triggers (the layout is "integer primary key" unless a setup says).
KEPT: dict[str, tuple[str, Any, list[str]]] = {
    "random": ("UPDATE t SET e = random() WHERE c > 10", None, []),
    "time": ("UPDATE t SET a = datetime('now') WHERE c > 10", None, []),
    "current_timestamp": ("UPDATE t SET a = CURRENT_TIMESTAMP WHERE c > 10", None, []),
    "subquery": ("UPDATE t SET e = (SELECT max(e) FROM t) WHERE c > 10", None, []),
    "subquery in where": ("UPDATE t SET e = 1 WHERE id IN (SELECT id FROM t WHERE c > 10)", None, []),
    "key": ("UPDATE t SET id = id + 100000 WHERE c > 10", None, []),
    "rowid": ("UPDATE t SET rowid = rowid + 100000 WHERE c > 10", None, []),
    "returning": ("UPDATE t SET e = 1 WHERE c > 10 RETURNING id", None, []),
    "limit": ("UPDATE t SET e = 1 WHERE c > 10 ORDER BY c LIMIT 400", None, []),
    "from": ("UPDATE t SET e = o.e + 1 FROM (SELECT id, e FROM t) AS o WHERE o.id = t.id AND t.c > 10", None, []),
    "row value": ("UPDATE t SET (a, e) = ('r', 1) WHERE c > 10", None, []),
    "twice the same column": ("UPDATE t SET e = 1, e = 2 WHERE c > 10", None, []),
    "or replace": ("UPDATE OR REPLACE t SET e = 1 WHERE c > 10", None, []),
    "or ignore": ("UPDATE OR IGNORE t SET e = 1 WHERE c > 10", None, []),
    "with": ("WITH k AS (SELECT 10 AS v) UPDATE t SET e = 1 WHERE c > (SELECT v FROM k)", None, []),
    "trigger on the table": ("UPDATE t SET e = e + 1 WHERE c > 10", None, [
        "CREATE TABLE log (n INTEGER)", "INSERT INTO log VALUES (0)",
        "CREATE TRIGGER t_u AFTER UPDATE ON t BEGIN UPDATE log SET n = n + 1; END"]),
    "cascading child": ("UPDATE t SET e = e + 1 WHERE c > 10", None, [
        "CREATE TABLE child (id INTEGER PRIMARY KEY, t_e INT REFERENCES t(e) ON UPDATE CASCADE)",
        "CREATE UNIQUE INDEX t_e ON t(e)", "INSERT INTO child (t_e) SELECT e FROM t WHERE e % 7 = 0"]),
    "replace on conflict in the table": ("UPDATE t SET e = e + 1 WHERE c > 10", None, [
        "CREATE TABLE t2 (id INTEGER PRIMARY KEY, e INT UNIQUE ON CONFLICT REPLACE)"]),
    "few rows": ("UPDATE t SET e = e + 1 WHERE c > 140", None, []),
}


def fill(db: Path, create: str, setup: list[str] = ()) -> None:  # type: ignore[assignment]
    conn = sqlite3.connect(db)
    conn.execute(create)
    cols = [r[1] for r in conn.execute("PRAGMA table_xinfo(t)") if r[6] == 0]
    for i in range(1, N + 1):
        b: object = [i, str(i), float(i) + 0.5, bytes([i % 256, 0, 7]), None][i % 5]
        row = {"id": i, "a": f"name{i}", "b": b, "c": i / 4, "d": [i, f"{i}.5", "x"][i % 3] if "STRICT" not in create
               else i, "e": i, "x y": f"xy{i}", 'b"q': i % 3, "where": "w"}
        conn.execute(f"INSERT INTO t ({', '.join(_q(c) for c in cols)}) VALUES ({', '.join('?' for _ in cols)})",
                     [row.get(c) for c in cols])
    for s in setup:
        if "t2" in s:  # a table of its own with REPLACE: the write's table gets the clause instead
            conn.execute("ALTER TABLE t RENAME TO t_old")
            conn.execute(create.replace("e INT", "e INT UNIQUE ON CONFLICT REPLACE"))
            conn.execute("INSERT INTO t SELECT * FROM t_old")
            conn.execute("DROP TABLE t_old")
        else:
            conn.execute(s)
    conn.commit()
    conn.close()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Traced:
    """An adapter whose write connection's statements are recorded."""

    def __init__(self, tmp: Path) -> None:
        self.adapter = SqliteAdapter("t", SqliteSettings(path="t.db"), {}, base_dir=str(tmp),
                                     state_dir=str(tmp / ".safe-mcp"))
        self.statements: list[str] = []
        self.adapter._connect_rw().set_trace_callback(self.statements.append)

    def write(self, text: str, params: Any) -> Outcome:
        call = sql(text, target="t")
        if params is not None:
            call = call.model_copy(update={"args": {"sql": text, "params": params}})
        self.statements.clear()
        return self.adapter.execute(call, self.adapter.classify(call), budget(Effect.DESTRUCTIVE, rows_affected=10 * N))

    @property
    def by_statement(self) -> bool:
        """Whether the last write was captured by one statement (and kept it)."""
        return (any(s.startswith("SAVEPOINT _safe_mcp_by_statement") for s in self.statements)
                and not any(s.startswith("ROLLBACK TO _safe_mcp_by_statement") for s in self.statements))

    def images(self, out: Outcome) -> list[dict[str, Any]]:
        assert out.compensation is not None
        return load(self.adapter._connect_rw(), out.compensation["captures"])

    def undo(self, out: Outcome) -> None:
        assert out.compensation is not None
        self.adapter.compensate(out.compensation, budget(Effect.WRITE, rows_affected=10 * N))


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    yield tmp_path / "a", tmp_path / "b"


def run_both(pair: tuple[Path, Path], create: str, setup: list[str], text: str, params: Any,
             monkeypatch: pytest.MonkeyPatch, same_values: bool = True) -> tuple[bool, Any]:
    """The write on copy a as safe-mcp runs it, on copy b with the triggers forced; everything compared (the
    values written only when the statement writes the same values twice: not with random() or the clock)."""
    a_dir, b_dir = pair
    fill(a_dir / "t.db", create, setup)
    shutil.copy(a_dir / "t.db", b_dir / "t.db")
    before = content(a_dir / "t.db")
    a, b = Traced(a_dir), Traced(b_dir)
    try:
        try:
            out_a = a.write(text, params)
        except AdapterError as exc:
            with pytest.raises(AdapterError) as err_b, monkeypatch.context() as m:
                m.setattr(write, "BY_STATEMENT_MIN", 10**9)
                b.write(text, params)
            assert str(err_b.value) == str(exc) and content(a_dir / "t.db") == before
            return False, exc
        taken = a.by_statement
        with monkeypatch.context() as m:
            m.setattr(write, "BY_STATEMENT_MIN", 10**9)
            out_b = b.write(text, params)
        assert not b.by_statement
        assert out_a.affected == out_b.affected and out_a.summary == out_b.summary
        comp_a, comp_b = out_a.compensation, out_b.compensation
        assert comp_a is not None and comp_b is not None
        assert [{k: v for k, v in c.items() if k not in {"after", "upto", "same"}} for c in comp_a["captures"]] == \
               [{k: v for k, v in c.items() if k not in {"after", "upto", "same"}} for c in comp_b["captures"]]
        images_a, images_b = a.images(out_a), b.images(out_b)
        # repr keeps 7 and 7.0, '7' and 7 apart
        if same_values:
            assert repr(images_a) == repr(images_b)
            assert content(a_dir / "t.db") == content(b_dir / "t.db") != before
        else:
            assert [[i["key"] for i in c["updated"]] for c in images_a] == \
                   [[i["key"] for i in c["updated"]] for c in images_b]
            assert [[i["row"] for i in c["updated"]] for c in images_a] == \
                   [[i["row"] for i in c["updated"]] for c in images_b]
        a.undo(out_a)
        assert content(a_dir / "t.db") == before
        return taken, out_a
    finally:
        a.adapter.close()
        b.adapter.close()


# A STRICT table refuses the values of these (both ways alike: test_a_strict_table_refuses_alike).
_NOT_STRICT = ("affinity", "untyped", "nulls")


@pytest.mark.parametrize(("layout", "case"), [(layout, case) for layout in LAYOUTS for case in TAKEN
                                              if not (layout == "strict" and case.startswith(_NOT_STRICT))])
def test_statement_capture_records_what_the_triggers_record(pair: tuple[Path, Path], layout: str, case: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    text, params = TAKEN[case]
    create = LAYOUTS[layout]
    taken, out = run_both(pair, create, [], text, params, monkeypatch)
    if isinstance(out, AdapterError):  # refused alike both ways, nothing changed (checked in run_both)
        assert "constraint failed" in str(out) or "cannot store" in str(out), out
        return
    assert taken, "this plain UPDATE should have been captured by one statement"


@pytest.mark.parametrize("case", [c for c in TAKEN if c.startswith(_NOT_STRICT)])
def test_a_strict_table_refuses_alike(pair: tuple[Path, Path], case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text, params = TAKEN[case]
    taken, result = run_both(pair, LAYOUTS["strict"], [], text, params, monkeypatch)
    assert isinstance(result, AdapterError) or taken


@pytest.mark.parametrize("case", KEPT)
def test_what_statement_capture_cannot_take_keeps_the_triggers(pair: tuple[Path, Path], case: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    text, params, setup = KEPT[case]
    taken, _out = run_both(pair, LAYOUTS["integer primary key"], setup, text, params, monkeypatch,
                           same_values=case not in {"random", "time", "current_timestamp"})
    assert not taken


def test_a_prediction_that_differs_falls_back_to_the_triggers(pair: tuple[Path, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """When the sample check finds a value other than predicted, everything since the savepoint is undone and
    the write runs with the triggers: one set of images, the right counts, an exact undo."""
    monkeypatch.setattr(write, "_as_predicted", lambda *a: False)
    taken, out = run_both(pair, LAYOUTS["integer primary key"], [], "UPDATE t SET e = e + 1 WHERE c > 10", None,
                          monkeypatch)
    assert not taken and out.affected == N - 40


def test_drift_after_a_statement_capture_is_found(tmp_path: Path) -> None:
    """Undo of a statement-captured write refuses when one row of many moved on since, even by type only."""
    fill(tmp_path / "t.db", LAYOUTS["integer primary key"])
    w = Traced(tmp_path)
    try:
        before = content(tmp_path / "t.db")
        out = w.write("UPDATE t SET b = 7, a = a || '!' WHERE c > 10", None)
        assert w.by_statement
        app(tmp_path / "t.db", "UPDATE t SET b = 7.0 WHERE id = 300")
        moved = content(tmp_path / "t.db")
        with pytest.raises(AdapterError, match="changed again"):
            w.undo(out)
        assert content(tmp_path / "t.db") == moved
        app(tmp_path / "t.db", "UPDATE t SET b = 7 WHERE id = 300")
        # a column the write did not set (the journal keeps no second copy of it) moved on: found all the same
        app(tmp_path / "t.db", "UPDATE t SET e = -1 WHERE id = 450")
        with pytest.raises(AdapterError, match="changed again"):
            w.undo(out)
        app(tmp_path / "t.db", "UPDATE t SET e = 450 WHERE id = 450")
        w.undo(out)
        assert content(tmp_path / "t.db") == before
    finally:
        w.adapter.close()


def test_the_capture_statement_is_confined_by_the_engine(tmp_path: Path) -> None:
    """What safe-mcp builds from an agent's text may read the one table and write its journal, nothing else,
    whatever a parser mistake let through."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (a)")
    conn.execute("CREATE TABLE other (secret)")
    conn.execute("CREATE TABLE _safe_mcp_undo_x (v)")
    guard = Guard()
    conn.set_authorizer(guard)
    guard.confined = ("t", "_safe_mcp_undo_x")
    conn.execute("INSERT INTO _safe_mcp_undo_x SELECT upper(a) FROM t")
    for bad in ("INSERT INTO _safe_mcp_undo_x SELECT secret FROM other", "INSERT INTO other SELECT a FROM t",
                "INSERT INTO _safe_mcp_undo_x SELECT random() FROM t", "DELETE FROM t",
                "INSERT INTO _safe_mcp_undo_x SELECT load_extension('x') FROM t"):
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("UPDATE t SET a = 1", ("t", (("a", "1"),), None)),
    ("update main.t as x indexed by i set \"a b\" = x.c, [c] = 'x,y' where x.c > 1;",
     ("main.t as x indexed by i", (("a b", "x.c"), ("c", "'x,y'")), "x.c > 1")),
    ("UPDATE t SET a = f(b, c), b = (1, 2) WHERE (a, b) = (1, 2)",
     ("t", (("a", "f(b, c)"), ("b", "(1, 2)")), "(a, b) = (1, 2)")),
    ("UPDATE t SET a = 'it''s WHERE' -- c\n WHERE b = \"x\"\"y\"", ("t", (("a", "'it''s WHERE'"),), 'b = "x""y"')),
    ("UPDATE t SET a = 1 WHERE b = 2 LIMIT 3", None),
    ("UPDATE t SET a = 1 RETURNING *", None),
    ("UPDATE t SET a = 1 FROM u", None),
    ("UPDATE OR REPLACE t SET a = 1", None),
    ("UPDATE t SET (a, b) = (1, 2)", None),
    ("UPDATE t SET a = 1, a = 2", None),
    ("UPDATE t SET a = 1; DELETE FROM t", None),
    ("UPDATE t SET a = 'unterminated", None),
    ("UPDATE t SET a = (1", None),
    ("WITH x AS (SELECT 1) UPDATE t SET a = 1", None),
    ("DELETE FROM t", None),
])
def test_parse_update(text: str, expected: tuple[str, tuple[tuple[str, str], ...], str | None] | None) -> None:
    plan = parse_update(text)
    assert (None if plan is None else (plan.source, plan.assignments, plan.where)) == expected
