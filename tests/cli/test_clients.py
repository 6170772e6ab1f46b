"""`client-config` for every client, local and remote, and the Claude Desktop bundle: each form is
checked by starting or reaching the real server with exactly what was printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, run, shop
from mcp import Client, StdioServerParameters
from support import create_token, http_client, require, serving

pytestmark = pytest.mark.anyio

MCPB = ROOT / ".tools" / "node_modules" / ".bin" / "mcpb"
URL = "https://mcp.internal:8765/mcp"


def _servers(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get("mcpServers") or doc["servers"]


async def _tools_of(command: str, args: list[str], env: dict[str, str] | None = None) -> set[str]:
    async with Client(StdioServerParameters(command=command, args=args, env={**os.environ, **(env or {})})) as c:
        return {t.name for t in (await c.list_tools()).tools}


@pytest.mark.parametrize("client", ["cursor", "claude", "claude-code", "vscode"])
async def test_local_entries_start_the_server(tmp_path: Path, client: str) -> None:
    cfg = shop(tmp_path)
    r = run("client-config", client, "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    entry = _servers(json.loads(r.stdout))["safe-mcp"]
    if client in {"claude-code", "vscode"}:
        assert entry["type"] == "stdio"
    assert entry["args"][-2:] == ["--config", str(cfg.resolve())]
    assert "sql_query" in await _tools_of(entry["command"], entry["args"])


def test_claude_code_prints_the_command_and_the_mcp_json(tmp_path: Path) -> None:
    cfg = shop(tmp_path)
    r = run("client-config", "claude-code", "--config", str(cfg))
    assert json.loads(r.stdout)["mcpServers"]["safe-mcp"]["type"] == "stdio"
    add = next(x for x in r.stderr.splitlines() if "claude mcp add" in x)
    assert add.startswith("# run:  claude mcp add --transport stdio safe-mcp -- ") and str(cfg.resolve()) in add
    assert ".mcp.json" in r.stderr
    remote = run("client-config", "claude-code", "--url", URL, "--config", str(cfg))
    add = next(x for x in remote.stderr.splitlines() if "claude mcp add" in x)
    assert f"claude mcp add --transport http safe-mcp {URL} --header \"Authorization: Bearer $SAFE_MCP_TOKEN\"" in add


def test_vscode_uses_servers_and_a_secret_prompt(tmp_path: Path) -> None:
    cfg = shop(tmp_path)
    doc = json.loads(run("client-config", "vscode", "--config", str(cfg)).stdout)
    assert set(doc) == {"servers"}
    remote = json.loads(run("client-config", "vscode", "--url", URL, "--config", str(cfg)).stdout)
    server = remote["servers"]["safe-mcp"]
    assert server == {"type": "http", "url": URL, "headers": {"Authorization": "Bearer ${input:safe-mcp-token}"}}
    assert remote["inputs"][0]["id"] == "safe-mcp-token" and remote["inputs"][0]["password"] is True


@pytest.mark.parametrize("client", ["cursor", "claude-code", "vscode", "claude"])
def test_remote_entries_carry_a_bearer_header_and_no_token(tmp_path: Path, client: str) -> None:
    cfg = shop(tmp_path)
    r = run("client-config", client, "--url", URL, "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    text = r.stdout
    if client == "claude":  # a stdio bridge that reads the token from a 0600 file and sends the header itself
        assert URL in text and '"connect"' in text and "--token-file" in text
    else:
        assert URL in text and "Bearer" in text and "Authorization" in text
    assert "safe-mcp token create" in r.stderr + text, "says where the token comes from"
    assert not (tmp_path / ".safe-mcp" / "tokens").exists()
    assert run("client-config", client, "--url", "mcp.internal:8765", "--config", str(cfg)).returncode == 2


async def test_the_remote_form_reaches_a_real_http_server(tmp_path: Path) -> None:
    cfg = shop(tmp_path)
    with serving(cfg, "http") as port:
        url = f"http://127.0.0.1:{port}/mcp"
        entry = json.loads(run("client-config", "claude-code", "--url", url, "--config", str(cfg)).stdout)
        server = entry["mcpServers"]["safe-mcp"]
        token = create_token(cfg, name="remote-form")
        header = server["headers"]["Authorization"].replace("${SAFE_MCP_TOKEN}", token)
        assert header == f"Bearer {token}"
        async with http_client(server["url"], cfg, token=token) as c:
            assert "sql_query" in {t.name for t in (await c.list_tools()).tools}


def test_client_config_refuses_a_config_that_does_not_exist(tmp_path: Path) -> None:
    r = run("client-config", "cursor", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "no such config file" in r.stderr and r.stdout == ""
    broken = tmp_path / "broken.toml"
    broken.write_text('[targets.db]\nkind = "sqlite"\npath = "x.db"\nacess = "read-write"\n')
    r = run("client-config", "claude", "--config", str(broken))
    assert r.returncode == 2 and "did you mean 'access'" in r.stderr
    assert run("bundle", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "x.mcpb")).returncode == 2
    assert not (tmp_path / "x.mcpb").exists()


async def test_bundle_is_a_valid_mcpb_that_starts_the_server(tmp_path: Path) -> None:
    cfg = shop(tmp_path / "shop")
    out = tmp_path / "dist" / "safe-mcp.mcpb"
    r = run("bundle", "--config", str(cfg), "--out", str(out))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["manifest.json", "server/main.py"]
        manifest = json.loads(z.read("manifest.json"))
        z.extractall(tmp_path / "unpacked")
    assert manifest["server"]["type"] == "python" and manifest["server"]["entry_point"] == "server/main.py"
    assert manifest["user_config"]["config_path"]["type"] == "file"
    assert manifest["user_config"]["config_path"]["default"] == str(cfg.resolve())

    # Start it as Claude Desktop does: ${__dirname} is the unpacked bundle, ${user_config.*} the settings.
    mcp = manifest["server"]["mcp_config"]
    args = [a.replace("${__dirname}", str(tmp_path / "unpacked")).replace("${user_config.config_path}", str(cfg))
            for a in mcp["args"]]
    assert "sql_query" in await _tools_of(mcp["command"], args, mcp.get("env"))

    require(MCPB.exists() and shutil.which("node") is not None,
            f"the MCP Bundle CLI is not installed at {MCPB} (scripts/test installs @anthropic-ai/mcpb)")
    checked = subprocess.run([str(MCPB), "validate", str(tmp_path / "unpacked" / "manifest.json")],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    info = subprocess.run([str(MCPB), "info", str(out)], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "safe-mcp.mcpb" in info.stdout, info.stdout + info.stderr
    # The validator has teeth: a manifest without its server is rejected.
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({k: v for k, v in manifest.items() if k != "server"}))
    assert subprocess.run([str(MCPB), "validate", str(broken)], capture_output=True, timeout=120).returncode != 0


def test_client_config_does_not_start_anything_heavy() -> None:
    """Printing a snippet imports no driver and no MCP server code."""
    code = ("import sys\nfrom safe_mcp.faces.cli_clients import client_entry\n"
            "print(','.join(m for m in ('boto3', 'psycopg', 'mcp.server', 'safe_mcp.gate.pipeline') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_the_cli_parser_loads_no_command_modules() -> None:
    """`serve` is started often by clients: the CLI itself imports the table, view and client modules
    only for the commands that print them."""
    code = ("import sys\nimport safe_mcp.faces.cli as c\nc._parser()\n"
            "print(','.join(m for m in ('pydantic', 'mcp', 'zipfile', 'safe_mcp.faces.cli_table', 'safe_mcp.faces.cli_views', "
            "'safe_mcp.faces.cli_clients', 'safe_mcp.gate.inventory') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
