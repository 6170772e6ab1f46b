"""The gateway in its own failure domain: it runs as one OS user, the agent's client as another.

The client reaches every tool through `safe-mcp connect` (holding only its bearer token), and cannot read the
secrets file or the state, nor write the config, the state or the target's database: checked by trying, as
that user, not by asking safe-mcp. `safe-mcp check --client-user` must predict exactly that.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import free_port, stop, wait_port
from users import ISOLATION_DIR, as_user, os_user, own, probe, python_paths, require_root, traversable, uid_of

pytestmark = pytest.mark.sqlite_state

CONFIG = """
[targets.shop]
kind = "sqlite"
path = "shop.db"
access = "read-write"

[targets.mail]
kind = "smtp"
host = "127.0.0.1"
port = 2
tls = "none"
username = "agent@example.com"
password = "keyring:mailpw"
from = "agent@example.com"
allow_recipients = ["*@example.com"]
hold_s = 600
access = "read-write"

[confirm]
min_delay_s = 0
"""
MAIL_PASSWORD = "s3cret-mail-password-for-isolation"  # a test value, checked to never leak


class Setup:
    def __init__(self, base: Path, gw: pwd.struct_passwd, cl: pwd.struct_passwd) -> None:
        self.gw, self.cl = gw, cl
        self.gw_home, self.cl_home = base / "gateway", base / "client"
        self.config = self.gw_home / "safe-mcp.toml"
        self.secrets = self.gw_home / "secrets.toml"
        self.db = self.gw_home / "shop.db"
        self.state = self.gw_home / ".safe-mcp"
        self.token = self.cl_home / "token"
        self.env = {"SAFE_MCP_SECRETS_FILE": str(self.secrets)}

    def as_gw(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "safe_mcp", *args], capture_output=True, text=True, timeout=120,
                              check=check, **as_user(self.gw, self.gw_home, self.env))


@pytest.fixture(scope="module")
def two_users() -> Iterator[Setup]:
    require_root()
    base = Path(tempfile.mkdtemp(prefix="safe-mcp-iso-"))
    try:
        with os_user("safe_mcp_gw") as gw, os_user("safe_mcp_cl") as cl, traversable([*python_paths(), base]) as opened:
            if opened:  # the interpreter lives under a directory other users cannot enter (/root): said, not hidden
                print(f"opened o+x for the test (restored after): {', '.join(opened)}", file=sys.stderr)
            os.chmod(base, 0o711)
            s = Setup(base, gw, cl)
            s.gw_home.mkdir()
            s.cl_home.mkdir()
            own(s.gw_home, gw, 0o700)
            own(s.cl_home, cl, 0o700)
            s.config.write_text(textwrap.dedent(CONFIG), encoding="utf-8")
            own(s.config, gw, 0o600)
            db = sqlite3.connect(s.db)
            db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
            db.executemany("INSERT INTO items (name) VALUES (?)", [("a",), ("b",), ("c",)])
            db.commit()
            db.close()
            own(s.db, gw, 0o600)
            # The secret is stored by the gateway's user with the CLI, as an operator would.
            subprocess.run([sys.executable, "-m", "safe_mcp", "secrets", "set", "mailpw", "--file", str(s.secrets)],
                           input=MAIL_PASSWORD + "\n", text=True, check=True, capture_output=True,
                           **as_user(gw, s.gw_home))
            token = s.as_gw("token", "create", "--config", str(s.config), "--name", "agent-client").stdout.strip()
            s.token.write_text(token + "\n", encoding="utf-8")
            own(s.token, cl, 0o600)
            yield s
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(two_users: Setup) -> Iterator[tuple[str, int]]:
    """`safe-mcp serve --transport http` as the gateway's user; yields (URL, pid)."""
    s = two_users
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "safe_mcp", "serve", "--transport", "http", "--port", str(port),
                                 "--config", str(s.config)], stdout=subprocess.DEVNULL, stderr=log,
                                **as_user(s.gw, s.gw_home, s.env))
        try:
            wait_port(port, proc)
            yield f"http://127.0.0.1:{port}/mcp", proc.pid
        finally:
            stop(proc)
            log.seek(0)
            text = log.read().decode(errors="replace")
            assert "Traceback" not in text, text
            assert MAIL_PASSWORD not in text


