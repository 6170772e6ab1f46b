"""Before-images do not stay in the target's file for ever: after `journal_keep_days` a later write prunes them
(the deleted and overwritten data leaves safe-mcp's journal tables), and the entry stays behind as a tombstone,
so that undo refuses with the reason (changing nothing) and `reconcile` still knows the write ran. Younger
writes keep their undo, whatever was pruned around them."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from safe_mcp_sqlite import SqliteAdapter, SqliteSettings
from sqlite_helpers import budget, sql

from safe_mcp.adapter import Outcome
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, ConfigError
from safe_mcp.trust.config import load_config

DAY = 86400.0
N = 200


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, secret TEXT, n INTEGER)")
    conn.executemany("INSERT INTO t (secret, n) VALUES (?, ?)", [(f"ssn-{i:04d}", i) for i in range(1, N + 1)])
    conn.execute("CREATE TABLE dropme (x)")
    conn.execute("INSERT INTO dropme VALUES ('kept aside')")
    conn.commit()
    conn.close()
    return path


def adapter_for(tmp_path: Path, keep_days: int = 30) -> SqliteAdapter:
    return SqliteAdapter("t", SqliteSettings(path="t.db", journal_keep_days=keep_days), {}, base_dir=str(tmp_path),
                         state_dir=str(tmp_path / ".safe-mcp"))


@pytest.fixture
def adapter(tmp_path: Path, db: Path) -> Iterator[SqliteAdapter]:
    a = adapter_for(tmp_path)
    yield a
    a.close()


def write(adapter: SqliteAdapter, text: str, intent: str, effect: Effect = Effect.WRITE) -> Outcome:
    call = sql(text, target="t")
    return adapter.execute(call, adapter.classify(call), budget(effect, intent_id=intent, rows_affected=10 * N))


def age(db: Path, intent: str, days: float) -> None:
    """Make the journal entry of `intent` look `days` old (what a clock would do)."""
    conn = sqlite3.connect(db)
    conn.execute("UPDATE _safe_mcp_journal SET at = ? WHERE intent_id = ?", (time.time() - days * DAY, intent))
    conn.commit()
    conn.close()


def content(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


def kept_anywhere(db: Path, value: str) -> bool:
    """Whether `value` is still in any of safe-mcp's journal tables in the file."""
    conn = sqlite3.connect(db)
    try:
        stores = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' "
                                             "AND name LIKE '\\_safe\\_mcp\\_undo\\_%' ESCAPE '\\'")]
        assert stores, "the writes were captured in journal tables"
        for store in stores:
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{store}")')]
            where = " OR ".join(f'"{c}" = ?' for c in cols)
            if conn.execute(f'SELECT count(*) FROM "{store}" WHERE {where}', [value] * len(cols)).fetchone()[0]:
                return True
        return False
    finally:
        conn.close()


def test_old_before_images_are_pruned_and_their_undo_refuses_changing_nothing(
        adapter: SqliteAdapter, db: Path, tmp_path: Path) -> None:
    old = write(adapter, "DELETE FROM t WHERE n <= 50", "intent_old")
    old_update = write(adapter, "UPDATE t SET secret = 'redacted' WHERE n > 150", "intent_old_update")
    dropped = write(adapter, "DROP TABLE dropme", "intent_drop", Effect.DESTRUCTIVE)
    young = write(adapter, "UPDATE t SET n = n + 1000 WHERE n BETWEEN 60 AND 80", "intent_young")
    assert kept_anywhere(db, "ssn-0001") and kept_anywhere(db, "ssn-0199")
    for intent in ("intent_old", "intent_old_update", "intent_drop"):
        age(db, intent, 40)
    age(db, "intent_young", 10)

    write(adapter, "UPDATE t SET n = n WHERE id = 100", "intent_now")  # any later write prunes

    # the deleted and overwritten values are gone from the file's journal tables
    assert not kept_anywhere(db, "ssn-0001") and not kept_anywhere(db, "ssn-0199")
    before = content(db)
    for out in (old, old_update):
        assert out.compensation is not None
        with pytest.raises(AdapterError, match=r"pruned after 30 days \(journal_keep_days"):
            adapter.compensate(out.compensation, budget(Effect.WRITE, intent_id="intent_undo_old"))
        assert content(db) == before
    # reconcile still knows those writes ran (a tombstone, not a gap)
    assert adapter.reconcile("intent_old", sql("DELETE FROM t WHERE n <= 50", target="t")).state == "executed"
    # a soft-dropped table keeps its kept copy and its undo
    assert dropped.compensation is not None
    adapter.compensate(dropped.compensation, budget(Effect.WRITE, intent_id="intent_undo_drop"))
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT x FROM dropme").fetchall() == [("kept aside",)]
    conn.close()
    # the younger write still undoes exactly
    assert young.compensation is not None
    adapter.compensate(young.compensation, budget(Effect.WRITE, intent_id="intent_undo_young"))
    assert [r for r in content(db) if 60 <= r[0] <= 80] == [(i, f"ssn-{i:04d}", i) for i in range(60, 81)]


