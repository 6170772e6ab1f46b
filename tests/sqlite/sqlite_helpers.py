"""The demo shop behind a gate (`make_shop`: config path) or bare (`make_adapter`), and a look at the file itself.

Not a conftest.py: other test folders import names `from conftest`, and a second conftest module
would shadow theirs when the folders run together."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from safe_mcp_sqlite import SqliteAdapter, SqliteSettings
from support import SHOP_TARGETS, write_config

from safe_mcp.adapter import Budget, Call
from safe_mcp.effects import Effect
from safe_mcp.faces.demo import create_shop

CONFIG = SHOP_TARGETS + """
[limits]
rows_affected = 50

[confirm]
min_delay_s = 0
"""


def make_shop(tmp_path: Path) -> Path:
    create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, CONFIG)


def make_adapter(tmp_path: Path) -> Iterator[SqliteAdapter]:
    if not (tmp_path / "shop.db").exists():
        create_shop(tmp_path / "shop.db")
    a = SqliteAdapter("admin", SqliteSettings(path="shop.db"), {}, base_dir=str(tmp_path),
                      state_dir=str(tmp_path / ".safe-mcp"))
    yield a
    a.close()


def rows(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def objects(db: Path) -> dict[str, str]:
    """name -> type of every schema object in the file, but safe-mcp's own (journal, trash)."""
    return {str(n): str(t) for t, n, tbl in rows(db, "SELECT type, name, tbl_name FROM sqlite_schema")
            if not str(tbl).lower().startswith("_safe_mcp_")}


def internal(db: Path) -> dict[str, object]:
    """safe-mcp's own objects with their definitions and content: what no agent statement may change."""
    out: dict[str, object] = {}
    for t, n, tbl, definition in rows(db, "SELECT type, name, tbl_name, sql FROM sqlite_schema"):
        if str(tbl).lower().startswith("_safe_mcp_"):
            content = rows(db, f'SELECT * FROM "{n}" ORDER BY 1') if t == "table" else None
            out[str(n)] = (t, definition, content)
    return out


def app(db: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    """The application writing to its own database, behind safe-mcp's back."""
    conn = sqlite3.connect(db)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def budget(effect: Effect = Effect.DESTRUCTIVE, intent_id: str | None = None, rows_affected: int = 100) -> Budget:
    return Budget(rows_returned=100, rows_affected=rows_affected, allowed_effect=effect, intent_id=intent_id)


def sql(text: str, target: str = "admin") -> Call:
    return Call(target=target, tool="sql_execute", args={"sql": text})


def untouched(before: dict[str, object], after: dict[str, object]) -> bool:
    """safe-mcp's objects as they were; the only new ones are empty before-image tables made for a write."""
    new = {n: v for n, v in after.items() if n not in before}
    return ({n: after.get(n) for n in before} == before
            and all(n.startswith("_safe_mcp_undo_") and v[2] in ([], None) for n, v in new.items()))  # type: ignore[index]


def content(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every user table with its rowids where it has them, each value with its type: the file as a user sees it."""
    conn = sqlite3.connect(db)
    try:
        out = {}
        for name, wr in conn.execute("SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' "
                                     "AND name NOT LIKE 'sqlite%' AND name NOT LIKE '\\_safe\\_mcp\\_%' ESCAPE '\\'"):
            sel = "SELECT *" if wr else "SELECT rowid AS rowid_, *"
            got = conn.execute(f'{sel} FROM "{name}"').fetchall()
            out[name] = sorted((tuple((type(v).__name__, v) for v in r) for r in got), key=repr)
        return out
    finally:
        conn.close()
