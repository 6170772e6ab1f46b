"""Before-images, taken by temporary triggers inside the write's own transaction.

For every table a write may touch (the ones the authorizer reported, and the tables
whose foreign keys cascade from them) three TEMP triggers copy old rows (deletes,
updates), new rows (updates) and new rowids (inserts) into TEMP tables. They are
created after BEGIN and dropped before COMMIT, so nothing of them outlives the call.
"""

from __future__ import annotations

import base64
import sqlite3
from typing import Any

from safe_mcp.errors import AdapterError


def q(name: str) -> str:
    """Quote an identifier."""
    return '"' + name.replace('"', '""') + '"'


def encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$blob": base64.b64encode(value).decode()}
    return value


def encode_all(values: Any) -> list[Any]:
    """`encode` over a row; rows without blobs (nearly all) are copied as they are."""
    for v in values:
        if type(v) is bytes:
            return [encode(x) for x in values]
    return list(values)


def decode(value: Any) -> Any:
    if isinstance(value, dict) and "$blob" in value:
        return base64.b64decode(value["$blob"])
    return value


class TableInfo:
    def __init__(self, conn: sqlite3.Connection, table: str) -> None:
        rows = conn.execute(f"PRAGMA main.table_xinfo({q(table)})").fetchall()
        if not rows:
            raise AdapterError(f"no table named {table!r}")
        self.name = table
        # hidden: 0 normal, 1 hidden (virtual), 2/3 generated: those cannot be written back
        self.columns = [r[1] for r in rows if r[6] == 0]
        # table_list: schema, name, type, ncol, wr (WITHOUT ROWID), strict
        listed = [r for r in conn.execute("PRAGMA main.table_list").fetchall() if r[0] == "main" and r[1] == table]
        self.without_rowid = bool(listed and listed[0][4])
        if self.without_rowid:
            pk = sorted((r[5], r[1]) for r in rows if r[5])
            self.key = [c for _, c in pk]
        else:
            self.key = ["rowid"]


def cascade_children(conn: sqlite3.Connection, tables: set[str]) -> set[str]:
    """Tables reached from `tables` through ON DELETE/UPDATE actions, recursively."""
    all_tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").fetchall()]
    found = set(tables)
    changed = True
    while changed:
        changed = False
        for child in all_tables:
            if child in found:
                continue
            for fk in conn.execute(f"PRAGMA main.foreign_key_list({q(child)})").fetchall():
                parent, on_update, on_delete = fk[2], fk[5], fk[6]
                if parent in found and (on_update != "NO ACTION" or on_delete != "NO ACTION"):
                    found.add(child)
                    changed = True
                    break
    return found


