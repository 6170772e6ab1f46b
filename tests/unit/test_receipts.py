"""The ledger: hash-chained, append-only; verify finds the first altered or removed receipt."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require_service, write_config

from safe_mcp.gate.runtime import open_state
from safe_mcp.state.receipts import GENESIS, receipt_hash
from safe_mcp.state.store import StateStore
from safe_mcp.trust.config import load_config


def _fill(store: StateStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = store.append(session="s", client="c", target="t", tool="sql_execute", effect="write",
                         args={"sql": f"UPDATE t SET x = {i}"}, decision="allow", reason="r", outcome="executed",
                         affected=i, policy_digest="p")
        ids.append(r.id)
    return ids


@pytest.fixture(params=["sqlite", "postgres"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StateStore]:
    """The ledger on each kind of state database (PostgreSQL in a schema of its own, dropped after)."""
    if request.param == "sqlite":
        s = StateStore(tmp_path / ".safe-mcp")
        yield s
        s.close()
        return
    require_service("postgresql", "127.0.0.1", 5432)
    from safe_mcp.state.db import PostgresDb

    schema = f"t_{uuid.uuid4().hex[:12]}"
    s = StateStore(db=PostgresDb("postgresql://postgres@127.0.0.1:5432/test", schema=schema))
    try:
        yield s
    finally:
        s.close()
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_chain_links_each_receipt_to_the_one_before(store: StateStore) -> None:
    ids = _fill(store, 3)
    rs = [store.receipt(i) for i in ids]
    assert rs[0].prev == GENESIS
    assert rs[1].prev == rs[0].hash and rs[2].prev == rs[1].hash
    assert all(receipt_hash(r.body()) == r.hash for r in rs)
    assert ids == sorted(ids), "ids sort in ledger order"
    assert store.verify().ok and store.verify().count == 3


class _Raw:
    """Someone with write access to the state database, going around safe-mcp (each statement on its own)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> _Rows:
        if sql.lstrip().upper().startswith("SELECT"):
            return _Rows(self.store.query(sql, params))
        with self.store.transaction() as tx:
            tx.execute(sql, params)
        return _Rows([])

    def close(self) -> None:
        pass


class _Rows:
    def __init__(self, rows: list[tuple[object, ...]]) -> None:
        self.rows = rows

    def fetchone(self) -> tuple[object, ...]:
        return self.rows[0]


def _raw(store: StateStore) -> _Raw:
    return _Raw(store)


def test_an_altered_receipt_is_named(store: StateStore) -> None:
    ids = _fill(store, 5)
    db = _raw(store)
    body = json.loads(db.execute("SELECT body FROM receipts WHERE id = ?", (ids[2],)).fetchone()[0])
    body["affected"] = 0
    db.execute("UPDATE receipts SET body = ? WHERE id = ?", (json.dumps(body), ids[2]))
    db.close()
    report = store.verify()
    assert not report.ok and report.first_bad == ids[2] and "altered" in report.problem


def test_an_altered_receipt_with_a_recomputed_hash_breaks_the_next_link(store: StateStore) -> None:
    ids = _fill(store, 4)
    db = _raw(store)
    body = json.loads(db.execute("SELECT body FROM receipts WHERE id = ?", (ids[1],)).fetchone()[0])
    body["outcome"] = "refused"
    db.execute("UPDATE receipts SET body = ?, hash = ? WHERE id = ?", (json.dumps(body), receipt_hash(body), ids[1]))
    db.close()
    report = store.verify()
    assert not report.ok and report.first_bad == ids[2]


def test_a_receipt_removed_from_the_middle_is_detected(store: StateStore) -> None:
    ids = _fill(store, 5)
    db = _raw(store)
    db.execute("DELETE FROM receipts WHERE id = ?", (ids[1],))
    db.close()
    report = store.verify()
    assert not report.ok and report.first_bad == ids[2] and "missing" in report.problem


def test_truncating_the_tail_is_detected(store: StateStore) -> None:
    ids = _fill(store, 3)
    db = _raw(store)
    db.execute("DELETE FROM receipts WHERE id = ?", (ids[-1],))
    db.close()
    report = store.verify()
    assert not report.ok and "removed at the end" in report.problem


def test_cli_verify_exit_codes_and_export(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[targets.db]\nkind = "sqlite"\npath = "x.db"\n')
    store = open_state(load_config(cfg))
    ids = _fill(store, 3)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "safe_mcp", "receipts", *args, "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60)

    ok = run("verify")
    assert ok.returncode == 0 and "3 receipts" in ok.stdout
    lines = run("export").stdout.splitlines()
    assert [json.loads(x)["id"] for x in lines] == ids
    shown = json.loads(run("show", ids[1]).stdout)
    assert shown["id"] == ids[1] and shown["hash"]
    assert ids[2] in run("list").stdout

    _raw(store).execute("UPDATE receipts SET body = replace(body, 'UPDATE t SET x = 1', 'UPDATE t SET x = 9')")
    store.close()
    bad = run("verify")
    assert bad.returncode == 1 and ids[1] in bad.stdout


def test_the_state_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Receipts, token hashes and undo records: another local user can neither list nor read them."""
    import os
    import stat

    store = StateStore(tmp_path / "state")
    _fill(store, 1)
    store.close()
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    for f in (tmp_path / "state").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
