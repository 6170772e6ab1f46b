"""Helpers for tests: configs, free ports, and MCP clients over every transport."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

TRANSPORTS = ["memory", "stdio", "http", "sse"]

# In CI (or when asked) a missing service is a failure, never a skip (the same rule as conftest.py's; read
# here from the environment because a module named `conftest` may be another folder's).
REQUIRE_SERVICES = os.environ.get("SAFE_MCP_REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"

# A mail target whose messages stay held long enough to be cancelled; nothing listens on port 2.
HELD_MAIL_TARGET = """
[targets.mail]
kind = "smtp"
host = "127.0.0.1"
port = 2
tls = "none"
from = "agent@example.com"
allow_recipients = ["*@example.com"]
hold_s = 600
access = "read-write"
"""

# A read-write SQLite shop beside a mail target whose password is a secret from the environment: the value
# safe-mcp must keep out of everything it writes (set SAFE_MCP_TEST_SMTP_PW to it).
SHOP_AND_SECRET = """
[targets.shop]
kind = "sqlite"
path = "shop.db"
access = "read-write"
[targets.mail]
kind = "smtp"
host = "127.0.0.1"
tls = "none"
username = "agent"
password = "env:SAFE_MCP_TEST_SMTP_PW"
from = "agent@example.com"
allow_recipients = ["*@example.com"]
"""

# The demo shop seen twice: `shop` read-only (the default), `admin` read-write.
SHOP_TARGETS = """
[targets.shop]
kind = "sqlite"
path = "shop.db"

[targets.admin]
kind = "sqlite"
path = "shop.db"
access = "read-write"
"""


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within 10 s; returns once it is reaped."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_config(directory: Path, text: str, name: str = "safe-mcp.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} after {timeout}s")


def require(available: bool, what: str) -> None:
    """Skip locally when something a test needs is missing; fail in CI, where it must be there."""
    import pytest

    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(what + " and services are required (CI)")
    pytest.skip(what)


def require_service(name: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=1):
            return
    except OSError:
        require(False, f"{name} is not reachable on {host}:{port}")


def serve_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "safe_mcp", "serve", "--config", str(config), *extra]


@contextmanager
def serving(config: Path, transport: str, env: dict[str, str] | None = None, port: int | None = None) -> Iterator[int]:
    """`safe-mcp serve` over HTTP or SSE on `port` (default: a free loopback port), for the length of the block;
    yields the port.

    The server's stderr goes to a file (a pipe nobody reads would block a chatty server once full),
    and the block fails if the server logged a traceback.
    """
    port = port or free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(serve_cmd(config, "--transport", transport, "--port", str(port)),
                                stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **(env or {})})
        try:
            wait_port(port, proc)
            yield port
        finally:
            stop(proc)
            log.seek(0)
            errors = log.read().decode(errors="replace")
        assert "Logging error" not in errors and "Traceback" not in errors, errors[-3000:]


def wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until something accepts connections on the Unix socket `path` (the server `proc` must not exit first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {path} after {timeout}s")


@contextmanager
def serving_uds(config: Path, sock: Path | None, *extra: str, env: dict[str, str] | None = None,
                **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """`safe-mcp serve --transport http --uds SOCK` (no --uds: the config's [server] uds) until the block ends;
    then SIGTERM, and the socket must be gone (removed on a clean exit) and the log free of tracebacks."""
    args = [sys.executable, "-m", "safe_mcp", "serve", "--config", str(config), "--transport", "http",
            *(["--uds", str(sock)] if sock is not None else []), *extra]
    where = sock if sock is not None else _configured(config)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log,
                                **({"env": {**os.environ, **(env or {})}} | popen))
        try:
            wait_socket(where, proc)
            yield proc
        finally:
            stop(proc)
            log.seek(0)
            text = log.read().decode(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        assert not os.path.lexists(where), f"the socket {where} outlived a clean exit"


def _configured(config: Path) -> Path:
    import tomllib

    return config.parent / tomllib.loads(config.read_text())["server"]["uds"]


@asynccontextmanager
async def connect(config: Path, transport: str = "memory", env: dict[str, str] | None = None) -> AsyncIterator[Client]:
    """An MCP client connected to safe-mcp serving `config` over `transport`."""
    if transport == "memory":
        from safe_mcp.faces.server import build_server
        from safe_mcp.gate.runtime import Runtime
        from safe_mcp.trust.config import load_config

        async with Client(build_server(Runtime(load_config(config)))) as client:
            yield client
    elif transport == "stdio":
        params = StdioServerParameters(command=sys.executable, args=serve_cmd(config)[1:],
                                       env={**os.environ, **(env or {})})
        async with Client(params) as client:
            yield client
    elif transport == "http":
        with serving(config, "http", env=env) as port:
            async with http_client(f"http://127.0.0.1:{port}/mcp", config, env=env) as client:
                yield client
    elif transport == "sse":
        from mcp.client.sse import sse_client

        with serving(config, "sse", env=env) as port:
            bearer = create_token(config, name=f"test-sse-{port}", env=env)
            async with Client(sse_client(f"http://127.0.0.1:{port}/sse",
                                         headers={"Authorization": f"Bearer {bearer}"})) as client:
                yield client
    else:
        raise ValueError(transport)


def create_token(config: Path, name: str = "test-client", role: str = "agent", env: dict[str, str] | None = None) -> str:
    """A new bearer token from `safe-mcp token create` (HTTP/SSE require one by default)."""
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "token", "create", "--config", str(config), "--name", name,
                        "--role", role], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True)
    return r.stdout.strip()


@asynccontextmanager
async def http_client(url: str, config: Path, env: dict[str, str] | None = None,
                      token: str | None = None) -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP sending a fresh token for `config` (or `token`)."""
    import uuid

    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    bearer = token or create_token(config, name=f"test-{uuid.uuid4().hex[:8]}", env=env)
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}) as http, \
            Client(streamable_http_client(url, http_client=http)) as client:
        yield client


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured result."""
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content[0].text if r.content else r
    assert r.structured_content is not None
    return dict(r.structured_content)


async def refused(client: Client, tool: str, **args: Any) -> str:
    """Call a tool that must fail; return the error text the agent sees."""
    r = await client.call_tool(tool, args)
    assert r.is_error, f"expected a refusal, got {r.structured_content}"
    text: str = r.content[0].text
    return text


def ledger_rows(config_path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows of one read on the state store of a config, wherever it lives (SQLite file or PostgreSQL)."""
    from safe_mcp.gate.runtime import open_state
    from safe_mcp.trust.config import load_config

    store = open_state(load_config(config_path))
    try:
        return store.query(sql, tuple(params))
    finally:
        store.close()