def _rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, name FROM items ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_every_tool_works_through_the_bridge_as_another_user(two_users: Setup, gateway: tuple[str, int],
                                                             mode: str) -> None:
    s, (url, pid) = two_users, gateway
    before = _rows(s.db)
    r = subprocess.run([sys.executable, str(ISOLATION_DIR / "bridge_client.py"), url, str(s.token), mode],
                       capture_output=True, text=True, timeout=180, **as_user(s.cl, s.cl_home))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    # who ran what: the gateway as its user, the client and the bridge it spawned as the client's user
    assert uid_of(pid) == s.gw.pw_uid
    assert out["uid"] == s.cl.pw_uid
    assert out["bridge_uids"] and set(out["bridge_uids"]) == {s.cl.pw_uid}
    assert {"targets", "sql_query", "sql_execute", "confirm", "undo", "receipts"} <= set(out["tools"])
    assert {t["name"] for t in out["targets"]["targets"]} == {"shop", "mail"}
    assert out["query"]["rows"] == [[len(before)]]
    assert out["insert"]["status"] == "ok" and out["insert"]["affected"] == 1
    assert out["delete"]["status"] == "pending" and out["delete"]["effect"] == "destructive"
    assert out["confirm"]["status"] == "ok" and out["after_delete"]["rows"] == [[0]]
    assert out["undo_delete"]["status"] == "ok" and out["undo_insert"]["status"] == "ok"
    assert out["refusal"]["is_error"] and "unknown target 'nope'" in out["refusal"]["text"]
    # the real state afterwards: the rows are back, and the ledger (read by root) holds every step under the token
    assert _rows(s.db) == before
    conn = sqlite3.connect(f"file:{s.state / 'state.db'}?mode=ro", uri=True)
    try:
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM receipts ORDER BY seq")]
    finally:
        conn.close()
    ours = {b["id"]: b for b in bodies}
    for step in ("insert", "confirm", "undo_delete", "undo_insert"):
        receipt = ours[out[step]["receipt_id"]]
        assert receipt["client"].startswith("token:agent-client"), receipt["client"]
    assert MAIL_PASSWORD not in r.stdout and MAIL_PASSWORD not in json.dumps(bodies)
    assert s.as_gw("receipts", "verify", "--config", str(s.config)).stdout.startswith("ok:")


def test_the_client_user_cannot_reach_the_gateways_files(two_users: Setup, gateway: tuple[str, int]) -> None:
    s = two_users
    state_db = s.state / "state.db"
    tries = [(str(s.secrets), "read"), (str(state_db), "read"), (str(state_db), "append"), (str(s.config), "append"),
             (str(s.config), "replace"), (str(s.db), "read"), (str(s.db), "append"), (str(s.state), "list"),
             (str(s.gw_home), "list")]
    seen = probe(s.cl, s.cl_home, tries)
    assert all(v == "PermissionError" for v in seen.values()), seen
    # the gateway's own user can (the same probe, so the probe itself is not what fails)
    own = probe(s.gw, s.gw_home, [(str(s.secrets), "read"), (str(state_db), "read"), (str(s.config), "append")])
    assert set(own.values()) == {"allowed"}, own
    # and the bridge's user cannot read the gateway's environment (where env: secrets would live)
    _url, pid = gateway
    environ = probe(s.cl, s.cl_home, [(f"/proc/{pid}/environ", "read")])
    assert set(environ.values()) == {"PermissionError"}, environ


def test_check_predicts_what_the_client_user_can_reach(two_users: Setup) -> None:
    s = two_users
    r = s.as_gw("check", "--offline", "--format", "json", "--config", str(s.config), "--client-user", s.cl.pw_name)
    inv = json.loads(r.stdout)
    findings = inv["exposure"]["findings"] + [f for t in inv["targets"] for f in t["exposure"]]
    assert inv["exposure"]["client_user"] == s.cl.pw_name and inv["exposure"]["gateway_user"] == s.gw.pw_name
    subjects = " | ".join(f["subject"] for f in findings)
    for expected in ("secret targets.mail.password = keyring:mailpw", "the config", "the state directory",
                     "the state database", "the database file of target shop"):
        assert expected in subjects
    assert inv["exposure"]["exposed"] == 0 and not any(f["exposed"] for f in findings), findings
    # The same config judged for the gateway's own user (the agent running as the gateway): everything is exposed,
    # and each finding names a fix.
    same = json.loads(s.as_gw("check", "--offline", "--format", "json", "--config", str(s.config)).stdout)
    mine = same["exposure"]["findings"] + [f for t in same["targets"] for f in t["exposure"]]
    code = [f for f in mine if f["subject"].startswith("the gateway's code")]
    assert code and not any(f["exposed"] for f in code)  # the venv is root's: neither user can edit the gate
    assert all(f["exposed"] and f["fix"] for f in mine if f not in code), mine
    assert same["exposure"]["client_user"] == s.gw.pw_name
    text = s.as_gw("check", "--offline", "--config", str(s.config)).stdout
    assert "EXPOSED" in text and "safe-mcp connect" in text
    assert MAIL_PASSWORD not in r.stdout + text
