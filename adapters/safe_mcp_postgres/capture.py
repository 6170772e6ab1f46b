"""Before-images taken by the write itself, and undo that puts them back.

UPDATE and DELETE are rewritten (from the parsed tree, never by text) to return every
changed row as text: a DELETE returns its old rows; an UPDATE joins a snapshot copy of
its own table on the key, so the same statement returns the row before and after. The
images are taken in the write's own transaction and compared again before undo.
Values travel as their text form and are cast back to the column type on restore.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from pglast import ast, enums
from pglast.stream import RawStream

from safe_mcp.errors import AdapterError
from safe_mcp_postgres.classify import parse_one
from safe_mcp_postgres.engine import qi

__all__ = ["TableInfo", "capture_sql", "restore_rows", "sample", "table_info"]

_OLD = "__safe_mcp_o"
_IMG = "__safe_mcp_old"
_NEW = "__safe_mcp_new"

_INFO_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind,
  coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{}'),
  coalesce((SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{}'),
  coalesce((SELECT array_agg(DISTINCT k.conrelid::regclass::text) FROM pg_constraint k WHERE k.confrelid = c.oid
    AND k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))), '{}'),
  coalesce((SELECT array_agg(t.tgname::text) FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal), '{}'),
  c.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)
"""

_KEY_SQL = """
SELECT array_agg(a.attname::text ORDER BY u.ord), bool_and(a.attnotnull)
FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS u(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid, i.indisprimary ORDER BY i.indisprimary DESC, i.indexrelid
"""


