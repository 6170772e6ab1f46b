"""The yardstick for safe-mcp over stdio: a bare MCP SDK server with the same SQL tools, doing the same
SQL with the raw driver (sqlite3 with a commit, psycopg) and nothing else: no gate, no receipts.

    python bench/bare_server.py --sqlite PATH [--pg DSN]

Targets are named as in the bench's safe-mcp config: "s" is the SQLite file, "p" the PostgreSQL database.
"""

from __future__ import annotations

import argparse
import sqlite3
from typing import Any

from mcp.server import MCPServer

ap = argparse.ArgumentParser()
ap.add_argument("--sqlite", required=True)
ap.add_argument("--pg")
opts = ap.parse_args()

server = MCPServer("bare")
_lite = sqlite3.connect(opts.sqlite, isolation_level=None, check_same_thread=False)
_pg: Any = None


def _pg_conn() -> Any:
    global _pg
    if _pg is None:
        import psycopg  # lazily, as safe-mcp does

        _pg = psycopg.connect(opts.pg)
    return _pg


@server.tool()
def sql_query(target: str, sql: str, params: list[Any] | None = None) -> dict[str, Any]:
    """Run one read."""
    if target == "p":
        conn = _pg_conn()
        cur = conn.execute(sql, params or None)
        cols = [d.name for d in cur.description or []]
        rows = [list(r) for r in cur.fetchall()]
        conn.rollback()
    else:
        cur = _lite.execute(sql, params or ())
        cols = [d[0] for d in cur.description or []]
        rows = [list(r) for r in cur.fetchall()]
    return {"columns": cols, "rows": rows, "truncated": False}


@server.tool()
def sql_execute(target: str, sql: str, params: list[Any] | None = None) -> dict[str, Any]:
    """Run one write and commit it."""
    if target == "p":
        conn = _pg_conn()
        n = conn.execute(sql, params or None).rowcount
        conn.commit()
    else:
        _lite.execute("BEGIN IMMEDIATE")
        n = _lite.execute(sql, params or ()).rowcount
        _lite.execute("COMMIT")
    return {"status": "ok", "affected": n}


server.run()
