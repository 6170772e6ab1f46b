"""A payments API behind the gate: refunds that post once whatever the retries, and undo that cancels them."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from apis import Payments
from http_support import billing, gated
from support import call, connect, refused, write_config

from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

# Until the SQLite adapter declares its writes compensable (a parallel change), the gate runs them as
# irreversible; this lets them run unconfirmed here. It loosens nothing once they are plain writes.
SQLITE_WRITES_RUN = '\n[confirm]\nirreversible = "none"\n'

REFUND = {"operation": "refund", "body": {"charge": "ch_1", "amount": 1500}}


async def test_a_refund_posts_once_carrying_its_key_and_undo_cancels_it_once(tmp_path: Path, payments: Payments) -> None:
    cfg = write_config(tmp_path, billing(payments.url))
    async with gated(cfg) as c:
        done = await call(c, "http_call", target="billing", **REFUND)
        assert done["status"] == "ok" and done["effect"] == "write" and done["undo"]
        assert done["result"]["body"]["id"] == "re_1"
        posts = payments.posts(r"^/v1/refunds$")
        assert len(posts) == 1
        # No key from the agent: the intent receipt's id is the key, and the result says which.
        assert posts[0].headers["idempotency-key"] == done["result"]["idempotency_key"]
        receipts = (await call(c, "receipts", limit=50))["receipts"]
        intents = [r["id"] for r in receipts if r["outcome"] == "intent" and r["tool"] == "http_call"]
        assert intents == [posts[0].headers["idempotency-key"]], "the intent receipt's id is the key"
        assert payments.charges["ch_1"]["amount_refunded"] == 1500

        undone = await call(c, "undo", receipt_id=done["receipt_id"])
        assert undone["status"] == "ok"
        assert payments.refunds["re_1"]["status"] == "canceled"
        assert payments.charges["ch_1"]["amount_refunded"] == 0
        cancels = payments.posts(r"/cancel$")
        assert len(cancels) == 1
        undo_key = cancels[0].headers["idempotency-key"]
        assert undo_key and undo_key != posts[0].headers["idempotency-key"], "undo sends a key of its own"

        again = await refused(c, "undo", receipt_id=done["receipt_id"])
        assert "already undone" in again
        assert len(payments.posts(r"/cancel$")) == 1, "a second undo sends nothing"
        assert payments.charges["ch_1"]["amount_refunded"] == 0


async def test_a_refund_retried_after_a_client_timeout_posts_once(tmp_path: Path, payments: Payments) -> None:
    """The first answer comes after the client gave up; the resend carries the same key, the API replays."""
    payments.slow_first, payments.delay = True, 1.5
    cfg = write_config(tmp_path, billing(payments.url, timeout=0.5, retries=2))
    async with gated(cfg) as c:
        done = await call(c, "http_call", target="billing", **REFUND, idempotency_key="refund-order-42")
    posts = payments.posts(r"^/v1/refunds$")
    assert len(posts) >= 2, "the request was sent again after the timeout"
    assert {p.headers["idempotency-key"] for p in posts} == {"refund-order-42"}
    assert len(payments.refunds) == 1 and payments.charges["ch_1"]["amount_refunded"] == 1500
    assert done["result"]["body"]["id"] == "re_1" and done["undo"]


async def test_an_agent_retry_after_a_timeout_posts_once(tmp_path: Path, payments: Payments) -> None:
    """No resends configured: the call fails as unanswered and says which key to retry with; the retry
    with that key is answered by the API's own record, and the gate's record answers the next one."""
    payments.slow_first, payments.delay = True, 1.5
    cfg = write_config(tmp_path, billing(payments.url, timeout=0.5, retries=0))
    async with gated(cfg) as c:
        text = await refused(c, "http_call", target="billing", **REFUND)
        assert "may have reached the API" in text and "retry with idempotency_key=" in text
        key = text.split("retry with idempotency_key=")[1].split("'")[1]
        assert payments.posts(r"^/v1/refunds$")[0].headers["idempotency-key"] == key
        retry = await call(c, "http_call", target="billing", **REFUND, idempotency_key=key)
        assert retry["status"] == "ok" and retry["result"]["body"]["id"] == "re_1"
        third = await call(c, "http_call", target="billing", **REFUND, idempotency_key=key)
        assert third["status"] == "duplicate", "the gate's own record answers first"
    assert len(payments.posts(r"^/v1/refunds$")) == 2, "the third call never reached the API"
    assert len(payments.refunds) == 1 and payments.charges["ch_1"]["amount_refunded"] == 1500


async def test_undo_refuses_when_the_refund_moved_on(tmp_path: Path, payments: Payments) -> None:
    cfg = write_config(tmp_path, billing(payments.url))
    async with gated(cfg) as c:
        done = await call(c, "http_call", target="billing", **REFUND)
        payments.refunds["re_1"]["status"] = "paid_out"  # the API moved on since the refund
        text = await refused(c, "undo", receipt_id=done["receipt_id"])
        assert "conflict" in text and "paid_out" in text
        assert payments.posts(r"/cancel$") == [], "nothing was sent to undo it"
        payments.refunds["re_1"]["status"] = "succeeded"
        assert (await call(c, "undo", receipt_id=done["receipt_id"]))["status"] == "ok", "refused undo stays available"
    assert payments.refunds["re_1"]["status"] == "canceled"


async def test_a_confirmed_refund_whose_charge_changed_since_the_preview_does_not_post(tmp_path: Path,
                                                                                     payments: Payments) -> None:
    cfg = write_config(tmp_path, billing(payments.url) + '\n[confirm]\nwrite = "agent"\nmin_delay_s = 0\n')
    async with gated(cfg) as c:
        pending = await call(c, "http_call", target="billing", **REFUND)
        assert pending["status"] == "pending"
        sample = pending["preview"]["sample"][0]
        assert sample["now"]["amount_refunded"] == 0 and sample["request"]["url"].endswith("/v1/refunds")
        payments.charges["ch_1"]["amount_refunded"] = 3000  # someone else refunded meanwhile
        again = await call(c, "confirm", action_id=pending["pending"]["action_id"])
        assert again["status"] == "pending", "a new preview replaces the drifted one"
        assert again["preview"]["sample"][0]["now"]["amount_refunded"] == 3000
        assert payments.posts(r"^/v1/refunds$") == [], "nothing was posted"
        ran = await call(c, "confirm", action_id=again["pending"]["action_id"])
        assert ran["status"] == "ok"
    assert len(payments.posts(r"^/v1/refunds$")) == 1


async def test_dry_run_shows_the_request_and_sends_no_write(tmp_path: Path, payments: Payments) -> None:
    cfg = write_config(tmp_path, billing(payments.url))
    async with gated(cfg) as c:
        dry = await call(c, "http_call", target="billing", **REFUND, dry_run=True)
    assert dry["status"] == "dry_run" and dry["preview"]["sample"][0]["now"]["id"] == "ch_1"
    assert payments.posts("") == [] and payments.refunds == {}


async def test_undo_run_restores_sqlite_rows_and_the_refund_newest_first(tmp_path: Path, payments: Payments) -> None:
    create_shop(tmp_path / "shop.db")
    cfg = write_config(tmp_path, billing(payments.url) + """
        [targets.shop]
        kind = "sqlite"
        path = "shop.db"
        access = "read-write"
        """ + SQLITE_WRITES_RUN)
    run = {"run_id": "refund-order-3"}
    async with gated(cfg) as c:
        await call(c, "sql_execute", target="shop", sql="UPDATE orders SET status = 'refunded' WHERE id = 3", **run)
        await call(c, "http_call", target="billing", **REFUND, **run)
        await call(c, "sql_execute", target="shop", sql="UPDATE orders SET status = 'other run' WHERE id = 4",
                   run_id="something-else")
    undo = subprocess.run([sys.executable, "-m", "safe_mcp", "undo", "--run", "refund-order-3", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert "undone: 2; not undone: 0" in undo.stdout
    order = [m.group(1) for m in re.finditer(r"^rcpt_\S+\s.*?\b(\w+):(?:http_call|sql_execute)\b", undo.stdout, re.M)]
    assert order == ["billing", "shop"], f"newest first: {undo.stdout}"
    assert payments.refunds["re_1"]["status"] == "canceled" and payments.charges["ch_1"]["amount_refunded"] == 0
    db = sqlite3.connect(tmp_path / "shop.db")
    statuses = dict(db.execute("SELECT id, status FROM orders WHERE id IN (3, 4)").fetchall())
    db.close()
    assert statuses == {3: "paid", 4: "other run"}
    again = subprocess.run([sys.executable, "-m", "safe_mcp", "undo", "--run", "refund-order-3", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "undone: 0" in again.stdout
    assert len(payments.posts(r"/cancel$")) == 1


async def test_a_failing_compensation_stops_the_saga_and_reports(tmp_path: Path, payments: Payments) -> None:
    create_shop(tmp_path / "shop.db")
    cfg = write_config(tmp_path, billing(payments.url) + """
        [targets.shop]
        kind = "sqlite"
        path = "shop.db"
        access = "read-write"
        """ + SQLITE_WRITES_RUN)
    run = {"run_id": "batch"}
    async with gated(cfg) as c:
        await call(c, "sql_execute", target="shop", sql="UPDATE orders SET status = 'refunded' WHERE id = 3", **run)
        await call(c, "http_call", target="billing", **REFUND, **run)
    payments.refunds["re_1"]["status"] = "paid_out"
    undo = subprocess.run([sys.executable, "-m", "safe_mcp", "undo", "--run", "batch", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert undo.returncode == 1, undo.stdout + undo.stderr
    assert "NOT undone (failed)" in undo.stdout and "conflict" in undo.stdout
    assert "NOT undone (saga stopped)" in undo.stdout
    db = sqlite3.connect(tmp_path / "shop.db")
    assert db.execute("SELECT status FROM orders WHERE id = 3").fetchone()[0] == "refunded", "the saga stopped"
    db.close()
    assert payments.posts(r"/cancel$") == []



async def test_refund_and_undo_over_stdio(tmp_path: Path, payments: Payments) -> None:
    """The same flow through a real `safe-mcp serve` process and an MCP client over stdio."""
    cfg = write_config(tmp_path, billing(payments.url))
    async with connect(cfg, "stdio") as c:
        done = await call(c, "http_call", target="billing", **REFUND, idempotency_key="order-7")
        again = await call(c, "http_call", target="billing", **REFUND, idempotency_key="order-7")
        assert again["status"] == "duplicate"
        await call(c, "undo", receipt_id=done["receipt_id"])
    assert [p.headers["idempotency-key"] for p in payments.posts("")] == ["order-7", "order-7-undo"]
    assert payments.refunds["re_1"]["status"] == "canceled"
