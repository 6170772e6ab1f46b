"""Table-level writes kept restorable: DROP TABLE and TRUNCATE into the trash schema, CREATE with its
inverse, and their undo. Each runs in the caller's transaction."""

from __future__ import annotations

from typing import Any

import psycopg

from safe_mcp.adapter import Classification, Outcome, Preview
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError
from safe_mcp.state.receipts import new_id
from safe_mcp_postgres.capture import table_info
from safe_mcp_postgres.classify import JOURNAL_SCHEMA
from safe_mcp_postgres.engine import qi, run_one
from safe_mcp_postgres.values import jsonable

__all__ = ["own_schemas", "run", "trash_name", "trash_ready", "undo"]

_SAMPLE = 5


def run(op: str, conn: psycopg.Connection[Any], sql: str, params: Any, cls: Classification,
        trash_schema: str) -> tuple[Preview, Outcome]:
    """Run a drop_table, truncate or create operation with its compensation."""
    fn = {"drop_table": soft_drop, "truncate": truncate, "create": create}[op]
    return fn(conn, sql, params, cls, trash_schema)


def own_schemas(conn: psycopg.Connection[Any], trash_schema: str) -> str:
    """A digest of safe-mcp's trash and journal schemas as the catalog describes them (the schemas, their
    owners and grants, every relation in them with its columns, types and defaults). A statement that
    changes it, however indirectly, is rolled back."""
    row = conn.execute(
        "SELECT md5(coalesce(string_agg(x, ';' ORDER BY x), '')) FROM ("
        "SELECT n.nspname || n.nspowner::text || coalesce(n.nspacl::text, '') AS x FROM pg_namespace n "
        "WHERE n.nspname IN ($1, $2) UNION ALL "
        "SELECT c.oid::text || c.relname || c.relkind::text || coalesce(c.relacl::text, '') || c.relowner::text || "
        "coalesce((SELECT string_agg(a.attname || a.atttypid::text || a.attnotnull::text || "
        "coalesce(pg_get_expr(d.adbin, d.adrelid), ''), ',' ORDER BY a.attnum) FROM pg_attribute a "
        "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ($1, $2)) s",
        [trash_schema, JOURNAL_SCHEMA]).fetchone()
    return str(row[0]) if row else ""


def trash_ready(conn: psycopg.Connection[Any], trash_schema: str) -> None:
    """Make the trash schema exist, in the caller's transaction.

    Raises:
        AdapterError: the role may not create it.
    """
    exists = conn.execute("SELECT to_regnamespace($1) IS NOT NULL", [qi(trash_schema)]).fetchone()
    if exists and exists[0]:
        return
    try:
        with conn.transaction():  # a savepoint: a lost race must not abort the write's transaction
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {qi(trash_schema)}")
    except psycopg.errors.InsufficientPrivilege:
        raise AdapterError(f"the role cannot create the trash schema {trash_schema}, so this cannot be made "
                           f"restorable; a human can run CREATE SCHEMA {trash_schema} with a role that may") from None
    except psycopg.errors.UniqueViolation:
        pass

def soft_drop(conn: psycopg.Connection[Any], sql: str, params: Any, cls: Classification,
              trash_schema: str) -> tuple[Preview, Outcome]:
    moved, samples, total, notes = [], [], 0, []
    trash_ready(conn, trash_schema)
    for t in cls.detail["tables"]:
        shown = f"{qi(t['schema'])}.{qi(t['name'])}" if t["schema"] else qi(t["name"])
        found = conn.execute("SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                             "ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)", [shown]).fetchone()
        if found is None:
            if cls.detail.get("missing_ok"):
                notes.append(f"table {t['name']} does not exist; skipped")
                continue
            raise AdapterError(f"no table named {t['name']}; sql_schema lists the tables")
        oid, schema, name, kind = found
        if kind not in ("r", "p"):
            raise AdapterError(f"{name} is not a table (relkind {kind}); DROP TABLE applies to tables")
        refs = conn.execute("SELECT conrelid::regclass::text FROM pg_constraint WHERE confrelid = $1 "
                            "AND contype = 'f' AND conrelid <> $1", [oid]).fetchall()
        if refs:
            raise AdapterError(f"{name} is referenced by foreign keys from {', '.join(r[0] for r in refs)}; "
                               "it cannot be kept restorable. Drop those constraints first (a separate call)")
        # What PostgreSQL would drop with it, or refuse for: kept restorable, it would stay attached (a view
        # reading the trash, a partition still receiving rows), so it is refused like a DROP without CASCADE.
        tied = conn.execute(
            "SELECT coalesce(array_agg(DISTINCT x), '{}') FROM ("
            "SELECT inhrelid::regclass::text AS x FROM pg_inherits WHERE inhparent = $1 UNION ALL "
            "SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = $1 UNION ALL "
            "SELECT r.ev_class::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
            "WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1 AND r.ev_class <> $1) s",
            [oid]).fetchone()
        if tied and tied[0]:
            raise AdapterError(f"{name} is tied to {', '.join(tied[0])} (views, inheritance or partitions); it "
                               "cannot be kept restorable on its own. Drop or detach those first (separate calls)")
        q = f"{qi(schema)}.{qi(name)}"
        count = int(conn.execute(f"SELECT count(*) FROM {q}").fetchone()[0])  # type: ignore[index]
        samples += [{"table": name, "change": "drop", "before": jsonable(r[0])}
                    for r in conn.execute(f"SELECT to_jsonb(x) FROM {q} AS x LIMIT {_SAMPLE}").fetchall()]
        trash = trash_name(name)
        conn.execute(f"ALTER TABLE {q} RENAME TO {qi(trash)}")
        conn.execute(f"ALTER TABLE {qi(schema)}.{qi(trash)} SET SCHEMA {qi(trash_schema)}")
        moved.append({"schema": schema, "table": name, "trash": trash, "rows": count})
        total += count
        notes.append(f"table {name} ({count} rows) is moved to {trash_schema}.{trash}; undo restores it")
    preview = Preview(effect=Effect.DESTRUCTIVE, affected=total, sample=samples[:_SAMPLE], notes=notes)
    comp = {"op": "restore_tables", "tables": moved, "affected": total}
    return preview, Outcome(affected=total, summary=cls.summary, compensation=comp,
                            result={"dropped": [m["table"] for m in moved], "rows": total})

