"""`safe-mcp serve --transport http --uds PATH`: the gateway on a Unix socket, reached through `safe-mcp connect
unix://PATH` by the SDK's real stdio client. Tokens are still required; Host/Origin are checked over the socket
(and the TCP listener's checks are not widened); the socket is 0600 (0660 with a group), a stale one is replaced,
anything else at the path is refused, and a clean exit removes it.

The other-user cases (a user outside the socket's group is refused by the kernel) are in
tests/isolation/test_uds_users.py: they need root to create users.
"""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from support import create_token, free_port, serving, serving_uds, wait_socket, write_config
from uds_support import SHOP, make_shop, request, rows

pytestmark = pytest.mark.anyio

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: a socket address holds 107 bytes, and pytest's tmp_path can be long."""
    with tempfile.TemporaryDirectory(prefix="smcp-uds-") as d:
        yield Path(d)


@pytest.fixture
def shop(short_dir: Path) -> tuple[Path, Path]:
    """(config, token file): a read-write SQLite target and an agent token in a 0600 file."""
    make_shop(short_dir / "shop.db")
    cfg = write_config(short_dir, SHOP)
    token = short_dir / "token"
    token.write_text(create_token(cfg, name="uds-agent") + "\n")
    token.chmod(0o600)
    return cfg, token


def _bridge_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SAFE_MCP_TOKEN"}


async def _call(c: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await c.call_tool(tool, args)
    assert not r.is_error, r.content[0].text if r.content else r  # type: ignore[union-attr]
    assert r.structured_content is not None
    return dict(r.structured_content)


@pytest.mark.parametrize("form", ["unix", "http+unix"])
async def test_reads_and_writes_through_connect_over_the_socket(shop: tuple[Path, Path], form: str) -> None:
    cfg, token = shop
    sock = cfg.parent / "mcp.sock"
    url = f"unix://{sock}" if form == "unix" else f"http+unix://{str(sock).replace('/', '%2F')}/mcp"
    db = cfg.parent / "shop.db"
    before = rows(db)
    with serving_uds(cfg, sock):
        params = StdioServerParameters(command=sys.executable, env=_bridge_env(),
                                       args=["-m", "safe_mcp", "connect", url, "--token-file", str(token)])
        async with Client(params) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert {"targets", "sql_query", "sql_execute", "confirm", "undo", "receipts"} <= tools
            read = await _call(c, "sql_query", target="shop", sql="SELECT count(*) FROM items")
            assert read["rows"] == [[len(before)]]
            wrote = await _call(c, "sql_execute", target="shop", sql="INSERT INTO items (name) VALUES ('via-socket')")
            assert wrote["status"] == "ok" and wrote["affected"] == 1
            assert rows(db) == [*before, (len(before) + 1, "via-socket")]  # the target file itself, after the call
            pending = await _call(c, "sql_execute", target="shop", sql="DELETE FROM items")
            assert pending["status"] == "pending" and rows(db)[-1][1] == "via-socket"  # nothing deleted yet
            done = await _call(c, "confirm", action_id=pending["pending"]["action_id"])
            assert done["status"] == "ok" and rows(db) == []
            assert (await _call(c, "undo", receipt_id=done["receipt_id"]))["status"] == "ok"
            assert (await _call(c, "undo", receipt_id=wrote["receipt_id"]))["status"] == "ok"
            receipts = await _call(c, "receipts", limit=20)
    assert rows(db) == before
    by_id = {r["id"]: r for r in receipts["receipts"]}
    for rid in (wrote["receipt_id"], done["receipt_id"]):
        assert rid in by_id, receipts
        assert str(by_id[rid].get("client", "")).startswith("token:uds-agent"), by_id[rid]


def _raw_bridge(url: str, lines: list[Any], *args: str, env: dict[str, str] | None = None) -> tuple[list[Any], str, int]:
    data = "".join(json.dumps(x) + "\n" for x in lines)
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "connect", url, *args], input=data, capture_output=True,
                       text=True, timeout=60, env={**_bridge_env(), **(env or {})})
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()], r.stderr, r.returncode


