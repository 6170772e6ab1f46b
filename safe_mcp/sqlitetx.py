"""One SQLite write transaction, shared by the state store and adapters that keep files of their own."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["immediate"]


@contextmanager
def immediate(db: sqlite3.Connection, lock: threading.Lock | threading.RLock,
              error: Callable[[sqlite3.Error], Exception]) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT` on `db` under `lock`; rolled back on any exception.

    Holding the write lock from the start keeps concurrent writers (other threads, the CLI in
    another process) strictly one after the other.

    Raises:
        Exception: `error(exc)` when SQLite fails; whatever the body raised otherwise.
    """
    with lock:
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise error(exc) from None
