"""Undo of row changes: check everything first, then put rows back, then check they stayed put.

Restoring one table can move rows of another (a foreign key cascade, a trigger of the database), so
every conflict is looked for before anything changes, and after the rows are put back each one must
equal its before-image; a second pass puts back what a trigger or cascade moved again, and if it still
moves, undo refuses (the caller rolls back).

`restore_journal` does the same over the journal tables a write left: set-based (a few statements per
table, whatever the rows) when each table holds one kind of row event, each row once; row by row otherwise.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from safe_mcp.errors import AdapterError
from safe_mcp_sqlite.capture import decode, load, q


def _where(key: list[str]) -> str:
    return " AND ".join(f"{'rowid' if k == 'rowid' else q(k)} IS ?" for k in key)


def _show(c: dict[str, Any], values: list[Any]) -> str:
    return f"{c['table']} (" + ", ".join(f"{k}={v!r}" for k, v in zip(c["key"], values, strict=True)) + ")"


def _row(conn: sqlite3.Connection, c: dict[str, Any], key: list[Any]) -> list[Any] | None:
    found = conn.execute(f"SELECT {', '.join(q(x) for x in c['columns'])} FROM main.{q(c['table'])} "
                         f"WHERE {_where(c['key'])}", [decode(x) for x in key]).fetchone()
    return None if found is None else list(found)


def _same(now: list[Any] | None, recorded: list[Any]) -> bool:
    """The row `now` holds exactly the recorded values, types included (7 and 7.0 differ, as set-based undo
    finds: a column without affinity keeps the difference)."""
    return now is not None and len(now) == len(recorded) and all(
        type(a) is type(b) and a == b for a, b in zip(now, (decode(x) for x in recorded), strict=False))


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
            if row is not None and not _same(now, row):
                raise AdapterError(f"the row {_show(c, key)} this write inserted was changed since; undo would "
                                   "delete newer data, so it stopped and changed nothing")
        for item in c["updated"]:
            now = _row(conn, c, item["new_key"])
            if not _same(now, item["new_row"]):
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
            if not _same(_row(conn, c, item["key"]), item["row"]):
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
    return _settle(conn, changes, n)


def _settle(conn: sqlite3.Connection, changes: list[dict[str, Any]], n: int) -> int:
    """Put back, twice at most, what a trigger or cascade moved again after the rows were put back.

    Raises:
        AdapterError: a row still does not stay put; the caller rolls back.
    """
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


# ------------------------------------------------------------------ set-based undo from the journal tables
#
# Most writes leave one kind of row event per table, each row once: a DELETE (deleted rows), an UPDATE that
# keeps keys (updated rows), an INSERT (inserted rows). Their undo is one statement per table over the
# journal table, and its checks are one query each; `restore` above, row by row, takes everything else
# (keys changed, a row touched twice, mixed events), so both ways check and restore the same rows.


SMALL = 32
"""Below this many row events (as the write counted them), undo goes row by row."""


class _Plan:
    """One capture's journal range, all of one kind of row event, as SQL over the journal table `s`."""

    def __init__(self, conn: sqlite3.Connection, cap: dict[str, Any], kind: str, count: int) -> None:
        self.conn, self.cap, self.kind, self.count = conn, cap, kind, count
        self.table, self.store = f"main.{q(cap['table'])}", f"main.{q(cap['store'])}"
        self.key: list[str] = cap["key"]
        self.columns: list[str] = cap["columns"]
        self.range = (cap["after"], cap["upto"])
        nk, nc = len(self.key), len(self.columns)
        # journal columns: seq, op, k* (key before), n* (key after), c* (row before), d* (row after)
        self.k = [f"s.k{j}" for j in range(nk)]
        self.n = [f"s.n{j}" for j in range(nk)]
        self.c = [f"s.c{j}" for j in range(nc)]
        # A statement-level capture leaves the after-image of a column it did not set NULL: it is the before-image.
        same = set(cap.get("same") or ())
        self.d = [f"s.c{j}" if j in same else f"s.d{j}" for j in range(nc)]

    def at(self, key: list[str]) -> str:
        """Target row `x` has key `key`, compared as `_where` compares (the key column's own collation)."""
        return " AND ".join(f"x.{'rowid' if k == 'rowid' else q(k)} = {v}" for k, v in zip(self.key, key, strict=True))

    def holds(self, values: list[str]) -> str:
        """Target row `x` holds exactly `values`: same type, same bytes; no collation or affinity hides a change.

        A column with a type applies its affinity to the journal's value, and every value both sides hold was
        stored in that column, so equal values are of one type there; only a column without affinity can hold
        7 and 7.0, which `IS` calls equal, so only there is the type compared as well.
        """
        loose = self._untyped()
        return " AND ".join([f"x.{q(col)} IS {v} COLLATE BINARY"
                             + (f" AND typeof(x.{q(col)}) = typeof({v})" if col in loose else "")
                             for col, v in zip(self.columns, values, strict=True)] or ["1"])

    def _untyped(self) -> set[str]:
        """The columns with no affinity (declared without a type, or as BLOB), by SQLite's rules."""
        out = set()
        for r in self.conn.execute("SELECT name, upper(type) FROM pragma_table_xinfo(?, 'main')",
                                   (self.cap["table"],)).fetchall():
            declared = str(r[1] or "")
            if "INT" in declared or any(t in declared for t in ("CHAR", "CLOB", "TEXT", "REAL", "FLOA", "DOUB")):
                continue
            if declared == "" or "BLOB" in declared:
                out.add(str(r[0]))
        return out

    def first(self, select: list[str], where: str) -> Any:
        """`select` of the first journal row (by seq) of the range that matches `where`, or None."""
        return self.conn.execute(f"SELECT {', '.join(select)} FROM {self.store} AS s "
                                 f"WHERE s.seq > ? AND s.seq <= ? AND ({where}) ORDER BY s.seq LIMIT 1",
                                 self.range).fetchone()

    def check(self) -> None:
        """What `_check` checks, in one query.

        Raises:
            AdapterError: a row is no longer as the write left it; nothing was changed.
        """
        if self.kind == "D":
            # A newer row in the place of a deleted one makes `apply`'s INSERT OR ABORT fail on the key, and
            # `restore_journal` goes row by row, whose check names it: no query here.
            return
        key = self.n if self.kind == "I" else self.k
        found = self.first([f"EXISTS (SELECT 1 FROM {self.table} AS x WHERE {self.at(key)})", *key],
                           f"NOT EXISTS (SELECT 1 FROM {self.table} AS x WHERE {self.at(key)} AND {self.holds(self.d)})")
        if found is None:
            return
        present, row = found[0], _show(self.cap, list(found[1:]))
        if self.kind == "I" and not present:
            raise AdapterError(f"the row {row} this write inserted is gone already (deleted since); "
                               "undo stopped and changed nothing")
        if self.kind == "I":
            raise AdapterError(f"the row {row} this write inserted was changed since; undo would "
                               "delete newer data, so it stopped and changed nothing")
        what = "changed again" if present else "was deleted"
        raise AdapterError(f"the row {row} {what} after this write; undo would "
                           "overwrite newer data, so it stopped and changed nothing")

    def apply(self) -> int:
        """Put the rows back in one statement (the last event first, as `restore` does); the rows restored,
        counted as `restore` counts them (one per row event; a row a trigger moved is for `moved` to find)."""
        rng = "s.seq > ? AND s.seq <= ?"
        if self.kind == "I":
            keys = ", ".join("rowid" if k == "rowid" else q(k) for k in self.key)
            self.conn.execute(f"DELETE FROM {self.table} WHERE ({keys}) IN "
                                    f"(SELECT {', '.join(self.n)} FROM {self.store} AS s WHERE {rng})", self.range)
        elif self.kind == "U":
            if not self.columns:
                return self.count
            sets = ", ".join(f"{q(col)} = {v}" for col, v in zip(self.columns, self.c, strict=True))
            # OR ABORT, as for deletes: a table's ON CONFLICT REPLACE would delete other rows on the way
            self.conn.execute(
                f"UPDATE OR ABORT {self.table} AS x SET {sets} FROM (SELECT * FROM {self.store} AS s WHERE {rng}) AS s "
                f"WHERE {self.at(self.k)}", self.range)
        else:
            rowid = self.key == ["rowid"]
            names = (["rowid"] if rowid else []) + [q(col) for col in self.columns]
            values = (self.k if rowid else []) + self.c
            # OR ABORT overrides a table's ON CONFLICT REPLACE or IGNORE: a taken key fails, never replaces
            self.conn.execute(f"INSERT OR ABORT INTO {self.table} ({', '.join(names)}) SELECT {', '.join(values)} "
                                    f"FROM {self.store} AS s WHERE {rng} ORDER BY s.seq DESC", self.range)
        return self.count

    def moved(self) -> bool:
        """Whether a restored row is not as it was before the write (what `_wrong` looks for), in one query."""
        if self.kind == "I":
            where = f"EXISTS (SELECT 1 FROM {self.table} AS x WHERE {self.at(self.n)})"
        else:
            where = f"NOT EXISTS (SELECT 1 FROM {self.table} AS x WHERE {self.at(self.k)} AND {self.holds(self.c)})"
        return self.first(["1"], where) is not None