def test_a_wrong_or_missing_token_is_refused_over_the_socket(shop: tuple[Path, Path]) -> None:
    cfg, _token = shop
    sock = cfg.parent / "mcp.sock"
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "sql_execute", "arguments": {"target": "shop", "sql": "DELETE FROM items"}}}
    before = rows(cfg.parent / "shop.db")
    with serving_uds(cfg, sock):
        for env in ({"SAFE_MCP_TOKEN": "smcp_not-a-real-token"}, {}):
            answers, err, code = _raw_bridge(f"unix://{sock}", [INIT, call], env=env)
            assert code == 0 and [a["id"] for a in answers] == [1, 2], err
            for a in answers:
                assert "401" in a["error"]["message"] and "safe-mcp token create" in a["error"]["message"]
        # and raw HTTP, as any process that can open the socket would send it
        status, _ = request(sock, "POST", "/mcp", MCP_HEADERS, json.dumps(INIT).encode())
        assert status == 401
        status, _ = request(sock, "POST", "/mcp", {**MCP_HEADERS, "Authorization": "Bearer smcp_forged"},
                            json.dumps(call).encode())
        assert status == 401
    assert rows(cfg.parent / "shop.db") == before


def test_host_and_origin_over_the_socket_and_the_tcp_listener_unchanged(shop: tuple[Path, Path]) -> None:
    cfg, token = shop
    sock = cfg.parent / "mcp.sock"
    auth = {**MCP_HEADERS, "Authorization": f"Bearer {token.read_text().strip()}"}
    body = json.dumps(INIT).encode()
    with serving_uds(cfg, sock):
        assert request(sock, "POST", "/mcp", auth, body)[0] == 200  # Host: localhost
        for host in ("evil.example", "localhost:8765", "127.0.0.1"):
            assert request(sock, "POST", "/mcp", {**auth, "Host": host}, body)[0] == 421, host
        assert request(sock, "POST", "/mcp", {**auth, "Origin": "http://evil.example"}, body)[0] == 403
        assert request(sock, "POST", "/mcp", {**auth, "Origin": "http://localhost"}, body)[0] == 403
        # the approval page is served on the socket too, for Host localhost only
        status, page = request(sock, "GET", "/approvals", {})
        assert status == 200 and b"approv" in page.lower()
        assert request(sock, "GET", "/approvals", {"Host": "evil.example"})[0] == 403
    # the TCP listener does not take the socket's bare `localhost`: DNS-rebinding checks as before
    import http.client

    with serving(cfg, "http") as port:
        for host, want in ((f"127.0.0.1:{port}", 200), ("localhost", 421), ("evil.example", 421)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.putrequest("POST", "/mcp", skip_host=True)
            for k, v in {**auth, "Host": host, "Content-Length": str(len(body))}.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            assert conn.getresponse().status == want, host
            conn.close()


def _mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _other_group() -> grp.struct_group:
    """A group the test may give the socket to: one of ours (root may use any)."""
    mine = [g for g in os.getgroups() if g != os.getgid()]
    candidates = [grp.getgrgid(g) for g in mine] or ([grp.getgrnam("daemon")] if os.geteuid() == 0 else [])
    if not candidates:
        pytest.skip("no supplementary group to give the socket to")
    return candidates[0]


def test_the_socket_mode_default_0600_or_0660_for_a_group(shop: tuple[Path, Path]) -> None:
    cfg, _token = shop
    sock = cfg.parent / "mcp.sock"
    with serving_uds(cfg, sock):
        assert _mode(sock) == (0o600, os.getuid(), os.getgid())
    group = _other_group()
    with serving_uds(cfg, sock, "--uds-group", group.gr_name):
        assert _mode(sock) == (0o660, os.getuid(), group.gr_gid)


def test_the_config_names_the_socket_and_the_command_line_overrides_it(short_dir: Path) -> None:
    make_shop(short_dir / "shop.db")
    group = _other_group()
    (short_dir / "run").mkdir()
    cfg = write_config(short_dir, SHOP + f'\n[server]\nuds = "run/gw.sock"\nuds_group = "{group.gr_name}"\n')
    with serving_uds(cfg, None):  # relative to the config's folder, with its group
        assert _mode(short_dir / "run" / "gw.sock") == (0o660, os.getuid(), group.gr_gid)
    other = short_dir / "cli.sock"
    with serving_uds(cfg, other, "--uds-group", str(os.getgid())):
        assert _mode(other) == (0o660, os.getuid(), os.getgid())
        assert not os.path.lexists(short_dir / "run" / "gw.sock")  # not both: the command line wins
    # stdio with [server] uds serves stdio (the socket is for --transport http); sse is refused, not half-served
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "serve", "--config", str(cfg), "--transport", "sse"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "server.uds" in r.stderr and "--transport http" in r.stderr


def _serve_fails(cfg: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "serve", "--config", str(cfg), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    return r.stderr


def test_a_stale_socket_is_replaced(shop: tuple[Path, Path]) -> None:
    cfg, _token = shop
    sock = cfg.parent / "mcp.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock))  # bound, never listening, then closed: what a killed server leaves
    dead.close()
    os.chmod(sock, 0o666)
    with serving_uds(cfg, sock):
        assert _mode(sock)[0] == 0o600  # a new socket, not the stale one's mode
    # and the one a server killed with SIGKILL leaves behind
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "safe_mcp", "serve", "--config", str(cfg), "--transport", "http",
                                 "--uds", str(sock)], stdout=subprocess.DEVNULL, stderr=log)
        wait_socket(sock, proc)
        proc.kill()
        proc.wait()
    assert os.path.lexists(sock)
    with serving_uds(cfg, sock):
        assert request(sock, "GET", "/approvals", {})[0] == 200


