"""The target's own record of what safe-mcp wrote: one row per intent, committed with the write.

A process that dies after COMMIT but before the gate records the outcome leaves the intent here, with
its compensation; one that dies before COMMIT leaves nothing (SQLite rolls the write and its journal row
back together). `reconcile` answers from this table. Agent statements can never reach it (see guard.py).

Before-images are kept `journal_keep_days`: then a write prunes them (the rows of deleted and updated data
leave the file's journal tables), and the entry stays as a small tombstone, so that `reconcile` still knows
the write ran and undo says why it cannot.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from safe_mcp_sqlite.classify import INTERNAL_PREFIX

JOURNAL = INTERNAL_PREFIX + "journal"
PRUNED = INTERNAL_PREFIX + "journal_pruned"
"""One row: the journal rowid up to which entries older than the keep time were pruned."""
PRUNED_OP = "pruned"
_DAY = 86400.0

_CREATE = (f"CREATE TABLE IF NOT EXISTS main.{JOURNAL} (intent_id TEXT PRIMARY KEY, at REAL NOT NULL, "
           "tool TEXT NOT NULL, affected INTEGER NOT NULL, summary TEXT NOT NULL, compensation TEXT)")


def ensure(conn: sqlite3.Connection) -> None:
    """Create the journal if it is missing; inside the caller's write transaction."""
    conn.execute(_CREATE)
    conn.execute(f"CREATE TABLE IF NOT EXISTS main.{PRUNED} (through INTEGER NOT NULL)")


def prune(conn: sqlite3.Connection, keep_days: int, now: float | None = None) -> int:
    """In the caller's write transaction: when the oldest entry not yet pruned is a day past `keep_days`,
    delete the before-images of every entry older than `keep_days` from the journal tables and leave each
    entry as a tombstone (`{"op": "pruned"}`). About once a day of writing; otherwise one indexed lookup.
    Soft-dropped tables are not touched (their entry keeps pointing at them). Returns the entries pruned."""
    now = time.time() if now is None else now
    cutoff = now - keep_days * _DAY
    through_row = conn.execute(f"SELECT through FROM main.{PRUNED}").fetchone()
    through = 0 if through_row is None else int(through_row[0])
    first = conn.execute(f"SELECT at FROM main.{JOURNAL} WHERE rowid > ? ORDER BY rowid LIMIT 1", (through,)).fetchone()
    if first is None or first[0] >= cutoff - _DAY:
        return 0
    pruned, last = 0, through
    for rowid, at, comp_text in conn.execute(f"SELECT rowid, at, compensation FROM main.{JOURNAL} WHERE rowid > ? "
                                             "ORDER BY rowid", (through,)).fetchall():
        if at >= cutoff:
            break  # entries are in the order they were written: the rest are younger
        last = rowid
        comp = json.loads(comp_text) if comp_text is not None else None
        if not isinstance(comp, dict) or comp.get("op") != "journal":
            continue
        for cap in comp.get("captures", []):
            conn.execute(f'DELETE FROM main."{cap["store"]}" WHERE seq > ? AND seq <= ?', (cap["after"], cap["upto"]))
        conn.execute(f"UPDATE main.{JOURNAL} SET compensation = ? WHERE rowid = ?",
                     (json.dumps({"op": PRUNED_OP, "at": now, "keep_days": keep_days}, separators=(",", ":")), rowid))
        pruned += 1
    if through_row is None:
        conn.execute(f"INSERT INTO main.{PRUNED} (through) VALUES (?)", (last,))
    else:
        conn.execute(f"UPDATE main.{PRUNED} SET through = ?", (last,))
    return pruned


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
