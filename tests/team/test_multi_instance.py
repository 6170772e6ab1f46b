"""One safe-mcp for a team: several `serve --transport http` instances on one PostgreSQL state.

Each test starts two or three real instances on different ports, all pointed at the same state
database, and checks the target (a SQLite file all instances reach, or PostgreSQL) after the calls.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import create_token, free_port, http_client, serve_cmd, serving, write_config

from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

ENV = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}


def team_config(tmp_path: Path, state_url: str, extra: str = "") -> Path:
    if not (tmp_path / "shop.db").exists():
        create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, f"""
[targets.admin]
kind = "sqlite"
path = "shop.db"
access = "read-write"

[confirm]
min_delay_s = 0

[state]
url = "{state_url}"
{extra}
""")


def shop(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "shop.db") as db:
        return db.execute(sql).fetchall()


@asynccontextmanager
async def instances(cfg: Path, n: int, token: str) -> AsyncIterator[list[Any]]:
    """`n` instances of `serve --transport http` on one state, each with an MCP client holding `token`."""
    with ExitStack() as stack:
        ports = [stack.enter_context(serving(cfg, "http", env=ENV)) for _ in range(n)]
        async with AsyncExitStackCompat() as astack:
            clients = [await astack.enter(http_client(f"http://127.0.0.1:{p}/mcp", cfg, token=token)) for p in ports]
            yield [(p, c) for p, c in zip(ports, clients, strict=True)]


class AsyncExitStackCompat:
    def __init__(self) -> None:
        from contextlib import AsyncExitStack

        self._stack = AsyncExitStack()

    async def __aenter__(self) -> AsyncExitStackCompat:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(*exc)  # type: ignore[arg-type]

    async def enter(self, cm: Any) -> Any:
        return await self._stack.enter_async_context(cm)


async def tool(client: Any, name: str, **args: Any) -> tuple[bool, Any]:
    r = await client.call_tool(name, args)
    return (not r.is_error), (r.structured_content if not r.is_error else r.content[0].text)


async def test_a_pending_action_is_confirmed_through_another_instance_exactly_once(tmp_path: Path, state_url: str) -> None:
    cfg = team_config(tmp_path, state_url)
    token = create_token(cfg, name="alice", env=ENV)
    async with instances(cfg, 3, token) as (a, b, c):
        ok, pending = await tool(a[1], "sql_execute", target="admin", sql="DELETE FROM orders WHERE id <= 3 OR 1 = 1")
        assert ok and pending["status"] == "pending", pending
        action = pending["pending"]["action_id"]
        results: list[tuple[bool, Any]] = []

        async def confirm(client: Any) -> None:
            results.append(await tool(client, "confirm", action_id=action))

        async with anyio.create_task_group() as tg:
            tg.start_soon(confirm, b[1])
            tg.start_soon(confirm, c[1])
        wins = [r for ok_, r in results if ok_]
        losses = [r for ok_, r in results if not ok_]
        assert len(wins) == 1 and wins[0]["status"] == "ok", results
        assert len(losses) == 1 and ("single use" in losses[0] or "at the same moment" in losses[0]), losses
    assert shop(tmp_path, "SELECT count(*) FROM orders") == [(0,)]


async def test_an_idempotency_key_retried_on_another_instance_returns_the_first_receipt(tmp_path: Path, state_url: str) -> None:
    cfg = team_config(tmp_path, state_url)
    token = create_token(cfg, name="alice", env=ENV)
    async with instances(cfg, 2, token) as (a, b):
        sql = "UPDATE orders SET quantity = quantity + 1 WHERE id = 1"
        ok, first = await tool(a[1], "sql_execute", target="admin", sql=sql, idempotency_key="retry-1")
        assert ok and first["status"] == "ok", first
        ok, again = await tool(b[1], "sql_execute", target="admin", sql=sql, idempotency_key="retry-1")
        assert ok and again["status"] == "duplicate" and again["receipt_id"] == first["receipt_id"], again
    assert shop(tmp_path, "SELECT quantity FROM orders WHERE id = 1") == [(2,)]  # 1 + one increment


async def test_budgets_and_the_breaker_count_across_instances(tmp_path: Path, state_url: str) -> None:
    cfg = team_config(tmp_path, state_url, extra="[limits]\nwrites_per_minute = 3\n[breaker]\nrefusals = 2\n")
    token = create_token(cfg, name="alice", env=ENV)
    async with instances(cfg, 3, token) as (a, b, c):
        for client in (a[1], b[1], c[1]):
            ok, r = await tool(client, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 7 WHERE id = 2")
            assert ok, r
        ok, text = await tool(a[1], "sql_execute", target="admin", sql="UPDATE orders SET quantity = 8 WHERE id = 2")
        assert not ok and "writes_per_minute (3)" in text
        ok, text = await tool(b[1], "sql_execute", target="admin", sql="UPDATE orders SET quantity = 9 WHERE id = 2")
        assert not ok
        # Two refusals (on two instances) tripped alice's breaker: a third instance refuses her writes too.
        ok, text = await tool(c[1], "sql_execute", target="admin", sql="UPDATE orders SET quantity = 9 WHERE id = 3")
        assert not ok and "circuit breaker" in text, text
    assert shop(tmp_path, "SELECT quantity FROM orders WHERE id IN (2, 3) ORDER BY id")[0] == (7,)


async def test_two_tokens_never_share_a_session(tmp_path: Path, state_url: str) -> None:
    cfg = team_config(tmp_path, state_url, extra="[limits]\nwrites_per_session = 1\n")
    alice, bob = create_token(cfg, name="alice", env=ENV), create_token(cfg, name="bob", env=ENV)
    with serving(cfg, "http", env=ENV) as port:
        url = f"http://127.0.0.1:{port}/mcp"
        async with http_client(url, cfg, token=alice) as ca, http_client(url, cfg, token=bob) as cb:
            ok, r = await tool(ca, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 5 WHERE id = 4")
            assert ok, r
            ok, r = await tool(cb, "sql_execute", target="admin", sql="UPDATE orders SET quantity = 6 WHERE id = 5")
            assert ok, r  # bob's writes_per_session is his own
            ok, r = await tool(ca, "receipts", limit=10)
            sessions = {x["session"] for x in r["receipts"] if x["outcome"] == "executed"}
            assert len(sessions) == 2 and all(s.startswith(("token:alice/", "token:bob/")) for s in sessions)


async def test_an_approval_on_one_instances_page_releases_the_action_on_another(tmp_path: Path, state_url: str) -> None:
    import re

    import httpx2
    import pyotp

    cfg = team_config(tmp_path, state_url)
    enrolled = subprocess.run([sys.executable, "-m", "safe_mcp", "approver", "add", "carol", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **ENV})
    assert enrolled.returncode == 0, enrolled.stderr
    totp = pyotp.TOTP(re.search(r"secret=([A-Z2-7]+)", enrolled.stdout).group(1))  # type: ignore[union-attr]
    token = create_token(cfg, name="alice", env=ENV)
    async with instances(cfg, 2, token) as (a, b):
        ok, pending = await tool(a[1], "sql_execute", target="admin", sql="ALTER TABLE orders ADD COLUMN note TEXT")
        assert ok and pending["pending"]["confirm_by"] == "human", pending
        action = pending["pending"]["action_id"]
        page = f"http://127.0.0.1:{b[0]}/approvals"
        async with httpx2.AsyncClient() as h:
            got = await h.get(page)
            assert action in got.text, "instance b's page lists the action made on instance a"
            csrf = got.text.split('name="csrf" value="')[1].split('"')[0]
            posted = await h.post(page, data={"action_id": action, "name": "carol", "code": totp.now(),
                                              "decision": "approve", "csrf": csrf},
                                  headers={"Origin": f"http://127.0.0.1:{b[0]}"})
            assert posted.status_code in (200, 303), posted.text
        ok, done = await tool(a[1], "confirm", action_id=action)
        assert ok and done["status"] == "ok", done
    assert "note" in [r[1] for r in shop(tmp_path, "PRAGMA table_info(orders)")]


def test_an_instance_killed_mid_write_is_reconciled_by_another(tmp_path: Path, state_url: str) -> None:
    """Instance a is killed while its UPDATE waits on a row lock (after its intent, before commit); the
    client's retry on instance b finds the key held by a dead process, settles it from the target's
    journal (not committed) and runs the write once."""
    import psycopg

    target_db = state_url.rsplit("/", 1)[0] + "/test"
    table = f"team_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(target_db, autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)")
        c.execute(f"INSERT INTO {table} VALUES (1, 0)")
    cfg = write_config(tmp_path, f"""
