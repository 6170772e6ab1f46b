"""`safe-mcp client-config` and `safe-mcp bundle`: what each MCP client needs to start or reach safe-mcp.

Local (stdio) entries start `python -m safe_mcp serve --config F` with the Python of this install.
Remote entries (`--url`) reach a running `serve --transport http` with a bearer token that is never
printed here: the entries refer to $SAFE_MCP_TOKEN (or the client's own secret prompt). A Unix-socket URL
(`unix:///run/safe-mcp/mcp.sock`, from `serve --uds`) gives every client a `safe-mcp connect` entry.
"""

from __future__ import annotations

import json
import shlex
import sys
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["CLIENTS", "UNIX_SCHEMES", "bundle_manifest", "client_entry", "write_bundle"]

CLIENTS = ("cursor", "claude", "claude-code", "vscode")
TOKEN_ENV = "SAFE_MCP_TOKEN"  # noqa: S105 - the name of a variable, not a token
NAME = "safe-mcp"
UNIX_SCHEMES = ("unix:", "http+unix:")


def _stdio(config: Path) -> tuple[str, list[str]]:
    return sys.executable, ["-m", "safe_mcp", "serve", "--config", str(config)]


def _bridged(client: str, url: str) -> tuple[dict[str, Any], list[str]]:
    """A Unix-socket gateway (`serve --uds`): no client speaks HTTP over a socket, so every client starts
    `safe-mcp connect unix://...` over stdio, which holds the token (a 0600 file) and relays."""
    command, args = sys.executable, ["-m", "safe_mcp", "connect", url, "--token-file",
                                     "<path of a 0600 file holding the token>"]
    token_note = (f"the gateway's user creates the token (safe-mcp token create --name {client} --role agent); the "
                  "client's user keeps it in a file only it can read (umask 077) and puts that path in place of the "
                  "placeholder; the client's user must be in the socket's group ([server] uds_group / --uds-group)")
    if client == "claude-code":
        add = ["claude", "mcp", "add", "--transport", "stdio", NAME, "--", command, *args]
        return ({"mcpServers": {NAME: {"type": "stdio", "command": command, "args": args, "env": {}}}},
                ["run:  " + shlex.join(add), "or put the JSON above in .mcp.json at the project's root", token_note])
    if client == "vscode":
        return ({"servers": {NAME: {"type": "stdio", "command": command, "args": args}}},
                ["paste into .vscode/mcp.json in the workspace (or the user-level mcp.json)", token_note])
    where = {"cursor": "paste into ~/.cursor/mcp.json (or .cursor/mcp.json in a project), under mcpServers",
             "claude": "paste into claude_desktop_config.json (Settings > Developer > Edit Config), under mcpServers"}
    if client not in where:
        raise ValueError(f"unknown client {client!r}")
    return {"mcpServers": {NAME: {"command": command, "args": args}}}, [where[client], token_note]


