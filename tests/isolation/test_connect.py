"""`safe-mcp connect` when things go wrong: the gateway is down, the token is wrong, the token is exposed.

Driven over stdio with raw JSON-RPC lines, as a client that only spawns stdio servers would: every request gets
exactly one answer, a notification none, and the bridge keeps running.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import free_port, serving, write_config

from safe_mcp.faces.demo import create_shop

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
NOTE = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def bridge(url: str, lines: list[Any], env: dict[str, str] | None = None, *args: str) -> tuple[list[dict[str, Any]], str, int]:
    """Run the bridge, feed it `lines` (JSON values, or raw strings as they are), close stdin; its answers."""
    data = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    base = {k: v for k, v in os.environ.items() if k != "SAFE_MCP_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "connect", url, *args], input=data, capture_output=True,
                       text=True, timeout=60, env={**base, **(env or {})})
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()], r.stderr, r.returncode


def test_gateway_down_answers_every_request_and_keeps_running() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    requests = [INIT, NOTE, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                {"jsonrpc": "2.0", "id": "three", "method": "tools/call", "params": {"name": "targets", "arguments": {}}}]
    answers, err, code = bridge(url, requests, {"SAFE_MCP_TOKEN": "smcp_x"})
    assert code == 0
    assert sorted(str(a["id"]) for a in answers) == ["1", "2", "three"]  # one answer per request, none for the note
    for a in answers:
        assert "result" not in a and a["error"]["code"] == -32000
        assert "not reachable" in a["error"]["message"] and url in a["error"]["message"]
        assert "safe-mcp serve --transport http" in a["error"]["message"]
    assert "not reachable" in err  # the notification's failure goes to stderr, not to the client


@pytest.fixture
def gateway(tmp_path: Path) -> Any:
    create_shop(tmp_path / "shop.db")
    cfg = write_config(tmp_path, '[targets.shop]\nkind = "sqlite"\npath = "shop.db"\n')
    with serving(cfg, "http") as port:
        yield f"http://127.0.0.1:{port}/mcp", cfg


def test_a_wrong_or_missing_token_says_how_to_get_one(gateway: Any) -> None:
    url, _cfg = gateway
    for env in ({"SAFE_MCP_TOKEN": "smcp_not-a-real-token"}, {}):
        answers, err, code = bridge(url, [INIT, NOTE, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}], env)
        assert code == 0 and [a["id"] for a in answers] == [1, 2]  # the refused notification: stderr, not the client
        assert err.count("401") >= 1
        for a in answers:
            assert "401" in a["error"]["message"] and "safe-mcp token create" in a["error"]["message"]
        if not env:
            assert "no token" in err


def test_raw_session_with_a_token_file(gateway: Any, tmp_path: Path) -> None:
    """The legacy handshake by hand: the session id and protocol version are carried, notifications pass,
    malformed lines get the gateway's own parse error."""
    from support import create_token

    url, cfg = gateway
    token_file = tmp_path / "token"
    token_file.write_text(create_token(cfg, name="raw") + "\n")
    token_file.chmod(0o600)
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "sql_query", "arguments": {"target": "shop", "sql": "SELECT count(*) FROM customers"}}}
    many = [{**call, "id": 100 + i} for i in range(12)]  # in flight together: each answered once, under its own id
    answers, err, code = bridge(url, [INIT, NOTE, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, call, *many,
                                      "{not json"], None, "--token-file", str(token_file))
    assert code == 0, err
    by_id = {a.get("id"): a for a in answers}
    assert by_id[1]["result"]["protocolVersion"] == "2025-11-25"
    assert "sql_query" in {t["name"] for t in by_id[2]["result"]["tools"]}
    db = sqlite3.connect(cfg.parent / "shop.db")
    assert by_id[3]["result"]["structuredContent"]["rows"] == [list(db.execute("SELECT count(*) FROM customers").fetchone())]
    db.close()
    assert sorted(a["id"] for a in answers if isinstance(a.get("id"), int) and a["id"] >= 100) == list(range(100, 112))
    assert all(by_id[100 + i]["result"]["structuredContent"]["rows"] == by_id[3]["result"]["structuredContent"]["rows"]
               for i in range(12))
    assert any("error" in a and a["error"]["code"] == -32700 for a in answers), answers  # the parse error, relayed


def test_the_token_never_comes_from_the_command_line_or_a_shared_file(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "connect", "http://127.0.0.1:1/mcp", "--token", "smcp_x"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "error:" in r.stderr  # no option takes the token itself
    shared = tmp_path / "token"
    shared.write_text("smcp_x\n")
    shared.chmod(0o644)
    _answers, err, code = bridge("http://127.0.0.1:1/mcp", [INIT], None, "--token-file", str(shared))
    assert code == 2 and "chmod 600" in err
    _answers, err, code = bridge("http://127.0.0.1:1/mcp", [INIT], None, "--token-env", "NO_SUCH_VAR_HERE")
    assert code == 2 and "NO_SUCH_VAR_HERE is not set" in err
    _answers, err, code = bridge("ftp://example/mcp", [INIT], {"SAFE_MCP_TOKEN": "smcp_x"})
    assert code == 2 and "http://" in err
