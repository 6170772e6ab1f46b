"""Reads bounded in safe-mcp's memory: a server-side cursor, fetched row by row (single-row mode),
counting rows and bytes as they arrive against the budget (text counts its characters).

A result set is never loaded whole: at most `rows_returned + 1` rows are asked of the server,
and each arrives on its own, so what is held is what will be returned plus one row. Once the
byte cap is met, the rest of the current FETCH is drained a row at a time and dropped.
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg

from safe_mcp_postgres.engine import PLAIN_OIDS

__all__ = ["bounded_fetch"]

_CURSOR = "__safe_mcp_read"
_FIRST = 32  # rows asked by the first FETCH; each next one asks four times as many
_MAX_BATCH = 4096


def bounded_fetch(conn: psycopg.Connection[Any], sql: str, params: list[Any] | None, max_rows: int,
                  max_bytes: int) -> tuple[list[str], list[Any], list[int], Literal["rows", "bytes"] | None]:
    """(columns, rows, indexes of columns needing conversion, why it was cut or None), in the caller's
    read-only transaction; the cursor dies with its rollback.

    The DECLARE travels with the extended protocol, which refuses more than one statement.
    """
    declare = conn.cursor()
    with conn.pipeline():
        declare.execute(f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR {sql}", params, prepare=False)
    fetch = conn.cursor()
    rows: list[Any] = []
    size = 0
    cut: Literal["rows", "bytes"] | None = None
    asked = min(max_rows + 1, _FIRST)
    columns: list[str] = []
    mixed: list[int] = []
    while cut is None:
        got = 0
        varying: list[int] | None = None
        fixed = 0
        for row in fetch.stream(f"FETCH FORWARD {asked} FROM {_CURSOR}"):
            got += 1
            if cut is not None:
                continue  # drain what the server already sends, one row at a time
            res = fetch.pgresult
            if varying is None:
                desc = fetch.description or ()
                columns = [d.name for d in desc]
                mixed = [i for i, d in enumerate(desc) if d.type_code not in PLAIN_OIDS]
                # Fixed-width columns count their width; the others are measured as they arrived.
                fixed = sum(d.internal_size or 0 for d in desc if (d.internal_size or 0) > 0)
                varying = [j for j, d in enumerate(desc) if not (d.internal_size or 0) > 0]
            bytes_ = fixed
            for j in varying:
                value = row[j]
                if value.__class__ is str:  # most are (numbers and times are loaded as text): no copy needed
                    bytes_ += len(value)
                elif value is not None and res is not None:
                    bytes_ += len(res.get_value(0, j) or b"")
            if len(rows) == max_rows:
                cut = "rows"
            elif size + bytes_ > max_bytes:
                cut = "bytes"
            else:
                rows.append(row)
                size += bytes_
        if not columns and fetch.description:
            columns = [d.name for d in fetch.description]
            mixed = [i for i, d in enumerate(fetch.description) if d.type_code not in PLAIN_OIDS]
        if cut is None and got < asked:
            break
        asked = min(max_rows + 1 - len(rows), asked * 4, _MAX_BATCH)
    return columns, rows, mixed, cut
