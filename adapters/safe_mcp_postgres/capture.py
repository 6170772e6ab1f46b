"""Before-images taken by the write itself, and undo that puts them back.

UPDATE and DELETE are rewritten (from the parsed tree, never by text) to return every
changed row as text: a DELETE returns its old rows; an UPDATE joins a snapshot copy of
its own table on the key (filtered by the UPDATE's own WHERE where that reads the same twice),
so the same statement returns the row before and after. The same statement journals the
images and measures the write (count, fingerprint, samples): one round trip, and the images
never leave the server. They are compared again before undo.
Values travel as their text form and are cast back to the column type on restore.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import psycopg
from pglast import ast, enums
from pglast.stream import RawStream

from safe_mcp.errors import AdapterError
from safe_mcp_postgres.classify import parse_one, walk
from safe_mcp_postgres.engine import qi
from safe_mcp_postgres.journal import TABLE as JOURNAL

__all__ = ["Measured", "TableInfo", "capture_sql", "journaled_sql", "max_param", "measured", "restore_rows",
           "table_info"]

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
  coalesce((SELECT array_agg(t.tgname::text) FROM pg_trigger t WHERE t.tgrelid = c.oid
    AND (NOT t.tgisinternal OR t.tgconstraint = 0)), '{}'),
  coalesce((SELECT array_agg(a.attname::text) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
    AND NOT a.attisdropped AND a.attidentity = 'a'), '{}'),
  EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid),
  coalesce((SELECT array_agg(r.rulename::text) FROM pg_rewrite r WHERE r.ev_class = c.oid
    AND r.rulename <> '_RETURN'), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)
"""

