"""Classification from PostgreSQL's own parser (pglast): the statement type and every node in its tree.

No I/O. The engine enforces what the parser cannot see (read-only transactions, one
statement per call, the role); this module decides the effect before anything runs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError

from safe_mcp.adapter import Classification
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError
from safe_mcp_postgres.functions import FORBIDDEN_SCHEMAS, SAFE, SEQUENCE, is_forbidden

__all__ = ["JOURNAL_SCHEMA", "RESERVED", "classify_sql", "parse_one", "qualified", "walk"]

# safe-mcp's own schemas: the undo journal, and (by default) the trash. Any statement naming a schema
# that contains this string is refused, so agents can neither reach nor imitate them.
RESERVED = "_safe_mcp"
JOURNAL_SCHEMA = "_safe_mcp"
# Operations for which the adapter records a compensation (undo) when they run.
_COMPENSABLE_OPS = frozenset({"insert", "update", "delete", "drop_table", "truncate", "create"})

_DML = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)

# Statement types that never run through safe-mcp, with the reason the agent sees.
_FORBIDDEN_STATEMENTS: dict[str, str] = {
    "TransactionStmt": "transaction control (BEGIN/COMMIT/ROLLBACK/SAVEPOINT): safe-mcp runs each call as its own "
                       "transaction",
    "VariableSetStmt": "SET/RESET changes the session (role, session authorization, transaction modes, timeouts)",
    "CopyStmt": "COPY reads or writes files or programs on the server, or streams outside the tool; use SELECT or INSERT",
    "DoStmt": "DO runs anonymous procedural code that safe-mcp cannot inspect",
    "CallStmt": "CALL runs a procedure that safe-mcp cannot inspect (and that may commit)",
    "PrepareStmt": "PREPARE creates a session-level statement that a later call could EXECUTE unchecked",
    "ExecuteStmt": "EXECUTE runs a prepared statement that safe-mcp cannot inspect",
    "DeallocateStmt": "DEALLOCATE changes session state",
    "ListenStmt": "LISTEN changes session state", "UnlistenStmt": "UNLISTEN changes session state",
    "NotifyStmt": "NOTIFY signals other sessions", "LockStmt": "LOCK takes table locks",
    "AlterSystemStmt": "ALTER SYSTEM changes the server configuration", "LoadStmt": "LOAD loads a shared library",
    "CreateExtensionStmt": "extensions install code", "AlterExtensionStmt": "extensions install code",
    "AlterExtensionContentsStmt": "extensions install code",
    "CreateFunctionStmt": "functions and procedures are code safe-mcp cannot inspect",
    "AlterFunctionStmt": "functions and procedures are code safe-mcp cannot inspect",
    "CreateTrigStmt": "triggers run code on later writes", "CreateEventTrigStmt": "event triggers run code",
    "AlterEventTrigStmt": "event triggers run code", "RuleStmt": "rules rewrite later statements",
    "CreatePLangStmt": "procedural languages install code", "CreateCastStmt": "casts install code",
    "CreateRoleStmt": "roles and privileges are changed outside safe-mcp",
    "AlterRoleStmt": "roles and privileges are changed outside safe-mcp",
    "AlterRoleSetStmt": "roles and privileges are changed outside safe-mcp",
    "DropRoleStmt": "roles and privileges are changed outside safe-mcp",
    "GrantStmt": "roles and privileges are changed outside safe-mcp",
    "GrantRoleStmt": "roles and privileges are changed outside safe-mcp",
    "AlterDefaultPrivilegesStmt": "roles and privileges are changed outside safe-mcp",
    "ReassignOwnedStmt": "roles and privileges are changed outside safe-mcp",
    "DropOwnedStmt": "roles and privileges are changed outside safe-mcp",
    "AlterOwnerStmt": "ownership is changed outside safe-mcp",
    "CreatePolicyStmt": "row-level security policies are changed outside safe-mcp",
    "AlterPolicyStmt": "row-level security policies are changed outside safe-mcp",
    "VacuumStmt": "maintenance (VACUUM/ANALYZE) is not run through safe-mcp",
    "ClusterStmt": "maintenance (CLUSTER) is not run through safe-mcp",
    "ReindexStmt": "maintenance (REINDEX) is not run through safe-mcp", "CheckPointStmt": "CHECKPOINT is maintenance",
    "DiscardStmt": "DISCARD changes session state",
    "DeclareCursorStmt": "cursors outlive the statement", "FetchStmt": "cursors outlive the statement",
    "ClosePortalStmt": "cursors outlive the statement",
    "CreateSubscriptionStmt": "replication reaches other servers", "AlterSubscriptionStmt": "replication",
    "CreatePublicationStmt": "replication", "AlterPublicationStmt": "replication",
    "CreateForeignServerStmt": "foreign servers reach other systems", "CreateFdwStmt": "foreign data wrappers",
    "CreateUserMappingStmt": "user mappings hold credentials for other systems",
    "ImportForeignSchemaStmt": "foreign tables reach other systems",
    "CreateForeignTableStmt": "foreign tables reach other systems",
    "CreateTableSpaceStmt": "tablespaces are files on the server", "DropTableSpaceStmt": "tablespaces",
    "AlterDatabaseSetStmt": "database settings", "AlterDatabaseStmt": "database settings",
    "CreatedbStmt": "databases are created outside safe-mcp", "SecLabelStmt": "security labels",
}

# DDL that runs as it is: allowed for a human to approve, with no compensation recorded.
_IRREVERSIBLE_DDL = frozenset({
    "AlterTableStmt", "RenameStmt", "CommentStmt", "CreateSeqStmt", "AlterSeqStmt", "CreateSchemaStmt",
    "CreateEnumStmt", "AlterEnumStmt", "CompositeTypeStmt", "CreateDomainStmt", "AlterDomainStmt",
    "AlterObjectSchemaStmt", "CreateStatsStmt", "RefreshMatViewStmt", "CreateRangeStmt", "AlterCollationStmt",
    "AlterTypeStmt", "AlterStatsStmt", "ReplicaIdentityStmt",
})


@functools.lru_cache(maxsize=512)
def _parse(sql: str) -> tuple[Any, ...]:
    return tuple(parse_sql(sql))


def parse_one(sql: str, *, fresh: bool = False) -> Any:
    """The one statement in `sql` (a fresh tree when the caller will modify it).

    Raises:
        AdapterError: not parseable, or not exactly one statement.
    """
    try:
        stmts = tuple(parse_sql(sql)) if fresh else _parse(sql)
    except ParseError as exc:
        raise AdapterError(f"postgres cannot parse this statement: {exc}") from None
    if len(stmts) != 1:
        raise AdapterError(
            f"only one SQL statement per call is allowed (found {len(stmts)}); send each as its own call")
    return stmts[0].stmt


def walk(node: Any) -> Iterator[ast.Node]:
    """Every node under `node`, itself included: subqueries, CTEs, FROM items, defaults, options."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (list, tuple)):
            stack.extend(n)
        elif isinstance(n, ast.Node):
            yield n
            for attr in type(n).__slots__:  # type: ignore[attr-defined]
                v = getattr(n, attr, None)
                if isinstance(v, (ast.Node, list, tuple)):
                    stack.append(v)


