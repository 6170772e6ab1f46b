"""Every tool takes exactly the arguments it declares, of the types it declares, with values a target can take.

A violation is refused before anything runs, in the gate's words, with a receipt; the target is unchanged and
the same session keeps serving. Checked for every tool the server lists, over memory, stdio and HTTP.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from support import SHOP_TARGETS, call, connect, refused, write_config

from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

UPDATE = "UPDATE products SET price_cents = price_cents + 1"


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, SHOP_TARGETS)


def prices(config: Path) -> list[Any]:
    with sqlite3.connect(config.parent / "shop.db") as db:
        return db.execute("SELECT id, price_cents FROM products ORDER BY id").fetchall()


async def receipt_of(client: Client, text: str) -> dict[str, Any]:
    """The refusal receipt quoted at the end of an error text, looked up through the receipts tool."""
    assert "receipt: rcpt_" in text, text
    rid = text.rsplit("receipt: ", 1)[1].split()[0].rstrip(".")
    found = await call(client, "receipts", receipt_id=rid)
    receipt: dict[str, Any] = found["receipts"][0]
    assert receipt["decision"] == "refuse" and receipt["outcome"] == "refused", receipt
    return receipt


async def still_serves(client: Client) -> None:
    rows = await call(client, "sql_query", target="shop", sql="SELECT count(*) FROM orders")
    assert rows["rows"] == [[12]]


async def test_every_listed_tool_declares_a_closed_input_schema(shop: Path) -> None:
    async with connect(shop) as client:
        tools = (await client.list_tools()).tools
        assert len(tools) >= 7
        for tool in tools:
            assert tool.input_schema.get("additionalProperties") is False, tool.name


@pytest.mark.parametrize("transport", ["memory", "stdio", "http"])
async def test_a_misspelt_safety_flag_is_refused_and_nothing_runs(shop: Path, transport: str) -> None:
    before = prices(shop)
    async with connect(shop, transport) as client:
        text = await refused(client, "sql_execute", target="admin", sql=UPDATE, dryrun=True)
        assert text.startswith("Error executing tool sql_execute: refused: ") and "to proceed: " in text
        assert "'dryrun'" in text and "'dry_run'" in text, text
        for name in ("target", "sql", "params", "idempotency_key", "dry_run", "run_id"):
            assert name in text.split("to proceed: ")[1]
        receipt = await receipt_of(client, text)
        assert receipt["tool"] == "sql_execute" and receipt["target"] == "admin"
        assert receipt["args"]["dryrun"] is True
        await still_serves(client)
    assert prices(shop) == before, "a refused call must change nothing"


async def test_unknown_arguments_are_refused_on_every_tool(shop: Path) -> None:
    async with connect(shop) as client:
        for tool in (await client.list_tools()).tools:
            text = await refused(client, tool.name, target="shop", surprise=1)
            assert "'surprise'" in text and "receipt: rcpt_" in text, (tool.name, text)
            for name in tool.input_schema["properties"]:
                assert name in text, (tool.name, name, text)
        await still_serves(client)


@pytest.mark.parametrize("transport", ["memory", "stdio", "http"])
async def test_wrong_types_and_missing_arguments_are_refused_in_the_gates_words(shop: Path, transport: str) -> None:
    before = prices(shop)
    async with connect(shop, transport) as client:
        for args, words in [
            ({"target": "admin", "sql": 5}, "sql should be a string"),
            ({"target": "admin"}, "the required argument sql is missing"),
            ({"target": "admin", "sql": UPDATE, "dry_run": "perhaps"}, "dry_run should be true or false"),
            ({"target": ["admin"], "sql": UPDATE}, "target should be a string"),
        ]:
            text = await refused(client, "sql_execute", **args)
            assert "refused: " in text and words in text and "to proceed: " in text, text
            assert "validation error" not in text and "pydantic" not in text and "input_value" not in text, text
            await receipt_of(client, text)
        await still_serves(client)
    assert prices(shop) == before


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("integer beyond 64 bits", {"sql": "SELECT ?", "params": [2**80]}, "beyond 64 bits"),
    ("unsigned 64-bit integer", {"sql": "SELECT ?", "params": [2**63]}, "beyond 64 bits"),
    ("negative beyond 64 bits", {"sql": "SELECT ?", "params": [-(2**63) - 1]}, "beyond 64 bits"),
    ("deep nesting", {"sql": "SELECT 1", "params": {"a": nested(40)}}, "deeper than 32"),
    ("integers as JSON text", {"sql": "SELECT ?", "params": "[" + str(2**70) + "]"}, "beyond 64 bits"),
]


# Lone surrogates and infinities cannot leave the mcp Client (UTF-8, JSON null); tests/protocol/test_malformed.py sends
# them raw over stdio and HTTP.
@pytest.mark.parametrize("transport", ["memory", "stdio", "http"])
async def test_values_no_driver_binds_are_refused_at_the_boundary(shop: Path, transport: str) -> None:
    async with connect(shop, transport) as client:
        for label, args, words in BAD_VALUES:
            text = await refused(client, "sql_query", target="shop", **args)
            assert "refused: " in text and words in text and "to proceed: " in text, (label, text)
            receipt = await receipt_of(client, text)
            assert receipt["target"] == "shop", label
            await still_serves(client)
        # a write with one of them: nothing runs
        before = prices(shop)
        text = await refused(client, "sql_execute", target="admin", sql=UPDATE + " WHERE id = ?", params=[2**64])
        await receipt_of(client, text)
        assert prices(shop) == before


async def test_a_crash_inside_a_tool_is_a_receipted_refusal(shop: Path, tmp_path: Path) -> None:
    """Anything unexpected inside a tool is answered and receipted; its own text stays on the server."""
    from safe_mcp.faces.server import build_server
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.config import load_config

    server = build_server(Runtime(load_config(shop)))

    @server.tool()
    async def boom(target: str) -> str:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    async with Client(server) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "boom")
        assert tool.input_schema["additionalProperties"] is False, "tools added later are strict too"
        text = await refused(client, "boom", target="shop")
        assert "refused: boom failed inside safe-mcp (OverflowError)" in text and "to proceed: " in text, text
        assert "SQLite INTEGER" not in text
        await receipt_of(client, text)
        assert "'extra'" in await refused(client, "boom", target="shop", extra=1)
        await still_serves(client)