_KEY_SQL = """
SELECT array_agg(a.attname::text ORDER BY u.ord), bool_and(a.attnotnull)
FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS u(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
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
    kind: str
    rules: list[str]
    always: list[str]
    """GENERATED ALWAYS identity columns: an UPDATE may not set them, so undo leaves them be."""

    @property
    def qualified(self) -> str:
        return f"{qi(self.schema)}.{qi(self.name)}"

    def irreversible_because(self) -> str | None:
        """Why before-images of this table cannot be trusted to undo a write, or None."""
        if self.kind == "p":
            return f"{self.name} is partitioned; rows move between its partitions, which are not captured"
        if self.kind != "r":
            return f"{self.name} is not a plain table (relkind {self.kind}); its writes land elsewhere"
        if self.rules:
            return f"{self.name} has rules ({', '.join(self.rules)}) that rewrite its writes, which are not captured"
        if self.key is None:
            return f"{self.name} has no primary key or unique NOT NULL key, so its rows cannot be found again"
        if self.cascades:
            return f"writes to {self.name} cascade into {', '.join(self.cascades)}, which are not captured"
        if self.triggers:
            return f"{self.name} has triggers ({', '.join(self.triggers)}) whose effects are not captured"
        if self.inherited:
            return f"{self.name} has inheritance children or partitions, which are not captured"
        return None


def table_info(conn: psycopg.Connection[Any], schema: str | None, name: str) -> TableInfo:
    """Columns, key and capture hazards of a table, as this role sees it.

    Raises:
        AdapterError: no such table.
    """
    shown = f"{qi(schema)}.{qi(name)}" if schema else qi(name)
    with conn.pipeline():  # both questions in one round trip
        asked = conn.execute(_INFO_SQL, [shown])
        keys = conn.execute(_KEY_SQL, [shown])
    row = asked.fetchone()
    if row is None:
        raise AdapterError(f"no table named {schema + '.' if schema else ''}{name}; sql_schema lists the tables")
    oid, nsp, rel, kind, cols, types, cascades, triggers, always, inherited, rules = row
    key = None
    for names, not_null in keys.fetchall():
        if not_null and all(n in cols for n in names):
            key = list(names)
            break
    return TableInfo(oid=oid, schema=nsp, name=rel, columns=list(cols), types=list(types), key=key,
                     cascades=list(cascades), triggers=list(triggers), inherited=bool(inherited),
                     kind=str(kind), rules=list(rules), always=list(always))


def capture_sql(sql: str, info: TableInfo) -> tuple[str, int]:
    """The statement rewritten to also return its before/after images; and how many columns it appended.

    UPDATE returns (old image, new image); DELETE returns (old image); INSERT returns (new image).
    """
    if len(sql) > _CACHED_SQL_CHARS:
        return _capture(sql, info.qualified, tuple(info.key) if info.key is not None else None)
    return _capture_cached(sql, info.qualified, tuple(info.key) if info.key is not None else None)


def _capture(sql: str, qualified: str, key: tuple[str, ...] | None) -> tuple[str, int]:
    """capture_sql of a table named `qualified` whose rows are found again by `key`: a pure function of
    its arguments (the text and the parser's tree), so an agent's repeated statements are rewritten once."""
    stmt = parse_one(sql, fresh=True)
    rel = stmt.relation
    ref = rel.alias.aliasname if rel.alias is not None else rel.relname
    if isinstance(stmt, ast.InsertStmt):
        extra = [f"CAST({qi(ref)}.* AS text) AS {_NEW}"]
    elif isinstance(stmt, ast.DeleteStmt):
        extra = [f"CAST({qi(ref)}.* AS text) AS {_IMG}"]
    else:
        assert isinstance(stmt, ast.UpdateStmt) and key is not None
        only = "" if rel.inh else "ONLY "
        pushed = _pushable_where(stmt)
        if pushed is None:
            inner, named = "o", f"{only}{qualified} AS o"
        else:
            # Under the agent's own name for the table, so its WHERE reads the same inside.
            inner = ref
            named = f"{only}{qualified}" + (f" AS {qi(ref)}" if rel.alias is not None else "")
        keys = ", ".join(f"{qi(inner)}.{qi(k)} AS __safe_mcp_k{i}" for i, k in enumerate(key))
        derived = parse_one(f"SELECT 1 FROM (SELECT {keys}, CAST({qi(inner)}.* AS text) AS {_IMG} "
                            f"FROM {named}) AS {_OLD}", fresh=True).fromClause[0]
        if pushed is not None:
            derived.subquery.whereClause = pushed
        cond = " AND ".join(f"{_OLD}.__safe_mcp_k{i} = {qi(ref)}.{qi(k)}" for i, k in enumerate(key))
        join = parse_one(f"SELECT 1 WHERE {cond}", fresh=True).whereClause
        stmt.fromClause = (derived, *(stmt.fromClause or ()))
        stmt.whereClause = join if stmt.whereClause is None else ast.BoolExpr(
            boolop=enums.BoolExprType.AND_EXPR, args=(stmt.whereClause, join))
        extra = [f"{_OLD}.{_IMG}", f"CAST({qi(ref)}.* AS text) AS {_NEW}"]
    targets = parse_one(f"SELECT {', '.join(extra)}", fresh=True).targetList
    current = stmt.returningClause
    exprs = (*(current.exprs or ()), *targets) if current is not None else tuple(targets)
    options = current.options if current is not None else None
    stmt.returningClause = ast.ReturningClause(options=options, exprs=exprs)
    return str(RawStream()(stmt)), len(extra)


_CACHED_SQL_CHARS = 4096
_capture_cached = functools.lru_cache(maxsize=256)(_capture)


def _pushable_where(stmt: Any) -> Any | None:
    """A fresh copy of an UPDATE's WHERE that may also filter the snapshot it joins for its old rows, or None.

    Copied, the old rows are read by the same (indexed) condition instead of the whole table. Only a
    condition on the target alone qualifies (no FROM), that reads the same when evaluated twice (no function
    calls: one may be volatile, like random()) and names no cursor position.
    """
    if stmt.fromClause or stmt.whereClause is None:
        return None
    if any(isinstance(n, (ast.FuncCall, ast.CurrentOfExpr)) for n in walk(stmt.whereClause)):
        return None
    return parse_one(str(RawStream()(stmt)), fresh=True).whereClause


def max_param(sql: str) -> int:
    """The highest $n placeholder the statement uses (0 for none)."""
    return max((int(n.number or 0) for n in walk(parse_one(sql)) if isinstance(n, ast.ParamRef)), default=0)


def journaled_sql(rewritten: str, op: str, info: TableInfo, first_param: int, *, returning: int, samples: int,
                  fingerprint: bool) -> str:
    """`rewritten` (from capture_sql) wrapped so that the same statement journals its row images and measures.

    The journal row gets $first_param (intent id) and $first_param+1 (the compensation, jsonb). The
    statement returns at least one row: the agent's RETURNING columns (NULL when nothing changed, at most
    `returning` rows), the columns capture_sql appended, then the five of `measured`.
    """
    old = f"array_agg({_IMG})" if op in ("update", "delete") else "NULL::text[]"
    new = f"array_agg({_NEW})" if op in ("update", "insert") else "NULL::text[]"
    # Order-free and in constant memory: the same rows in the same state give the same digest.
    fp = (f"count(*)::text || ':' || coalesce(sum(hashtextextended({_IMG}, 0)), 0)::text"
          if fingerprint and op != "insert" else "NULL::text")
    t = info.qualified
    # Seen from the statement's snapshot, the table holds what it held before the write: the write changed
    # every row when it holds no more rows than were changed. Counting stops at one row more.
    left = (f"CASE WHEN a.n > 1 THEN (SELECT count(*) FROM (SELECT FROM {t} LIMIT a.n + 1) AS c) <= a.n END"
            if op in ("update", "delete") else "NULL::boolean")
    i, m = first_param, first_param + 1

    def shown(images: str) -> str:
        return (f"(SELECT coalesce(jsonb_agg(to_jsonb(v::{t}) ORDER BY k), '[]') FROM unnest(a.{images}[1:{samples}]) "
                "WITH ORDINALITY AS u(v, k))")

    return (f"WITH __safe_mcp_w AS ({rewritten}), "
            f"__safe_mcp_a AS (SELECT count(*) AS n, {fp} AS fp, {old} AS old, {new} AS new FROM __safe_mcp_w), "
            f"__safe_mcp_j AS (INSERT INTO {JOURNAL} (intent_id, kind, affected, compensation, old, new) "
            f"SELECT ${i}, 'write', n, ${m}::jsonb, old, new FROM __safe_mcp_a) "
            # OFFSET 0 keeps the measurement a subquery of its own: computed once, not once per returned row.
            f"SELECT r.*, m.* FROM (SELECT a.n, a.fp, {left}, {shown('old')}, {shown('new')} FROM __safe_mcp_a AS a "
            f"OFFSET 0) AS m LEFT JOIN LATERAL (SELECT * FROM __safe_mcp_w LIMIT {returning}) AS r ON true")


@dataclass(frozen=True)
class Measured:
    """What a journaled write measured, in its own statement."""

    affected: int
    samples: list[dict[str, Any]]
    fingerprint: str | None
    every: bool
    """It changed every row the table held (update, delete of more than one row)."""


def measured(row: tuple[Any, ...], info: TableInfo, op: str, *, fingerprint: bool) -> Measured:
    """The last five columns of a journaled_sql row, read.

    The fingerprint digests the before-images (update, delete), so the same rows in the same state give
    the same digest; for an insert, the number of rows (new keys differ on every run).
    """
    n, digest, every, before, after = int(row[-5]), row[-4], bool(row[-3]), row[-2], row[-1]
    if op == "insert":
        samples = [{"table": info.name, "change": "insert",
                    "key": {k: a.get(k) for k in info.key or []}, "after": a} for a in after]
        digest = f"insert:{n}" if fingerprint else None
    elif op == "delete":
        samples = [{"table": info.name, "change": "delete", "before": b} for b in before]
    else:
        samples = [{"table": info.name, "change": "update", "before": b, "after": a}
                   for b, a in zip(before, after, strict=True)]
    return Measured(affected=n, samples=samples, fingerprint=digest, every=every)


def restore_rows(conn: psycopg.Connection[Any], comp: dict[str, Any]) -> int:
    """Put back what a journaled row write recorded, in the caller's transaction; refuse if rows moved on.

    Every row the write left (inserted or updated) must still be exactly as it left it, and every
    deleted row's key must still be free; otherwise nothing is changed and the first conflict is named.

    Raises:
        AdapterError: a row no longer matches what the write left, or the journal entry is gone.
    """
    if comp.get("version") != 3 or "journal" not in comp:
        raise AdapterError("this undo record predates safe-mcp's journal in the target; it cannot be replayed")
    table = f"{qi(comp['schema'])}.{qi(comp['table'])}"
    cols: list[str] = comp["columns"]
    key: list[str] = comp["key"]
    jid = comp["journal"]
    found = conn.execute(f"SELECT old IS NOT NULL, new IS NOT NULL FROM {JOURNAL} WHERE intent_id = $1",
                         [jid]).fetchone()
    if found is None:
        raise AdapterError(f"the before-images of this write are gone from the journal {JOURNAL} (pruned "
                           "after journal_keep_days, or removed by hand); nothing can be restored")
    has_old, has_new = found
    src = (f"(SELECT o::{table} AS ov, n::{table} AS nv, n AS new FROM {JOURNAL} AS j "
           f"CROSS JOIN LATERAL unnest(j.old, j.new) AS u(o, n) WHERE j.intent_id = $1 OFFSET 0) AS s")
    match = " AND ".join(f"t.{qi(k)} = (s.nv).{qi(k)}" for k in key)
    n = 0
    if has_new:
        # What the write left must still be there, unchanged: named before anything is touched.
        bad = conn.execute(f"SELECT {', '.join(f'(s.nv).{qi(k)}::text' for k in key)}, t.ctid IS NULL "
                           f"FROM {src} LEFT JOIN {table} AS t ON {match} "
                           f"WHERE t.ctid IS NULL OR t::text IS DISTINCT FROM s.new LIMIT 1", [jid]).fetchone()
        if bad is not None:
            shown = ", ".join(f"{k}={v}" for k, v in zip(key, bad[:-1], strict=True))
            what = "was deleted" if bad[-1] else "was changed"
            raise AdapterError(f"the row of {comp['table']} with {shown} {what} after this write; undo would "
                               "destroy newer data, so it stopped and changed nothing")
        if has_old:
            fixed = set(comp.get("always", []))
            sets = ", ".join(f"{qi(c)} = (s.ov).{qi(c)}" for c in cols if c not in fixed)
            cur = conn.execute(f"UPDATE {table} AS t SET {sets} FROM {src} WHERE {match} AND t::text = s.new", [jid])
        else:
            cur = conn.execute(f"DELETE FROM {table} AS t USING {src} WHERE {match} AND t::text = s.new", [jid])
        n += max(cur.rowcount, 0)
    elif has_old:
        names = ", ".join(qi(c) for c in cols)
        fields = ", ".join(f"(s.ov).{qi(c)}" for c in cols)
        try:
            cur = conn.execute(f"INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE SELECT {fields} FROM "
                               f"(SELECT o::{table} AS ov FROM {JOURNAL} AS j CROSS JOIN LATERAL "
                               f"unnest(j.old) AS o WHERE j.intent_id = $1 OFFSET 0) AS s", [jid])
        except psycopg.errors.UniqueViolation as exc:
            raise AdapterError(f"cannot restore the deleted rows of {comp['table']}: a newer row took the place of one "
                               f"({exc.diag.message_detail or 'duplicate key'}); undo stopped and changed nothing"
                               ) from None
        n += max(cur.rowcount, 0)
    if n != int(comp.get("affected", n)):
        raise AdapterError(f"undo matched {n} of the {comp['affected']} rows of {comp['table']}; it stopped and "
                           "changed nothing")
    return n
