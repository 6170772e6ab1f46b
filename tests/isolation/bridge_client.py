"""The agent's side of the two-user test, run as the client's OS user (not collected by pytest).

Usage: python bridge_client.py URL TOKEN_FILE MODE (auto | legacy). Starts `safe-mcp connect URL --token-file F`
over stdio with the SDK's real client, drives every gate flow through it, and prints one JSON document: what
each tool answered, and the uids of this process and of the bridge it spawned.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
from mcp import Client, StdioServerParameters


async def call(c: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await c.call_tool(tool, args)
    if r.is_error:
        raise AssertionError(f"{tool} failed: {r.content[0].text if r.content else r}")
    assert r.structured_content is not None
    return dict(r.structured_content)


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid line")


def bridge_pids() -> list[int]:
    """Our children that run `safe_mcp connect` (the bridge the client spawned)."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == me and b"connect" in cmd:
            out.append(int(entry))
    return out


async def main(url: str, token_file: str, mode: str) -> dict[str, Any]:
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "safe_mcp", "connect", url, "--token-file", token_file])
    out: dict[str, Any] = {"uid": os.getuid()}
    async with Client(params, mode=mode) as c:  # type: ignore[arg-type]
        out["bridge_uids"] = [uid_of(p) for p in bridge_pids()]
        out["tools"] = sorted(t.name for t in (await c.list_tools()).tools)
        out["targets"] = await call(c, "targets")
        out["query"] = await call(c, "sql_query", target="shop", sql="SELECT count(*) FROM items")
        out["insert"] = await call(c, "sql_execute", target="shop", sql="INSERT INTO items (name) VALUES ('bridged')")
        out["delete"] = await call(c, "sql_execute", target="shop", sql="DELETE FROM items")
        out["confirm"] = await call(c, "confirm", action_id=out["delete"]["pending"]["action_id"])
        out["after_delete"] = await call(c, "sql_query", target="shop", sql="SELECT count(*) FROM items")
        out["undo_delete"] = await call(c, "undo", receipt_id=out["confirm"]["receipt_id"])
        out["undo_insert"] = await call(c, "undo", receipt_id=out["insert"]["receipt_id"])
        out["receipts"] = await call(c, "receipts", limit=50)
        bad = await c.call_tool("sql_execute", {"target": "nope", "sql": "SELECT 1"})
        out["refusal"] = {"is_error": bad.is_error, "text": bad.content[0].text if bad.content else ""}
    return out


if __name__ == "__main__":
    print(json.dumps(anyio.run(main, *sys.argv[1:4])))
