"""Every flow of the gate, end to end through a real MCP client (stdio and HTTP for the core ones)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from support import SHOP_TARGETS, call, connect, ledger_rows, refused, tamper_ledger, tamper_pending, write_config

from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

# SHOP_TARGETS ends inside [targets.admin], so admin_extra adds keys to that target.
BASE = SHOP_TARGETS + """{admin_extra}

[limits]
rows_affected = 20
writes_per_session = {writes}

[confirm]
ttl_s = {ttl}
min_delay_s = {delay}
"""


def make(tmp_path: Path, ttl: float = 300, delay: float = 0.0, writes: int = 50, admin_extra: str = "") -> Path:
    if not (tmp_path / "shop.db").exists():
        create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, BASE.format(ttl=int(ttl), delay=delay, writes=writes, admin_extra=admin_extra))


def rows(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(tmp_path / "shop.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def cli(cfg: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "safe_mcp", *args, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, input=stdin)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_each_effect_class(tmp_path: Path, transport: str) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, transport) as c:
        # read
        r = await call(c, "sql_query", target="shop", sql="SELECT name FROM customers ORDER BY id LIMIT 1")
        assert r["rows"] == [["Ada"]]
        # write: runs at once, undoable
        w = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'lost' WHERE id = ?", params=[3])
        assert w["status"] == "ok" and w["effect"] == "write" and w["affected"] == 1 and w["undo"]
        assert rows(tmp_path, "SELECT status FROM orders WHERE id = 3") == [("lost",)]
        # destructive: pending, nothing changed
        d = await call(c, "sql_execute", target="admin", sql="DROP TABLE products")
        assert d["status"] == "pending" and d["effect"] == "destructive" and d["pending"]["confirm_by"] == "agent"
        assert rows(tmp_path, "SELECT count(*) FROM products") == [(3,)]
        # irreversible: waits for a human; the agent cannot confirm it, and is not told how to approve
        i = await call(c, "sql_execute", target="admin", sql="ALTER TABLE orders ADD COLUMN note TEXT")
        assert i["status"] == "pending" and i["pending"]["confirm_by"] == "human"
        assert "approve" not in i["message"].lower().replace("must approve", "")
        text = await refused(c, "confirm", action_id=i["pending"]["action_id"])
        assert "human" in text
        assert "note" not in [x[1] for x in rows(tmp_path, "PRAGMA table_info(orders)")]
        # forbidden: refused whatever the access
        text = await refused(c, "sql_execute", target="admin", sql="ATTACH DATABASE 'x.db' AS x")
        assert "forbidden" in text and not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_over_limit_write_is_rolled_back(tmp_path: Path, transport: str) -> None:
    cfg = make(tmp_path, admin_extra="limits = { rows_affected = 3 }")
    async with connect(cfg, transport) as c:
        text = await refused(c, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 9 WHERE id <= 5")
        assert "5 rows" in text and "limit of 3" in text and "rolled back" in text
    assert rows(tmp_path, "SELECT count(*) FROM orders WHERE quantity = 9") == [(0,)]


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_idempotent_retry_runs_once(tmp_path: Path, transport: str) -> None:
    cfg = make(tmp_path)
    sql = "INSERT INTO customers (name, email) VALUES ('Eve', 'eve@example.com')"
    async with connect(cfg, transport) as c:
        first = await call(c, "sql_execute", target="admin", sql=sql, idempotency_key="signup-eve")
        again = await call(c, "sql_execute", target="admin", sql=sql, idempotency_key="signup-eve")
        assert first["status"] == "ok" and again["status"] == "duplicate"
        assert again["receipt_id"] == first["receipt_id"]
        text = await refused(c, "sql_execute", target="admin", sql="DELETE FROM customers WHERE id = 1",
                             idempotency_key="signup-eve")
        assert "different call" in text
    assert rows(tmp_path, "SELECT count(*) FROM customers WHERE name = 'Eve'") == [(1,)]


async def test_undo_restores_updates_inserts_and_dropped_tables(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    before = rows(tmp_path, "SELECT * FROM orders ORDER BY id")
    async with connect(cfg, "stdio") as c:
        u = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'void', id = id + 100 WHERE id < 4")
        ins = await call(c, "sql_execute", target="admin",
                         sql="INSERT INTO orders (customer_id, product_id, quantity, status) VALUES (1, 1, 1, 'new')")
        await call(c, "undo", receipt_id=ins["receipt_id"])
        await call(c, "undo", receipt_id=u["receipt_id"])
        assert rows(tmp_path, "SELECT * FROM orders ORDER BY id") == before
        text = await refused(c, "undo", receipt_id=u["receipt_id"])
        assert "already undone" in text

        d = await call(c, "sql_execute", target="admin", sql="DROP TABLE customers")
        done = await call(c, "confirm", action_id=d["pending"]["action_id"])
        assert rows(tmp_path, "SELECT count(*) FROM sqlite_schema WHERE name = 'customers'") == [(0,)]
        schema = await call(c, "sql_schema", target="shop")
        assert "customers" not in [t["name"] for t in schema["tables"]], "trash is hidden"
        await call(c, "undo", receipt_id=done["receipt_id"])
        assert rows(tmp_path, "SELECT count(*) FROM customers") == [(4,)]


async def test_undo_refuses_to_overwrite_newer_changes(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, "memory") as c:
        first = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'a' WHERE id = 1")
        await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'b' WHERE id = 1")
        text = await refused(c, "undo", receipt_id=first["receipt_id"])
        assert "newer data" in text
    assert rows(tmp_path, "SELECT status FROM orders WHERE id = 1") == [("b",)]


@pytest.mark.parametrize("sql", ["UPDATE orders SET status = 'x' WHERE id > 0", "DELETE FROM orders WHERE id > 0",
                                 "UPDATE orders SET status = 'x' WHERE id IN (SELECT id FROM orders)",
                                 "DELETE FROM orders WHERE status IS NOT NULL OR status IS NULL"])
async def test_a_where_that_matches_every_row_is_destructive(tmp_path: Path, sql: str) -> None:
    cfg = make(tmp_path)
    before = rows(tmp_path, "SELECT * FROM orders ORDER BY id")
    async with connect(cfg, "memory") as c:
        r = await call(c, "sql_execute", target="admin", sql=sql)
        assert r["status"] == "pending" and r["effect"] == "destructive" and r["affected"] == 12
        assert "every row of orders" in r["message"] or "every row" in json.dumps(r["preview"])
    assert rows(tmp_path, "SELECT * FROM orders ORDER BY id") == before


async def test_a_where_that_leaves_one_row_is_a_plain_write(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, "memory") as c:
        r = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'x' WHERE id > 1")
        assert r["status"] == "ok" and r["effect"] == "write" and r["affected"] == 11
    assert rows(tmp_path, "SELECT count(*) FROM orders WHERE status = 'x'") == [(11,)]


async def test_dry_run_changes_nothing_and_reports_the_count(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, "memory") as c:
        r = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders WHERE status = 'paid'", dry_run=True)
        assert r["status"] == "dry_run" and r["affected"] == 6 and len(r["preview"]["sample"]) == 5
        assert all(s["before"]["status"] == "paid" for s in r["preview"]["sample"])
    assert rows(tmp_path, "SELECT count(*) FROM orders") == [(12,)]


async def test_confirm_too_early_then_expired(tmp_path: Path) -> None:
    cfg = make(tmp_path, ttl=1, delay=0.5)
    async with connect(cfg, "memory") as c:
        p = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders")
        action = p["pending"]["action_id"]
        text = await refused(c, "confirm", action_id=action)
        assert "too early" in text
        await anyio.sleep(1.3)
        text = await refused(c, "confirm", action_id=action)
        assert "expired" in text
        text = await refused(c, "confirm", action_id=action)
        assert "expired" in text
    assert rows(tmp_path, "SELECT count(*) FROM orders") == [(12,)]


async def test_replayed_and_unknown_confirmations_are_refused(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, "memory") as c:
        p = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders")
        await call(c, "confirm", action_id=p["pending"]["action_id"])
        await call(c, "sql_execute", target="admin", sql="INSERT INTO orders (customer_id, product_id, quantity, "
                                                         "status) VALUES (1, 1, 1, 'after')")
        text = await refused(c, "confirm", action_id=p["pending"]["action_id"])
        assert "single use" in text
        text = await refused(c, "confirm", action_id="act_forged")
        assert "no pending action" in text
    assert rows(tmp_path, "SELECT status FROM orders") == [("after",)]


async def test_a_tampered_pending_action_is_refused(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, "memory") as c:
        p = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders WHERE id IN (1, 2) OR 1 = 1")
        tamper_pending(cfg, sql="DROP TABLE customers")
        text = await refused(c, "confirm", action_id=p["pending"]["action_id"])
        assert "changed since" in text
    assert rows(tmp_path, "SELECT count(*) FROM customers") == [(4,)]
    assert rows(tmp_path, "SELECT count(*) FROM orders") == [(12,)]


async def test_a_changed_policy_voids_the_confirmation_and_pending_survives_restart(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, "stdio") as c:
        p = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders")
        kept = await call(c, "sql_execute", target="admin", sql="UPDATE products SET price_cents = 0")
    # the server restarted: the pending action is still there and still confirmable
    async with connect(cfg, "stdio") as c:
        done = await call(c, "confirm", action_id=kept["pending"]["action_id"])
        assert done["status"] == "ok" and done["affected"] == 3
    assert rows(tmp_path, "SELECT DISTINCT price_cents FROM products") == [(0,)]
    write_config(tmp_path, cfg.read_text().replace("rows_affected = 20", "rows_affected = 19"))
    async with connect(cfg, "stdio") as c:
        text = await refused(c, "confirm", action_id=p["pending"]["action_id"])
        assert "policy changed" in text
    assert rows(tmp_path, "SELECT count(*) FROM orders") == [(12,)]


@pytest.mark.parametrize("transport", ["memory", "http"])
async def test_concurrent_confirms_execute_once(tmp_path: Path, transport: str) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, transport) as c:
        p = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders")
        action = p["pending"]["action_id"]
        results: list[bool] = []

        async def confirm() -> None:
            r = await c.call_tool("confirm", {"action_id": action})
            results.append(r.is_error)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(confirm)
        assert sorted(results) == [False, True, True, True, True]
    assert rows(tmp_path, "SELECT count(*) FROM orders") == [(0,)]
    receipts = cli(cfg, "receipts", "export").stdout.splitlines()
    executed = [json.loads(x) for x in receipts if json.loads(x).get("action_id") == action
                and json.loads(x)["outcome"] == "executed"]
    assert len(executed) == 1


async def test_writes_per_session_limit(tmp_path: Path) -> None:
    cfg = make(tmp_path, writes=2)
    async with connect(cfg, "memory") as c:
        for i in (1, 2):
            await call(c, "sql_execute", target="admin", sql=f"UPDATE orders SET quantity = 5 WHERE id = {i}")
        text = await refused(c, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 5 WHERE id = 3")
        assert "writes_per_session" in text
        await call(c, "sql_query", target="shop", sql="SELECT 1")


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_malformed_arguments_and_unknown_targets(tmp_path: Path, transport: str) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, transport) as c:
        text = await refused(c, "sql_query", target="prod", sql="SELECT 1")
        assert "unknown target 'prod'" in text and "admin, shop" in text
        text = await refused(c, "sql_query", target="shop")
        assert "sql" in text and "required" in text.lower()
        text = await refused(c, "sql_query", target="shop", sql="SELECT 1", params="oops")
        assert "params" in text
        text = await refused(c, "sql_query", target="shop", sql="SELECT * FROM nope")
        assert "no such table" in text and "sql_schema" in text
        text = await refused(c, "sql_query", target="shop", sql="SELEC 1")
        assert "syntax error" in text
        text = await refused(c, "sql_query", target="shop", sql="SELECT ?", params=[])
        assert "parameters" in text
        text = await refused(c, "undo", receipt_id="rcpt_nope")
        assert "no receipt" in text


async def test_receipts_verify_after_a_session_and_after_tampering(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, "stdio") as c:
        await call(c, "sql_query", target="shop", sql="SELECT 1")
        w = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders WHERE id = 1")
        await refused(c, "sql_execute", target="shop", sql="DELETE FROM orders WHERE id = 2")
        listed = await call(c, "receipts", limit=10)
        outcomes = [r["outcome"] for r in listed["receipts"]]
        assert outcomes[-4:] == ["executed", "intent", "executed", "refused"]
    ok = cli(cfg, "receipts", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    [(body,)] = ledger_rows(cfg, "SELECT body FROM receipts WHERE id = ?", (w["receipt_id"],))
    tamper_ledger(cfg, "UPDATE receipts SET body = ? WHERE id = ?",
                  (json.dumps({**json.loads(str(body)), "affected": 0}), w["receipt_id"]))
    bad = cli(cfg, "receipts", "verify")
    assert bad.returncode == 1 and w["receipt_id"] in bad.stdout


@pytest.mark.sqlite_state  # breaks the SQLite ledger with a trigger
async def test_intent_is_written_before_a_write_and_a_broken_ledger_stops_writes(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, "memory") as c:
        await call(c, "sql_query", target="shop", sql="SELECT 1")
        state = sqlite3.connect(tmp_path / ".safe-mcp" / "state.db")
        state.execute("CREATE TRIGGER no_more BEFORE INSERT ON receipts BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        state.commit()
        state.close()
        text = await refused(c, "sql_execute", target="admin", sql="DELETE FROM orders WHERE id = 1")
        assert "intent receipt could not be written" in text and "nothing was run" in text
    assert rows(tmp_path, "SELECT count(*) FROM orders WHERE id = 1") == [(1,)]


async def test_cli_undo_and_pending(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    async with connect(cfg, "memory") as c:
        w = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders WHERE id = 7")
        p = await call(c, "sql_execute", target="admin", sql="DELETE FROM orders")
    listed = cli(cfg, "pending")
    assert listed.returncode == 0 and p["pending"]["action_id"] in listed.stdout and "DELETE FROM orders" in listed.stdout
    undone = cli(cfg, "undo", w["receipt_id"])
    assert undone.returncode == 0 and "1 rows restored" in undone.stdout
    assert rows(tmp_path, "SELECT count(*) FROM orders WHERE id = 7") == [(1,)]
    again = cli(cfg, "undo", w["receipt_id"])
    assert again.returncode == 1 and "already undone" in again.stderr