class Capture:
    """Installs capture triggers on `tables`; `rows()` reads what they caught."""

    def __init__(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        self.conn = conn
        self.infos = [TableInfo(conn, t) for t in sorted(cascade_children(conn, tables))]
        self._objects: list[str] = []

    def install(self) -> None:
        for i, info in enumerate(self.infos):
            key_old = ", ".join(f"old.{q(k)}" if k != "rowid" else "old.rowid" for k in info.key)
            key_new = ", ".join(f"new.{q(k)}" if k != "rowid" else "new.rowid" for k in info.key)
            old_cols = ", ".join(f"old.{q(c)}" for c in info.columns)
            new_cols = ", ".join(f"new.{q(c)}" for c in info.columns)
            keys = ", ".join(f"k{j}" for j in range(len(info.key)))
            cols = ", ".join(f"c{j}" for j in range(len(info.columns)))
            tb = f"_safe_mcp_cap_{i}"
            self.conn.execute(f"CREATE TEMP TABLE {tb} (seq INTEGER PRIMARY KEY, op TEXT, {keys}, "
                              f"{', '.join(f'n{j}' for j in range(len(info.key)))}, {cols})")
            self._objects.append(f"TABLE temp.{tb}")
            nulls_cols = ", ".join("NULL" for _ in info.columns)
            nulls_keys = ", ".join("NULL" for _ in info.key)
            t = f"main.{q(info.name)}"
            for trig, when, values in (
                ("d", "BEFORE DELETE", f"'D', {key_old}, {nulls_keys}, {old_cols}"),
                ("u", "BEFORE UPDATE", f"'U', {key_old}, {nulls_keys}, {old_cols}"),
                ("a", "AFTER UPDATE", f"'A', {key_old}, {key_new}, {new_cols}"),
                ("i", "AFTER INSERT", f"'I', {nulls_keys}, {key_new}, {nulls_cols}"),
            ):
                name = f"{tb}_{trig}"
                self.conn.execute(f"CREATE TEMP TRIGGER {name} {when} ON {t} BEGIN INSERT INTO {tb} VALUES (NULL, {values}); END")
                self._objects.append(f"TRIGGER temp.{name}")

    def remove(self) -> None:
        for obj in reversed(self._objects):
            self.conn.execute(f"DROP {obj}")
        self._objects.clear()

    def changes(self) -> list[dict[str, Any]]:
        """Per table: deleted rows, updated rows (before and after) and inserted keys."""
        out = []
        for i, info in enumerate(self.infos):
            nk = len(info.key)
            rows = self.conn.execute(f"SELECT * FROM temp._safe_mcp_cap_{i} ORDER BY seq").fetchall()
            if not rows:
                continue
            deleted, inserted = [], []
            before: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            after: dict[tuple[Any, ...], tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
            kn, nn = 2 + nk, 2 + 2 * nk
            for r in rows:
                op = r[1]
                if op == "D":
                    deleted.append({"key": encode_all(r[2:kn]), "row": encode_all(r[nn:])})
                elif op == "U":
                    before.setdefault(r[2:kn], r[nn:])
                elif op == "A":
                    after[r[2:kn]] = (r[kn:nn], r[nn:])
                elif op == "I":
                    inserted.append(encode_all(r[kn:nn]))
            updated = []
            for k, old in before.items():
                new_key, new_vals = after.get(k, (k, old))
                updated.append({"key": encode_all(k), "new_key": encode_all(new_key),
                                "row": encode_all(old), "new_row": encode_all(new_vals)})
            out.append({"table": info.name, "key": info.key, "columns": info.columns,
                        "deleted": deleted, "updated": updated, "inserted": inserted})
        return out


def count_changes(changes: list[dict[str, Any]]) -> int:
    return sum(len(c["deleted"]) + len(c["updated"]) + len(c["inserted"]) for c in changes)


def sample(changes: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The first `limit` before-images (or new rows for inserts), as dicts the agent can read."""
    out: list[dict[str, Any]] = []
    for c in changes:
        for kind in ("deleted", "updated"):
            for item in c[kind]:
                if len(out) >= limit:
                    return out
                entry = {"table": c["table"], "change": kind[:-1], "before": dict(zip(c["columns"], item["row"], strict=True))}
                if kind == "updated":
                    entry["after"] = dict(zip(c["columns"], item["new_row"], strict=True))
                out.append(entry)
        for key in c["inserted"]:
            if len(out) >= limit:
                return out
            out.append({"table": c["table"], "change": "insert", "key": dict(zip(c["key"], key, strict=True))})
    return out


def _where(key: list[str]) -> str:
    return " AND ".join(f"{'rowid' if k == 'rowid' else q(k)} IS ?" for k in key)


def restore(conn: sqlite3.Connection, changes: list[dict[str, Any]]) -> int:
    """Put back what `changes` recorded, newest first; refuse if rows moved on since.

    Raises:
        AdapterError: a row no longer matches what the write left, so undo would destroy newer data.
    """
    n = 0
    for c in reversed(changes):
        table, key, cols = q(c["table"]), c["key"], c["columns"]
        where = _where(key)
        for new_key in reversed(c["inserted"]):
            cur = conn.execute(f"DELETE FROM main.{table} WHERE {where}", [decode(x) for x in new_key])
            if cur.rowcount != 1:
                raise AdapterError(f"row {new_key} inserted into {c['table']} is gone already; undo stopped, nothing changed")
            n += 1
        for item in reversed(c["updated"]):
            current = conn.execute(f"SELECT {', '.join(q(x) for x in cols)} FROM main.{table} WHERE {where}",
                                   [decode(x) for x in item["new_key"]]).fetchone()
            if current is None or list(current) != [decode(x) for x in item["new_row"]]:
                raise AdapterError(
                    f"a row of {c['table']} changed again after this write; undo would overwrite newer data, "
                    "so it stopped and changed nothing")
            sets = ", ".join([f"{q(x)} = ?" for x in cols] + (["rowid = ?"] if key == ["rowid"] else []))
            params = [decode(x) for x in item["row"]] + ([decode(item["key"][0])] if key == ["rowid"] else [])
            conn.execute(f"UPDATE main.{table} SET {sets} WHERE {where}", params + [decode(x) for x in item["new_key"]])
            n += 1
        for item in reversed(c["deleted"]):
            names = ([] if key != ["rowid"] else ["rowid"]) + [q(x) for x in cols]
            values = ([decode(item["key"][0])] if key == ["rowid"] else []) + [decode(x) for x in item["row"]]
            try:
                conn.execute(f"INSERT INTO main.{table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                             values)
            except sqlite3.IntegrityError as exc:
                raise AdapterError(
                    f"cannot restore a deleted row of {c['table']}: {exc} (a newer row took its place); "
                    "undo stopped, nothing changed") from None
            n += 1
    return n