def _plan(conn: sqlite3.Connection, cap: dict[str, Any]) -> _Plan | None:
    """The set-based plan for `cap`, or None when its events need `restore` (keys changed, mixed events, a row
    touched twice).

    Raises:
        AdapterError: the journal table is gone.
    """
    nk = len(cap["key"])
    k = ", ".join(f"k{j}" for j in range(nk))
    same = " AND ".join(f"k{j} IS n{j}" for j in range(nk))
    store, rng = f"main.{q(cap['store'])}", "seq > ? AND seq <= ?"
    try:
        first, last, count = conn.execute(f"SELECT min(op), max(op), count(*) FROM {store} WHERE {rng}",
                                          (cap["after"], cap["upto"])).fetchone()
        if count == 0 or first != last or first not in {"D", "U", "I"}:
            return None
        if first != "U":
            # Distinct keys already: a key deleted (inserted) twice needs an insert (a delete) or an update
            # between, which the same table's triggers journal as another kind of event. (Were it not so,
            # a deleted key put back twice fails on the key and undo goes row by row; an inserted key's
            # earlier row fails the check.)
            return _Plan(conn, cap, first, count)
        moved, distinct = conn.execute(f"SELECT sum(NOT ({same})), count(DISTINCT {k}) FROM {store} WHERE {rng}"
                                       if nk == 1 else
                                       f"SELECT sum(NOT ({same})), (SELECT count(*) FROM (SELECT DISTINCT {k} "
                                       f"FROM {store} WHERE {rng})) FROM {store} WHERE {rng}",
                                       (cap["after"], cap["upto"]) * (1 if nk == 1 else 2)).fetchone()
    except sqlite3.OperationalError:
        raise AdapterError(f"the before-images of {cap['table']} are no longer in the target's journal "
                           f"({cap['store']}); undo is not possible") from None
    return _Plan(conn, cap, "U", count) if not moved and distinct == count else None


