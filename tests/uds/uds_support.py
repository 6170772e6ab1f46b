"""Helpers for the Unix-socket tests: a SQLite shop, and raw HTTP over a Unix socket (to send what a client would
not: no token, another Host, an Origin). The server itself: support.serving_uds."""

from __future__ import annotations

import http.client
import socket
import sqlite3
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