[targets.pg]
kind = "postgres"
dsn = "{target_db}"
access = "read-write"
pool_min_size = 0
statement_timeout_ms = 30000
lock_timeout_ms = 30000

[state]
url = "{state_url}"
""")
    token = create_token(cfg, name="alice", env=ENV)
    args = {"target": "pg", "sql": f"UPDATE {table} SET n = n + 1 WHERE id = 1", "idempotency_key": "k-killed"}
    try:
        with psycopg.connect(target_db) as locker:
            locker.execute(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE")  # a's UPDATE will wait here
            port = free_port()
            with tempfile.TemporaryFile() as log:
                a = subprocess.Popen(serve_cmd(cfg, "--transport", "http", "--port", str(port)), stdout=subprocess.DEVNULL,
                                     stderr=log, env={**os.environ, **ENV})
                try:
                    from support import wait_port

                    wait_port(port, a)
                    sender = subprocess.Popen([sys.executable, "-c", _CALL, f"http://127.0.0.1:{port}/mcp", token,
                                               __import__("json").dumps(args)], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
                    _wait_for_lock_wait(target_db, table)
                    a.send_signal(signal.SIGKILL)
                    a.wait(10)
                    sender.kill()
                    sender.wait(10)
                finally:
                    if a.poll() is None:
                        a.kill()
            locker.rollback()
        with anyio.from_thread.start_blocking_portal() as portal:
            result = portal.call(_retry_on_b, cfg, token, args)
        assert result["status"] == "ok", result
        with psycopg.connect(target_db) as c:
            assert c.execute(f"SELECT n FROM {table} WHERE id = 1").fetchone() == (1,)
        ledger = subprocess.run([sys.executable, "-m", "safe_mcp", "receipts", "export", "--config", str(cfg)],
                                capture_output=True, text=True, timeout=60, env={**os.environ, **ENV})
        outcomes = [__import__("json").loads(x)["outcome"] for x in ledger.stdout.splitlines()]
        assert "not_executed" in outcomes and outcomes.count("executed") == 1
    finally:
        with psycopg.connect(target_db, autocommit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")


async def _retry_on_b(cfg: Path, token: str, args: dict[str, Any]) -> dict[str, Any]:
    with serving(cfg, "http", env=ENV) as port:
        async with http_client(f"http://127.0.0.1:{port}/mcp", cfg, token=token) as client:
            r = await client.call_tool("sql_execute", args)
            assert not r.is_error, r.content[0].text
            return dict(r.structured_content or {})


def _wait_for_lock_wait(dsn: str, table: str) -> None:
    import time

    import psycopg

    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as c:
        while time.monotonic() < deadline:
            waiting = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND query ILIKE %s", (f"%{table}%",)).fetchone()
            if waiting and waiting[0]:
                return
            time.sleep(0.05)
    raise TimeoutError("instance a's UPDATE never reached the row lock")


_CALL = """
import sys, json, anyio, httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
async def main():
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + sys.argv[2]}, timeout=120) as h:
        async with Client(streamable_http_client(sys.argv[1], http_client=h)) as c:
            await c.call_tool("sql_execute", json.loads(sys.argv[3]))