def test_a_path_in_use_or_not_a_socket_is_refused(shop: tuple[Path, Path]) -> None:
    cfg, _token = shop
    sock = cfg.parent / "mcp.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(sock))
    live.listen(1)
    try:
        err = _serve_fails(cfg, "--transport", "http", "--uds", str(sock))
        assert "another server is listening" in err and str(sock) in err
        assert os.path.lexists(sock)  # left to its owner
    finally:
        live.close()
        os.unlink(sock)
    db = cfg.parent / "shop.db"
    before = db.read_bytes()
    err = _serve_fails(cfg, "--transport", "http", "--uds", str(db))
    assert "is not a socket" in err and db.read_bytes() == before  # a file at the path is never removed
    err = _serve_fails(cfg, "--transport", "http", "--uds", str(cfg.parent / "no-such-dir" / "mcp.sock"))
    assert "does not exist" in err and "mkdir -p" in err
    err = _serve_fails(cfg, "--transport", "http", "--uds", "/tmp/" + "x" * 120 + ".sock")
    assert "longer than" in err
    err = _serve_fails(cfg, "--transport", "http", "--uds", str(sock), "--uds-group", "no_such_group_here")
    assert "no group named" in err and not os.path.lexists(sock)
    err = _serve_fails(cfg, "--uds", str(sock))  # stdio
    assert "--transport http" in err


def _serve_args(cfg: Path, sock: Path) -> list[str]:
    return [sys.executable, "-m", "safe_mcp", "serve", "--config", str(cfg), "--transport", "http", "--uds", str(sock)]