def restore_journal(conn: sqlite3.Connection, captures: list[dict[str, Any]]) -> int:
    """`restore` of what a write left in the journal tables (`capture.Capture.captured`): set-based when every
    table's events allow it, else row by row; the same checks either way, inside the caller's transaction.

    Raises:
        AdapterError: as `restore`; the caller rolls back.
    """
    if sum(int(c.get("deleted", 0)) + int(c.get("updated", 0)) + int(c.get("inserted", 0)) for c in captures) < SMALL:
        return restore(conn, load(conn, captures))  # a few rows: fewer statements row by row
    plans = []
    for cap in captures:
        plan = _plan(conn, cap)
        if plan is None:
            return restore(conn, load(conn, captures))
        plans.append(plan)
    for plan in plans:
        plan.check()
    conn.execute("SAVEPOINT safe_mcp_restore")
    try:
        n = sum(plan.apply() for plan in reversed(plans))
    except sqlite3.IntegrityError:
        # A key a deleted row goes back to is taken (by a newer row, or by a trigger or cascade of this undo):
        # row by row refuses the first case by name and handles the second.
        conn.execute("ROLLBACK TO safe_mcp_restore")
        conn.execute("RELEASE safe_mcp_restore")
        return restore(conn, load(conn, captures))
    conn.execute("RELEASE safe_mcp_restore")
    if all(plan.kind == "D" for plan in plans) and not _triggers(conn):
        # Deleted rows put back by INSERT OR ABORT, with no trigger anywhere to move them (an insert fires no
        # foreign key action): each holds its before-image, values stored by the same column once before.
        return n
    if any(plan.moved() for plan in plans):
        return _settle(conn, load(conn, captures), n)
    return n


def _triggers(conn: sqlite3.Connection) -> bool:
    """Whether any trigger exists that a write on `conn` may fire (the capture triggers are gone before undo)."""
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'trigger') "
                             "OR EXISTS (SELECT 1 FROM temp.sqlite_schema WHERE type = 'trigger')").fetchone()[0])
