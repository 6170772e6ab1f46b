"""Reads, on the read-only connection under the read authorizer: rows (capped by count and bytes) and the schema."""

from __future__ import annotations

import sqlite3
from typing import Any

from safe_mcp.adapter import Budget, Outcome
from safe_mcp.errors import AdapterError
from safe_mcp_sqlite.capture import encode_all, q
from safe_mcp_sqlite.classify import INTERNAL_PREFIX
from safe_mcp_sqlite.guard import read_authorizer


def read(conn: sqlite3.Connection, sql: str, params: Any, budget: Budget) -> Outcome:
    """Run one read; at most `rows_returned` rows and about `bytes_returned` bytes of row data.

    Raises:
        sqlite3.DatabaseError: the statement failed or was denied (the caller explains it).
    """
    conn.set_authorizer(read_authorizer)
    rows: list[list[Any]] = []
    size, truncated, why = 0, False, ""
    try:
        cur = conn.execute(sql, params if params is not None else ())
        columns = [d[0] for d in cur.description or ()]
        # Fetched a batch at a time, so a huge result is never held whole.
        while not truncated:
            batch = cur.fetchmany(100)
            if not batch:
                break
            for r in batch:
                row_size = len(repr(r))  # about the row's bytes, at C speed
                if len(rows) >= budget.rows_returned:
                    truncated, why = True, f"rows_returned={budget.rows_returned}"
                    break
                if rows and size + row_size > budget.bytes_returned:
                    truncated, why = True, f"bytes_returned={budget.bytes_returned}"
                    break
                size += row_size
                rows.append(encode_all(r))
        cur.close()
    finally:
        conn.set_authorizer(None)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    return Outcome(
        result={"columns": columns, "rows": rows, "row_count": len(rows), "truncated": truncated},
        summary=f"{len(rows)} rows" + (f" (truncated at {why})" if truncated else ""),
    )


def schema(conn: sqlite3.Connection, table: str | None) -> Outcome:
    """Tables and views with their columns (safe-mcp's own hidden); indexes and foreign keys for one table.

    Raises:
        AdapterError: no such table.
        sqlite3.DatabaseError: the schema could not be read (the caller explains it).
    """
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
        "AND lower(substr(name, 1, ?)) <> ? ORDER BY name", (len(INTERNAL_PREFIX), INTERNAL_PREFIX)).fetchall()]
    if table is not None and table not in names:
        raise AdapterError(f"no table named {table!r}; tables: {', '.join(names) or 'none'}")
    tables = []
    for name in [table] if table else names:
        cols = [{"name": r[1], "type": r[2], "not_null": bool(r[3]), "default": r[4], "pk": r[5]}
                for r in conn.execute(f"PRAGMA main.table_info({q(name)})").fetchall()]
        entry: dict[str, Any] = {"name": name, "columns": cols}
        if table:
            entry["indexes"] = [r[1] for r in conn.execute(f"PRAGMA main.index_list({q(name)})")]
            entry["foreign_keys"] = [{"column": r[3], "references": f"{r[2]}.{r[4]}", "on_delete": r[6]}
                                     for r in conn.execute(f"PRAGMA main.foreign_key_list({q(name)})")]
        tables.append(entry)
    return Outcome(result={"tables": tables}, summary=f"{len(tables)} tables")
