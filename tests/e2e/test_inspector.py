"""safe-mcp driven by a client we did not write: the MCP Inspector's CLI (installed by scripts/test)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import SHOP_TARGETS, require, write_config

from safe_mcp.faces.demo import create_shop

INSPECTOR = Path(__file__).resolve().parents[2] / ".tools" / "node_modules" / ".bin" / "mcp-inspector"

CONFIG = SHOP_TARGETS


@pytest.fixture
def inspect(tmp_path: Path) -> Callable[..., tuple[int, Any]]:
    require(INSPECTOR.exists(), f"the MCP Inspector CLI is not installed at {INSPECTOR} (scripts/test installs it)")
    create_shop(tmp_path / "shop.db")
    cfg = write_config(tmp_path, CONFIG)

    def run(*args: str) -> tuple[int, Any]:
        r = subprocess.run([str(INSPECTOR), "--cli", "-e", f"SAFE_MCP_CONFIG={cfg}", sys.executable, "-m", "safe_mcp",
                            "serve", *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))
        assert r.stdout.strip(), r.stderr
        return r.returncode, json.loads(r.stdout)

    return run


def test_the_inspector_lists_honest_tools(inspect: Callable[..., tuple[int, Any]]) -> None:
    _rc, out = inspect("--method", "tools/list")
    tools = {t["name"]: t for t in out["tools"]}
    assert {"targets", "sql_query", "sql_execute", "sql_schema", "confirm", "undo", "receipts"} <= set(tools)
    assert tools["sql_query"]["annotations"]["readOnlyHint"] is True
    assert tools["sql_execute"]["annotations"]["destructiveHint"] is True
    assert "outputSchema" in tools["sql_execute"]


def test_the_inspector_reads_and_is_refused_a_write(inspect: Callable[..., tuple[int, Any]]) -> None:
    rc, out = inspect("--method", "tools/call", "--tool-name", "sql_query", "--tool-arg", "target=shop",
                      "--tool-arg", "sql=SELECT count(*) AS n FROM orders")
    assert rc == 0 and out["structuredContent"]["rows"] == [[12]]
    rc, out = inspect("--method", "tools/call", "--tool-name", "sql_execute", "--tool-arg", "target=shop",
                      "--tool-arg", "sql=DROP TABLE orders")
    assert rc == 5 and out["isError"] is True  # the Inspector's exit code for a tool error
    assert "read-only" in out["content"][0]["text"]
    rc, out = inspect("--method", "tools/call", "--tool-name", "sql_execute", "--tool-arg", "target=admin",
                      "--tool-arg", "sql=DELETE FROM orders")
    assert rc == 0 and out["structuredContent"]["status"] == "pending"


def test_a_whole_session_through_the_inspector(inspect: Callable[..., tuple[int, Any]], tmp_path: Path) -> None:
    """Each Inspector call is a fresh server on 2025-11-25; the state (pending actions, receipts) carries over."""

    def tool(name: str, **args: str) -> tuple[int, Any]:
        flags = [f for k, v in args.items() for f in ("--tool-arg", f"{k}={v}")]
        return inspect("--method", "tools/call", "--tool-name", name, *flags)

    rc, out = tool("targets")
    assert rc == 0 and {t["name"] for t in out["structuredContent"]["targets"]} == {"shop", "admin"}
    rc, out = tool("sql_schema", target="shop", table="orders")
    assert rc == 0 and out["structuredContent"]["tables"][0]["name"] == "orders"
    rc, out = tool("sql_execute", target="admin", sql="DELETE FROM orders", dryrun="true")
    assert rc == 5 and "no argument 'dryrun'" in out["content"][0]["text"] and "'dry_run'" in out["content"][0]["text"]
    rc, out = tool("sql_query", target="shop")
    assert rc == 5 and "required argument sql is missing" in out["content"][0]["text"]
    rc, out = tool("sql_execute", target="admin", sql="DELETE FROM orders WHERE id = 1")
    assert rc == 0 and out["structuredContent"]["status"] in ("ok", "pending")
    rc, out = tool("receipts", limit="20")
    assert rc == 0
    outcomes = [r["outcome"] for r in out["structuredContent"]["receipts"]]
    assert outcomes.count("refused") >= 2, outcomes
    with sqlite3.connect(tmp_path / "shop.db") as db:
        left = db.execute("SELECT count(*) FROM orders").fetchone()[0]
    assert left in (11, 12)