def truncate(conn: psycopg.Connection[Any], sql: str, params: Any, cls: Classification,
             trash_schema: str) -> tuple[Preview, Outcome]:
    trash_ready(conn, trash_schema)
    kept, samples, total = [], [], 0
    for t in cls.detail["tables"]:
        info = table_info(conn, t["schema"], t["name"])
        if info.inherited or info.triggers or info.kind != "r":
            why = (f"{info.name} has triggers ({', '.join(info.triggers)})" if info.triggers else
                   f"{info.name} has inheritance children or partitions" if info.inherited else
                   f"{info.name} is not a plain table")
            run_one(conn, sql, params)
            return (Preview(effect=Effect.IRREVERSIBLE, affected=None, notes=[f"no undo: {why}, which TRUNCATE "
                                                                              "reaches but the trash copy would not "
                                                                              "put back where it was"]),
                    Outcome(affected=0, summary=cls.summary, result={"truncated": [info.name]}))
        trash = trash_name(info.name)
        cur = conn.execute(f"CREATE TABLE {qi(trash_schema)}.{qi(trash)} AS TABLE {info.qualified}")
        count = max(cur.rowcount, 0)
        samples += [{"table": info.name, "change": "truncate", "before": jsonable(r[0])}
                    for r in conn.execute(f"SELECT to_jsonb(x) FROM {info.qualified} AS x LIMIT {_SAMPLE}")]
        kept.append({"schema": info.schema, "table": info.name, "trash": trash, "columns": info.columns,
                     "rows": count})
        total += count
    run_one(conn, sql, params)
    preview = Preview(effect=Effect.DESTRUCTIVE, affected=total, sample=samples[:_SAMPLE],
                      notes=[f"the {total} old rows are kept in {trash_schema}; undo puts them back"])
    return preview, Outcome(affected=total, summary=cls.summary,
                            compensation={"op": "refill", "tables": kept, "affected": total},
                            result={"truncated": [k["table"] for k in kept], "rows": total})

def create(conn: psycopg.Connection[Any], sql: str, params: Any, cls: Classification,
           trash_schema: str) -> tuple[Preview, Outcome]:
    d = cls.detail
    shown = f"{qi(d['schema'])}.{qi(d['name'])}" if d.get("schema") else qi(d["name"])
    if conn.execute("SELECT to_regclass($1) IS NOT NULL", [shown]).fetchone() == (True,):
        # CREATE ... IF NOT EXISTS of something that exists: the undo must not remove the old one.
        run_one(conn, sql, params)
        return (Preview(effect=Effect.WRITE, affected=0, notes=[f"{d['name']} exists already; nothing changes"]),
                Outcome(affected=0, summary=cls.summary, compensation={"op": "noop", "affected": 0}))
    cur = run_one(conn, sql, params)
    n = max(cur.rowcount, 0) if d["type"] == "table" else 0
    found = conn.execute("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE c.oid = to_regclass($1)", [shown]).fetchone()
    if found is None:
        raise AdapterError(f"the new {d['type']} {d['name']} cannot be found after creating it")
    comp = {"op": "drop_created", "type": d["type"], "schema": found[0], "name": d["name"], "affected": 0,
            "state": _created_state(conn, d["type"], f"{qi(found[0])}.{qi(d['name'])}")}
    shadow = conn.execute(
        "SELECT string_agg(n.nspname || '.' || c.relname, ', ') FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relname = $1 AND n.nspname <> $2 AND c.relkind IN ('r', 'p', 'v', "
        "'m', 'f') AND n.nspname = ANY (current_schemas(false))", [d["name"], found[0]]).fetchone()
    if d["type"] != "index" and shadow and shadow[0]:
        # The same name in another schema of the search path: later statements would silently read one
        # instead of the other. That changes what code that runs later sees, so it is not a plain write.
        return (Preview(effect=Effect.IRREVERSIBLE, affected=n, notes=[
                    f"{found[0]}.{d['name']} would share its name with {shadow[0]} on the search path, so later "
                    "statements could silently read the other one"]),
                Outcome(affected=n, summary=cls.summary, compensation=comp))
    preview = Preview(effect=cls.effect, affected=n, notes=[f"undo removes the new {d['type']} "
                                                           "(a table goes to the trash)"])
    return preview, Outcome(affected=n, summary=cls.summary, compensation=comp)


