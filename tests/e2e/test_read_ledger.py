"""Reads fail closed on the ledger too: their receipts are group-committed (~50 ms later), and while those
cannot be written reads are refused, not served unrecorded; every read that was served gets its receipt.

The ledger is broken the way a full disk or a lost database breaks it, by a trigger that makes every insert
of a receipt fail, on whichever state store the run uses (SQLite file or PostgreSQL schema).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from support import SHOP_TARGETS, allow_inserts, call, connect, fail_inserts, ledger_rows, refused, write_config

from safe_mcp.adapter import Call
from safe_mcp.errors import Refused
from safe_mcp.faces.demo import create_shop
from safe_mcp.gate.pipeline import Caller
from safe_mcp.gate.runtime import Runtime
from safe_mcp.trust.config import load_config

pytestmark = pytest.mark.anyio

READ = {"target": "shop", "sql": "SELECT count(*) FROM orders"}


def shop(tmp_path: Path) -> Path:
    create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, SHOP_TARGETS)


async def read_until(c: Client, *, refused_: bool, served: list[str], within_s: float = 5.0) -> str:
    """Read again and again until a read is refused (refused_) or served (not refused_); collect the receipt
    ids of served reads; return the refusal's text (or "")."""
    deadline = time.monotonic() + within_s
    while True:
        r = await c.call_tool("sql_query", READ)
        if not r.is_error:
            assert r.structured_content is not None and r.structured_content["rows"] == [[12]]
            served.append(str(r.structured_content["receipt_id"]))
            if not refused_:
                return ""
        elif refused_:
            return str(r.content[0].text)
        assert time.monotonic() < deadline, (
            f"reads were still {'served' if refused_ else 'refused'} {within_s} s after the ledger "
            f"{'broke' if refused_ else 'was mended'}: {r.content[0].text if r.content else r}")
        await anyio.sleep(0.01)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_reads_are_refused_while_their_receipts_cannot_be_written_and_resume_after(
        tmp_path: Path, transport: str) -> None:
    cfg = shop(tmp_path)
    served: list[str] = []
    async with connect(cfg, transport) as c:
        served.append((await call(c, "sql_query", **READ))["receipt_id"])
        fail_inserts(cfg, "receipts")
        text = await read_until(c, refused_=True, served=served)
        assert "receipts cannot be written" in text and "disk full" in text, text
        assert "reads resume" in text and "state store" in text, text  # the way forward
        # It stays so: no read is served while the ledger is down, and writes are refused before running.
        for _ in range(5):
            assert "receipts cannot be written" in await refused(c, "sql_query", **READ)
        wrote = await refused(c, "sql_execute", target="admin", sql="DELETE FROM orders WHERE id = 1")
        assert "nothing was run" in wrote
        allow_inserts(cfg, "receipts")
        await read_until(c, refused_=False, served=served)
        served.append((await call(c, "sql_query", **READ))["receipt_id"])
    # Every read that returned rows has its receipt in the chain, and the chain verifies.
    recorded = {str(r[0]) for r in ledger_rows(cfg, "SELECT id FROM receipts")}
    missing = [rid for rid in served if rid not in recorded]
    assert not missing, f"{len(missing)} of {len(served)} served reads have no receipt"
    ok = subprocess.run([sys.executable, "-m", "safe_mcp", "receipts", "verify", "--config", str(cfg)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    db = sqlite3.connect(tmp_path / "shop.db")
    try:
        assert db.execute("SELECT count(*) FROM orders WHERE id = 1").fetchone() == (1,)
    finally:
        db.close()


def test_a_read_after_the_store_is_closed_is_refused(tmp_path: Path) -> None:
    cfg = shop(tmp_path)
    runtime = Runtime(load_config(cfg))
    me = Caller(session="s", client="c")
    read = Call(target="shop", tool="sql_query", args={"sql": READ["sql"]})
    first = runtime.gate.run(read, me)
    assert first.result is not None and first.result["rows"] == [[12]]
    runtime.close()
    with pytest.raises(Refused) as refusal:
        runtime.gate.run(read, me)
    assert "closed" in str(refusal.value)
    # what was served before the close was written at the close
    assert ledger_rows(cfg, "SELECT count(*) FROM receipts WHERE id = ?", (first.receipt_id,)) == [(1,)]




def test_a_lookup_waits_for_the_receipts_another_thread_is_writing(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A read's receipt id is handed out before its receipt is written; looking it up (the receipts tool,
    telemetry) must find it, also when the flusher has just taken it from the queue and not yet reached the
    database (here it is held up there for 0.2 s, as a busy host may hold a thread)."""
    cfg = shop(tmp_path)
    runtime = Runtime(load_config(cfg))
    store = runtime.store
    try:
        me = Caller(session="s", client="c")
        rid = runtime.gate.run(Call(target="shop", tool="sql_query", args={"sql": READ["sql"]}), me).receipt_id
        real = store.transaction
        taken = threading.Event()

        def late_transaction() -> Any:
            if threading.current_thread().name == "flusher":
                taken.set()
                time.sleep(0.2)
            return real()

        monkeypatch.setattr(store, "transaction", late_transaction)
        flushing = threading.Thread(target=store.flush, name="flusher")
        flushing.start()
        assert taken.wait(5)  # the flusher holds the queued receipt and is not in the database yet
        found = store.receipt(rid)
        flushing.join()
        assert found is not None and found.id == rid and found.outcome == "executed"
    finally:
        runtime.close()
