"""Runaway agents: budgets stop a loop, the breaker stops the session, a whole run is undone."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import HELD_MAIL_TARGET, SHOP_TARGETS, call, connect, refused, write_config

from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

CONFIG = SHOP_TARGETS + """
[limits]
rows_affected = 10
writes_per_session = 1000
writes_per_minute = {per_minute}

[breaker]
window_s = 60
refusals = {refusals}
failures = 3
near_limit = 3

[confirm]
min_delay_s = 0
"""


def make(tmp_path: Path, per_minute: int = 10, refusals: int = 4) -> Path:
    create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, CONFIG.format(per_minute=per_minute, refusals=refusals))


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "safe_mcp", *args, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)


def rows(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(tmp_path / "shop.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def test_a_runaway_loop_meets_its_budget_then_the_breaker(tmp_path: Path) -> None:
    cfg = make(tmp_path, per_minute=10, refusals=4)
    async with connect(cfg, "stdio") as c:
        ran, refusals = 0, []
        for i in range(40):
            r = await c.call_tool("sql_execute", {"target": "admin", "sql": f"UPDATE orders SET quantity = {i} WHERE id = 1"})
            if r.is_error:
                refusals.append(r.content[0].text)
            else:
                ran += 1
        assert ran == 10, "the per-minute budget stops the loop at exactly its limit"
        assert "budget writes_per_minute (10)" in refusals[0] and "resets in" in refusals[0]
        assert any("circuit breaker" in t for t in refusals[4:]), "a burst of refusals trips the breaker"
        # reads still work
        r = await call(c, "sql_query", target="shop", sql="SELECT quantity FROM orders WHERE id = 1")
        assert r["rows"] == [[9]]
    listed = cli(cfg, "breaker", "list")
    assert "admin" in listed.stdout and "refusals within 60s" in listed.stdout
    export = [json.loads(x) for x in cli(cfg, "receipts", "export").stdout.splitlines()]
    assert any(x["outcome"] == "breaker_tripped" for x in export)


async def test_the_breaker_holds_across_calls_until_a_human_resets_it(tmp_path: Path) -> None:
    cfg = make(tmp_path, per_minute=100, refusals=3)
    async with connect(cfg, "memory") as c:
        for _ in range(3):
            await refused(c, "sql_query", target="admin", sql="DROP TABLE orders")
        text = await refused(c, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 1 WHERE id = 2")
        assert "circuit breaker" in text and "reads still work" in text
        await call(c, "sql_query", target="admin", sql="SELECT 1")
        reset = cli(cfg, "breaker", "reset")
        assert reset.returncode == 0 and "allowed again" in reset.stdout
        ok = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 1 WHERE id = 2")
        assert ok["status"] == "ok"
    assert cli(cfg, "breaker", "reset").returncode == 1


async def test_a_trip_is_sent_to_the_approvals_webhook(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from typing import Any

    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        cfg = make(tmp_path, per_minute=100, refusals=2)
        cfg.write_text(cfg.read_text() + f'\n[approvals]\nnotify_url = "http://127.0.0.1:{hook.server_port}/hook"\n')
        async with connect(cfg, "memory") as c:
            for _ in range(2):
                await refused(c, "sql_query", target="admin", sql="DELETE FROM orders")
            import anyio

            with anyio.fail_after(10):
                while not got:
                    await anyio.sleep(0.05)
        assert got[0]["breaker"]["target"] == "admin" and "breaker reset" in got[0]["text"]
    finally:
        hook.shutdown()
        hook.server_close()


async def test_near_limit_writes_trip_the_breaker(tmp_path: Path) -> None:
    cfg = make(tmp_path, per_minute=100, refusals=50)
    async with connect(cfg, "memory") as c:
        for lo in (1, 0, 1):  # each touches 9 of at most 10 rows: close to the limit every time
            await call(c, "sql_execute", target="admin", sql=f"UPDATE orders SET quantity = {lo} WHERE id <= 9")
        text = await refused(c, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 3 WHERE id = 1")
        assert "circuit breaker" in text and "near-limits" in text


async def test_session_undo_restores_a_mixed_run_and_the_second_run_does_nothing(tmp_path: Path) -> None:
    cfg = make(tmp_path, per_minute=100, refusals=50)
    before_orders = rows(tmp_path, "SELECT * FROM orders ORDER BY id")
    before_customers = rows(tmp_path, "SELECT * FROM customers ORDER BY id")
    async with connect(cfg, "memory") as c:
        await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'x' WHERE id < 5", run_id="cleanup-42")
        await call(c, "sql_execute", target="admin", sql="INSERT INTO customers (name, email) VALUES ('Z', 'z@example.com')",
                   run_id="cleanup-42")
        p = await call(c, "sql_execute", target="admin", sql="DROP TABLE products", run_id="cleanup-42")
        assert p["status"] == "pending"
        await call(c, "confirm", action_id=p["pending"]["action_id"])
        await call(c, "sql_execute", target="admin", sql="DELETE FROM orders WHERE id = 12", run_id="other")
    plan = cli(cfg, "undo", "--run", "cleanup-42", "--dry-run")
    assert plan.returncode == 0 and "would undo" in plan.stdout and "3 to undo" in plan.stdout, plan.stdout
    assert "DROP TABLE products" in plan.stdout, "a confirmed action stays in the run that asked for it"
    assert "id = 12" not in plan.stdout, "another run is not part of this one"
    assert rows(tmp_path, "SELECT count(*) FROM orders WHERE status = 'x'") == [(4,)], "a dry run changes nothing"
    undo = cli(cfg, "undo", "--since", "10m")
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert "undone: 4; not undone: 0" in undo.stdout
    assert rows(tmp_path, "SELECT * FROM orders ORDER BY id") == before_orders
    assert rows(tmp_path, "SELECT * FROM customers ORDER BY id") == before_customers
    assert rows(tmp_path, "SELECT count(*) FROM products") == [(3,)]
    again = cli(cfg, "undo", "--since", "10m")
    assert again.returncode == 0 and "undone: 0" in again.stdout and "already undone" in again.stdout


async def test_session_undo_stops_at_a_step_that_cannot_be_compensated(tmp_path: Path) -> None:
    cfg = make(tmp_path, per_minute=100, refusals=50)
    async with connect(cfg, "memory") as c:
        first = await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'a' WHERE id = 1")
        await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'b' WHERE id = 2")
        session = (await call(c, "receipts", receipt_id=first["receipt_id"]))["receipts"][0]["session"]
    db = sqlite3.connect(tmp_path / "shop.db")
    db.execute("UPDATE orders SET status = 'changed-by-someone-else' WHERE id = 1")
    db.commit()
    db.close()
    undo = cli(cfg, "undo", "--session", session)
    assert undo.returncode == 1
    assert "NOT undone (failed)" in undo.stdout and "newer data" in undo.stdout
    assert rows(tmp_path, "SELECT status FROM orders WHERE id IN (1, 2) ORDER BY id") == [
        ("changed-by-someone-else",), ("shipped",)]


def test_gameday_passes_on_the_demo_config_and_fails_on_a_loose_one(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    demo = tmp_path / "demo"
    demo.mkdir()
    create_shop(demo / "shop.db")
    cfg = demo / "safe-mcp.toml"
    cfg.write_text((root / "config" / "demo.toml").read_text())
    before = rows(demo, "SELECT * FROM orders ORDER BY id")
    good = cli(cfg, "gameday")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "all 10 scenarios contained" in good.stdout
    assert rows(demo, "SELECT * FROM orders ORDER BY id") == before, "gameday changes nothing"
    assert not (demo / ".safe-mcp").exists(), "gameday keeps its receipts out of the real ledger"

    loose = write_config(demo, (root / "config" / "demo.toml").read_text()
                         .replace('destructive = "agent"', 'destructive = "none"')
                         .replace("rows_affected = 20", "rows_affected = 100000")
                         .replace("writes_per_session = 50", "writes_per_session = 100000\nwrites_per_minute = 100000"),
                         name="loose.toml")
    bad = cli(loose, "gameday")
    assert bad.returncode == 1
    for scenario in ("bulk DELETE without WHERE", "DROP TABLE", "200 writes in a minute"):
        line = next(x for x in bad.stdout.splitlines() if x.startswith(scenario) and "shop_admin" in x)
        assert " FAIL " in line, line
    assert "would have done damage" in bad.stdout
    assert rows(demo, "SELECT * FROM orders ORDER BY id") == before


async def test_run_undo_covers_rows_and_a_held_mail(tmp_path: Path) -> None:
    """A mixed run: a SQLite write and a held mail; undoing the run restores the rows and cancels the mail."""
    cfg = make(tmp_path, per_minute=100, refusals=50)
    cfg.write_text(cfg.read_text() + HELD_MAIL_TARGET)
    async with connect(cfg, "memory") as c:
        await call(c, "sql_execute", target="admin", sql="UPDATE orders SET status = 'refunded' WHERE id = 2", run_id="refunds")
        sent = await call(c, "email_send", target="mail", to=["ada@example.com"], subject="Your refund",
                          body="Refunded.", run_id="refunds")
        assert sent["status"] == "ok"
        outbox = await call(c, "email_outbox", target="mail")
        assert "held" in json.dumps(outbox)
    undo = cli(cfg, "undo", "--run", "refunds")
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert "undone: 2; not undone: 0" in undo.stdout
    assert rows(tmp_path, "SELECT status FROM orders WHERE id = 2") == [("shipped",)]
    async with connect(cfg, "memory") as c:
        outbox = await call(c, "email_outbox", target="mail")
        assert "cancelled" in json.dumps(outbox)
    again = cli(cfg, "undo", "--run", "refunds")
    assert again.returncode == 0 and "undone: 0" in again.stdout
