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
_PIPELINED = 2  # rows asked by the FETCH sent with the DECLARE (they arrive together)
_FIRST = 32  # rows asked by the next FETCH; each next one asks four times as many
_MAX_BATCH = 4096


def bounded_fetch(conn: psycopg.Connection[Any], sql: str, params: list[Any] | None, max_rows: int,
                  max_bytes: int) -> tuple[list[str], list[Any], list[int], Literal["rows", "bytes"] | None]:
    """(columns, rows, indexes of columns needing conversion, why it was cut or None), in the caller's
    read-only transaction; the cursor dies with its rollback.

    The DECLARE travels with the extended protocol, which refuses more than one statement. The first FETCH,
    of at most two rows, goes in the same round trip and arrives whole; a read of one row is then done
    (the second row, or its absence, says whether more exist). Later rows arrive one at a time.
    """
    declare, first = conn.cursor(), conn.cursor()
    asked = min(max_rows + 1, _PIPELINED)
    with conn.pipeline():
        declare.execute(f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR {sql}", params, prepare=False)
        first.execute(f"FETCH FORWARD {asked} FROM {_CURSOR}", prepare=False)
    rows: list[Any] = []
    size = 0
    cut: Literal["rows", "bytes"] | None = None
    desc = first.description or ()
    columns = [d.name for d in desc]
    mixed = [i for i, d in enumerate(desc) if d.type_code not in PLAIN_OIDS]
    # Fixed-width columns count their width; the others are measured as they arrived.
    fixed = sum(d.internal_size or 0 for d in desc if (d.internal_size or 0) > 0)
    varying = [j for j, d in enumerate(desc) if not (d.internal_size or 0) > 0]

    def take(row: Any, res: Any, index: int) -> None:
        nonlocal size, cut
        if cut is not None:
            return  # drain what the server already sends, one row at a time
        bytes_ = fixed
        for j in varying:
            value = row[j]
            if value.__class__ is str:  # most are (numbers and times are loaded as text): no copy needed
                bytes_ += len(value)
            elif value is not None and res is not None:
                bytes_ += len(res.get_value(index, j) or b"")
        if len(rows) == max_rows:
            cut = "rows"
        elif size + bytes_ > max_bytes:
            cut = "bytes"
        else:
            rows.append(row)
            size += bytes_

    batch = first.fetchall()
    for index, row in enumerate(batch):
        take(row, first.pgresult, index)
    got = len(batch)
    fetch = conn.cursor()
    while cut is None and got == asked:
        asked = min(max_rows + 1 - len(rows), max(asked * 4, _FIRST), _MAX_BATCH)
        got = 0
        for row in fetch.stream(f"FETCH FORWARD {asked} FROM {_CURSOR}"):
            take(row, fetch.pgresult, 0)
            got += 1  # noqa: SIM113 (read after the loop: fewer than asked means the cursor is done)
    return columns, rows, mixed, cut
