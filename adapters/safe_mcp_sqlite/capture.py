"""Before-images, taken by temporary triggers inside the write's own transaction.

For every table a write may touch (the ones the authorizer reported, and the tables
whose foreign keys cascade from them) four TEMP triggers copy old rows (deletes,
updates), new rows (updates) and new rows with their keys (inserts) into journal tables
of the target itself, committed or rolled back with the write. The triggers stay installed
on safe-mcp's own write connection while the schema is unchanged (creating them costs
more than the write of a few rows); no agent statement can reach them (guard.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from typing import Any

from safe_mcp.errors import AdapterError
from safe_mcp_sqlite.classify import INTERNAL_PREFIX
from safe_mcp_sqlite.statement import affinity

CAPTURE_PREFIX = INTERNAL_PREFIX + "cap_"


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
        self.key_columns = {r[1].lower() for r in rows if r[5]}
        # table_list: schema, name, type, ncol, wr (WITHOUT ROWID), strict
        listed = [r for r in conn.execute("PRAGMA main.table_list").fetchall() if r[0] == "main" and r[1] == table]
        self.without_rowid = bool(listed and listed[0][4])
        strict = bool(listed and listed[0][5])
        # The journal's columns take the same affinity as the table's, so that a value computed for a column
        # (statement-level capture predicts the rows an UPDATE leaves) is stored as the UPDATE stores it.
        self.affinities = [affinity(r[2] or "", strict) for r in rows if r[6] == 0]
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
            if child in found or child.lower().startswith(INTERNAL_PREFIX):
                continue  # a cascade into safe-mcp's trash is refused by the guard, never captured
            for fk in conn.execute(f"PRAGMA main.foreign_key_list({q(child)})").fetchall():
                parent, on_update, on_delete = fk[2], fk[5], fk[6]
                if parent in found and (on_update != "NO ACTION" or on_delete != "NO ACTION"):
                    found.add(child)
                    changed = True
                    break
    return found


def purge(conn: sqlite3.Connection) -> None:
    """Drop every capture trigger on `conn` (outside a transaction, or inside the one that needs it)."""
    for (name,) in conn.execute("SELECT name FROM temp.sqlite_schema WHERE type = 'trigger' "
                                "AND substr(name, 1, ?) = ?", (len(CAPTURE_PREFIX), CAPTURE_PREFIX)).fetchall():
        conn.execute(f"DROP TRIGGER IF EXISTS temp.{q(name)}")


def store_name(info: TableInfo) -> str:
    """The journal table that keeps before-images of `info`'s rows, one per table layout."""
    layout = json.dumps(["v3", info.name, info.key, info.columns, info.affinities]).encode()
    return f"{INTERNAL_PREFIX}undo_{hashlib.sha256(layout).hexdigest()[:16]}"


