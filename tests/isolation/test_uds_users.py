"""The gateway on a Unix socket (`serve --uds --uds-group G`) as its own OS user: a client user in G reaches every
tool through `safe-mcp connect unix://...`; a user outside G is refused by the kernel (PermissionError), even
with a valid token; `check --client-user` predicts both. Real users, made with useradd (root only).
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import serving_uds
from users import ISOLATION_DIR, as_user, os_group, os_user, own, python_paths, require_root, traversable

pytestmark = pytest.mark.sqlite_state

CONFIG = """
[targets.shop]
kind = "sqlite"
path = "shop.db"
access = "read-write"

[confirm]
min_delay_s = 0
"""

CONNECT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("allowed")
except OSError as exc:
    print(type(exc).__name__)
"""


class Setup:
    def __init__(self, base: Path, gw: pwd.struct_passwd, member: pwd.struct_passwd, outsider: pwd.struct_passwd,
                 group: str) -> None:
        self.gw, self.member, self.outsider, self.group = gw, member, outsider, group
        self.gw_home = base / "gateway"
        self.homes = {u.pw_name: base / u.pw_name for u in (member, outsider)}
        self.config = self.gw_home / "safe-mcp.toml"
        self.db = self.gw_home / "shop.db"
        self.sock = base / "run" / "gw.sock"

    def token_of(self, user: pwd.struct_passwd) -> Path:
        return self.homes[user.pw_name] / "token"

    def run_as(self, user: pwd.struct_passwd, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        home = self.gw_home if user is self.gw else self.homes[user.pw_name]
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180, check=check,
                              **as_user(user, home))


@pytest.fixture(scope="module")
def users() -> Iterator[Setup]:
    require_root()
    base = Path(tempfile.mkdtemp(prefix="smcp-uds-iso-"))
    try:
        with os_user("smcp_ugw") as gw, os_user("smcp_umem") as member, os_user("smcp_uout") as outsider, \
                os_group("smcp_usock", [gw.pw_name, member.pw_name]) as gid, \
                traversable([*python_paths(), base]):
            import grp

            os.chmod(base, 0o711)
            s = Setup(base, gw, member, outsider, grp.getgrgid(gid).gr_name)
            s.gw_home.mkdir()
            own(s.gw_home, gw, 0o700)
            s.sock.parent.mkdir()
            own(s.sock.parent, gw, 0o755)  # like /run/safe-mcp: anyone may enter, the socket's mode decides
            s.config.write_text(CONFIG, encoding="utf-8")
            own(s.config, gw, 0o600)
            db = sqlite3.connect(s.db)
            db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
            db.executemany("INSERT INTO items (name) VALUES (?)", [("a",), ("b",), ("c",)])
            db.commit()
            db.close()
            own(s.db, gw, 0o600)
            for user in (member, outsider):
                home = s.homes[user.pw_name]
                home.mkdir()
                own(home, user, 0o700)
                token = s.run_as(gw, "-m", "safe_mcp", "token", "create", "--config", str(s.config),
                                 "--name", user.pw_name).stdout.strip()
                s.token_of(user).write_text(token + "\n", encoding="utf-8")
                own(s.token_of(user), user, 0o600)
            yield s
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(users: Setup) -> Iterator[int]:
    """`safe-mcp serve --transport http --uds SOCK --uds-group G` as the gateway's user; yields its pid."""
    s = users
    with serving_uds(s.config, s.sock, "--uds-group", s.group, **as_user(s.gw, s.gw_home)) as proc:
        yield proc.pid


def _rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, name FROM items ORDER BY id").fetchall()
    finally:
        conn.close()


def test_a_member_of_the_group_reaches_every_tool(users: Setup, gateway: int) -> None:
    s = users
    st = os.lstat(s.sock)
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, s.gw.pw_uid, _gid(s.group))
    before = _rows(s.db)
    r = s.run_as(s.member, str(ISOLATION_DIR / "bridge_client.py"), f"unix://{s.sock}", str(s.token_of(s.member)),
                 "auto", check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["uid"] == s.member.pw_uid and set(out["bridge_uids"]) == {s.member.pw_uid}
    assert out["query"]["rows"] == [[len(before)]]
    assert out["insert"]["status"] == "ok" and out["confirm"]["status"] == "ok" and out["after_delete"]["rows"] == [[0]]
    assert out["undo_delete"]["status"] == "ok" and out["undo_insert"]["status"] == "ok"
    assert _rows(s.db) == before  # the target file, read by root afterwards
    receipts = {r["id"]: r for r in out["receipts"]["receipts"]}
    assert receipts[out["insert"]["receipt_id"]]["client"].startswith(f"token:{s.member.pw_name}")


def test_a_user_outside_the_group_cannot_connect_even_with_a_token(users: Setup, gateway: int) -> None:
    s = users
    seen = {u.pw_name: s.run_as(u, "-c", CONNECT, str(s.sock)).stdout.strip() for u in (s.gw, s.member, s.outsider)}
    assert seen == {s.gw.pw_name: "allowed", s.member.pw_name: "allowed", s.outsider.pw_name: "PermissionError"}
    before = _rows(s.db)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "sql_execute", "arguments": {"target": "shop", "sql": "DELETE FROM items"}}}
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "connect", f"unix://{s.sock}", "--token-file",
                        str(s.token_of(s.outsider))], input=json.dumps(init) + "\n" + json.dumps(call) + "\n",
                       capture_output=True, text=True, timeout=60, **as_user(s.outsider, s.homes[s.outsider.pw_name]))
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and [a["id"] for a in answers] == [1, 2], r.stderr
    for a in answers:
        assert "Permission denied" in a["error"]["message"]
        assert "uds_group" in a["error"]["message"]
    assert _rows(s.db) == before


def test_check_predicts_who_can_connect(users: Setup, gateway: int) -> None:
    s = users
    for user, can in ((s.member, True), (s.outsider, False)):
        r = s.run_as(s.gw, "-m", "safe_mcp", "check", "--offline", "--format", "json", "--config", str(s.config),
                     "--client-user", user.pw_name, "--uds", str(s.sock))
        exp = json.loads(r.stdout)["exposure"]
        assert exp["socket"]["can_connect"] is can, exp["socket"]
        assert exp["socket"]["path"] == str(s.sock)
        assert "token" in exp["socket"]["why"] if can else "usermod -aG" in exp["socket"]["fix"]
        folder = [f for f in exp["findings"] if f["subject"] == "the folder of the gateway's Unix socket"]
        assert folder and not folder[0]["exposed"], folder
        text = s.run_as(s.gw, "-m", "safe_mcp", "check", "--offline", "--config", str(s.config), "--client-user",
                        user.pw_name, "--uds", str(s.sock)).stdout
        assert ("can connect to" if can else "CANNOT connect to") in text


def test_the_gateway_cannot_hand_the_socket_to_a_group_it_is_not_in(users: Setup) -> None:
    s = users
    sock = s.sock.parent / "other.sock"
    theirs = pwd.getpwnam(s.member.pw_name).pw_gid  # the member's own group: the gateway's user is not in it
    r = s.run_as(s.gw, "-m", "safe_mcp", "serve", "--config", str(s.config), "--transport", "http", "--uds", str(sock),
                 "--uds-group", str(theirs), check=False)
    assert r.returncode == 2 and "cannot give the socket" in r.stderr and "usermod -aG" in r.stderr, r.stderr
    assert not os.path.lexists(sock)  # not left behind half-made


def _gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid
