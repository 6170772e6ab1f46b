"""The database file's own state: missing, locked, or left with a hot journal by a crashed writer.

None of these is the statement's fault, so each is a `TargetUnavailable` that says what the state is
and what to check, never "fix the statement".
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from safe_mcp.errors import TargetUnavailable

# Extended result codes that describe the file or the engine, not the statement.
_STATE = {
    "SQLITE_BUSY": "the database is locked by another connection that is writing",
    "SQLITE_LOCKED": "the database is locked by another connection that is writing",
    "SQLITE_READONLY_ROLLBACK": "a writer crashed and left a hot journal that must be rolled back first",
    "SQLITE_READONLY_RECOVERY": "the write-ahead log needs recovery by a writer first",
    "SQLITE_READONLY_CANTINIT": "the write-ahead log's shared memory cannot be set up read-only",
    "SQLITE_READONLY_DIRECTORY": "the database's folder is not writable, so its journal cannot be rolled back",
    "SQLITE_IOERR": "the database file cannot be read or written (I/O error)",
    "SQLITE_CORRUPT": "the database file is damaged",
    "SQLITE_NOTADB": "the file is not an SQLite database",
    "SQLITE_CANTOPEN": "the database file cannot be opened",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_PROTOCOL": "the database's locking protocol failed",
}


def state_error(exc: sqlite3.Error, target: str, path: Path) -> TargetUnavailable | None:
    """The `TargetUnavailable` for an engine-state error, or None when the statement itself is at fault."""
    code = getattr(exc, "sqlite_errorname", "") or ""
    for prefix, what in _STATE.items():
        if code == prefix or code.startswith(prefix + "_"):
            if prefix in {"SQLITE_BUSY", "SQLITE_LOCKED"}:
                remedy = "retry in a moment; if it lasts, find the process that holds the database open for writing"
            else:
                remedy = f"check the file {path} of target {target!r} ({code}); nothing was run"
            return TargetUnavailable(f"{what} ({path})", remedy)
    return None


def check_file(target: str, path: Path, setting: str) -> None:
    """
    Raises:
        TargetUnavailable: the database file does not exist.
    """
    if not path.exists():
        raise TargetUnavailable(
            f"the database file {path} of target {target!r} does not exist",
            f"create it, or correct the `path` key of [targets.{target}] (now {setting!r}, relative to the "
            "config file's folder); nothing was run")


def roll_back_hot_journal(target: str, path: Path, timeout_s: float) -> None:
    """Roll back the journal a killed writer left, so the read-only connection can read again.

    A read-only connection cannot roll a hot journal back and fails on every call until a writer does;
    SQLite rolls it back on the first read of a read-write connection (and leaves the journal of a live
    writer alone, since that writer still holds its lock).

    Raises:
        TargetUnavailable: the journal could not be rolled back (locked, or the file is not writable).
    """
    journal = Path(str(path) + "-journal")
    try:
        if journal.stat().st_size == 0:
            return
    except OSError:
        return  # no journal: the common case, one stat() per call
    try:
        with closing(sqlite3.connect(path, timeout=timeout_s, isolation_level=None)) as conn:
            conn.execute("SELECT count(*) FROM main.sqlite_schema").fetchone()
    except sqlite3.Error as exc:
        busy = state_error(exc, target, path)
        if busy is not None and str(getattr(exc, "sqlite_errorname", "")).startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            raise busy from None  # a live writer holds it: its journal is not hot
        raise TargetUnavailable(
            f"a writer left a journal ({journal}) that could not be rolled back: {exc}",
            "make the database file and its folder writable by safe-mcp (or open it once with a read-write "
            "sqlite3), then retry; nothing was run") from None