def tamper_pending(config_path: Path, action_id: str | None = None, **changes: object) -> None:
    """Someone with write access to the state store edits a pending action's call behind safe-mcp's back."""
    import json

    from safe_mcp.gate.runtime import open_state
    from safe_mcp.trust.config import load_config

    store = open_state(load_config(config_path))
    try:
        rows = store.query("SELECT id, call FROM pending")
        with store.transaction() as tx:
            for aid, call in rows:
                if action_id is None or aid == action_id:
                    tx.execute("UPDATE pending SET call = ? WHERE id = ?",
                               (json.dumps({**json.loads(str(call)), **changes}), aid))
    finally:
        store.close()


def tamper_ledger(config_path: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    """Someone with write access to the state store runs one statement on it behind safe-mcp's back."""
    from safe_mcp.gate.runtime import open_state
    from safe_mcp.trust.config import load_config

    store = open_state(load_config(config_path))
    try:
        with store.transaction() as tx:
            tx.execute(sql, params)
    finally:
        store.close()


def fail_inserts(config_path: Path, table: str) -> None:
    """Every insert into `table` of the config's state store fails from now on, as on a full disk, on whichever
    engine the state is (a trigger named fail_{table}); `allow_inserts` mends it."""
    if _state_is_sqlite(config_path):
        tamper_ledger(config_path, f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                                   "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    else:
        tamper_ledger(config_path, f"CREATE FUNCTION fail_{table}() RETURNS trigger LANGUAGE plpgsql AS "
                                   "$f$ BEGIN RAISE EXCEPTION 'disk full'; END $f$")
        tamper_ledger(config_path, f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} FOR EACH ROW "
                                   f"EXECUTE FUNCTION fail_{table}()")


def allow_inserts(config_path: Path, table: str) -> None:
    tamper_ledger(config_path, f"DROP TRIGGER fail_{table}" + ("" if _state_is_sqlite(config_path) else f" ON {table}"))


def _state_is_sqlite(config_path: Path) -> bool:
    """Whether the config's state store is a SQLite file (else PostgreSQL, as with SAFE_MCP_TEST_STATE)."""
    from safe_mcp.gate.runtime import open_state
    from safe_mcp.trust.config import load_config

    store = open_state(load_config(config_path))
    try:
        return store.db.dialect == "sqlite"
    finally:
        store.close()


# Credentials moto accepts, and an environment with no ~/.aws files of this machine's.
MOTO_KEY_ID = "AKIASAFEMCPTEST00001"
MOTO_SECRET = "safe-mcp-test-secret-0123456789abcdef"
NO_AWS_FILES = {"AWS_CONFIG_FILE": "/nonexistent/safe-mcp-test", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/safe-mcp-test",
                "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def moto_server(key_id: str, secret: str) -> Iterator[str]:
    """moto's server (AWS over real HTTP) on a free loopback port for the length of the block; yields its URL.

    moto logs every request; a pipe nobody reads would block it, so the log goes to a file.
    """
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=log, env=env)
        try:
            wait_port(port, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(proc)


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """`values` set in os.environ for the length of the block, then put back as they were."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new database on the machine's PostgreSQL for the length of the block (dropped after); yields its URL."""
    import uuid

    import psycopg

    require_service("postgresql", "127.0.0.1", 5432)
    admin_url = "postgresql://postgres@127.0.0.1:5432/test"
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class RawStdio:
    """A minimal JSON-RPC client on `safe-mcp serve`'s stdin/stdout, for tests that must control exactly when
    the server dies (kill -9) or what bytes it reads."""

    def __init__(self, config: Path, log: Any) -> None:
        self.proc = subprocess.Popen(serve_cmd(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self.next_id = 0
        self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                    "clientInfo": {"name": "raw-stdio", "version": "1"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def start(self, method: str, params: dict[str, Any]) -> int:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return self.next_id

    def wait(self, rid: int) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise EOFError("the server closed stdout")
            msg = json.loads(line)
            if msg.get("id") == rid:
                return dict(msg)

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.wait(self.start(method, params))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_pipes()
