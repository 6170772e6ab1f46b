"""The built-in `snapshot` hook on a real PostgreSQL, through the gate: the copy is made in the trash
schema before the statement, a failed copy stops it (and leaves nothing behind), and undo restores from
the copy when the adapter's own undo cannot. Every test reads the database afterwards."""

from __future__ import annotations

import json
import stat
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hook_helpers import hooked_runtime, receipts
from support import require_service, write_config

from safe_mcp.adapter import Call
from safe_mcp.errors import Refused
from safe_mcp.gate.calls import Caller

HOST, PORT = "127.0.0.1", 5432
ORDERS = [(1, "tea", 3), (2, "cups", 12), (3, "pot", 1)]


@pytest.fixture
def db() -> Iterator[str]:
    require_service("postgresql", HOST, PORT)
    import psycopg

    name = f"safe_mcp_hooks_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"postgresql://postgres@{HOST}:{PORT}/test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"postgresql://postgres@{HOST}:{PORT}/{name}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL, qty int)")
            conn.execute("INSERT INTO orders VALUES (1, 'tea', 3), (2, 'cups', 12), (3, 'pot', 1)")
            conn.execute("CREATE TABLE gen (id int, twice int GENERATED ALWAYS AS (id * 2) STORED)")
            conn.execute("INSERT INTO gen (id) VALUES (1), (2)")
        yield dsn
    finally:
        with psycopg.connect(f"postgresql://postgres@{HOST}:{PORT}/test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def q(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)
        return list(cur.fetchall()) if cur.description else []


def orders(dsn: str) -> list[tuple[Any, ...]] | None:
    if q(dsn, "SELECT to_regclass('public.orders') IS NULL")[0][0]:
        return None
    return q(dsn, "SELECT * FROM orders ORDER BY id")


def snapshots(dsn: str) -> list[str]:
    return [r[0] for r in q(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = '_safe_mcp_trash' "
                                 "AND tablename LIKE 'snap\\_%' ORDER BY 1")]


def config(tmp_path: Path, dsn: str, before: str = '["DROP TABLE", "TRUNCATE", "DELETE"]') -> Path:
    return write_config(tmp_path, textwrap.dedent(f"""
        [confirm]
        destructive = "none"

        [targets.shop]
        kind = "postgres"
        dsn = "{dsn}"
        access = "read-write"
        pool_min_size = 0

        [[targets.shop.hooks]]
        before = {before}
        run = "snapshot"
        """))


def run(rt: Any, sql: str) -> Any:
    return rt.gate.run(Call(target="shop", tool="sql_execute", args={"sql": sql}), Caller(session="s-pg"))


def test_drop_table_is_copied_aside_first_and_undo_restores(tmp_path: Path, db: str) -> None:
    with hooked_runtime(config(tmp_path, db)) as rt:
        done = run(rt, "DROP TABLE orders")
        assert orders(db) is None
        [copy] = snapshots(db)
        assert q(db, f"SELECT * FROM _safe_mcp_trash.{copy} ORDER BY id") == ORDERS
        [hook] = rt.store.compensation_for(done.receipt_id)[2]["hooks"]  # type: ignore[index]
        record = Path(hook["artifact"])
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        assert json.loads(record.read_text()) == {"schema": "public", "table": "orders", "trash": "_safe_mcp_trash",
                                                  "copy": copy, "rows": 3}
        assert [r.outcome for r in receipts(rt) if r.tool == "hook snapshot"] == ["captured"]
        undone = rt.gate.undo(done.receipt_id, Caller(session="s-undo"))
        assert "already as the snapshot holds it" in undone.message
    assert orders(db) == ORDERS


def test_undo_recreates_the_table_from_the_copy_when_the_trash_was_emptied(tmp_path: Path, db: str) -> None:
    with hooked_runtime(config(tmp_path, db)) as rt:
        done = run(rt, "DROP TABLE orders")
        [copy] = snapshots(db)
        for (kept,) in q(db, "SELECT tablename FROM pg_tables WHERE schemaname = '_safe_mcp_trash' "
                             f"AND tablename <> '{copy}'"):
            q(db, f"DROP TABLE _safe_mcp_trash.{kept}")  # someone empties the adapter's trash by hand
        undone = rt.gate.undo(done.receipt_id, Caller(session="s-undo"))
        assert "recreated from the snapshot (3 rows)" in undone.message, undone.message
    assert orders(db) == ORDERS
    assert q(db, "SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass AND indisprimary") == [(1,)]


def test_truncate_and_delete_are_copied_and_undone(tmp_path: Path, db: str) -> None:
    with hooked_runtime(config(tmp_path, db)) as rt:
        for statement in ("TRUNCATE orders", "DELETE FROM orders WHERE id = 2"):
            done = run(rt, statement)
            assert orders(db) != ORDERS
            rt.gate.undo(done.receipt_id, Caller(session="s-undo"))
            assert orders(db) == ORDERS
    assert len(snapshots(db)) == 2


def test_a_snapshot_postgres_refuses_stops_the_drop_and_leaves_nothing(tmp_path: Path, db: str) -> None:
    """A table with a generated column cannot be copied by INSERT ... SELECT *: the copy fails in PostgreSQL."""
    with hooked_runtime(config(tmp_path, db)) as rt:
        with pytest.raises(Refused) as refused:
            run(rt, "DROP TABLE gen")
        assert "required hook snapshot before DROP TABLE on gen" in refused.value.reason
        assert "generated" in refused.value.reason
        assert rt.store.open_intents() == []
    assert q(db, "SELECT * FROM gen ORDER BY id") == [(1, 2), (2, 4)]
    assert snapshots(db) == [], "the failed copy was rolled back"


def test_a_snapshot_whose_record_cannot_be_written_stops_the_drop(tmp_path: Path, db: str) -> None:
    (tmp_path / ".safe-mcp").mkdir()
    (tmp_path / ".safe-mcp" / "artifacts").write_text("not a folder")
    with hooked_runtime(config(tmp_path, db)) as rt, pytest.raises(Refused, match="required hook snapshot"):
        run(rt, "DROP TABLE orders")
    assert orders(db) == ORDERS


def test_truncate_cascade_names_no_table_so_a_required_snapshot_stops_it(tmp_path: Path, db: str) -> None:
    """Classified irreversible without its table list: the hook cannot know what to copy, so it fails closed."""
    cfg = config(tmp_path, db)
    cfg.write_text(cfg.read_text().replace('destructive = "none"', 'destructive = "none"\nirreversible = "none"'))
    with hooked_runtime(cfg) as rt, pytest.raises(Refused, match="names no single table"):
        run(rt, "TRUNCATE orders CASCADE")
    assert orders(db) == ORDERS
