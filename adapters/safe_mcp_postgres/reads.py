"""Reads bounded in safe-mcp's memory: a server-side cursor fetched in batches sized to what may
still be returned, counting rows and bytes (as they arrive on the wire) against the budget.

A whole result set is never loaded: at most `rows_returned + 1` rows, and about one batch beyond
`bytes_returned`. (One row is the unit: a single row larger than the cap is still fetched once.)
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg

from safe_mcp_postgres.engine import PLAIN_OIDS

__all__ = ["bounded_fetch"]

_CURSOR = "__safe_mcp_read"
_FIRST = 64  # rows in the first batch, sent with the DECLARE in one round trip
_MAX_BATCH = 5000


def bounded_fetch(conn: psycopg.Connection[Any], sql: str, params: list[Any] | None, max_rows: int,
                  max_bytes: int) -> tuple[list[str], list[Any], list[int], Literal["rows", "bytes"] | None]:
    """(columns, rows, indexes of columns needing conversion, why it was cut or None), in the caller's
    read-only transaction; the cursor dies with its rollback.

    The DECLARE travels with the extended protocol, which refuses more than one statement.
    """
    declare = conn.cursor()
    fetch = conn.cursor()
    asked = min(max_rows + 1, _FIRST)
    with conn.pipeline():
        declare.execute(f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR {sql}", params, prepare=False)
        fetch.execute(f"FETCH FORWARD {asked} FROM {_CURSOR}", prepare=False)
    desc = fetch.description or ()
    columns = [d.name for d in desc]
    mixed = [i for i, d in enumerate(desc) if d.type_code not in PLAIN_OIDS]
    # Fixed-width columns count their width; the others are measured as they arrived.
    fixed = sum(max(d.internal_size or 0, 0) for d in desc if (d.internal_size or 0) > 0)
    varying = [j for j, d in enumerate(desc) if not (d.internal_size or 0) > 0]
    rows: list[Any] = []
    size = 0
    while True:
        batch = fetch.fetchall()
        res = fetch.pgresult
        assert res is not None
        for i, row in enumerate(batch):
            if len(rows) == max_rows:
                return columns, rows, mixed, "rows"
            bytes_ = fixed + sum(len(res.get_value(i, j) or b"") for j in varying)
            if size + bytes_ > max_bytes:
                return columns, rows, mixed, "bytes"
            rows.append(row)
            size += bytes_
        if len(batch) < asked:
            return columns, rows, mixed, None
        per_row = max(1, size // max(1, len(rows)))
        asked = max(1, min(max_rows + 1 - len(rows), (max_bytes - size) // per_row + 1, _MAX_BATCH))
        fetch.execute(f"FETCH FORWARD {asked} FROM {_CURSOR}", prepare=False)
