"""Small real HTTP APIs for the tests, on loopback ports: a payments API and a hosting API.

Each keeps its state in memory and records every request it received (raw path, headers, body), so
tests check what the API saw and holds, not only what safe-mcp answered.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "Bearer sk_live_4f9a8b7c6d5e4f3a2b1c0d9e"


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


Reply = tuple[int, Any, dict[str, str]]


class Api:
    """Routes by regex over the raw path; subclasses add routes and state."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.seen: list[Seen] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method: str | None = None, path_re: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if (method is None or s.method == method) and re.search(path_re, s.path)]

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        raise NotImplementedError

    @contextmanager
    def serving(self) -> Iterator[Api]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                headers = {k.lower(): v for k, v in self.headers.items()}
                with api.lock:
                    api.seen.append(Seen(self.command, parts.path, parse_qs(parts.query), headers, body))
                status, out, extra = api.handle(self.command, parts.path, parse_qs(parts.query), headers, body)
                data = b"" if out is None else (out.encode() if isinstance(out, str) else json.dumps(out).encode())
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if self.command != "HEAD":
                        step = 64 if getattr(api, "trickle", False) else len(data) or 1
                        for i in range(0, len(data), step):
                            self.wfile.write(data[i:i + step])
                            if step == 64:
                                self.wfile.flush()
                                time.sleep(0.2)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def _unauthorized(headers: dict[str, str]) -> Reply | None:
    if headers.get("authorization") != TOKEN:
        return 401, {"error": "unauthorized"}, {}
    return None


@dataclass
class Payments(Api):
    """Refunds with Stripe-like Idempotency-Key semantics, and a cancel endpoint.

    A request with a key already seen returns the stored response (same body) without running again;
    a different body with the same key is refused (422). `slow_first` makes the first answer for a key
    arrive after `delay` seconds, after the refund is recorded (a client timeout after the effect).
    """

    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, tuple[Any, Reply]] = field(default_factory=dict)
    slow_first: bool = False
    delay: float = 0.0
    echo_secret_in_errors: bool = False
    elsewhere: str = "http://localhost:9/"
    trickle: bool = False

    def __post_init__(self) -> None:
        Api.__init__(self)
        self.charges["ch_1"] = {"id": "ch_1", "amount": 5000, "amount_refunded": 0}

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        denied = _unauthorized(headers)
        if denied:
            return denied
        key = headers.get("idempotency-key")
        if method == "POST" and key:
            with self.lock:
                if key in self.keys:
                    earlier_body, reply = self.keys[key]
                    if earlier_body != (path, body):
                        return 422, {"error": "idempotency key reused with another request"}, {}
                    return reply[0], reply[1], {**reply[2], "Idempotent-Replayed": "true"}
                reply = self._post(path, body, headers)
                self.keys[key] = ((path, body), reply)
            if self.slow_first:
                time.sleep(self.delay)
            return reply
        if method == "POST":
            with self.lock:
                return self._post(path, body, headers)
        if method == "GET":
            return self._get(path, headers)
        return 405, {"error": "method not allowed"}, {}

    def _post(self, path: str, body: Any, headers: dict[str, str]) -> Reply:
        if path == "/v1/refunds":
            charge = self.charges.get(str((body or {}).get("charge")))
            if charge is None:
                detail = f" (you sent {headers.get('authorization')})" if self.echo_secret_in_errors else ""
                return 400, {"error": f"no such charge{detail}"}, {}
            amount = int(body.get("amount", charge["amount"] - charge["amount_refunded"]))
            if amount > charge["amount"] - charge["amount_refunded"]:
                return 400, {"error": "amount exceeds what is left to refund"}, {}
            rid = f"re_{len(self.refunds) + 1}"
            self.refunds[rid] = {"id": rid, "charge": charge["id"], "amount": amount, "status": "succeeded"}
            charge["amount_refunded"] += amount
            return 200, dict(self.refunds[rid]), {}
        m = re.fullmatch(r"/v1/refunds/([^/]+)/cancel", path)
        if m:
            refund = self.refunds.get(m.group(1))
            if refund is None:
                return 404, {"error": "no such refund"}, {}
            if refund["status"] != "succeeded":
                return 400, {"error": f"refund is {refund['status']}"}, {}
            refund["status"] = "canceled"
            self.charges[refund["charge"]]["amount_refunded"] -= refund["amount"]
            return 200, dict(refund), {}
        return 404, {"error": "not found"}, {}

    def _get(self, path: str, headers: dict[str, str]) -> Reply:
        with self.lock:
            m = re.fullmatch(r"/v1/charges/([^/]+)", path)
            if m and m.group(1) in self.charges:
                return 200, dict(self.charges[m.group(1)]), {}
            m = re.fullmatch(r"/v1/refunds/([^/]+)", path)
            if m and m.group(1) in self.refunds:
                return 200, dict(self.refunds[m.group(1)]), {}
            if path == "/v1/echo":
                return 200, {"you_sent": headers}, {}
            if path == "/v1/big":
                return 200, {"blob": "x" * 200_000}, {}
            if path == "/v1/elsewhere":
                return 302, None, {"Location": self.elsewhere}
            if path == "/v1/moved":
                return 302, None, {"Location": "/v1/charges/ch_1"}
        detail = f" (you sent {headers.get('authorization')})" if self.echo_secret_in_errors else ""
        return 404, {"error": f"no such charge{detail}"}, {}

    def posts(self, path_re: str) -> list[Seen]:
        return self.requests("POST", path_re)


