"""Classification from SQLite itself: the authorizer's actions and the compiled bytecode.

`EXPLAIN <stmt>` compiles the statement (calling the authorizer for every action,
trigger bodies included) without executing it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safe_mcp.adapter import Classification
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError
from safe_mcp_sqlite.statement import DETERMINISTIC

# sqlite3 action codes (sqlite3.h); Python exposes some but not all of them.
ACTIONS = (
    "COPY", "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER",
    "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE", "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX",
    "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW", "INSERT", "PRAGMA",
    "READ", "SELECT", "TRANSACTION", "UPDATE", "ATTACH", "DETACH", "ALTER_TABLE", "REINDEX", "ANALYZE", "CREATE_VTABLE",
    "DROP_VTABLE", "FUNCTION", "SAVEPOINT", "RECURSIVE",
)

SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master", "sqlite_schema", "sqlite_temp_schema"})
INTERNAL_PREFIX = "_safe_mcp_"

# Functions that reach outside the database or the process.
FORBIDDEN_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit", "sqlar_compress",
                                 "sqlar_uncompress", "zipfile", "fsdir", "lsmode"})

# Pragmas that only report. Any pragma given a value, or not listed, is forbidden.
READ_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "foreign_key_check", "integrity_check", "quick_check", "database_list", "collation_list", "function_list",
    "module_list", "pragma_list", "compile_options", "user_version", "schema_version", "application_id",
    "page_count", "page_size", "freelist_count", "encoding", "foreign_keys", "data_version",
})
# Read pragmas whose argument names an object rather than setting a value.
ARG_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                         "foreign_key_list", "foreign_key_check", "table_list", "integrity_check", "quick_check"})

# Actions whose first argument names a table (the second is a column).
_TABLE_FIRST = frozenset({"DELETE", "INSERT", "READ", "UPDATE"})
# Actions whose first argument names the object and the second its table.
_OBJECT_TABLE = frozenset({"CREATE_INDEX", "CREATE_TABLE", "CREATE_TRIGGER", "CREATE_VIEW", "DROP_INDEX", "DROP_TABLE",
                           "DROP_TRIGGER", "DROP_VIEW"})


def internal(name: str | None) -> bool:
    """True for names safe-mcp keeps for itself (SQLite folds ASCII case, so must we)."""
    return name is not None and name.lower().startswith(INTERNAL_PREFIX)


def names_internal(action: str, a1: str | None, a2: str | None) -> bool:
    """True when an authorizer action reaches one of safe-mcp's own objects (journal, trash, capture)."""
    if action in _TABLE_FIRST:
        return internal(a1)
    if action in _OBJECT_TABLE:
        return internal(a1) or internal(a2)
    if action == "ALTER_TABLE":
        return internal(a2)
    if action == "PRAGMA":
        return internal(a2)
    return False


_FRESH_SCHEMA = "SELECT 1 FROM main.sqlite_schema LIMIT 0"

_EXPLAIN_NESTED = re.compile(r'near "explain": syntax error', re.IGNORECASE)


@dataclass
class Actions:
    """What the authorizer reported while the statement compiled."""

    top: list[tuple[str, str | None, str | None, str | None]] = field(default_factory=list)
    inner: list[tuple[str, str | None, str | None, str | None, str]] = field(default_factory=list)
    opcodes: set[str] = field(default_factory=set)


def collect(conn: sqlite3.Connection, sql: str, params: Any,
            state: Callable[[sqlite3.Error], AdapterError | None] = lambda exc: None) -> Actions:
    """Compile `sql` under a recording authorizer without running it. `state` turns an error about the
    database's own state (locked, hot journal, damaged) into the error to raise instead.

    Raises:
        AdapterError: more than one statement, a syntax error, or wrong parameters.
        TargetUnavailable: from `state`; the statement may be fine.
    """
    acts = Actions()

    def record(code: int, a1: str | None, a2: str | None, db: str | None, trig: str | None) -> int:
        name = ACTIONS[code] if 0 <= code < len(ACTIONS) else f"CODE{code}"
        if trig is None:
            acts.top.append((name, a1, a2, db))
        else:
            acts.inner.append((name, a1, a2, db, trig))
        return sqlite3.SQLITE_OK

    try:
        # An EXPLAIN never checks the schema cookie, so a connection kept across calls would compile against
        # the schema it loaded first: a trigger added since (by any process) would go unseen. A real read of
        # the schema table checks the cookie and reloads a changed schema (and expires old statements).
        conn.execute(_FRESH_SCHEMA).fetchall()
        conn.set_authorizer(record)
        cur = conn.execute("EXPLAIN " + sql, params if params is not None else ())
        # The bytecode matters only where the authorizer cannot tell: a DELETE without WHERE ("Clear")
        # and statements it never sees (VACUUM). Reading it costs as much as the rest of classifying.
        if not acts.top or any(a[0] == "DELETE" for a in acts.top):
            acts.opcodes = {row[1] for row in cur.fetchall()}
        cur.close()
    except sqlite3.ProgrammingError as exc:
        text = str(exc)
        if "one statement at a time" in text:
            raise AdapterError(
                "only one SQL statement per call is allowed; send the others as separate calls"
            ) from None
        raise AdapterError(f"bad parameters: {text}") from None
    except sqlite3.OperationalError as exc:
        unavailable = state(exc)
        if unavailable is not None:
            raise unavailable from None
        if _EXPLAIN_NESTED.search(str(exc)):
            acts.opcodes = {"__explain__"}
            return acts
        hint = "; the sql_schema tool lists the tables and columns" if "no such" in str(exc) else ""
        raise AdapterError(f"sqlite rejected the statement: {exc}{hint}") from None
    except sqlite3.Warning as exc:
        raise AdapterError(f"sqlite rejected the statement: {exc}") from None
    except sqlite3.DatabaseError as exc:
        unavailable = state(exc)
        if unavailable is not None:
            raise unavailable from None
        raise AdapterError(f"sqlite rejected the statement: {exc}") from None
    finally:
        conn.set_authorizer(None)
    return acts


