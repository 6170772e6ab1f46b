"""The target's own record of what safe-mcp wrote: one row per intent, committed with the write.

A process that dies after COMMIT but before the gate records the outcome leaves the intent here, with
its compensation; one that dies before COMMIT leaves nothing (SQLite rolls the write and its journal row
back together). `reconcile` answers from this table. Agent statements can never reach it (see guard.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from safe_mcp_sqlite.classify import INTERNAL_PREFIX

JOURNAL = INTERNAL_PREFIX + "journal"

_CREATE = (f"CREATE TABLE IF NOT EXISTS main.{JOURNAL} (intent_id TEXT PRIMARY KEY, at REAL NOT NULL, "
           "tool TEXT NOT NULL, affected INTEGER NOT NULL, summary TEXT NOT NULL, compensation TEXT)")


def ensure(conn: sqlite3.Connection) -> None:
    """Create the journal if it is missing; inside the caller's write transaction."""
    conn.execute(_CREATE)


def record(conn: sqlite3.Connection, intent_id: str, tool: str, affected: int, summary: str,
           compensation: dict[str, Any] | None) -> None:
    """Journal `intent_id` in the caller's transaction, so it commits or rolls back with the write."""
    conn.execute(f"INSERT INTO main.{JOURNAL} (intent_id, at, tool, affected, summary, compensation) "
                 "VALUES (?, ?, ?, ?, ?, ?)",
                 (intent_id, time.time(), tool, affected, summary,
                  None if compensation is None else json.dumps(compensation, separators=(",", ":"))))


def lookup(conn: sqlite3.Connection, intent_id: str) -> tuple[int, str, dict[str, Any] | None] | None:
    """(affected, summary, compensation) journaled for `intent_id`, or None when it never committed."""
    exists = conn.execute("SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?", (JOURNAL,)).fetchone()
    if exists is None:
        return None
    row = conn.execute(f"SELECT affected, summary, compensation FROM main.{JOURNAL} WHERE intent_id = ?",
                       (intent_id,)).fetchone()
    if row is None:
        return None
    comp = json.loads(row[2]) if row[2] is not None else None
    return int(row[0]), str(row[1]), comp