@dataclass
class Hosting(Api):
    """Volumes whose backups live on the same volume: deleting a volume deletes them too (the PocketOS shape)."""

    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Api.__init__(self)
        self.volumes["vol_1"] = {"id": "vol_1", "name": "prod-db", "backups": ["bk_1", "bk_2"]}
        self.volumes["vol_2"] = {"id": "vol_2", "name": "staging", "backups": []}

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        denied = _unauthorized(headers)
        if denied:
            return denied
        with self.lock:
            if method == "GET" and path == "/openapi.json":
                return 200, OPENAPI, {}
            if method == "GET" and path == "/v1/stats":
                return 200, {"volumes": len(self.volumes)}, {}
            if method == "GET" and path == "/v1/volumes":
                return 200, list(self.volumes.values()), {}
            m = re.fullmatch(r"/v1/volumes/([^/]+)", path)
            if m and method == "GET":
                vol = self.volumes.get(m.group(1))
                return (200, dict(vol), {}) if vol else (404, {"error": "no such volume"}, {})
            if m and method == "DELETE":
                vol = self.volumes.pop(m.group(1), None)
                return (200, {"deleted": vol["id"], "backups_deleted": vol["backups"]}, {}) if vol else (
                    404, {"error": "no such volume"}, {})
            m = re.fullmatch(r"/v1/volumes/([^/]+)/backups/([^/]+)", path)
            if m and method == "DELETE":
                vol = self.volumes.get(m.group(1))
                if vol and m.group(2) in vol["backups"]:
                    vol["backups"].remove(m.group(2))
                    return 200, {"deleted": m.group(2)}, {}
                return 404, {"error": "no such backup"}, {}
            if method == "POST" and path == "/v1/volumes":
                vid = f"vol_{len(self.volumes) + 10}"
                self.volumes[vid] = {"id": vid, "name": str((body or {}).get("name")), "backups": []}
                return 201, dict(self.volumes[vid]), {}
        return 404, {"error": "not found"}, {}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "hosting", "version": "1"},
    "paths": {
        "/v1/volumes": {
            "get": {"operationId": "listVolumes", "parameters": [{"$ref": "#/components/parameters/Limit"}]},
            "post": {"operationId": "createVolume", "requestBody": {"content": {"application/json": {}}}},
        },
        "/v1/volumes/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True}],
            "get": {"operationId": "getVolume"},
            "delete": {"operationId": "deleteVolume"},
            "patch": {"operationId": "renameVolume", "requestBody": {"content": {"application/json": {}}}},
        },
        "/v1/volumes/{id}/backups/{backup}": {"delete": {"operationId": "deleteBackup"}},
        "/v1/no-id": {"post": {"summary": "no operationId: not callable"}},
    },
    "components": {"parameters": {"Limit": {"name": "limit", "in": "query"}}},
}
