"""Helpers for the Unix-socket tests: a real `safe-mcp serve --transport http --uds` in a subprocess, and raw HTTP
over a Unix socket (to send what a client would not: no token, another Host, an Origin)."""

from __future__ import annotations

import http.client
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SHOP = """
[targets.shop]
kind = "sqlite"
path = "shop.db"
access = "read-write"

[confirm]
min_delay_s = 0
"""


def make_shop(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    db.executemany("INSERT INTO items (name) VALUES (?)", [("a",), ("b",), ("c",)])
    db.commit()
    db.close()


def rows(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id, name FROM items ORDER BY id").fetchall()
    finally:
        db.close()


def wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
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
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.seek(0)
            text = log.read().decode(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        assert not os.path.lexists(where), f"the socket {where} outlived a clean exit"


def _configured(config: Path) -> Path:
    import tomllib

    return config.parent / tomllib.loads(config.read_text())["server"]["uds"]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self._path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self._path)
        self.sock = s


def request(sock: Path, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
    """One raw HTTP request over the socket; (status, body). `headers` may set Host (else: localhost)."""
    conn = UnixHTTPConnection(sock)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()