def test_nothing_is_pruned_before_its_time(adapter: SqliteAdapter, db: Path) -> None:
    before = content(db)
    out = write(adapter, "DELETE FROM t WHERE n <= 50", "intent_a")
    age(db, "intent_a", 29.9)
    write(adapter, "UPDATE t SET n = n WHERE id = 100", "intent_b")
    assert out.compensation is not None
    adapter.compensate(out.compensation, budget(Effect.WRITE, intent_id="intent_undo"))
    assert content(db) == before


def test_the_keep_time_is_the_targets_setting(tmp_path: Path, db: Path) -> None:
    a = adapter_for(tmp_path, keep_days=2)
    try:
        out = write(a, "DELETE FROM t WHERE n <= 50", "intent_a")
        age(db, "intent_a", 3.5)
        write(a, "UPDATE t SET n = n WHERE id = 100", "intent_b")
        assert out.compensation is not None
        with pytest.raises(AdapterError, match="pruned after 2 days"):
            a.compensate(out.compensation, budget(Effect.WRITE, intent_id="intent_undo"))
    finally:
        a.close()
    for bad in ("0", "-1", '"30"', "2.5"):
        cfg = tmp_path / "bad.toml"
        cfg.write_text(f'[targets.t]\nkind = "sqlite"\npath = "t.db"\njournal_keep_days = {bad}\n')
        with pytest.raises(ConfigError, match="journal_keep_days"):
            load_config(cfg)


def test_a_preview_prunes_nothing(adapter: SqliteAdapter, db: Path) -> None:
    before = content(db)
    out = write(adapter, "DELETE FROM t WHERE n <= 50", "intent_a")
    age(db, "intent_a", 40)
    call = sql("UPDATE t SET n = n WHERE id = 100", target="t")
    adapter.preview(call, adapter.classify(call), budget(Effect.WRITE, rows_affected=10 * N))
    assert kept_anywhere(db, "ssn-0001")
    assert out.compensation is not None
    adapter.compensate(out.compensation, budget(Effect.WRITE, intent_id="intent_undo"))
    assert content(db) == before


def test_pruning_runs_about_once_a_day_not_on_every_write(adapter: SqliteAdapter, db: Path) -> None:
    """Once pruned, the next writes find the oldest entry young enough in one lookup and prune nothing more."""
    write(adapter, "DELETE FROM t WHERE n <= 50", "intent_a")
    age(db, "intent_a", 40)
    write(adapter, "UPDATE t SET n = n WHERE id = 100", "intent_b")
    conn = sqlite3.connect(db)
    tomb = conn.execute("SELECT compensation FROM _safe_mcp_journal WHERE intent_id = 'intent_a'").fetchone()[0]
    through = conn.execute("SELECT through FROM _safe_mcp_journal_pruned").fetchone()[0]
    conn.close()
    assert '"op":"pruned"' in tomb
    statements: list[str] = []
    rw = adapter._connect_rw()
    rw.set_trace_callback(statements.append)
    try:
        for i in range(3):
            write(adapter, f"UPDATE t SET n = n WHERE id = {101 + i}", f"intent_c{i}")
    finally:
        rw.set_trace_callback(None)
    assert not [s for s in statements if s.startswith(("DELETE", "UPDATE main._safe_mcp_journal"))], statements
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT through FROM _safe_mcp_journal_pruned").fetchone()[0] == through
    conn.close()


def test_an_undo_leaves_no_copy_of_the_rows_it_restored(adapter: SqliteAdapter, db: Path) -> None:
    """A small undo runs with the capture triggers installed; what they copy of the rows it puts back is not
    kept (nothing reads it, and it would outlive the pruning of the write's own before-images)."""
    write(adapter, "UPDATE t SET n = n WHERE id = 150", "intent_warm")  # the journal exists: the triggers stay
    out = write(adapter, "DELETE FROM t WHERE n <= 5", "intent_small")
    assert out.compensation is not None
    adapter.compensate(out.compensation, budget(Effect.WRITE, intent_id="intent_undo_small"))
    assert [r[1] for r in content(db)[:5]] == [f"ssn-{i:04d}" for i in range(1, 6)]
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM t WHERE n <= 5")  # the application deletes them itself, later
    conn.commit()
    conn.close()
    for intent in ("intent_warm", "intent_small", "intent_undo_small"):
        age(db, intent, 40)
    write(adapter, "UPDATE t SET n = n WHERE id = 100", "intent_now")
    assert not kept_anywhere(db, "ssn-0001")
