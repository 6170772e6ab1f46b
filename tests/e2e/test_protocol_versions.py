"""A whole session on each protocol revision a client may negotiate, over stdio and streamable HTTP.

The mcp 2.3 client offers 2026-07-28 first and falls back; most clients in the field (the Inspector CLI among
them) speak 2025-11-25. On both: discover, read, be refused, be refused a misspelt argument, get a pending
action that changed nothing, confirm it (or be told it waits for a human), and find every step receipted.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from support import SHOP_TARGETS, call, create_token, refused, serve_cmd, serving, write_config

from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

CONFIG = SHOP_TARGETS + """
[confirm]
min_delay_s = 0.2
"""

REVISIONS = {"modern": "2026-07-28", "legacy": "2025-11-25"}


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, CONFIG)


def orders(config: Path) -> int:
    with sqlite3.connect(config.parent / "shop.db") as db:
        n: int = db.execute("SELECT count(*) FROM orders").fetchone()[0]
        return n


@asynccontextmanager
async def session(config: Path, transport: str, mode: str) -> AsyncIterator[Client]:
    if transport == "stdio":
        params = StdioServerParameters(command=sys.executable, args=serve_cmd(config)[1:], env=dict(os.environ))
        async with Client(params, mode=mode) as client:  # type: ignore[arg-type]
            yield client
        return
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    with serving(config, "http") as port:
        headers = {"Authorization": f"Bearer {create_token(config)}"}
        async with httpx2.AsyncClient(headers=headers) as http, Client(
                streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http),
                mode=mode) as client:  # type: ignore[arg-type]
            yield client


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_whole_session_on_each_revision(shop: Path, transport: str, mode: str) -> None:
    async with session(shop, transport, mode) as client:
        assert client.protocol_version == REVISIONS["legacy" if mode == "legacy" else "modern"]
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert all(t.input_schema.get("additionalProperties") is False for t in tools.values())

        seen = await call(client, "targets")
        assert {t["name"] for t in seen["targets"]} == {"shop", "admin"}
        schema = await call(client, "sql_schema", target="shop")
        assert "orders" in {t["name"] for t in schema["tables"]}
        rows = await call(client, "sql_query", target="shop", sql="SELECT count(*) FROM orders")
        assert rows["rows"] == [[12]]

        text = await refused(client, "sql_execute", target="shop", sql="DELETE FROM orders")
        assert "read-only" in text and "receipt: rcpt_" in text
        text = await refused(client, "sql_execute", target="admin", sql="DELETE FROM orders", dryrun=True)
        assert "'dryrun'" in text and "'dry_run'" in text and "receipt: rcpt_" in text
        assert orders(shop) == 12

        pending = await call(client, "sql_execute", target="admin", sql="DELETE FROM orders")
        assert pending["status"] == "pending" and pending["affected"] == 12
        assert orders(shop) == 12, "a pending action changes nothing"
        await anyio.sleep(0.25)
        answer = await client.call_tool("confirm", {"action_id": pending["pending"]["action_id"]})
        if answer.is_error:  # irreversible on this target: the agent cannot approve it itself
            assert "human" in answer.content[0].text, answer.content[0].text
            assert orders(shop) == 12
        else:
            done = answer.structured_content
            assert done is not None and done["status"] == "ok" and orders(shop) == 0
            undone = await call(client, "undo", receipt_id=done["receipt_id"])
            assert undone["affected"] == 12 and orders(shop) == 12

        outcomes = [r["outcome"] for r in (await call(client, "receipts", limit=50))["receipts"]]
        assert outcomes.count("refused") >= 2 and "pending" in outcomes, outcomes
