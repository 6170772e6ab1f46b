"""A call that waits for confirmation is kept in the state as receipts record it: a secret in its arguments
(here a configured secret's value the agent pasted into SQL) is written to no state file, no listing and no
receipt; the call as sent waits in the memory of the process that previewed it, which alone can run it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import SHOP_AND_SECRET, call, connect, refused, write_config

pytestmark = pytest.mark.anyio

SECRET = "hunter2-5e4d3c2b1a09"
ENV = {"SAFE_MCP_TEST_SMTP_PW": SECRET}
UPDATE = f"UPDATE notes SET body = 'rotated' WHERE body = 'the password is {SECRET}'"


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAFE_MCP_TEST_SMTP_PW", SECRET)
    db = sqlite3.connect(tmp_path / "shop.db")
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO notes (body) VALUES (?)", [(f"the password is {SECRET}",), ("other",)])
    db.commit()
    db.close()
    return write_config(tmp_path, SHOP_AND_SECRET + '[confirm]\nwrite = "agent"\nmin_delay_s = 0\n')


def bodies(cfg: Path) -> list[str]:
    db = sqlite3.connect(cfg.parent / "shop.db")
    try:
        return [str(r[0]) for r in db.execute("SELECT body FROM notes ORDER BY id")]
    finally:
        db.close()


def state_files_hold(cfg: Path, secret: str) -> list[str]:
    """The state files (the database, its WAL and anything beside it) that hold `secret`, byte for byte."""
    return [f.name for f in (cfg.parent / ".safe-mcp").rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "safe_mcp", *args, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **ENV})


@pytest.mark.parametrize("transport", ["memory", "stdio"])
async def test_a_secret_in_a_pending_call_is_written_nowhere_and_the_call_runs_as_sent(shop: Path,
                                                                                        transport: str) -> None:
    async with connect(shop, transport, env=ENV) as c:
        pending = await call(c, "sql_execute", target="shop", sql=UPDATE)
        assert pending["status"] == "pending", pending
        assert SECRET not in json.dumps(pending)
        assert state_files_hold(shop, SECRET) == []
        listed = cli(shop, "pending", "--json")
        assert listed.returncode == 0 and pending["pending"]["action_id"] in listed.stdout
        assert SECRET not in listed.stdout
        done = await call(c, "confirm", action_id=pending["pending"]["action_id"])
        assert done["status"] == "ok" and done["affected"] == 1, done
        assert SECRET not in json.dumps(done)
    # It ran as sent: the row whose body holds the secret was the one changed.
    assert bodies(shop) == ["rotated", "other"]
    assert state_files_hold(shop, SECRET) == []
    export = cli(shop, "receipts", "export")
    assert export.returncode == 0 and "confirmed" in export.stdout and SECRET not in export.stdout


async def test_only_the_process_that_previewed_a_sealed_call_can_run_it(shop: Path) -> None:
    async with connect(shop, "stdio", env=ENV) as c:
        pending = await call(c, "sql_execute", target="shop", sql=UPDATE)
        action = pending["pending"]["action_id"]
    async with connect(shop, "stdio", env=ENV) as c:  # a new process: a restart, or another instance
        text = await refused(c, "confirm", action_id=action)
        assert "secret arguments" in text and "repeat the original call" in text and SECRET not in text
        assert bodies(shop) == [f"the password is {SECRET}", "other"]
        # The way forward works: the same call again, confirmed in the process that previewed it.
        again = await call(c, "sql_execute", target="shop", sql=UPDATE)
        done = await call(c, "confirm", action_id=again["pending"]["action_id"])
        assert done["affected"] == 1
    assert bodies(shop) == ["rotated", "other"]
    assert state_files_hold(shop, SECRET) == []


async def test_a_call_without_secrets_is_confirmed_from_any_process(shop: Path) -> None:
    async with connect(shop, "stdio", env=ENV) as c:
        pending = await call(c, "sql_execute", target="shop", sql="UPDATE notes SET body = 'x' WHERE id = 2")
        action = pending["pending"]["action_id"]
    async with connect(shop, "stdio", env=ENV) as c:
        done = await call(c, "confirm", action_id=action)
        assert done["affected"] == 1
    assert bodies(shop) == [f"the password is {SECRET}", "x"]