def classify_actions(acts: Actions) -> Classification:
    """Map authorizer actions to an effect. Anything not recognised is forbidden."""
    if acts.opcodes == {"__explain__"}:
        return Classification(effect=Effect.READ, reason="EXPLAIN compiles a statement without running it",
                              summary="EXPLAIN", detail={"op": "read"})
    every = [a[:4] for a in acts.top] + [a[:4] for a in acts.inner]
    names = {a[0] for a in every}

    def forbid(why: str) -> Classification:
        return Classification(effect=Effect.FORBIDDEN, reason=why, detail={"op": "forbidden"})

    if "Vacuum" in acts.opcodes:
        return forbid("VACUUM (and VACUUM INTO, which writes a copy of the database to a file)")
    if names & {"ATTACH", "DETACH"}:
        return forbid("ATTACH/DETACH reach other database files")
    if names & {"TRANSACTION", "SAVEPOINT"}:
        return forbid("transaction control: safe-mcp runs each call as its own transaction")
    if names & {"CREATE_VTABLE", "DROP_VTABLE"}:
        return forbid("virtual tables can reach outside the database")
    if names & {"CREATE_TEMP_TRIGGER", "CREATE_TEMP_TABLE", "CREATE_TEMP_VIEW", "CREATE_TEMP_INDEX",
                "DROP_TEMP_TRIGGER", "DROP_TEMP_TABLE", "DROP_TEMP_VIEW", "DROP_TEMP_INDEX"}:
        return forbid("temporary schema objects (they would outlive the call on safe-mcp's connection)")
    if any(n in {"INSERT", "DELETE"} and (db == "temp" or a1 in {"sqlite_temp_master", "sqlite_temp_schema"})
           for n, a1, _a2, db in every):
        # `CREATE TRIGGER temp.t ...` is reported as a main CREATE_TRIGGER plus a write to the temp schema.
        return forbid("temporary schema objects (they would outlive the call on safe-mcp's connection)")
    if names & {"REINDEX", "ANALYZE", "COPY"} and not names & {"CREATE_INDEX"}:
        return forbid("maintenance statements are not run through safe-mcp")
    for name, a1, a2, _db in every:
        if name == "FUNCTION" and (a2 or "").lower() in FORBIDDEN_FUNCTIONS:
            return forbid(f"function {a2}() reaches outside the database")
        if name == "PRAGMA":
            pragma = (a1 or "").lower()
            if pragma not in READ_PRAGMAS:
                return forbid(f"PRAGMA {pragma} can change how the database behaves")
            if a2 is not None and pragma not in ARG_PRAGMAS:
                return forbid(f"PRAGMA {pragma} = {a2} writes a setting")
        if names_internal(name, a1, a2):
            return forbid(f"{a2 if name in {'ALTER_TABLE', 'PRAGMA'} else a1} is safe-mcp's own (its journal and "
                          "trash); undo restores what is kept there")
    if not every:
        return forbid("SQLite reports no action for this statement (does the object it names exist?)")

    top_names = {a[0] for a in acts.top}
    user_writes = sorted({a1 for n, a1, _a2, db in every
                          if n in {"INSERT", "UPDATE", "DELETE"} and a1 and a1 not in SCHEMA_TABLES
                          and db in (None, "main")})
    if "DROP_TABLE" in top_names:
        table = next(a1 for n, a1, _a2, _db in acts.top if n == "DROP_TABLE")
        return Classification(effect=Effect.DESTRUCTIVE, reason=f"DROP TABLE {table} (kept restorable: soft drop)",
                              summary=f"DROP TABLE {table}", detail={"op": "drop_table", "table": table},
                              compensable=True)
    if "ALTER_TABLE" in top_names:
        table = next(a2 for n, _a1, a2, _db in acts.top if n == "ALTER_TABLE")
        return Classification(effect=Effect.IRREVERSIBLE, reason=f"ALTER TABLE {table}: no compensation is recorded",
                              summary=f"ALTER TABLE {table}", detail={"op": "irreversible"})
    for verb, kind in (("CREATE_TRIGGER", "trigger"), ("CREATE_VIEW", "view")):
        if verb in top_names:
            # Code that runs later (a trigger) or that other code reads (a view): what it did before an
            # undo cannot be taken back, so creating one is irreversible.
            obj = next(a1 for n, a1, _a2, _db in acts.top if n == verb)
            return Classification(effect=Effect.IRREVERSIBLE,
                                  reason=f"CREATE {kind.upper()} {obj}: "
                                         + ("it runs on later writes" if kind == "trigger" else "other code reads it")
                                         + ", and what it did then cannot be undone",
                                  summary=f"CREATE {kind.upper()} {obj}", detail={"op": "irreversible"})
    for verb, kind in (("CREATE_TABLE", "table"), ("CREATE_INDEX", "index")):
        if verb in top_names:
            obj = next(a1 for n, a1, _a2, _db in acts.top if n == verb)
            return Classification(effect=Effect.WRITE, reason=f"CREATE {kind.upper()} {obj}",
                                  summary=f"CREATE {kind.upper()} {obj}",
                                  detail={"op": "create", "type": kind, "name": obj, "tables": user_writes},
                                  compensable=True)
    for verb, kind in (("DROP_INDEX", "index"), ("DROP_VIEW", "view"), ("DROP_TRIGGER", "trigger")):
        if verb in top_names:
            obj = next(a1 for n, a1, _a2, _db in acts.top if n == verb)
            # Without its trigger or view, code that relied on it behaves differently until undo.
            effect = Effect.WRITE if kind == "index" else Effect.DESTRUCTIVE
            return Classification(effect=effect, reason=f"DROP {kind.upper()} {obj} (its definition is kept; undo "
                                                        "restores it)",
                                  summary=f"DROP {kind.upper()} {obj}", detail={"op": "drop_object", "type": kind,
                                                                              "name": obj}, compensable=True)
    dml = [(n, a1) for n, a1, _a2, db in acts.top if n in {"INSERT", "UPDATE", "DELETE"} and a1 not in SCHEMA_TABLES]
    if dml:
        verbs = sorted({n for n, _ in dml})
        tables = sorted({t for _, t in dml if t})
        summary = f"{'/'.join(verbs)} on {', '.join(tables)}"
        if "DELETE" in verbs and "Clear" in acts.opcodes:
            return Classification(effect=Effect.DESTRUCTIVE, reason=f"DELETE without WHERE on {', '.join(tables)}",
                                  summary=summary, detail={"op": "dml", "tables": user_writes, "verbs": verbs},
                                  compensable=True)
        detail: dict[str, Any] = {"op": "dml", "tables": user_writes, "verbs": verbs}
        plain = _plain_update(acts) if verbs == ["UPDATE"] else None
        if plain is not None:
            detail["plain_update"] = plain
        return Classification(effect=Effect.WRITE, reason=summary, summary=summary, detail=detail, compensable=True)
    writes = names & {"INSERT", "UPDATE", "DELETE", "CREATE_TABLE", "CREATE_INDEX", "CREATE_VIEW", "CREATE_TRIGGER",
                      "DROP_TABLE", "DROP_INDEX", "DROP_VIEW", "DROP_TRIGGER", "ALTER_TABLE"}
    schema_bookkeeping = all(a1 in SCHEMA_TABLES for n, a1, _a2, _db in every if n in writes)
    if writes and not schema_bookkeeping:
        return forbid(f"unrecognised write ({', '.join(sorted(writes))})")
    if names <= {"SELECT", "READ", "FUNCTION", "RECURSIVE", "PRAGMA", "UPDATE", "INSERT"}:
        return Classification(effect=Effect.READ, reason="reads only", summary="SELECT", detail={"op": "read"})
    return forbid(f"unrecognised statement ({', '.join(sorted(names))})")


def _plain_update(acts: Actions) -> dict[str, Any] | None:
    """{"table", "columns"} when the statement only updates columns of one main table, reading nothing but
    that table's columns and calling only deterministic built-ins, with no trigger body compiled: what
    statement-level capture needs of the engine (safe_mcp_sqlite.statement checks the text)."""
    if acts.inner:
        return None
    tables: set[str] = set()
    columns: set[str] = set()
    for name, a1, a2, db in acts.top:
        if name in {"UPDATE", "READ"}:
            if db != "main" or a1 is None or a1 in SCHEMA_TABLES or internal(a1):
                return None
            tables.add(a1)
            if name == "UPDATE":
                if not a2:
                    return None
                columns.add(a2)
        elif name != "FUNCTION" or (a2 or "").lower() not in DETERMINISTIC:
            return None
    if len(tables) != 1 or not columns:
        return None
    return {"table": next(iter(tables)), "columns": sorted(columns)}
