"""The same session over every transport a client uses: in memory, stdio and streamable HTTP."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from support import SHOP_TARGETS, TRANSPORTS, call, connect, refused, write_config

from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

CONFIG = SHOP_TARGETS + """
[confirm]
min_delay_s = 0.2
"""


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, CONFIG)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_read_refuse_pending_confirm_undo(shop: Path, transport: str) -> None:
    async with connect(shop, transport) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"targets", "sql_query", "sql_execute", "sql_schema", "confirm", "undo", "receipts"} <= set(tools)
        assert tools["sql_query"].annotations.read_only_hint is True
        assert tools["sql_execute"].annotations.read_only_hint is False
        assert tools["sql_execute"].output_schema is not None

        rows = await call(client, "sql_query", target="shop", sql="SELECT count(*) FROM orders")
        assert rows["rows"] == [[12]] and rows["receipt_id"].startswith("rcpt_")

        text = await refused(client, "sql_execute", target="shop", sql="DELETE FROM orders WHERE id = 1")
        assert "read-only" in text and 'access = "read-write"' in text

        pending = await call(client, "sql_execute", target="admin", sql="DELETE FROM orders")
        assert pending["status"] == "pending" and pending["affected"] == 12
        assert len(pending["pending"]["preview"]["sample"]) == 5
        still = await call(client, "sql_query", target="shop", sql="SELECT count(*) FROM orders")
        assert still["rows"] == [[12]], "a pending action must change nothing"

        await anyio.sleep(0.25)
        done = await call(client, "confirm", action_id=pending["pending"]["action_id"])
        assert done["status"] == "ok" and done["affected"] == 12
        gone = await call(client, "sql_query", target="shop", sql="SELECT count(*) FROM orders")
        assert gone["rows"] == [[0]]

        undone = await call(client, "undo", receipt_id=done["receipt_id"])
        assert undone["affected"] == 12
        back = await call(client, "sql_query", target="shop", sql="SELECT * FROM orders ORDER BY id")
        assert len(back["rows"]) == 12 and back["rows"][0][0] == 1

        found = await call(client, "receipts", receipt_id=done["receipt_id"])
        assert found["receipts"][0]["outcome"] == "executed"


async def test_sse_refuses_a_request_without_a_token(shop: Path) -> None:
    import httpx2
    from support import serving

    with serving(shop, "sse") as port:
        async with httpx2.AsyncClient() as http:
            r = await http.post(f"http://127.0.0.1:{port}/messages/?session_id=x", json={})
            assert r.status_code == 401
            r = await http.get(f"http://127.0.0.1:{port}/sse", headers={"Origin": "http://evil.example"})
            assert r.status_code in (401, 403)


async def test_http_listener_serves_the_approval_page_without_an_agent_token(shop: Path) -> None:
    import httpx2
    from support import serving

    with serving(shop, "http") as port:
        async with httpx2.AsyncClient() as http:
            page = await http.get(f"http://127.0.0.1:{port}/approvals")
            assert page.status_code == 200 and "approv" in page.text.lower()
            rebinding = await http.get(f"http://127.0.0.1:{port}/approvals", headers={"Host": "evil.example"})
            assert rebinding.status_code in (403, 421)
            mcp = await http.post(f"http://127.0.0.1:{port}/mcp", json={})
            assert mcp.status_code == 401, "the MCP endpoint itself still needs a token"


async def test_a_client_on_the_2025_11_25_protocol(shop: Path) -> None:
    """Most clients in the field (the Inspector CLI among them) still speak the 2025-11-25 protocol."""
    import os
    import sys

    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "safe_mcp", "serve", "--config", str(shop)],
                                   env=dict(os.environ))
    async with Client(params, mode="legacy") as client:
        rows = await call(client, "sql_query", target="shop", sql="SELECT count(*) FROM orders")
        assert rows["rows"] == [[12]]
        pending = await call(client, "sql_execute", target="admin", sql="DELETE FROM orders")
        assert pending["status"] == "pending"
        await anyio.sleep(0.25)
        done = await call(client, "confirm", action_id=pending["pending"]["action_id"])
        assert done["affected"] == 12
        await call(client, "undo", receipt_id=done["receipt_id"])
        text = await refused(client, "sql_execute", target="shop", sql="DROP TABLE orders")
        assert "read-only" in text
