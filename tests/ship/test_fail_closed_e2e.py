"""`fail_writes_when_unshipped_s`: through the real MCP pipeline, writes stop while receipts stay unshipped, and
resume when shipping catches up. Reads go on throughout."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import call, connect, free_port, refused

from safe_mcp.gate.runtime import open_state
from safe_mcp.gate.ship import ship
from safe_mcp.trust.config import load_config

pytestmark = [pytest.mark.anyio]


def _rows(cfg: Path) -> list[str]:
    with sqlite3.connect(cfg.parent / "shop.db") as conn:
        return [r[0] for r in conn.execute("SELECT name FROM items ORDER BY id")]


async def test_writes_stop_while_unshipped_and_resume_after(ship_config: Callable[..., Path], s3: Any) -> None:
    down = ship_config(endpoint_url=f"http://127.0.0.1:{free_port()}", fail_writes_when_unshipped_s=1)
    async with connect(down) as client:
        await call(client, "sql_execute", target="shop", sql="INSERT INTO items (name) VALUES ('first')")
        time.sleep(1.5)
        text = await refused(client, "sql_execute", target="shop", sql="INSERT INTO items (name) VALUES ('second')")
        assert "not shipped off the box" in text and "fail_writes_when_unshipped_s" in text, text
        await call(client, "sql_query", target="shop", sql="SELECT count(*) FROM items")  # reads go on
    assert _rows(down) == ["first"]
    store = open_state(load_config(down))
    try:
        ship(store, load_config(ship_config(fail_writes_when_unshipped_s=1)))  # the endpoint is back
    finally:
        store.close()
    async with connect(down) as client:
        await call(client, "sql_execute", target="shop", sql="INSERT INTO items (name) VALUES ('third')")
    assert _rows(down) == ["first", "third"]
