"""The built-in `snapshot` hook on a real SQLite file, through the gate: the snapshot is made before the
statement, a required snapshot that fails stops it, and undo restores from the snapshot. Every test reads
the database file (and the artifact) afterwards."""

from __future__ import annotations

import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest
from hook_helpers import ORDERS, hooked_runtime, receipts, rows, shop_config, sql

from safe_mcp.errors import Refused
from safe_mcp.gate.calls import Caller

SNAPSHOT = """
    [[targets.shop.hooks]]
    before = ["DROP TABLE", "TRUNCATE", "DELETE"]
    run = "snapshot"
    required = {required}
"""


def snapshot_config(tmp_path: Path, required: bool = True) -> Path:
    return shop_config(tmp_path, SNAPSHOT.format(required=str(required).lower()))


def artifacts(tmp_path: Path) -> list[Path]:
    folder = tmp_path / ".safe-mcp" / "artifacts"
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def test_drop_table_is_snapshotted_first_then_runs_and_undo_restores(tmp_path: Path) -> None:
    cfg = snapshot_config(tmp_path)
    db = tmp_path / "shop.db"
    with hooked_runtime(cfg) as rt:
        done = sql(rt, "DROP TABLE orders")
        assert done.status == "ok" and done.undo, done
        assert rows(db) is None, "the DROP ran"
        [snap] = artifacts(tmp_path)
        assert stat.S_IMODE(snap.stat().st_mode) == 0o600
        assert stat.S_IMODE(snap.parent.stat().st_mode) == 0o700
        assert rows(snap) == ORDERS, "the snapshot holds the table as it was"
        comp = rt.store.compensation_for(done.receipt_id)
        assert comp is not None
        [recorded] = comp[2]["hooks"]
        assert recorded["name"] == "snapshot" and recorded["artifact"] == str(snap) and recorded["table"] == "orders"
        chain = receipts(rt)
        intent = next(r for r in chain if r.outcome == "intent" and r.tool == "sql_execute")
        hook = next(r for r in chain if r.tool == "hook snapshot")
        assert hook.outcome == "captured" and hook.refers_to == intent.id and hook.seq < done_seq(chain, done.receipt_id)

        undone = rt.gate.undo(done.receipt_id, Caller(session="sess-undo"))
        assert undone.status == "ok"
        assert "already as the snapshot holds it" in undone.message, undone.message
    assert rows(db) == ORDERS


def done_seq(chain: list, receipt_id: str) -> int:  # type: ignore[type-arg]
    return next(r.seq for r in chain if r.id == receipt_id)


def test_undo_restores_from_the_snapshot_when_the_adapter_kept_copy_is_gone(tmp_path: Path) -> None:
    cfg = snapshot_config(tmp_path)
    db = tmp_path / "shop.db"
    with hooked_runtime(cfg) as rt:
        done = sql(rt, "DROP TABLE orders")
        with closing(sqlite3.connect(db)) as conn, conn:  # someone empties safe-mcp's trash by hand
            [trash] = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                  "AND name LIKE '_safe_mcp_trash%'")]
            conn.execute(f'DROP TABLE "{trash}"')
        undone = rt.gate.undo(done.receipt_id, Caller(session="sess-undo"))
        assert "recreated from the snapshot (3 rows)" in undone.message, undone.message
    assert rows(db) == ORDERS


def test_truncating_delete_snapshot_refills_and_never_overwrites(tmp_path: Path) -> None:
    cfg = snapshot_config(tmp_path)
    db = tmp_path / "shop.db"
    with hooked_runtime(cfg) as rt:
        done = sql(rt, "DELETE FROM orders")
        assert rows(db) == []
        undone = rt.gate.undo(done.receipt_id, Caller(session="sess-undo"))
        assert undone.status == "ok"
    assert rows(db) == ORDERS


def _break_artifacts(tmp_path: Path) -> None:
    """The artifacts folder cannot be made: a file is in its place (works as root too)."""
    (tmp_path / ".safe-mcp").mkdir(exist_ok=True)
    (tmp_path / ".safe-mcp" / "artifacts").write_text("not a folder")


@pytest.mark.parametrize("statement", ["DROP TABLE orders", "DELETE FROM orders", "DELETE FROM orders WHERE id = 2"])
def test_a_required_snapshot_that_fails_stops_the_statement(tmp_path: Path, statement: str) -> None:
    cfg = snapshot_config(tmp_path)
    db = tmp_path / "shop.db"
    _break_artifacts(tmp_path)
    with hooked_runtime(cfg) as rt:
        with pytest.raises(Refused) as refused:
            sql(rt, statement)
        assert "required hook snapshot" in refused.value.reason and "not run" in refused.value.reason
        assert refused.value.receipt_id
        chain = receipts(rt)
        failed = next(r for r in chain if r.id == refused.value.receipt_id)
        assert failed.outcome == "failed" and "snapshot" in failed.reason
        assert any(r.tool == "hook snapshot" and r.outcome == "hook_failed" for r in chain)
        assert rt.store.open_intents() == [], "the intent was settled: nothing ran"
    assert rows(db) == ORDERS, "the table is intact"


def test_an_optional_snapshot_that_fails_is_receipted_and_the_statement_runs(tmp_path: Path) -> None:
    cfg = snapshot_config(tmp_path, required=False)
    db = tmp_path / "shop.db"
    _break_artifacts(tmp_path)
    with hooked_runtime(cfg) as rt:
        done = sql(rt, "DROP TABLE orders")
        assert done.status == "ok"
        assert "hook failed (not required" in done.message, done.message
        failed = [r for r in receipts(rt) if r.tool == "hook snapshot"]
        assert [r.outcome for r in failed] == ["hook_failed"] and "not required, so it ran" in failed[0].reason
        comp = rt.store.compensation_for(done.receipt_id)
        assert comp is not None and "hooks" not in comp[2], "no artifact was recorded"
    assert rows(db) is None


def test_statements_the_hook_does_not_name_run_without_it(tmp_path: Path) -> None:
    cfg = snapshot_config(tmp_path)
    db = tmp_path / "shop.db"
    _break_artifacts(tmp_path)  # any snapshot would fail; none is attempted
    with hooked_runtime(cfg) as rt:
        assert sql(rt, "UPDATE orders SET qty = 5 WHERE id = 1").status == "ok"
        assert sql(rt, "INSERT INTO orders VALUES (4, 'tray', 2)").status == "ok"
        assert not [r for r in receipts(rt) if r.tool.startswith("hook ")]
    assert rows(db) == [(1, "tea", 5), (2, "cups", 12), (3, "pot", 1), (4, "tray", 2)]