def _created_state(conn: psycopg.Connection[Any], kind: str, q: str) -> str:
    """A digest of what a new table holds (its rows), or of a new view's or index's definition, so undo
    can tell whether anyone changed it since."""
    if kind == "table":
        # Order-free and in constant memory, so a large CREATE TABLE AS costs one scan, not a sort.
        row = conn.execute(f"SELECT count(*)::text || ':' || coalesce(sum(hashtextextended(t::text, 0)), 0)::text "
                           f"FROM {q} AS t").fetchone()
    elif kind == "view":
        row = conn.execute("SELECT md5(pg_get_viewdef(to_regclass($1)))", [q]).fetchone()
    else:
        row = conn.execute("SELECT md5(pg_get_indexdef(to_regclass($1)))", [q]).fetchone()
    return str(row[0]) if row else ""


def undo(conn: psycopg.Connection[Any], comp: dict[str, Any], trash_schema: str) -> tuple[int, str]:
    """Undo a table-level write in the caller's transaction; refuse when the tables moved on since.

    Raises:
        AdapterError: undo would replace newer tables or mix in newer rows, or the trashed copy is gone.
    """
    op = comp.get("op")
    trash = qi(trash_schema)
    if op == "restore_tables":
        for t in comp["tables"]:
            taken = conn.execute("SELECT to_regclass($1)", [f"{qi(t['schema'])}.{qi(t['table'])}"]).fetchone()
            if taken and taken[0] is not None:
                raise AdapterError(f"a new table named {t['table']} exists now; undo would replace it, so it "
                                   "stopped and changed nothing (rename or drop the new table first)")
            if conn.execute("SELECT to_regclass($1)", [f"{trash}.{qi(t['trash'])}"]).fetchone() == (None,):
                raise AdapterError(f"the trashed copy of {t['table']} is gone; nothing can be restored")
            conn.execute(f"ALTER TABLE {trash}.{qi(t['trash'])} SET SCHEMA {qi(t['schema'])}")
            conn.execute(f"ALTER TABLE {qi(t['schema'])}.{qi(t['trash'])} RENAME TO {qi(t['table'])}")
        names = ", ".join(t["table"] for t in comp["tables"])
        return int(comp.get("affected", 0)), f"table {names} restored"
    if op == "refill":
        n = 0
        for t in comp["tables"]:
            q = f"{qi(t['schema'])}.{qi(t['table'])}"
            if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {q})").fetchone() != (False,):
                raise AdapterError(f"{t['table']} has new rows since it was truncated; undo would mix old and new "
                                   "data, so it stopped and changed nothing")
            cols = ", ".join(qi(c) for c in t["columns"])
            cur = conn.execute(f"INSERT INTO {q} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} "
                               f"FROM {trash}.{qi(t['trash'])}")
            n += max(cur.rowcount, 0)
            conn.execute(f"DROP TABLE {trash}.{qi(t['trash'])}")
        return n, f"{n} rows put back"
    if op == "drop_created":
        q = f"{qi(comp['schema'])}.{qi(comp['name'])}"
        if conn.execute("SELECT to_regclass($1) IS NULL", [q]).fetchone() == (True,):
            raise AdapterError(f"the {comp['type']} {comp['name']} is gone already; nothing to undo")
        if "state" in comp and _created_state(conn, comp["type"], q) != comp["state"]:
            raise AdapterError(f"the {comp['type']} {comp['name']} changed after it was created (its rows or its "
                               "definition); undo would throw that away, so it stopped and changed nothing")
        if comp["type"] == "table":
            trash_ready(conn, trash_schema)
            name = trash_name(comp["name"])
            conn.execute(f"ALTER TABLE {q} RENAME TO {qi(name)}")
            conn.execute(f"ALTER TABLE {qi(comp['schema'])}.{qi(name)} SET SCHEMA {trash}")
            return 0, f"table {comp['name']} moved to {trash_schema}.{name}"
        conn.execute(f"DROP {'VIEW' if comp['type'] == 'view' else 'INDEX'} {q}")
        return 0, f"{comp['type']} {comp['name']} dropped"
    if op == "noop":
        return 0, "nothing to undo"
    raise AdapterError(f"unknown compensation {op!r}")


def trash_name(name: str) -> str:
    return f"{name[:40]}_{new_id('t').split('_', 1)[1][-16:]}".lower()
