"""Undo of row changes: check everything first, then put rows back, then check they stayed put.

Restoring one table can move rows of another (a foreign key cascade, a trigger of the database), so
every conflict is looked for before anything changes, and after the rows are put back each one must
equal its before-image; a second pass puts back what a trigger or cascade moved again, and if it still
moves, undo refuses (the caller rolls back).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from safe_mcp.errors import AdapterError
from safe_mcp_sqlite.capture import decode, q


def _where(key: list[str]) -> str:
    return " AND ".join(f"{'rowid' if k == 'rowid' else q(k)} IS ?" for k in key)


def _show(c: dict[str, Any], values: list[Any]) -> str:
    return f"{c['table']} (" + ", ".join(f"{k}={v!r}" for k, v in zip(c["key"], values, strict=True)) + ")"


def _row(conn: sqlite3.Connection, c: dict[str, Any], key: list[Any]) -> list[Any] | None:
    found = conn.execute(f"SELECT {', '.join(q(x) for x in c['columns'])} FROM main.{q(c['table'])} "
                         f"WHERE {_where(c['key'])}", [decode(x) for x in key]).fetchone()
    return None if found is None else list(found)


def _inserted(item: Any) -> tuple[list[Any], list[Any] | None]:
    # Records from before inserted rows were kept whole hold only the key.
    return (item["key"], item["row"]) if isinstance(item, dict) else (item, None)


def _check(conn: sqlite3.Connection, changes: list[dict[str, Any]]) -> None:
    for c in changes:
        for item in c["inserted"]:
            key, row = _inserted(item)
            now = _row(conn, c, key)
            if now is None:
                raise AdapterError(f"the row {_show(c, key)} this write inserted is gone already (deleted since); "
                                   "undo stopped and changed nothing")
            if row is not None and now != [decode(x) for x in row]:
                raise AdapterError(f"the row {_show(c, key)} this write inserted was changed since; undo would "
                                   "delete newer data, so it stopped and changed nothing")
        for item in c["updated"]:
            now = _row(conn, c, item["new_key"])
            if now != [decode(x) for x in item["new_row"]]:
                what = "was deleted" if now is None else "changed again"
                raise AdapterError(f"the row {_show(c, item['new_key'])} {what} after this write; undo would "
                                   "overwrite newer data, so it stopped and changed nothing")
        moved_away = {tuple(map(str, i["new_key"])) for i in c["updated"]} | {
            tuple(map(str, _inserted(i)[0])) for i in c["inserted"]}
        for item in c["deleted"]:
            if tuple(map(str, item["key"])) not in moved_away and _row(conn, c, item["key"]) is not None:
                raise AdapterError(f"a newer row {_show(c, item['key'])} took the place of a row this write "
                                   "deleted; undo stopped and changed nothing")


def _put(conn: sqlite3.Connection, c: dict[str, Any], key: list[Any], row: list[Any], at: list[Any]) -> None:
    """Make the row now at `at` (or missing) the row `row` at `key`."""
    table, cols, rowid = q(c["table"]), c["columns"], c["key"] == ["rowid"]
    values = [decode(x) for x in row]
    if _row(conn, c, at) is not None:
        sets = ", ".join([f"{q(x)} = ?" for x in cols] + (["rowid = ?"] if rowid else []))
        conn.execute(f"UPDATE main.{table} SET {sets} WHERE {_where(c['key'])}",
                     values + ([decode(key[0])] if rowid else []) + [decode(x) for x in at])
        return
    names = (["rowid"] if rowid else []) + [q(x) for x in cols]
    try:
        conn.execute(f"INSERT INTO main.{table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                     ([decode(key[0])] if rowid else []) + values)
    except sqlite3.IntegrityError as exc:
        raise AdapterError(f"cannot restore the row {_show(c, key)}: {exc} (a newer row took its place); "
                           "undo stopped and changed nothing") from None


def _wrong(conn: sqlite3.Connection, changes: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str, Any]]:
    out: list[tuple[dict[str, Any], str, Any]] = []
    for c in changes:
        restored = {tuple(map(str, i["key"])) for i in c["updated"] + c["deleted"]}
        for item in c["updated"] + c["deleted"]:
            if _row(conn, c, item["key"]) != [decode(x) for x in item["row"]]:
                out.append((c, "row", item))
        for item in c["inserted"]:
            key = _inserted(item)[0]
            if tuple(map(str, key)) not in restored and _row(conn, c, key) is not None:
                out.append((c, "inserted", item))
    return out


def restore(conn: sqlite3.Connection, changes: list[dict[str, Any]]) -> int:
    """Put back what `changes` recorded, inside the caller's transaction; returns the rows restored.

    Raises:
        AdapterError: a row no longer matches what the write left (undo would destroy newer data), or a
            trigger or cascade keeps moving a restored row; the caller rolls back.
    """
    _check(conn, changes)
    n = 0
    for c in reversed(changes):
        for item in reversed(c["inserted"]):
            conn.execute(f"DELETE FROM main.{q(c['table'])} WHERE {_where(c['key'])}",
                         [decode(x) for x in _inserted(item)[0]])
            n += 1
        for item in reversed(c["updated"]):
            _put(conn, c, item["key"], item["row"], item["new_key"])
            n += 1
        for item in reversed(c["deleted"]):
            _put(conn, c, item["key"], item["row"], item["key"])
            n += 1
    for _ in range(2):
        wrong = _wrong(conn, changes)
        if not wrong:
            return n
        for c, kind, item in wrong:
            if kind == "inserted":
                conn.execute(f"DELETE FROM main.{q(c['table'])} WHERE {_where(c['key'])}",
                             [decode(x) for x in _inserted(item)[0]])
            else:
                _put(conn, c, item["key"], item["row"], item["key"])
    left = _wrong(conn, changes)
    if not left:
        return n
    c, kind, item = left[0]
    raise AdapterError(f"the row {_show(c, _inserted(item)[0] if kind == 'inserted' else item['key'])} does not "
                       "stay as it was before the write: a trigger or cascade of the database moves it again "
                       "when undo puts it back; undo stopped and changed nothing")
