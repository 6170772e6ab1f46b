"""Engine-side guards on the write connection: what an agent statement may touch, checked by SQLite itself.

The classifier decides from the same authorizer actions, but on another connection and before anything
runs; these guards hold while the statement (and every trigger it fires) actually compiles, so a statement
that reads one way and does another is stopped anyway. safe-mcp's own objects (the journal, the trash, the
capture tables) are unreachable from any agent statement, by any spelling, directly or through a trigger or
a view; after every agent statement the set of safe-mcp's objects must be exactly as before.
"""

from __future__ import annotations

import sqlite3

from safe_mcp.errors import AdapterError
from safe_mcp_sqlite.capture import CAPTURE_PREFIX
from safe_mcp_sqlite.classify import (
    ACTIONS,
    ARG_PRAGMAS,
    FORBIDDEN_FUNCTIONS,
    INTERNAL_PREFIX,
    READ_PRAGMAS,
    SCHEMA_TABLES,
    names_internal,
)
from safe_mcp_sqlite.statement import DETERMINISTIC

TRASH_PREFIX = INTERNAL_PREFIX + "trash_"

# Actions an agent statement never performs on the write connection, whatever the classifier said.
_NEVER = frozenset({
    "ATTACH", "DETACH", "TRANSACTION", "SAVEPOINT", "CREATE_VTABLE", "DROP_VTABLE", "REINDEX", "ANALYZE", "COPY",
    "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER", "CREATE_TEMP_VIEW",
    "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW",
})


def read_authorizer(code: int, a1: str | None, a2: str | None, db: str | None, trig: str | None) -> int:
    """The engine-side guard for reads: anything but reading is denied, whatever the text said."""
    name = ACTIONS[code] if 0 <= code < len(ACTIONS) else ""
    if names_internal(name, a1, a2):
        return sqlite3.SQLITE_DENY  # safe-mcp's journal and trash, read directly or through a view
    if name in {"SELECT", "READ", "RECURSIVE"}:
        return sqlite3.SQLITE_OK
    if name == "FUNCTION" and (a2 or "").lower() not in FORBIDDEN_FUNCTIONS:
        return sqlite3.SQLITE_OK
    if name == "PRAGMA" and (a1 or "").lower() in READ_PRAGMAS and (a2 is None or a1 in ARG_PRAGMAS):
        return sqlite3.SQLITE_OK
    if name == "UPDATE" and a1 in SCHEMA_TABLES and trig is None:
        return sqlite3.SQLITE_OK  # schema bookkeeping while compiling; query_only stops any real write
    return sqlite3.SQLITE_DENY