@dataclass(frozen=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    columns: list[str]
    types: list[str]
    key: list[str] | None
    cascades: list[str]
    triggers: list[str]
    inherited: bool

    @property
    def qualified(self) -> str:
        return f"{qi(self.schema)}.{qi(self.name)}"

    def irreversible_because(self) -> str | None:
        """Why before-images of this table cannot be trusted to undo a write, or None."""
        if self.key is None:
            return f"{self.name} has no primary key or unique NOT NULL key, so its rows cannot be found again"
        if self.cascades:
            return f"writes to {self.name} cascade into {', '.join(self.cascades)}, which are not captured"
        if self.triggers:
            return f"{self.name} has triggers ({', '.join(self.triggers)}) whose effects are not captured"
        if self.inherited:
            return f"{self.name} has inheritance children, which are not captured"
        return None


def table_info(conn: psycopg.Connection[Any], schema: str | None, name: str) -> TableInfo:
    """Columns, key and capture hazards of a table, as this role sees it.

    Raises:
        AdapterError: no such table.
    """
    shown = f"{qi(schema)}.{qi(name)}" if schema else qi(name)
    row = conn.execute(_INFO_SQL, [shown]).fetchone()
    if row is None:
        raise AdapterError(f"no table named {schema + '.' if schema else ''}{name}; sql_schema lists the tables")
    oid, nsp, rel, _kind, cols, types, cascades, triggers, inherited = row
    key = None
    for names, not_null in conn.execute(_KEY_SQL, [oid]).fetchall():
        if not_null and all(n in cols for n in names):
            key = list(names)
            break
    return TableInfo(oid=oid, schema=nsp, name=rel, columns=list(cols), types=list(types), key=key,
                     cascades=list(cascades), triggers=list(triggers), inherited=bool(inherited))


def _array(ref: str, cols: list[str]) -> str:
    return "ARRAY[" + ", ".join(f"{qi(ref)}.{qi(c)}::text" for c in cols) + "]::text[]"


def capture_sql(sql: str, info: TableInfo) -> tuple[str, int]:
    """The statement rewritten to also return its before/after images; and how many columns it appended.

    UPDATE returns (old image, new image); DELETE returns (old image); INSERT returns (new key).
    """
    stmt = parse_one(sql, fresh=True)
    rel = stmt.relation
    ref = rel.alias.aliasname if rel.alias is not None else rel.relname
    if isinstance(stmt, ast.InsertStmt):
        assert info.key is not None
        extra = [f"{_array(ref, info.key)} AS {_NEW}"]
    elif isinstance(stmt, ast.DeleteStmt):
        extra = [f"{qi(ref)}::text AS {_IMG}"]
    else:
        assert isinstance(stmt, ast.UpdateStmt) and info.key is not None
        keys = ", ".join(f"{qi('o')}.{qi(k)} AS __safe_mcp_k{i}" for i, k in enumerate(info.key))
        only = "" if rel.inh else "ONLY "
        derived = parse_one(f"SELECT 1 FROM (SELECT {keys}, {qi('o')}::text AS {_IMG} "
                            f"FROM {only}{info.qualified} AS o) AS {_OLD}", fresh=True).fromClause[0]
        cond = " AND ".join(f"{_OLD}.__safe_mcp_k{i} = {qi(ref)}.{qi(k)}" for i, k in enumerate(info.key))
        join = parse_one(f"SELECT 1 WHERE {cond}", fresh=True).whereClause
        stmt.fromClause = (derived, *(stmt.fromClause or ()))
        stmt.whereClause = join if stmt.whereClause is None else ast.BoolExpr(
            boolop=enums.BoolExprType.AND_EXPR, args=(stmt.whereClause, join))
        extra = [f"{_OLD}.{_IMG}", f"{qi(ref)}::text AS {_NEW}"]
    targets = parse_one(f"SELECT {', '.join(extra)}", fresh=True).targetList
    current = stmt.returningClause
    exprs = (*(current.exprs or ()), *targets) if current is not None else tuple(targets)
    options = current.options if current is not None else None
    stmt.returningClause = ast.ReturningClause(options=options, exprs=exprs)
    return str(RawStream()(stmt)), len(extra)


def sample(conn: psycopg.Connection[Any], info: TableInfo, op: str, images: list[Any],
           limit: int) -> list[dict[str, Any]]:
    """The first `limit` images as dicts the agent can read (row texts are parsed by the server)."""
    head = images[:limit]
    if not head:
        return []
    if op == "insert":
        return [{"table": info.name, "change": "insert", "key": dict(zip(info.key or [], k, strict=True))}
                for k in head]
    texts = [i[0] for i in head] + [i[1] for i in head] if op == "update" else list(head)
    parsed = [r[0] for r in conn.execute(f"SELECT to_jsonb(r::{info.qualified}) FROM unnest($1::text[]) "
                                         "WITH ORDINALITY AS u(r, n) ORDER BY n", [texts]).fetchall()]
    if op == "delete":
        return [{"table": info.name, "change": "delete", "before": b} for b in parsed]
    n = len(head)
    return [{"table": info.name, "change": "update", "before": parsed[i], "after": parsed[n + i]} for i in range(n)]


def restore_rows(conn: psycopg.Connection[Any], comp: dict[str, Any]) -> int:
    """Put back what a row write recorded, in the caller's transaction; refuse if rows moved on since.

    Raises:
        AdapterError: a row no longer matches what the write left, so undo would destroy newer data.
    """
    table = f"{qi(comp['schema'])}.{qi(comp['table'])}"
    cols: list[str] = comp["columns"]
    types: list[str] = comp["types"]
    key: list[str] = comp["key"]
    ktypes = [types[cols.index(k)] for k in key]
    n = 0
    if comp["inserted"]:
        rows = comp["inserted"]
        cond = " AND ".join(f"t.{qi(k)} = (u.e ->> {i})::{ktypes[i]}" for i, k in enumerate(key))
        cur = conn.execute(f"DELETE FROM {table} AS t USING json_array_elements($1::json) AS u(e) WHERE {cond}",
                           [json.dumps(rows)])
        if cur.rowcount != len(rows):
            raise AdapterError(f"{len(rows) - cur.rowcount} of the rows inserted into {comp['table']} are gone "
                               "already; undo stopped and changed nothing")
        n += cur.rowcount
    if comp["updated"]:
        rows = comp["updated"]
        sets = ", ".join(f"{qi(c)} = (s.v).{qi(c)}" for c in cols)
        cond = " AND ".join(f"t.{qi(k)} = (s.nv).{qi(k)}" for k in key)
        cur = conn.execute(
            f"UPDATE {table} AS t SET {sets} FROM (SELECT (e ->> 0)::{table} AS v, (e ->> 1)::{table} AS nv, "
            f"e ->> 1 AS new FROM json_array_elements($1::json) AS u(e) OFFSET 0) AS s "
            f"WHERE {cond} AND t::text = s.new", [json.dumps(rows)])
        if cur.rowcount != len(rows):
            raise AdapterError(f"{len(rows) - cur.rowcount} rows of {comp['table']} changed again (or were deleted) "
                               "after this write; undo would overwrite newer data, so it stopped and changed nothing")
        n += cur.rowcount
    if comp["deleted"]:
        rows = comp["deleted"]
        names = ", ".join(qi(c) for c in cols)
        fields = ", ".join(f"(s.v).{qi(c)}" for c in cols)
        try:
            cur = conn.execute(f"INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE SELECT {fields} FROM "
                               f"(SELECT r::{table} AS v FROM json_array_elements_text($1::json) AS r OFFSET 0) AS s",
                               [json.dumps(rows)])
        except psycopg.errors.UniqueViolation as exc:
            raise AdapterError(f"cannot restore the deleted rows of {comp['table']}: a newer row took the place of one "
                               f"({exc.diag.message_detail or 'duplicate key'}); undo stopped and changed nothing"
                               ) from None
        n += cur.rowcount
    return n