def qualified(rv: Any) -> tuple[str | None, str]:
    """(schema, name) of a RangeVar."""
    return rv.schemaname, rv.relname


def _names(parts: Any) -> list[str]:
    return [str(p.sval) for p in parts or () if isinstance(p, ast.String)]


def _forbid(why: str) -> Classification:
    return Classification(effect=Effect.FORBIDDEN, reason=why, summary="forbidden", detail={"op": "forbidden"})


def _reserved(stmt: Any, trash_schema: str) -> str | None:
    """The first identifier or string constant anywhere in the tree that names one of safe-mcp's schemas.

    Names sit in str slots (RangeVar.schemaname, RenameStmt.subname, newschema, ...) and in String
    nodes (qualified names, constants such as '_safe_mcp_trash.t'::regclass); all are checked. Anything
    containing "_safe_mcp" is refused; a trash schema configured under another name is matched as a
    whole name (alone, or qualifying another), so a short name does not refuse every statement.
    """
    trash = trash_schema.lower()
    for n in walk(stmt):
        for attr in type(n).__slots__:  # type: ignore[attr-defined]
            v = getattr(n, attr, None)
            if not isinstance(v, str):
                continue
            lv = v.lower()
            if RESERVED in lv or lv == trash or lv.startswith(trash + ".") or f'"{trash}"' in lv:
                return v
    return None


def _is_temp_schema(name: object) -> bool:
    return isinstance(name, str) and _TEMP_SCHEMA(name.lower()) is not None


_TEMP_SCHEMA = re.compile(r"pg_temp(_\d+)?$").match