class Guard:
    """The authorizer of the write connection. `agent` is True while an agent statement compiles.

    safe-mcp's own statements (capture, journal, undo) may touch its objects, but a trigger that is not
    safe-mcp's own capture trigger never may, even when one of safe-mcp's statements fires it.
    """

    def __init__(self) -> None:
        self.agent = False
        self.denied: str | None = None
        self.new_indexes: set[str] = set()
        self.confined: tuple[str, str] | None = None
        """(table, journal table) while safe-mcp runs a statement built from an agent's text (statement-level
        capture): it may read that table, call deterministic functions and write that journal table, nothing else."""

    def start(self) -> None:
        """An agent statement begins compiling."""
        self.agent, self.denied = True, None
        self.new_indexes.clear()

    def __call__(self, code: int, a1: str | None, a2: str | None, db: str | None, trig: str | None) -> int:
        name = ACTIONS[code] if 0 <= code < len(ACTIONS) else f"CODE{code}"
        if self.confined is not None:
            table, store = self.confined
            allowed = ((name == "READ" and a1 == table and db == "main" and trig is None)
                       or (name == "INSERT" and a1 == store and db == "main" and trig is None)
                       or name == "SELECT"
                       or (name == "FUNCTION" and ((a2 or "").lower() in DETERMINISTIC or a2 == "count")))
            return sqlite3.SQLITE_OK if allowed else self._deny(f"{name.lower()} in a capture statement")
        ours = trig is not None and trig.lower().startswith(CAPTURE_PREFIX)
        if ours:
            return sqlite3.SQLITE_OK
        if name == "READ" and trig is None and (a1 or "").lower().startswith(TRASH_PREFIX):
            # A foreign key of a live table may point at a dropped (trashed) parent; checking it reads the
            # parent's key. The classifier refuses a statement that reads the trash itself.
            return sqlite3.SQLITE_OK
        if names_internal(name, a1, a2) and (self.agent or trig is not None):
            what = a2 if name in {"ALTER_TABLE", "PRAGMA"} else a1
            return self._deny(f"{what} belongs to safe-mcp (its journal and trash); no statement may touch it")
        if not self.agent:
            return sqlite3.SQLITE_OK
        if name == "CREATE_INDEX" and a1 is not None:
            self.new_indexes.add(a1)
        if name == "REINDEX" and a1 in self.new_indexes:
            return sqlite3.SQLITE_OK  # CREATE INDEX fills the new index with a REINDEX of it
        if name in _NEVER:
            return self._deny(f"{name.lower().replace('_', ' ')} is not allowed through safe-mcp")
        if db == "temp" and (a1 not in SCHEMA_TABLES or name in {"INSERT", "DELETE"}):
            # `CREATE TRIGGER temp.t` reports a main CREATE_TRIGGER and an INSERT into sqlite_temp_master.
            # (A rename rewrites temporary triggers with an UPDATE of it; that one may pass.)
            return self._deny("temporary objects would outlive the call on safe-mcp's connection")
        if name == "FUNCTION" and (a2 or "").lower() in FORBIDDEN_FUNCTIONS:
            return self._deny(f"function {a2}() reaches outside the database")
        if name == "PRAGMA":
            pragma = (a1 or "").lower()
            if pragma not in READ_PRAGMAS or (a2 is not None and pragma not in ARG_PRAGMAS):
                return self._deny(f"PRAGMA {pragma} would change how the connection or database behaves")
        return sqlite3.SQLITE_OK

    def _deny(self, why: str) -> int:
        self.denied = self.denied or why
        return sqlite3.SQLITE_DENY


def internal_objects(conn: sqlite3.Connection) -> set[tuple[str, str, str]]:
    """safe-mcp's objects as (type, name, sql): the journal and every trashed table with its indexes."""
    rows = conn.execute("SELECT type, name, coalesce(sql, '') FROM main.sqlite_schema "
                        "WHERE lower(substr(name, 1, ?)) = ? OR lower(substr(tbl_name, 1, ?)) = ?",
                        (len(INTERNAL_PREFIX), INTERNAL_PREFIX, len(INTERNAL_PREFIX), INTERNAL_PREFIX)).fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def user_code(conn: sqlite3.Connection) -> dict[tuple[str, str], str]:
    """Every other object of the main schema: (type, name) -> sql."""
    rows = conn.execute("SELECT type, name, coalesce(sql, '') FROM main.sqlite_schema "
                        "WHERE lower(substr(name, 1, ?)) <> ?", (len(INTERNAL_PREFIX), INTERNAL_PREFIX)).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def check_untouched(conn: sqlite3.Connection, before_internal: set[tuple[str, str, str]],
                    before_code: dict[tuple[str, str], str]) -> None:
    """After an agent statement, inside its transaction: safe-mcp's objects are as they were, and no new or
    changed object names them more often than before (SQLite authorizes a trigger's or view's body only
    when it runs; a foreign key of a table may already name a trashed parent).

    Raises:
        AdapterError: the statement reached safe-mcp's objects; the caller rolls back.
    """
    if internal_objects(conn) != before_internal:
        raise AdapterError("the statement would create, rename or change one of safe-mcp's own objects "
                           f"(names starting {INTERNAL_PREFIX}); nothing was changed")
    for (kind, name), sql in user_code(conn).items():
        was = before_code.get((kind, name))
        if sql != was and sql.lower().count(INTERNAL_PREFIX) > (was or "").lower().count(INTERNAL_PREFIX):
            raise AdapterError(f"{kind} {name} would refer to safe-mcp's journal or trash "
                               f"(names starting {INTERNAL_PREFIX}); nothing was changed")
