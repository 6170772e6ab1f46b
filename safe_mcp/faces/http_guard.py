"""HTTP in front of the SDK: `BodyGuard` caps every POST body before it is read whole; `RpcGuard`, behind the
bearer check on the MCP endpoint, answers malformed envelopes -32600 and re-expresses JSON the SDK's parser
rejects (see wire)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from safe_mcp.faces.wire import PARSE_ERROR, ParseError, envelope, error, load, oversize_error, tame

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyGuard", "RpcGuard", "guard_endpoint"]


class BodyGuard:
    """ASGI middleware, outermost: a POST body over `max_bytes` is answered 413 before it is read whole (by
    Content-Length, or as it streams), whoever sends it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _answer(send, 413, oversize_error(self.max_bytes))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(bytes(body), receive), send)
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _answer(send, 413, oversize_error(self.max_bytes, bytes(body[:512])))
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


class RpcGuard:
    """ASGI middleware on the JSON-RPC endpoint, behind its authentication: a malformed envelope is answered
    -32600 (the SDK answers -32602 with its validation dump, or takes an object id for a notification and never
    answers), and JSON the SDK's parser rejects but Python's reads is re-expressed via `tame`, so the tool it
    addresses refuses it with a receipt."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        is_json = headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json"
        if scope["type"] != "http" or scope["method"] != "POST" or not is_json:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:  # already bounded by BodyGuard
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(bytes(body), receive), send)
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        data, problem = _inspect(bytes(body))
        if problem is not None:
            await _answer(send, 400, problem)
            return
        if len(data) != len(body):
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                     + [(b"content-length", str(len(data)).encode())]}
        await self.app(scope, _replay(data, receive), send)


def guard_endpoint(app: Any, path: str) -> None:
    """Put `RpcGuard` in front of the handler of `path` in a Starlette app, inside its bearer-token check."""
    for route in getattr(app, "routes", []):
        if getattr(route, "path", None) != path:
            continue
        inner = route.app
        if hasattr(inner, "required_scopes") and hasattr(inner, "app"):  # the SDK's RequireAuthMiddleware
            inner.app = RpcGuard(inner.app)
        else:
            route.app = RpcGuard(inner)
        return
    raise LookupError(f"no route {path} to guard")


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _inspect(body: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """(the body to pass on, None) or (_, the error to answer). The body is unchanged when the SDK's parser
    reads it; when only Python's does, it is the same JSON tamed; when neither does, -32700 (the SDK's SSE
    transport would answer a plain-text 400 and its stream nothing)."""
    import pydantic_core

    try:
        obj = pydantic_core.from_json(body)
        rewrite = False
    except ValueError:
        try:
            obj = load(body.decode("utf-8"))
        except UnicodeDecodeError:
            return body, error(PARSE_ERROR, "Parse error: not UTF-8")
        except ParseError as exc:
            return body, error(PARSE_ERROR, f"Parse error: {exc}")
        rewrite = True
    _message, problem = envelope(obj)
    if problem is not None:
        return body, problem
    return (json.dumps(tame(obj), ensure_ascii=False).encode("utf-8") if rewrite else body), None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
