"""The undo journal inside the target: each write's intent id, with its compensation and row images,
committed in the same transaction as the write.

It lets the gate ask after a crash whether a write committed (`reconcile`), and it keeps the
before-images server-side: they never travel to safe-mcp and back. Agent statements cannot name
the schema (see classify.RESERVED).
"""

from __future__ import annotations

import json
import random
from typing import Any

import psycopg

from safe_mcp.errors import AdapterError
from safe_mcp_postgres.classify import JOURNAL_SCHEMA
from safe_mcp_postgres.engine import qi

__all__ = ["TABLE", "ensure", "exists", "lookup", "prune", "record"]

TABLE = f"{qi(JOURNAL_SCHEMA)}.journal"

_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
  intent_id text PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  kind text NOT NULL,
  affected bigint NOT NULL,
  compensation jsonb,
  old text[],
  new text[]
)
"""
# About one write in this many prunes journal rows older than journal_keep_days: cheap, and bounded.
_PRUNE_ONE_IN = 50


def exists(conn: psycopg.Connection[Any]) -> bool:
    """Whether the journal table exists (asked of the catalog, so no privilege on it is needed)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = $1 AND c.relname = 'journal')", [JOURNAL_SCHEMA]).fetchone()
    return bool(row and row[0])


def ensure(conn: psycopg.Connection[Any]) -> str | None:
    """Make the journal exist in the caller's transaction; None when it is ready, else why it cannot be.

    Created inside the write's own transaction, so a preview (rolled back) leaves no trace.
    """
    row = conn.execute("SELECT n.oid IS NOT NULL, coalesce(has_schema_privilege(n.oid, 'USAGE'), false), "
                       "c.oid IS NOT NULL, coalesce(has_table_privilege(c.oid, 'SELECT, INSERT, DELETE'), false) "
                       "FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = $1 "
                       "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'journal'",
                       [JOURNAL_SCHEMA]).fetchone()
    assert row is not None
    schema, usable, table, writable = row
    remedy = (f"the role cannot {{}} safe-mcp's undo journal {TABLE}; a human can run "
              f"CREATE SCHEMA {JOURNAL_SCHEMA} AUTHORIZATION <the target's role> (or grant it the journal)")
    if table or (schema and not usable):
        return None if usable and writable else remedy.format("write to")
    try:
        with conn.transaction():
            if not schema:
                conn.execute(f"CREATE SCHEMA {qi(JOURNAL_SCHEMA)}")
            conn.execute(_DDL)
            conn.execute(f"CREATE INDEX IF NOT EXISTS journal_at ON {TABLE} (at)")
            _fast_compression(conn)
    except psycopg.errors.InsufficientPrivilege:
        return remedy.format("create")
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateSchema):
        # another session created it at the same moment; its commit is visible to the next write
        return "the undo journal was being created by another session; retry"
    return None


def _fast_compression(conn: psycopg.Connection[Any]) -> None:
    """Row images compress with lz4 where the server has it: a 10,000-row write journals about 1 MB, and
    pglz spends most of the journal's cost on it. Servers without lz4 keep the default."""
    try:
        with conn.transaction():
            conn.execute(f"ALTER TABLE {TABLE} ALTER COLUMN old SET COMPRESSION lz4, "
                         "ALTER COLUMN new SET COMPRESSION lz4")
    except (psycopg.errors.FeatureNotSupported, psycopg.errors.SyntaxError):
        pass


def record(conn: psycopg.Connection[Any], intent_id: str | None, kind: str, affected: int,
           compensation: dict[str, Any] | None) -> None:
    """Journal a write (or an undo) that carries no row images, in the caller's transaction."""
    if intent_id is None:
        return
    conn.execute(f"INSERT INTO {TABLE} (intent_id, kind, affected, compensation) VALUES ($1, $2, $3, $4::jsonb)",
                 [intent_id, kind, affected, None if compensation is None else json.dumps(compensation)])


def prune(conn: psycopg.Connection[Any], keep_days: int) -> None:
    """Now and then, drop journal rows older than `keep_days` (their undo is then no longer possible)."""
    if random.randrange(_PRUNE_ONE_IN) == 0:
        conn.execute(f"DELETE FROM {TABLE} WHERE at < now() - make_interval(days => $1)", [keep_days])


def lookup(conn: psycopg.Connection[Any], intent_id: str) -> tuple[str, int, dict[str, Any] | None] | None:
    """(kind, affected, compensation) journaled for `intent_id`, or None.

    Raises:
        AdapterError: there is no journal, so nothing can be said.
    """
    if not exists(conn):
        raise AdapterError(f"there is no undo journal ({TABLE}) in this database")
    row = conn.execute(f"SELECT kind, affected, compensation FROM {TABLE} WHERE intent_id = $1",
                       [intent_id]).fetchone()
    if row is None:
        return None
    return str(row[0]), int(row[1]), row[2]