def _temp_reason(stmt: Any) -> str | None:
    """Why the statement would create or reach session-scoped objects (temporary ones, in any spelling)."""
    why = "temporary objects (TEMP, pg_temp.*) would outlive the call on a pooled connection"
    nodes = list(walk(stmt))
    constants = {id(n.val) for n in nodes if isinstance(n, ast.A_Const)}
    for n in nodes:
        if isinstance(n, ast.RangeVar) and (n.relpersistence == "t" or _is_temp_schema(n.schemaname)):
            return why
        if isinstance(n, ast.AlterObjectSchemaStmt) and _is_temp_schema(n.newschema):
            return why
        if isinstance(n, ast.String) and id(n) not in constants and _is_temp_schema(n.sval):
            return why
    return None


def _scan(stmt: Any) -> tuple[Effect, str] | None:
    """The strongest effect some node of the tree forces, with its reason."""
    worst: tuple[Effect, str] | None = None

    def note(effect: Effect, why: str) -> None:
        nonlocal worst
        if worst is None or effect.rank > worst[0].rank:
            worst = (effect, why)

    for n in walk(stmt):
        if isinstance(n, ast.FuncCall):
            parts = _names(n.funcname)
            schema, name = (parts[0], parts[-1]) if len(parts) > 1 else (None, parts[-1] if parts else "")
            shown = ".".join(parts)
            if schema is not None and schema != "pg_catalog":
                note(Effect.FORBIDDEN, f"function {shown}() is in schema {schema!r}; only built-in functions "
                     "on safe-mcp's safe list run" + (" (it reaches outside the database)"
                                                      if schema in FORBIDDEN_SCHEMAS else ""))
            elif is_forbidden(name):
                note(Effect.FORBIDDEN, f"function {name}() reaches outside the transaction, the database or the "
                                       "process (files, other sessions, locks that outlive a rollback)")
            elif name in SEQUENCE:
                note(Effect.IRREVERSIBLE, f"function {name}() changes a sequence, which no rollback undoes")
            elif name not in SAFE:
                note(Effect.FORBIDDEN, f"function {shown}() is not on safe-mcp's list of known-safe built-in "
                                       "functions")
        elif isinstance(n, ast.A_Expr):
            parts = _names(n.name)
            if len(parts) > 1 and parts[0] != "pg_catalog":
                note(Effect.FORBIDDEN, f"operator {'.'.join(parts)} is not built in; it may call any function")
        elif isinstance(n, ast.LockingClause):
            note(Effect.FORBIDDEN, "SELECT ... FOR UPDATE/SHARE takes row locks; a single-statement call has no "
                                   "use for them")
        elif isinstance(n, ast.CurrentOfExpr):
            note(Effect.FORBIDDEN, "WHERE CURRENT OF needs a cursor; cursors are not available")
    return worst


def _has_nested_dml(stmt: Any) -> bool:
    return any(isinstance(n, _DML) and n is not stmt for n in walk(stmt))


def classify_sql(sql: str, trash_schema: str) -> Classification:
    """The effect of one SQL statement.

    Raises:
        AdapterError: unparseable, or more than one statement.
    """
    stmt = parse_one(sql)
    hit = _reserved(stmt, trash_schema)
    if hit is not None:
        return _forbid(f"{hit!r} names safe-mcp's own schemas ({trash_schema}, {JOURNAL_SCHEMA}), which keep the "
                       "trash and the undo journal; no statement may touch them. Restore trashed tables with the "
                       "undo tool")
    temp = _temp_reason(stmt)
    if temp is not None:
        return _forbid(temp)
    base = _classify_statement(stmt)
    found = _scan(stmt)
    if found is not None:
        effect, why = found
        if effect.rank > base.effect.rank:
            if effect is Effect.FORBIDDEN:
                return _forbid(why)
            return base.model_copy(update={"effect": effect, "reason": f"{base.reason}; {why}", "compensable": False,
                                           "detail": {**base.detail, "op": "plain"}})
    if base.detail.get("op") in _COMPENSABLE_OPS and base.effect in (Effect.WRITE, Effect.DESTRUCTIVE):
        return base.model_copy(update={"compensable": True})
    return base


def _is(node: Any, cls: type | tuple[type, ...]) -> bool:
    """isinstance without narrowing: pglast's optional fields are always set on parsed trees."""
    return isinstance(node, cls)


def _rel(rv: Any) -> dict[str, str | None]:
    return {"schema": rv.schemaname, "name": rv.relname}


def _show(rv: Any) -> str:
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname


def _classify_statement(stmt: Any) -> Classification:
    kind = type(stmt).__name__
    if kind in _FORBIDDEN_STATEMENTS:
        return _forbid(_FORBIDDEN_STATEMENTS[kind])
    if _is(stmt, ast.SelectStmt):
        if _has_nested_dml(stmt):
            return Classification(effect=Effect.IRREVERSIBLE, reason="a writable CTE (INSERT/UPDATE/DELETE inside "
                                  "WITH): safe-mcp cannot take its before-images; send the write as its own statement",
                                  summary="writable CTE", detail={"op": "plain"})
        into = _find_into(stmt)
        if into is not None:
            if into.rel.relpersistence == "t":
                return _forbid("temporary tables would outlive the call on a pooled connection")
            return Classification(effect=Effect.WRITE, reason=f"SELECT ... INTO creates table {_show(into.rel)}",
                                  summary=f"SELECT INTO {_show(into.rel)}",
                                  detail={"op": "create", "type": "table", **_rel(into.rel)})
        # A plain SELECT is read through a server-side cursor, so that only what is returned is fetched.
        return Classification(effect=Effect.READ, reason="reads only", summary="SELECT",
                              detail={"op": "read", "cursor": True})
    if _is(stmt, ast.VariableShowStmt):
        return Classification(effect=Effect.READ, reason="SHOW reads a setting", summary="SHOW", detail={"op": "read"})
    if _is(stmt, ast.ExplainStmt):
        analyze = any(isinstance(o, ast.DefElem) and o.defname == "analyze" for o in stmt.options or ())
        if analyze:
            inner = _classify_statement(stmt.query)
            if inner.effect is not Effect.READ:
                return _forbid(f"EXPLAIN ANALYZE executes the statement, and this one is a {inner.effect.value} "
                               f"({inner.reason}); use EXPLAIN without ANALYZE")
        return Classification(effect=Effect.READ, reason="EXPLAIN plans without running", summary="EXPLAIN",
                              detail={"op": "read"})
    if _is(stmt, _DML):
        return _classify_dml(stmt)
    if _is(stmt, ast.DropStmt) and not stmt.concurrent:
        return _classify_drop(stmt)
    if _is(stmt, ast.DropdbStmt):
        return Classification(effect=Effect.IRREVERSIBLE, reason=f"DROP DATABASE {stmt.dbname} cannot be undone",
                              summary=f"DROP DATABASE {stmt.dbname}", detail={"op": "autocommit"})
    if _is(stmt, ast.TruncateStmt):
        rels = [_rel(r) for r in stmt.relations]
        shown = ", ".join(_show(r) for r in stmt.relations)
        if stmt.restart_seqs or stmt.behavior == enums.DropBehavior.DROP_CASCADE:
            return Classification(effect=Effect.IRREVERSIBLE, reason=f"TRUNCATE {shown} with CASCADE or RESTART "
                                  "IDENTITY: what else it empties or resets is not kept", summary=f"TRUNCATE {shown}",
                                  detail={"op": "plain"})
        return Classification(effect=Effect.DESTRUCTIVE, reason=f"TRUNCATE {shown} (the old rows are kept restorable)",
                              summary=f"TRUNCATE {shown}", detail={"op": "truncate", "tables": rels})
    if _is(stmt, ast.CreateStmt):
        if stmt.relation.relpersistence == "t":
            return _forbid("temporary tables would outlive the call on a pooled connection")
        if stmt.inhRelations or stmt.partbound is not None:
            # Undo could only move it to the trash, where it would stay attached to its parent.
            return Classification(effect=Effect.IRREVERSIBLE, reason=f"CREATE TABLE {_show(stmt.relation)} as a "
                                  "child or partition of another table: no compensation is recorded",
                                  summary=f"CREATE TABLE {_show(stmt.relation)}", detail={"op": "plain"})
        return Classification(effect=Effect.WRITE, reason=f"CREATE TABLE {_show(stmt.relation)}",
                              summary=f"CREATE TABLE {_show(stmt.relation)}",
                              detail={"op": "create", "type": "table", **_rel(stmt.relation)})
    if _is(stmt, ast.CreateTableAsStmt):
        if stmt.into.rel.relpersistence == "t":
            return _forbid("temporary tables would outlive the call on a pooled connection")
        if stmt.objtype == enums.ObjectType.OBJECT_TABLE:
            return Classification(effect=Effect.WRITE, reason=f"CREATE TABLE {_show(stmt.into.rel)} AS",
                                  summary=f"CREATE TABLE {_show(stmt.into.rel)} AS",
                                  detail={"op": "create", "type": "table", **_rel(stmt.into.rel)})
        return Classification(effect=Effect.IRREVERSIBLE, reason="CREATE MATERIALIZED VIEW: no compensation is "
                              "recorded", summary="CREATE MATERIALIZED VIEW", detail={"op": "plain"})
    if _is(stmt, ast.ViewStmt) and not stmt.replace:
        if stmt.view.relpersistence == "t":
            return _forbid("temporary views would outlive the call on a pooled connection")
        return Classification(effect=Effect.WRITE, reason=f"CREATE VIEW {_show(stmt.view)}",
                              summary=f"CREATE VIEW {_show(stmt.view)}",
                              detail={"op": "create", "type": "view", **_rel(stmt.view)})
    if _is(stmt, (ast.IndexStmt, ast.DropStmt)) and getattr(stmt, "concurrent", False):
        # CONCURRENTLY cannot run inside a transaction: it runs on its own, unmeasured and unjournaled.
        return Classification(effect=Effect.IRREVERSIBLE, reason=f"{kind.removesuffix('Stmt')} CONCURRENTLY runs "
                              "outside a transaction: it cannot be measured, journaled or undone",
                              summary=f"{kind.removesuffix('Stmt')} CONCURRENTLY", detail={"op": "autocommit"})
    if _is(stmt, ast.IndexStmt) and stmt.idxname and not stmt.if_not_exists:
        return Classification(effect=Effect.WRITE, reason=f"CREATE INDEX {stmt.idxname}",
                              summary=f"CREATE INDEX {stmt.idxname}",
                              detail={"op": "create", "type": "index", "schema": stmt.relation.schemaname,
                                      "name": stmt.idxname})
    if kind in _IRREVERSIBLE_DDL or _is(stmt, (ast.ViewStmt, ast.IndexStmt)):
        return Classification(effect=Effect.IRREVERSIBLE, reason=f"{kind.removesuffix('Stmt')}: schema change with no "
                              "compensation recorded", summary=kind.removesuffix("Stmt"), detail={"op": "plain"})
    return _forbid(f"{kind.removesuffix('Stmt')} statements are not supported by safe-mcp")