def _signalled(args: list[str], sig: signal.Signals,
               wait: Callable[[subprocess.Popen[bytes]], object]) -> tuple[subprocess.Popen[bytes], bytes]:
    """Start `args`, `wait`, send `sig`; the ended process and its stderr (killed if it outlives 20 s)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait(proc)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_clean_exit_removes_the_socket(shop: tuple[Path, Path], sig: signal.Signals) -> None:
    cfg, _token = shop
    sock = cfg.parent / "mcp.sock"
    proc, err = _signalled(_serve_args(cfg, sock), sig, lambda proc: wait_socket(sock, proc))
    assert not os.path.lexists(sock)
    assert b"Traceback" not in err, err.decode(errors="replace")[-2000:]
    assert proc.returncode == 128 + sig  # what a supervisor expects of a process stopped by a signal


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_at_any_moment_of_start_up_leaves_no_socket_and_no_traceback(shop: tuple[Path, Path],
                                                                              sig: signal.Signals) -> None:
    """A supervisor may stop the gateway while it is still starting. Whenever the signal lands (before the
    socket exists, while the event loop is being built, just after the socket listens, once uvicorn serves),
    the process ends, leaves no socket behind and prints no traceback. (CI once caught SIGTERM raising inside
    the event loop's constructor, right after the socket appeared: a half-built loop's finaliser traceback.)"""
    cfg, _token = shop
    sock = cfg.parent / "mcp.sock"
    # How long start-up takes here, so the signals below are spread over all of it.
    t0 = time.monotonic()
    with serving_uds(cfg, sock):
        startup = time.monotonic() - t0

    moments = [startup * i / 6 for i in range(8)] + [None] * 4  # None: the instant the socket appears
    for moment in moments:

        def wait(proc: subprocess.Popen[bytes], moment: float | None = moment) -> None:
            if moment is not None:
                time.sleep(moment)
                return
            while not os.path.lexists(sock) and proc.poll() is None:
                time.sleep(0.001)

        proc, err = _signalled(_serve_args(cfg, sock), sig, wait)
        text = err.decode(errors="replace")
        assert "Traceback" not in text and "Exception ignored" not in text, (moment, text[-2000:])
        assert proc.returncode in (-sig, 128 + sig), (moment, proc.returncode, text[-2000:])
        assert not os.path.lexists(sock), f"a signal {moment}s into start-up left the socket behind"


def test_connect_says_when_the_socket_is_not_there(short_dir: Path) -> None:
    sock = short_dir / "absent.sock"
    answers, _err, code = _raw_bridge(f"unix://{sock}", [INIT], env={"SAFE_MCP_TOKEN": "smcp_x"})
    assert code == 0 and answers[0]["id"] == 1
    message = answers[0]["error"]["message"]
    assert "not reachable" in message and str(sock) in message and "safe-mcp serve" in message
    for bad in ("unix://host/x.sock", "unix:relative.sock", "http+unix://relative/mcp"):
        _answers, err, code = _raw_bridge(bad, [INIT], env={"SAFE_MCP_TOKEN": "smcp_x"})
        assert code == 2 and "Unix socket URL" in err, (bad, err)


async def test_client_config_for_a_socket_starts_connect_for_every_client(shop: tuple[Path, Path]) -> None:
    cfg, token = shop
    sock = cfg.parent / "mcp.sock"
    url = f"unix://{sock}"
    entries: dict[str, dict[str, Any]] = {}
    for client in ("cursor", "claude", "claude-code", "vscode"):
        r = subprocess.run([sys.executable, "-m", "safe_mcp", "client-config", client, "--url", url],
                           capture_output=True, text=True, timeout=60, check=True)
        doc = json.loads(r.stdout)
        entry = (doc.get("mcpServers") or doc["servers"])["safe-mcp"]
        assert entry["args"][:4] == ["-m", "safe_mcp", "connect", url] and "--token-file" in entry["args"], entry
        assert "url" not in entry and "headers" not in entry
        assert "uds_group" in r.stderr  # says who may connect
        entries[client] = entry
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "client-config", "claude", "--url", "unix://host/x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Unix socket URL" in r.stderr
    # the entry works as printed, once the token file's path replaces the placeholder
    entry = entries["claude"]
    args = [str(token) if a.startswith("<path") else a for a in entry["args"]]
    with serving_uds(cfg, sock):
        async with Client(StdioServerParameters(command=entry["command"], args=args, env=_bridge_env())) as c:
            assert (await _call(c, "sql_query", target="shop", sql="SELECT count(*) FROM items"))["rows"] == [[3]]


def test_the_socket_port_is_free_of_tcp(shop: tuple[Path, Path]) -> None:
    """--uds replaces the TCP listener: nothing listens on --port meanwhile."""
    cfg, _token = shop
    port = free_port()
    with serving_uds(cfg, cfg.parent / "mcp.sock", "--port", str(port)), socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def _check(cfg: Path, *args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "check", "--offline", "--format", "json", "--config", str(cfg),
                        *args], capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    exposure: dict[str, Any] = json.loads(r.stdout)["exposure"]
    return exposure


def test_check_reports_the_socket_for_the_user_running_it(shop: tuple[Path, Path]) -> None:
    """Without --client-user, check judges for its own user (the gateway's): it can connect, and owning the
    socket's folder is reported like its other files. The socket entry is absent when no socket is named."""
    cfg, _token = shop
    sock = cfg.parent / "mcp.sock"
    assert "socket" not in _check(cfg)
    ahead = _check(cfg, "--uds", str(sock))["socket"]  # not serving yet: what serve will create is judged
    assert ahead["can_connect"] is True and "no socket" in ahead["why"] and "token" in ahead["why"]
    with serving_uds(cfg, sock):
        now = _check(cfg, "--uds", str(sock))
        assert now["socket"]["can_connect"] is True and "mode 600" in now["socket"]["why"]
        assert "token" in now["socket"]["why"]
        folder = [f for f in now["findings"] if f["subject"] == "the folder of the gateway's Unix socket"]
        assert folder and folder[0]["path"] == str(sock.parent)
    not_socket = _check(cfg, "--uds", str(cfg))["socket"]
    assert not_socket["can_connect"] is False and "not a socket" in not_socket["why"]
    missing = _check(cfg, "--uds", str(cfg.parent / "nope" / "x.sock"))["socket"]
    assert missing["can_connect"] is False and "does not exist" in missing["why"] and "mkdir -p" in missing["fix"]