anyio.run(main)
"""


def test_a_sqlite_ledger_migrates_to_postgresql_with_its_chain(tmp_path: Path, state_url: str) -> None:
    cfg = write_config(tmp_path, '[targets.admin]\nkind = "sqlite"\npath = "shop.db"\naccess = "read-write"\n')
    create_shop(tmp_path / "shop.db")
    from safe_mcp.adapter import Call
    from safe_mcp.gate.pipeline import Caller
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.config import load_config

    rt = Runtime(load_config(cfg))
    try:
        rt.gate.run(Call(target="admin", tool="sql_query", args={"sql": "SELECT 1"}), Caller(session="s"))
        w = rt.gate.run(Call(target="admin", tool="sql_execute",
                             args={"sql": "UPDATE orders SET quantity = 3 WHERE id = 1", "idempotency_key": "m1"}),
                        Caller(session="s"))
        count = rt.store.verify().count
    finally:
        rt.close()

    def cli(*a: str, config: Path = cfg) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "safe_mcp", *a, "--config", str(config)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, **ENV})

    moved = cli("state", "migrate", "--to", state_url)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"{count} receipts copied, chain verified" in moved.stdout
    assert cli("state", "migrate", "--to", state_url).returncode != 0  # never into a ledger that has receipts
    team = write_config(tmp_path, cfg.read_text() + f'[state]\nurl = "{state_url}"\n', name="team.toml")
    verified = cli("receipts", "verify", config=team)
    assert verified.returncode == 0 and f"{count} receipts" in verified.stdout, verified.stdout
    # The undo record and the idempotency key came along.
    undone = cli("undo", w.receipt_id, config=team)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert shop(tmp_path, "SELECT quantity FROM orders WHERE id = 1") == [(1,)]