class Capture:
    """Capture triggers on `tables` (and the tables their foreign keys cascade to).

    Each trigger copies the old row (deletes, updates) or the new row (updates, inserts) into a journal
    table of the target (`store_name`), in the write's own transaction: the target keeps its own undo,
    and nothing of it passes through Python unless a preview, a confirm or an undo reads it back.
    """

    def __init__(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        self.conn = conn
        self.tables = frozenset(tables)
        # A view written through INSTEAD OF triggers changes nothing itself; the tables its triggers
        # write are reported by the authorizer and captured.
        real = {r[0] for r in conn.execute("SELECT name FROM main.sqlite_schema WHERE type = 'table'").fetchall()}
        self.infos = [TableInfo(conn, t) for t in sorted(cascade_children(conn, tables & real))]
        self.stores = [store_name(info) for info in self.infos]
        self._objects: list[str] = []
        self._update_trigger: dict[str, tuple[str, str]] = {}
        """table -> (the name, the CREATE statement) of its UPDATE capture trigger."""
        self.version = -1
        """The schema_version the triggers were made for."""

    def install(self) -> None:
        purge(self.conn)  # left by a capture whose removal was rolled back, or that failed half-way
        for i, (info, store) in enumerate(zip(self.infos, self.stores, strict=True)):
            key_old = ", ".join(f"old.{q(k)}" if k != "rowid" else "old.rowid" for k in info.key)
            key_new = ", ".join(f"new.{q(k)}" if k != "rowid" else "new.rowid" for k in info.key)
            old_cols = ", ".join(f"old.{q(c)}" for c in info.columns)
            new_cols = ", ".join(f"new.{q(c)}" for c in info.columns)
            nulls_keys = ", ".join("NULL" for _ in info.key)
            nulls_cols = ", ".join("NULL" for _ in info.columns)
            nk = len(info.key)
            # One row per row event: old key, new key, old row, new row (AFTER triggers still see old.*).
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS main.{store} (seq INTEGER PRIMARY KEY, op TEXT, "
                + ", ".join([f"k{j}" for j in range(nk)] + [f"n{j}" for j in range(nk)]
                            + [f"c{j} {a}" for j, a in enumerate(info.affinities)]
                            + [f"d{j} {a}" for j, a in enumerate(info.affinities)]) + ")")
            t = f"main.{q(info.name)}"
            for trig, when, values in (
                ("d", "AFTER DELETE", f"'D', {key_old}, {nulls_keys}, {old_cols}, {nulls_cols}"),
                ("u", "AFTER UPDATE", f"'U', {key_old}, {key_new}, {old_cols}, {new_cols}"),
                ("i", "AFTER INSERT", f"'I', {nulls_keys}, {key_new}, {nulls_cols}, {new_cols}"),
            ):
                name = f"{CAPTURE_PREFIX}{i}_{trig}"
                create = f"CREATE TEMP TRIGGER {name} {when} ON {t} BEGIN INSERT INTO {store} VALUES (NULL, {values}); END"
                self.conn.execute(create)
                self._objects.append(f"TRIGGER temp.{name}")
                if trig == "u":
                    self._update_trigger[info.name] = (name, create)

    def remove(self) -> None:
        # IF EXISTS: a table dropped or renamed since took its temporary triggers with it.
        for obj in reversed(self._objects):
            kind, name = obj.split(" ", 1)
            self.conn.execute(f"DROP {kind} IF EXISTS {name}")
        self._objects.clear()
        self._update_trigger.clear()

    def suspend_update(self, table: str) -> str | None:
        """Drop `table`'s UPDATE capture trigger inside the caller's transaction (a statement-level capture
        takes its place); returns what `resume_update` needs, or None when there is none."""
        found = self._update_trigger.get(table)
        if found is None:
            return None
        self.conn.execute(f"DROP TRIGGER temp.{found[0]}")
        return found[1]

    def resume_update(self, create: str) -> None:
        """Put the trigger back, in the same transaction (so a rollback keeps it either way)."""
        self.conn.execute(create)

    def info(self, table: str) -> tuple[TableInfo, str] | None:
        """The TableInfo and journal table of `table`, when captured."""
        for info, store in zip(self.infos, self.stores, strict=True):
            if info.name == table:
                return info, store
        return None

    def marks(self) -> list[int]:
        """Where each journal table ends now; what a write adds comes after."""
        return [self.conn.execute(f"SELECT coalesce(max(seq), 0) FROM main.{s}").fetchone()[0] for s in self.stores]

    def forget_since(self, marks: list[int]) -> None:
        """Delete what the journal tables gained since `marks` (in the caller's transaction)."""
        for store, mark in zip(self.stores, marks, strict=True):
            self.conn.execute(f"DELETE FROM main.{store} WHERE seq > ?", (mark,))

    def captured(self, marks: list[int], direct: int | None = None, op: str | None = None) -> list[dict[str, Any]]:
        """What the write since `marks` left in the journal tables: the compensation's pointers, with counts.

        `direct` is how many rows the statement itself changed (its `changes()`, which leaves out rows that
        triggers and cascades changed) and `op` the one kind of change it makes ('D', 'U' or 'I'). When
        exactly one journal table grew, and by no more seq numbers than `direct`, every event in it is one
        of the statement's own rows: each row it changed left one event there and nothing else left any
        (seq numbers are distinct, so `direct` <= events <= end - mark). Its counts are then known without
        reading the range back (a GROUP BY over 10,000 wide rows cost ~15% of a 10,000-row UPDATE).
        """
        ends = [self.conn.execute(f"SELECT coalesce(max(seq), 0) FROM main.{s}").fetchone()[0] for s in self.stores]
        moved = [i for i, (end, mark) in enumerate(zip(ends, marks, strict=True)) if end > mark]
        known = direct is not None and op is not None and len(moved) == 1 and ends[moved[0]] - marks[moved[0]] == direct
        out = []
        for i in moved:
            info, store, mark = self.infos[i], self.stores[i], marks[i]
            if known:
                assert direct is not None and op is not None
                counts, upto = {op: direct}, ends[i]
            else:
                grouped = self.conn.execute(f"SELECT op, count(*), max(seq) FROM main.{store} WHERE seq > ? GROUP BY op",
                                            (mark,)).fetchall()
                counts = {o: n for o, n, _ in grouped}
                upto = max(last for _, _, last in grouped)
            out.append({"table": info.name, "key": info.key, "columns": info.columns, "store": store,
                        "after": mark, "upto": upto, "deleted": counts.get("D", 0), "updated": counts.get("U", 0),
                        "inserted": counts.get("I", 0)})
        return out

def load(conn: sqlite3.Connection, captures: list[dict[str, Any]], limit: int | None = None) -> list[dict[str, Any]]:
    """Read journaled rows back as changes (per table: deleted, updated, inserted), at most `limit` per table.

    Raises:
        AdapterError: the journal no longer holds them.
    """
    out = []
    for cap in captures:
        store = cap["store"]
        try:
            rows = conn.execute(f"SELECT * FROM main.{q(store)} WHERE seq > ? AND seq <= ? ORDER BY seq"
                                + ("" if limit is None else f" LIMIT {int(limit)}"),
                                (cap["after"], cap["upto"])).fetchall()
        except sqlite3.OperationalError:
            raise AdapterError(f"the before-images of {cap['table']} are no longer in the target's journal "
                               f"({store}); undo is not possible") from None
        if cap.get("same"):
            rows = with_after_images(rows, len(cap["key"]), len(cap["columns"]), cap["same"])
        out.append(parse(rows, cap["table"], cap["key"], cap["columns"]))
    return out


def with_after_images(rows: list[Any], nk: int, nc: int, same: list[int]) -> list[tuple[Any, ...]]:
    """Journal rows of a statement-level capture with each after-image whole: the columns in `same` were not
    set by the write, so their after-image is the before-image (the journal left them NULL)."""
    c0 = 2 + 2 * nk
    d0 = c0 + nc
    keep = set(same)
    return [(*r[:d0], *(r[c0 + j] if j in keep else r[d0 + j] for j in range(nc))) for r in rows]


def parse(rows: list[Any], table: str, key: list[str], columns: list[str]) -> dict[str, Any]:
    """Journal rows of one table as deleted rows, updated rows (before and after) and inserted rows."""
    nk, nc = len(key), len(columns)
    kn, nn, cn = 2 + nk, 2 + 2 * nk, 2 + 2 * nk + nc
    deleted = []
    # Rows this write inserted, by key, as they are at its end: a trigger or cascade that changes
    # or deletes them in the same statement changes what undo must find and remove.
    inserted: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    # Updated rows by their key before the write: (before-image, key now, row now).
    updated: dict[tuple[Any, ...], list[Any]] = {}
    origin: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # key now -> key before the write
    for r in rows:
        op, old_key, new_key = r[1], r[2:kn], r[kn:nn]
        if op == "D":
            if inserted.pop(old_key, None) is not None:
                continue
            first = origin.pop(old_key, None)
            if first is not None:  # updated, then deleted: what undo restores is the first before-image
                deleted.append({"key": encode_all(first), "row": encode_all(updated.pop(first)[0])})
            else:
                deleted.append({"key": encode_all(old_key), "row": encode_all(r[nn:cn])})
        elif op == "U":
            if old_key in inserted:
                del inserted[old_key]
                inserted[new_key] = r[cn:]
                continue
            first = origin.pop(old_key, old_key)
            entry = updated.setdefault(first, [r[nn:cn], new_key, r[cn:]])
            entry[1], entry[2] = new_key, r[cn:]
            origin[new_key] = first
        elif op == "I":
            inserted[new_key] = r[cn:]
    upd = [{"key": encode_all(k), "new_key": encode_all(v[1]), "row": encode_all(v[0]), "new_row": encode_all(v[2])}
           for k, v in updated.items()]
    ins = [{"key": encode_all(k), "row": encode_all(v)} for k, v in inserted.items()]
    return {"table": table, "key": key, "columns": columns, "deleted": deleted, "updated": upd, "inserted": ins}


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
        for item in c["inserted"]:
            if len(out) >= limit:
                return out
            out.append({"table": c["table"], "change": "insert", "key": dict(zip(c["key"], item["key"], strict=True))})
    return out


def fingerprint(changes: list[dict[str, Any]]) -> str:
    """A digest of exactly which rows a write changes: identity and before-image of every deleted or
    updated row, and how many rows it inserts (new rows' keys and defaults, a timestamp say, differ
    from one run to the next without the change being another one)."""
    h = hashlib.sha256()
    for c in sorted(changes, key=lambda c: str(c["table"])):
        h.update(json.dumps([c["table"], len(c["inserted"])]).encode())
        for kind in ("deleted", "updated"):
            items = sorted(json.dumps([kind, i["key"], i["row"]], separators=(",", ":"), default=str)
                           for i in c[kind])
            for item in items:
                h.update(item.encode())
    return h.hexdigest()
