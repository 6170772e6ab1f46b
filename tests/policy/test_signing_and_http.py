"""Signed policies (accepted; a one-byte edit, unsigned or another key refused) and HTTP/SSE token auth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from support import call, create_token, free_port, http_client, serve_cmd, wait_port, write_config

pytestmark = pytest.mark.anyio

SQLITE = '[targets.shop]\nkind = "sqlite"\npath = "shop.db"\n'


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "safe_mcp", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_signed_policy_accepted_one_byte_edit_refused(tmp_path: Path) -> None:
    assert run("policy", "keygen", "--out", str(tmp_path / "k")).returncode == 0
    assert (tmp_path / "k" / "policy.key").stat().st_mode & 0o077 == 0
    cfg = write_config(tmp_path, SQLITE)
    pol = write_config(tmp_path, '[max_access]\n"*" = "read-only"\n', name="org.toml")
    pinned = {"SAFE_MCP_POLICY_PUBKEY": str(tmp_path / "k" / "policy.pub"), "SAFE_MCP_POLICY": str(pol)}
    r = run("check", "--offline", "--config", str(cfg), env=pinned)
    assert r.returncode == 2 and "not signed" in r.stderr, r.stderr
    assert run("policy", "sign", str(pol), "--key", str(tmp_path / "k" / "policy.key")).returncode == 0
    r = run("check", "--offline", "--format", "json", "--config", str(cfg), env=pinned)
    assert r.returncode == 0, r.stderr
    assert '"org_policy": {' in r.stdout
    data = bytearray(pol.read_bytes())
    data[data.index(b"read-only")] = ord("R")
    pol.write_bytes(bytes(data))
    r = run("check", "--offline", "--config", str(cfg), env=pinned)
    assert r.returncode == 2 and "does not match its signature" in r.stderr and str(pol) in r.stderr
    # signed with another key
    run("policy", "keygen", "--out", str(tmp_path / "other"))
    pol.write_text('[max_access]\n"*" = "read-only"\n')
    run("policy", "sign", str(pol), "--key", str(tmp_path / "other" / "policy.key"))
    assert "does not match" in run("check", "--offline", "--config", str(cfg), env=pinned).stderr
    # a pinned key with no policy at all refuses too
    r = run("check", "--offline", "--config", str(cfg), env={"SAFE_MCP_POLICY_PUBKEY": pinned["SAFE_MCP_POLICY_PUBKEY"],
                                                             "SAFE_MCP_POLICY": ""})
    assert r.returncode == 2 and "no org policy was found" in r.stderr


async def test_policy_digest_in_every_receipt(tmp_path: Path) -> None:
    from safe_mcp.trust.orgpolicy import effective_config

    cfg = write_config(tmp_path, SQLITE)
    pol = write_config(tmp_path, '[max_limits]\nrows_returned = 10\n', name="org.toml")
    plain, clamped = effective_config(cfg), effective_config(cfg, str(pol))
    assert plain.policy_digest() != clamped.policy_digest()


def _serve(cfg: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(serve_cmd(cfg, "--transport", "http", "--port", str(port), *extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port, proc)
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stderr:
        proc.stderr.close()


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_http_needs_a_live_token_and_names_it_in_receipts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, SQLITE)
    token = create_token(cfg, name="alice")
    proc, port = _serve(cfg)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with httpx2.AsyncClient() as http:
            assert (await http.post(url, json=INIT, headers=HEADERS)).status_code == 401
            bad = {**HEADERS, "Authorization": "Bearer smcp_not-a-token"}
            assert (await http.post(url, json=INIT, headers=bad)).status_code == 401
            evil = {**HEADERS, "Authorization": f"Bearer {token}", "Origin": "http://evil.example"}
            assert (await http.post(url, json=INIT, headers=evil)).status_code == 403
            approver = create_token(cfg, name="bob", role="approver")
            wrong_role = {**HEADERS, "Authorization": f"Bearer {approver}"}
            assert (await http.post(url, json=INIT, headers=wrong_role)).status_code == 403
        async with http_client(url, cfg, token=token) as client:
            await call(client, "targets")
            last = (await call(client, "receipts", limit=5))["receipts"]
        assert run("token", "revoke", "alice", "--config", str(cfg)).returncode == 0
        async with httpx2.AsyncClient() as http:
            ok = {**HEADERS, "Authorization": f"Bearer {token}"}
            assert (await http.post(url, json=INIT, headers=ok)).status_code == 401
        listed = run("token", "list", "--config", str(cfg)).stdout
        assert "alice" in listed and "revoked" in listed and token not in listed
    finally:
        _stop(proc)
    assert all(token not in str(r) for r in last)


async def test_receipt_names_the_token(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "shop.db")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    cfg = write_config(tmp_path, SQLITE)
    proc, port = _serve(cfg)
    try:
        async with http_client(f"http://127.0.0.1:{port}/mcp", cfg, token=create_token(cfg, name="ci-bot")) as client:
            await call(client, "sql_query", target="shop", sql="SELECT * FROM t")
            receipts = (await call(client, "receipts", limit=5))["receipts"]
    finally:
        _stop(proc)
    assert any(r["client"].startswith("token:ci-bot via ") for r in receipts), receipts


def test_listener_rules(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, SQLITE)
    r = run("serve", "--transport", "http", "--host", "0.0.0.0", "--config", str(cfg))
    assert r.returncode == 2 and "server.allowed_hosts" in r.stderr
    none = write_config(tmp_path, SQLITE + '[server]\nauth = "none"\nallowed_hosts = ["h:1"]\nallowed_origins = ["https://h"]\n',
                        name="none.toml")
    r = run("serve", "--transport", "sse", "--host", "0.0.0.0", "--config", str(none))
    assert r.returncode == 2 and "without authentication" in r.stderr
    full = write_config(tmp_path, SQLITE + '[server]\nallowed_hosts = ["h:1"]\nallowed_origins = ["https://h"]\n',
                        name="full.toml")
    pol = write_config(tmp_path, '[network]\nbind_beyond_loopback = false\n', name="org.toml")
    r = run("serve", "--transport", "http", "--host", "0.0.0.0", "--config", str(full), "--policy", str(pol))
    assert r.returncode == 2 and "network.bind_beyond_loopback" in r.stderr


async def test_loopback_opt_out_warns_loudly(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, SQLITE + '[server]\nauth = "none"\n')
    proc, port = _serve(cfg)
    try:
        async with httpx2.AsyncClient() as http:
            r = await http.post(f"http://127.0.0.1:{port}/mcp", json=INIT, headers=HEADERS)
            assert r.status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"authentication is OFF" in err