def _find_into(stmt: Any) -> Any:
    if getattr(stmt, "intoClause", None) is not None:
        return stmt.intoClause
    for side in (getattr(stmt, "larg", None), getattr(stmt, "rarg", None)):
        if side is not None and (found := _find_into(side)) is not None:
            return found
    return None


def _classify_dml(stmt: Any) -> Classification:
    rel = stmt.relation
    verb = type(stmt).__name__.removesuffix("Stmt").upper()
    summary = f"{verb} on {_show(rel)}"
    if _has_nested_dml(stmt):
        return Classification(effect=Effect.IRREVERSIBLE, reason=f"{summary} with a writable CTE: safe-mcp cannot "
                              "take its before-images", summary=summary, detail={"op": "plain"})
    if _is(stmt, ast.MergeStmt):
        return Classification(effect=Effect.IRREVERSIBLE, reason=f"{summary}: no before-images are taken for MERGE",
                              summary=summary, detail={"op": "plain"})
    detail: dict[str, Any] = {"op": verb.lower(), **_rel(rel)}
    if _is(stmt, ast.InsertStmt):
        conflict = stmt.onConflictClause
        if conflict is not None and conflict.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
            return Classification(effect=Effect.IRREVERSIBLE, reason=f"{summary} ON CONFLICT DO UPDATE: the rows it "
                                  "overwrites are not captured", summary=summary, detail={"op": "plain"})
        return Classification(effect=Effect.WRITE, reason=summary, summary=summary, detail=detail)
    if stmt.whereClause is None:
        return Classification(effect=Effect.DESTRUCTIVE, reason=f"{verb} without WHERE on {_show(rel)}",
                              summary=summary, detail=detail)
    return Classification(effect=Effect.WRITE, reason=summary, summary=summary, detail=detail)


def _classify_drop(stmt: Any) -> Classification:
    kind = enums.ObjectType(stmt.removeType).name.removeprefix("OBJECT_")
    if kind == "TABLE":
        tables = []
        for obj in stmt.objects:
            parts = _names(obj)
            tables.append({"schema": parts[0] if len(parts) > 1 else None, "name": parts[-1]})
        shown = ", ".join(f"{t['schema']}.{t['name']}" if t["schema"] else str(t["name"]) for t in tables)
        return Classification(effect=Effect.DESTRUCTIVE, reason=f"DROP TABLE {shown} (moved to the trash: undo "
                              "restores it)", summary=f"DROP TABLE {shown}",
                              detail={"op": "drop_table", "tables": tables, "missing_ok": bool(stmt.missing_ok)})
    cascade = " CASCADE" if stmt.behavior == enums.DropBehavior.DROP_CASCADE else ""
    return Classification(effect=Effect.IRREVERSIBLE, reason=f"DROP {kind}{cascade}: no compensation exists",
                          summary=f"DROP {kind}{cascade}", detail={"op": "plain"})