def client_entry(client: str, config: Path, url: str | None) -> tuple[dict[str, Any], list[str]]:
    """The JSON document for `client`, and the lines that say where it goes (and any command to run)."""
    if url and url.startswith(UNIX_SCHEMES):
        return _bridged(client, url)
    command, args = _stdio(config)
    bearer = f"Bearer ${{{TOKEN_ENV}}}"
    token_note = (f"create the token with `safe-mcp token create --name {client} --role agent` and set {TOKEN_ENV} "
                  "in the environment the client starts from")
    if client == "cursor":
        entry: dict[str, Any] = ({"url": url, "headers": {"Authorization": f"Bearer ${{env:{TOKEN_ENV}}}"}} if url
                                 else {"command": command, "args": args})
        notes = ["paste into ~/.cursor/mcp.json (or .cursor/mcp.json in a project), under mcpServers"]
        return {"mcpServers": {NAME: entry}}, notes + ([token_note] if url else [])
    if client == "claude":
        if url:
            # Claude Desktop's config file starts local servers only: `safe-mcp connect` bridges its stdio to the
            # gateway over HTTP, holding only the client's token (read from a 0600 file, never the command line).
            entry = {"command": sys.executable, "args": ["-m", "safe_mcp", "connect", url, "--token-file",
                                                         "<path of a 0600 file holding the token>"]}
        else:
            entry = {"command": command, "args": args}
        notes = ["paste into claude_desktop_config.json (Settings > Developer > Edit Config), under mcpServers; "
                 "or install the one-file bundle: safe-mcp bundle"]
        if url:
            notes.append(f"write the token once: (umask 077; safe-mcp token create --name {client} --role agent > FILE), "
                         "then put FILE's path in place of the placeholder")
        return {"mcpServers": {NAME: entry}}, notes
    if client == "claude-code":
        if url:
            entry = {"type": "http", "url": url, "headers": {"Authorization": bearer}}
            add = ["claude", "mcp", "add", "--transport", "http", NAME, url, "--header", f"Authorization: {bearer}"]
        else:
            entry = {"type": "stdio", "command": command, "args": args, "env": {}}
            add = ["claude", "mcp", "add", "--transport", "stdio", NAME, "--", command, *args]
        notes = ["run:  " + shlex.join(add).replace(f"'Authorization: Bearer ${{{TOKEN_ENV}}}'",
                                                    f'"Authorization: Bearer ${TOKEN_ENV}"'),
                 "or put the JSON above in .mcp.json at the project's root (shared with the team: add --scope project "
                 "to the command to write it there)"]
        return {"mcpServers": {NAME: entry}}, notes + ([token_note] if url else [])
    if client == "vscode":
        if url:
            doc: dict[str, Any] = {
                "inputs": [{"type": "promptString", "id": "safe-mcp-token", "password": True,
                            "description": "safe-mcp token (safe-mcp token create --name vscode --role agent)"}],
                "servers": {NAME: {"type": "http", "url": url,
                                   "headers": {"Authorization": "Bearer ${input:safe-mcp-token}"}}}}
        else:
            doc = {"servers": {NAME: {"type": "stdio", "command": command, "args": args}}}
        notes = ["paste into .vscode/mcp.json in the workspace (or the user-level mcp.json: MCP: Open User Configuration)"]
        return doc, notes + (["VS Code asks for the token once and keeps it in its secret storage"] if url else [])
    raise ValueError(f"unknown client {client!r}")


def bundle_manifest(config: Path, version: str) -> dict[str, Any]:
    """An MCP Bundle manifest (spec 0.3) that starts safe-mcp from this install, with the config path as
    a setting the user can change in Claude Desktop."""
    return {
        "manifest_version": "0.3",
        "name": NAME,
        "display_name": "safe-mcp",
        "version": version,
        "description": "A safety gate between the agent and your databases, cloud account and mail: read-only by "
                       "default, confirm before destroying, receipts and undo for every write.",
        "author": {"name": "safe-mcp"},
        "license": "Apache-2.0",
        "server": {
            "type": "python",
            "entry_point": "server/main.py",
            "mcp_config": {
                # The Python of the install that wrote the bundle: safe-mcp and its drivers live there.
                "command": sys.executable,
                "args": ["${__dirname}/server/main.py", "--config", "${user_config.config_path}"],
                "env": {},
            },
        },
        "user_config": {
            "config_path": {
                "type": "file",
                "title": "safe-mcp config file",
                "description": "The safe-mcp.toml that names the targets the agent may touch",
                "required": True,
                "default": str(config),
            },
        },
        "tools_generated": True,
        "compatibility": {"platforms": [sys.platform if sys.platform in {"darwin", "win32"} else "linux"],
                          "runtimes": {"python": ">=3.11"}},
    }


_MAIN = '''"""Started by Claude Desktop from the safe-mcp bundle: serve over stdio with the configured file."""
import sys

try:
    from safe_mcp.faces.cli import main
except ImportError:
    sys.stderr.write("safe-mcp is not installed for " + sys.executable + "; run `safe-mcp bundle` again from "
                     "the install you want Claude Desktop to use\\n")
    raise SystemExit(2) from None

raise SystemExit(main(["serve", *sys.argv[1:]]))
'''


def write_bundle(out: Path, config: Path, version: str) -> dict[str, Any]:
    """Write the `.mcpb` (a zip of manifest.json and server/main.py) and return its manifest."""
    manifest = bundle_manifest(config, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=2) + "\n")
        z.writestr("server/main.py", _MAIN)
    return manifest
