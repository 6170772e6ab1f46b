"""The kinds of write, each measured inside the caller's open transaction, and their undo.

Every function here runs between BEGIN IMMEDIATE and COMMIT/ROLLBACK on the write connection; it
returns the preview, the outcome with its compensation, and a digest of exactly what changes (for the
re-check at confirm).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from safe_mcp.adapter import Classification, Outcome, Preview
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError
from safe_mcp.state.receipts import new_id
from safe_mcp_sqlite import journal
from safe_mcp_sqlite.capture import Capture, cascade_children, encode, fingerprint, load, q, sample
from safe_mcp_sqlite.classify import INTERNAL_PREFIX
from safe_mcp_sqlite.guard import Guard, check_untouched, internal_objects, user_code
from safe_mcp_sqlite.restore import restore, restore_journal
from safe_mcp_sqlite.statement import parse_update, rowid_names

SAMPLE = 5

Measured = tuple[Preview, Outcome, Callable[[], str | None]]


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":"), default=str).encode()).hexdigest()


def run_agent(conn: sqlite3.Connection, guard: Guard, sql: str, params: Any, *, ddl: bool = True) -> int:
    """Run the agent's statement under the guard; safe-mcp's objects must be untouched afterwards. Returns
    the rows the statement itself changed as the driver reports them (0 with RETURNING, -1 for DDL).

    For a statement classified as DML (`ddl` False) the schema must not change at all, which one
    PRAGMA tells; a DDL statement is checked object by object.

    Raises:
        AdapterError: the engine denied an action (what and why), or safe-mcp's objects were reached.
        sqlite3.DatabaseError: the statement failed for its own reasons (the caller explains it).
    """
    if ddl:
        before_internal, before_code = internal_objects(conn), user_code(conn)
    else:
        version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
    guard.start()
    try:
        direct = conn.execute(sql, params if params is not None else ()).rowcount
    except sqlite3.DatabaseError:
        if guard.denied:
            raise AdapterError(f"refused by the engine: {guard.denied}; nothing was changed") from None
        raise
    finally:
        guard.agent = False
    if ddl:
        check_untouched(conn, before_internal, before_code)
    elif conn.execute("PRAGMA main.schema_version").fetchone()[0] != version:
        raise AdapterError("the statement changed the schema although it was classified as a data change; "
                           "nothing was changed")
    return direct


BY_STATEMENT_MIN = 256
"""Fewer rows than this: per-row triggers cost less than dropping and re-making one for a statement capture."""
SAMPLE_CHECK = 64
"""Rows of a statement capture whose predicted after-image is compared with the table, byte for byte."""
_SAVEPOINT = "_safe_mcp_by_statement"


def update_by_statement(conn: sqlite3.Connection, guard: Guard, cap: Capture, sql: str, params: Any,
                        plain: Mapping[str, Any], marks: list[int]) -> tuple[int, str, list[int]] | None:
    """Run a plain UPDATE with its before- and after-images taken by one INSERT .. SELECT instead of per-row
    triggers (see safe_mcp_sqlite.statement for when that is sound). Returns the rows the UPDATE changed, the
    table, and the indexes of the columns it does not set (their after-image is the before-image, so the
    journal leaves it NULL: the capture's "same"); or None when it did not run this way (nothing changed
    then: the caller runs it with the triggers).

    The SELECT, built from the agent's own text, runs confined by the engine to reading that table and
    writing its journal table. After the UPDATE the rows it changed must be the rows selected, and a sample
    of them must hold exactly the predicted values; otherwise everything since the savepoint is undone and
    None returned.

    Raises:
        AdapterError, sqlite3.DatabaseError: from the agent's statement itself (the caller rolls back).
    """
    found = cap.info(str(plain.get("table")))
    plan = parse_update(sql)
    if found is None or plan is None:
        return None
    info, store = found
    if info.without_rowid or rowid_names(info.columns) or any(c.lower().startswith(INTERNAL_PREFIX) for c in info.columns):
        return None
    by_lower = {c.lower(): c for c in info.columns}
    targets = [by_lower.get(col.lower()) for col, _expr in plan.assignments]
    if (any(t is None or t.lower() in info.key_columns for t in targets)
            or sorted(str(t).lower() for t in targets) != sorted(str(c).lower() for c in plain.get("columns", []))):
        return None
    cols = ", ".join(q(c) for c in info.columns)
    inner = (f"SELECT rowid AS _safe_mcp_k, {cols}, "
             + ", ".join(f"({expr}) AS _safe_mcp_s{j}" for j, (_col, expr) in enumerate(plan.assignments))
             + f" FROM {plan.source}" + ("" if plan.where is None else f" WHERE {plan.where}"))
    args = params if params is not None else ()
    guard.confined = (info.name, store)
    try:
        n = conn.execute(f"SELECT count(*) FROM ({inner} LIMIT {BY_STATEMENT_MIN})", args).fetchone()[0]
    except sqlite3.DatabaseError:
        return None  # the agent's statement meets the same error, or a plain one, on the trigger path
    finally:
        guard.confined = None
    if n < BY_STATEMENT_MIN or not _alone(conn, info.name):
        return None
    slot = {t: j for j, t in enumerate(targets)}
    after = ", ".join(f"_safe_mcp_s{slot[c]}" if c in slot else "NULL" for c in info.columns)
    same = [j for j, c in enumerate(info.columns) if c not in slot]
    nc = len(info.columns)
    insert = (f"INSERT INTO main.{store} (op, k0, n0, " + ", ".join(f"c{j}" for j in range(nc)) + ", "
              + ", ".join(f"d{j}" for j in range(nc)) + f") SELECT 'U', _safe_mcp_k, _safe_mcp_k, {cols}, {after} "
              f"FROM ({inner})")
    mark = marks[cap.stores.index(store)]
    conn.execute(f"SAVEPOINT {_SAVEPOINT}")
    guard.confined = (info.name, store)
    try:
        selected = conn.execute(insert, args).rowcount
    except sqlite3.DatabaseError:
        selected = -1
    finally:
        guard.confined = None
    create = cap.suspend_update(info.name) if selected >= 0 else None
    if create is None:
        _undo_to_savepoint(conn)
        return None
    try:
        direct = run_agent(conn, guard, sql, params, ddl=False)
    finally:
        # IF NOT EXISTS: an error that rolled the whole transaction back took the DROP with it.
        cap.resume_update(create.replace("CREATE TEMP TRIGGER", "CREATE TEMP TRIGGER IF NOT EXISTS", 1))
    if direct != selected or not _as_predicted(conn, info.name, info.columns, same, store, mark, selected):
        _undo_to_savepoint(conn)
        return None
    conn.execute(f"RELEASE {_SAVEPOINT}")
    return direct, info.name, same


def _undo_to_savepoint(conn: sqlite3.Connection) -> None:
    """Everything the statement capture did is undone; the caller runs the write with the triggers."""
    conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
    conn.execute(f"RELEASE {_SAVEPOINT}")


def _alone(conn: sqlite3.Connection, table: str) -> bool:
    """No trigger on `table`, no foreign key action from it into another table, and no ON CONFLICT REPLACE or
    IGNORE in its definition (an UPDATE of it then changes exactly the rows its WHERE selects, nothing else)."""
    if conn.execute("SELECT 1 FROM main.sqlite_schema WHERE type = 'trigger' AND tbl_name = ? COLLATE NOCASE",
                    (table,)).fetchone() is not None:
        return False
    definition = conn.execute("SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if definition is None or re.search(r"\b(REPLACE|IGNORE)\b", definition[0] or "", re.IGNORECASE):
        return False
    return cascade_children(conn, {table}) == {table}


def _as_predicted(conn: sqlite3.Connection, table: str, columns: list[str], unset: list[int], store: str, mark: int,
                  n: int) -> bool:
    """The first SAMPLE_CHECK rows the capture predicted hold, in the table now, exactly the values predicted
    (type and bytes; reals by value): the new value in a column set, the old one in every other column."""
    after = [f"s.c{j}" if j in unset else f"s.d{j}" for j in range(len(columns))]
    same = " AND ".join(
        f"typeof(t.{q(c)}) = typeof({v}) AND CASE typeof({v}) WHEN 'real' THEN t.{q(c)} = {v} "
        f"ELSE CAST(t.{q(c)} AS BLOB) IS CAST({v} AS BLOB) END" for c, v in zip(columns, after, strict=True))
    joined, differ = conn.execute(
        f"SELECT count(*), total(CASE WHEN {same} THEN 0 ELSE 1 END) FROM (SELECT * FROM main.{store} WHERE seq > ? "
        f"ORDER BY seq LIMIT {SAMPLE_CHECK}) AS s JOIN main.{q(table)} AS t ON t.rowid = s.k0", (mark,)).fetchone()
    return bool(joined == min(SAMPLE_CHECK, n) and differ == 0)


def dml(conn: sqlite3.Connection, guard: Guard, cap: Capture, sql: str, params: Any,
        cls: Classification) -> Measured:
    verbs = cls.detail.get("verbs", [])
    marks = cap.marks()
    plain = cls.detail.get("plain_update")
    by_statement = update_by_statement(conn, guard, cap, sql, params, plain, marks) if plain else None
    if by_statement is None:
        direct = run_agent(conn, guard, sql, params, ddl=cls.detail.get("op") == "create")
    else:
        direct = by_statement[0]
    one = verbs[0][0] if len(verbs) == 1 and cls.detail.get("op") == "dml" else None  # 'U', 'D' or 'I'
    captured = cap.captured(marks, direct, one)
    if by_statement is not None and by_statement[2]:
        for c in captured:
            if c["table"] == by_statement[1]:
                c["same"] = by_statement[2]  # these columns' after-images are their before-images (left NULL)
    # Counted per row event (a row a trigger updates twice counts twice): never fewer than changed.
    affected = sum(c["deleted"] + c["updated"] + c["inserted"] for c in captured)
    effect, notes = cls.effect, []
    for c in captured:
        if (("DELETE" not in verbs and "UPDATE" not in verbs) or c["table"] not in cap.tables
                or c["deleted"] + c["updated"] < 2):
            continue  # a table the statement names; changing every row of a table of one row is no escalation
        # The rows the table had before, counted after the write in its transaction: the journal holds
        # every row event of the write, so before = now + deleted - inserted (no count on small writes).
        now = conn.execute(f"SELECT count(*) FROM main.{q(c['table'])}").fetchone()[0]
        before = now + c["deleted"] - c["inserted"]
        if before > 1 and c["deleted"] + c["updated"] >= before and effect.rank < Effect.DESTRUCTIVE.rank:
            effect = Effect.DESTRUCTIVE
            notes.append(f"it changes every row of {c['table']} ({before} rows)")
    shown = sample(load(conn, captured, limit=4 * SAMPLE), SAMPLE) if captured else []
    preview = Preview(effect=effect, affected=affected, sample=shown, notes=notes)
    # The before-images stay in the target's journal tables; the compensation points at them.
    comp: dict[str, Any] = {"op": "journal", "captures": captured, "affected": affected}
    if cls.detail.get("op") == "create":
        row = conn.execute("SELECT sql FROM main.sqlite_schema WHERE type = ? AND name = ?",
                           (cls.detail["type"], cls.detail["name"])).fetchone()
        comp = {"op": "drop_created", "type": cls.detail["type"], "name": cls.detail["name"],
                "sql": row[0] if row else None, "affected": 0}
    return (preview, Outcome(affected=affected, compensation=comp, summary=cls.summary),
            lambda: fingerprint(load(conn, captured)))


def soft_drop(conn: sqlite3.Connection, table: str) -> Measured:
    count = conn.execute(f"SELECT count(*) FROM main.{q(table)}").fetchone()[0]
    definition = conn.execute("SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?",
                              (table,)).fetchone()
    cur = conn.execute(f"SELECT * FROM main.{q(table)} LIMIT {SAMPLE}")
    cols = [d[0] for d in cur.description]
    rows = [{"table": table, "change": "drop", "before": dict(zip(cols, [encode(v) for v in r], strict=True))}
            for r in cur.fetchall()]
    trash = f"{INTERNAL_PREFIX}trash_{new_id('t').split('_', 1)[1]}_{table}"[:120]
    conn.execute(f"ALTER TABLE main.{q(table)} RENAME TO {q(trash)}")
    preview = Preview(effect=Effect.DESTRUCTIVE, affected=count, sample=rows,
                      notes=[f"table {table} ({count} rows) is moved aside, not destroyed; undo restores it"])
    outcome = Outcome(affected=count, summary=f"DROP TABLE {table} (kept as {trash})",
                      compensation={"op": "restore_table", "table": table, "trash": trash, "affected": count},
                      result={"dropped": table, "rows": count})

    def fp() -> str:
        # Which rows go: the table's content as a whole (cheap enough for a table about to be dropped).
        h = hashlib.sha256()
        for r in conn.execute(f"SELECT * FROM main.{q(trash)} ORDER BY rowid" if _has_rowid(conn, trash)
                              else f"SELECT * FROM main.{q(trash)}"):
            h.update(repr(r).encode())
        return digest("drop", table, definition[0] if definition else None, count, h.hexdigest())

    return preview, outcome, fp


def _has_rowid(conn: sqlite3.Connection, table: str) -> bool:
    listed = [r for r in conn.execute("PRAGMA main.table_list").fetchall() if r[1] == table]
    return not (listed and listed[0][4])


def drop_object(conn: sqlite3.Connection, guard: Guard, sql: str, params: Any, cls: Classification) -> Measured:
    kind, name = cls.detail["type"], cls.detail["name"]
    row = conn.execute("SELECT sql FROM main.sqlite_schema WHERE type = ? AND name = ?", (kind, name)).fetchone()
    if row is None or row[0] is None:
        raise AdapterError(f"{kind} {name} has no definition to keep; not dropped")
    run_agent(conn, guard, sql, params)
    note = f"the definition of {kind} {name} is kept; undo recreates it"
    if kind in {"trigger", "view"}:
        note += " (until then, code that relies on it behaves differently)"
    preview = Preview(effect=cls.effect, affected=0, notes=[note], sample=[{"definition": row[0]}])
    outcome = Outcome(affected=0, summary=cls.summary,
                      compensation={"op": "recreate", "type": kind, "name": name, "sql": row[0], "affected": 0})
    return preview, outcome, lambda: digest("drop_object", kind, name, row[0])


def irreversible(conn: sqlite3.Connection, guard: Guard, sql: str, params: Any, cls: Classification) -> Measured:
    run_agent(conn, guard, sql, params)
    preview = Preview(effect=Effect.IRREVERSIBLE, affected=0, notes=[f"{cls.summary} cannot be undone by safe-mcp"])
    return preview, Outcome(affected=0, summary=cls.summary), lambda: None


def compensate(conn: sqlite3.Connection, comp: Mapping[str, Any]) -> tuple[int, str]:
    """Undo `comp` inside the caller's transaction, after checking the target is as the write left it.

    Raises:
        AdapterError: the target moved on (names the conflict); the caller rolls back.
    """
    op = comp.get("op")
    if op == "journal":
        found = journal.lookup(conn, str(comp.get("intent_id")))
        if found is None:
            raise AdapterError("the before-images of this write are no longer in the target's journal "
                               f"({journal.JOURNAL}); undo is not possible")
        if found[2] is not None and found[2].get("op") == journal.PRUNED_OP:
            raise AdapterError(f"the before-images of this write were pruned after {found[2].get('keep_days')} days "
                               "(journal_keep_days of this target); undo is not possible. Restore from a backup, "
                               "or raise journal_keep_days to keep future writes undoable for longer")
        n = restore_journal(conn, comp["captures"])
        return n, f"{n} rows restored"
    if op == "rows":  # kept inline by earlier versions
        n = restore(conn, comp["changes"])
        return n, f"{n} rows restored"
    if op == "restore_table":
        table, trash = comp["table"], comp["trash"]
        if _exists(conn, None, trash) is None:
            raise AdapterError(f"the kept copy of table {table} ({trash}) is gone; nothing to restore")
        taken = _exists(conn, None, table)
        if taken:
            raise AdapterError(f"a {taken} named {table} exists again; rename or drop it, then undo")
        conn.execute(f"ALTER TABLE main.{q(trash)} RENAME TO {q(table)}")
        return int(comp.get("affected", 0)), f"table {table} restored"
    if op == "drop_created":
        kind, name = comp["type"], comp["name"]
        current = _exists(conn, kind, name)
        if current is None:
            raise AdapterError(f"{kind} {name} created by this write is gone already; nothing to undo")
        if comp.get("sql") is not None and current != comp["sql"]:
            raise AdapterError(f"{kind} {name} was changed since this write created it; undo stopped, nothing changed")
        if kind == "table":
            trash = f"{INTERNAL_PREFIX}trash_{new_id('t').split('_', 1)[1]}_{name}"[:120]
            conn.execute(f"ALTER TABLE main.{q(name)} RENAME TO {q(trash)}")
            return 0, f"table {name} moved aside as {trash}"
        conn.execute(f"DROP {kind.upper()} main.{q(name)}")
        return 0, f"{kind} {name} dropped"
    if op == "recreate":
        name = comp.get("name")
        if name is not None:
            taken = _exists(conn, None, name)
            if taken:
                raise AdapterError(f"a {taken} named {name} exists again; rename or drop it, then undo")
        conn.execute(comp["sql"])
        return 0, "definition restored"
    raise AdapterError(f"unknown compensation {op!r}")


def _exists(conn: sqlite3.Connection, kind: str | None, name: str) -> str | None:
    """The definition (or, without `kind`, the type) of the main-schema object `name`, or None."""
    if kind is None:
        row = conn.execute("SELECT type FROM main.sqlite_schema WHERE lower(name) = lower(?)", (name,)).fetchone()
    else:
        row = conn.execute("SELECT sql FROM main.sqlite_schema WHERE type = ? AND name = ?", (kind, name)).fetchone()
    return None if row is None else str(row[0])
