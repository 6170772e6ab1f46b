"""A shop database, configs with hooks, and a runtime on them: the real gate, state store and SQLite."""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from support import write_config

from safe_mcp.adapter import Call
from safe_mcp.gate.calls import Caller
from safe_mcp.gate.runtime import Runtime
from safe_mcp.state.receipts import Receipt
from safe_mcp.trust.config import load_config

ORDERS = [(1, "tea", 3), (2, "cups", 12), (3, "pot", 1)]
CALLER = Caller(session="sess-hooks", client="pytest")


def make_shop(directory: Path) -> Path:
    db = directory / "shop.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, qty INTEGER)")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", ORDERS)
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes VALUES (1, 'keep')")
    return db


def shop_config(directory: Path, hooks: str) -> Path:
    """A read-write sqlite target `shop` (destructive statements run without a confirmation) with `hooks`."""
    make_shop(directory)
    return write_config(directory, textwrap.dedent("""
        [confirm]
        destructive = "none"

        [targets.shop]
        kind = "sqlite"
        path = "shop.db"
        access = "read-write"
        """) + textwrap.dedent(hooks))


def rows(db: Path, table: str = "orders") -> list[tuple[Any, ...]] | None:
    """The table's rows in id order, or None when there is no such table."""
    with closing(sqlite3.connect(db)) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is None:
            return None
        return list(conn.execute(f'SELECT * FROM "{table}" ORDER BY 1'))


@contextmanager
def hooked_runtime(config_path: Path) -> Iterator[Runtime]:
    """A runtime on `config_path` (the gate runs the hooks)."""
    rt = Runtime(load_config(config_path))
    try:
        yield rt
    finally:
        rt.close()


def receipts(rt: Runtime) -> list[Receipt]:
    rt.store.flush()
    return list(reversed(rt.store.receipts(limit=200)))


def sql(rt: Runtime, statement: str) -> Any:
    return rt.gate.run(Call(target="shop", tool="sql_execute", args={"sql": statement}), CALLER)
