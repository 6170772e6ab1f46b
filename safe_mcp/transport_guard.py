"""The wire in front of the SDK: every request is answered, none is held whole beyond a size cap.

Over stdio the SDK reads whole lines (a 50 MB line took 1.25 GB) and drops what its parser rejects without a
reply; over HTTP its parser rejects what Python's accepts. Here a request over `[server] max_request_bytes`
is discarded while it is read and answered -32600, an unparseable one -32700, a malformed envelope -32600.
JSON the SDK's parser cannot carry (lone surrogates, nesting past `WIRE_DEPTH`, integers past any driver) is
re-expressed so that it reaches the tools, where `strict_args` refuses it with a receipt.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import anyio.to_thread

from safe_mcp.strict_args import SURROGATE_STAND_IN

__all__ = ["BodyGuard", "ParseError", "RpcGuard", "guard_endpoint", "guarded_stdio", "load", "oversize_error", "tame"]

WIRE_DEPTH = 64
"""Deepest nesting carried on; deeper containers become 0 (still deeper than `strict_args.MAX_DEPTH` allows)."""

CHUNK = 64 * 1024
PARSE_ERROR, INVALID_REQUEST = -32700, -32600

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ParseError(ValueError):
    """The request is not JSON (or not UTF-8)."""


def load(text: str) -> Any:
    """Parse JSON as Python does, with integers past 19 digits kept as out-of-range markers and nesting clipped.

    Raises:
        ParseError: not JSON.
    """
    try:
        try:
            return json.loads(text, parse_int=_int)
        except RecursionError:
            return json.loads(_clip(text), parse_int=_int)
    except (ValueError, RecursionError) as exc:
        raise ParseError(str(exc).split(": line")[0] if isinstance(exc, json.JSONDecodeError) else "nesting too deep"
                         ) from None


def tame(value: Any, depth: int = 1) -> Any:
    """`value` with lone surrogates replaced by the stand-in and containers past `WIRE_DEPTH` by 0, so any
    JSON parser and serialiser carries it; `strict_args` refuses both markers."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return re.sub("[\ud800-\udfff]", SURROGATE_STAND_IN, value)
        return value
    if isinstance(value, dict | list) and depth > WIRE_DEPTH:
        return 0
    if isinstance(value, dict):
        return {tame(k): tame(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [tame(v, depth + 1) for v in value]
    return value


def error(code: int, message: str, id_: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


def oversize_error(max_bytes: int, head: bytes = b"") -> dict[str, Any]:
    return error(INVALID_REQUEST, f"Invalid Request: larger than max_request_bytes ({max_bytes} bytes); it was "
                 "discarded unread and nothing ran. Send a smaller request, or raise [server] max_request_bytes",
                 _leading_id(head))


def _int(digits: str) -> int:
    # Python refuses to convert past 4300 digits and no driver binds past 19: keep a value just out of range.
    if len(digits.lstrip("-")) > 19:
        return -(2**64) if digits.startswith("-") else 2**64
    return int(digits)


_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _clip(text: str) -> str:
    """`text` with every container opening past `WIRE_DEPTH` replaced by 0 (strings are skipped, not counted)."""
    out: list[str] = []
    depth, pos, cut = 0, 0, False
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok[0] == '"':
            continue
        if tok in "[{":
            depth += 1
            if depth == WIRE_DEPTH + 1:
                out.append(text[pos:m.start()])
                cut = True
        else:
            if depth == WIRE_DEPTH + 1 and cut:
                out.append("0")
                pos, cut = m.end(), False
            depth -= 1
    out.append(text[pos:])
    return "".join(out)


_LEADING_ID = re.compile(rb'\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,128}")\s*,')


def _leading_id(head: bytes) -> Any:
    """The id of a request too large to parse, when it comes first (as every SDK writes it): its client is
    answered instead of waiting for its timeout."""
    m = _LEADING_ID.match(head)
    return json.loads(m.group(1)) if m else None


def _envelope(obj: Any) -> tuple[Any, dict[str, Any] | None]:
    """(message, None) when `obj` is a JSON-RPC message the SDK accepts, else (None, the error to answer)."""
    from mcp_types import jsonrpc_message_adapter
    from pydantic import ValidationError

    if not isinstance(obj, dict):
        return None, error(INVALID_REQUEST, "Invalid Request: a message is one JSON-RPC object (no batches)")
    id_ = obj.get("id")
    id_ = id_ if isinstance(id_, str | int) and not isinstance(id_, bool) else None
    if "id" in obj and id_ is None:
        # Else the SDK reads it as a notification (extra "id" member ignored) and the sender waits forever.
        return None, error(INVALID_REQUEST, "Invalid Request: an id is a string or an integer")
    try:
        return jsonrpc_message_adapter.validate_python(tame(obj), by_name=False), None
    except ValidationError:
        return None, error(INVALID_REQUEST, 'Invalid Request: not a JSON-RPC 2.0 request, notification or response '
                           '(needs "jsonrpc": "2.0", a "method" or a "result"/"error", and a string or integer id)',
                           id_)


def _dump(message: Any) -> bytes:
    from pydantic_core import PydanticSerializationError

    try:
        text: str = message.model_dump_json(by_alias=True, exclude_unset=True)
    except PydanticSerializationError:
        # Something unencodable in a result (a lone surrogate from a target): escaped, still an answer.
        text = json.dumps(message.model_dump(by_alias=True, exclude_unset=True), default=str)
    return text.encode("utf-8") + b"\n"


@asynccontextmanager
async def guarded_stdio(max_bytes: int) -> AsyncIterator[tuple[Any, Any]]:
    """The SDK's stdio transport (same claim on fds 0 and 1), reading in chunks and answering every line."""
    from mcp.server.stdio import _claim_fd, _open_stdin_diversion, _open_stdout_diversion
    from mcp.shared._context_streams import create_context_streams
    from mcp.shared.message import SessionMessage

    stdin, restore_in = _claim_fd(0, sys.stdin, "rb", _open_stdin_diversion)
    stdout, restore_out = _claim_fd(1, sys.stdout, "wb", _open_stdout_diversion)
    read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_reader = create_context_streams[SessionMessage](0)
    lock = anyio.Lock()
    written = anyio.Event()

    async def emit(data: bytes) -> None:
        async with lock:
            await anyio.to_thread.run_sync(_write, stdout, data, abandon_on_cancel=True)

    async def answer(obj: dict[str, Any]) -> None:
        await emit(json.dumps(obj).encode("utf-8") + b"\n")

    async def on_line(line: bytes) -> None:
        if not line.strip():
            return
        try:
            obj = load(line.decode("utf-8"))
        except UnicodeDecodeError:
            await answer(error(PARSE_ERROR, "Parse error: not UTF-8"))
            return
        except ParseError as exc:
            await answer(error(PARSE_ERROR, f"Parse error: {exc}"))
            return
        message, problem = _envelope(obj)
        if problem is not None:
            await answer(problem)
            return
        await read_writer.send(SessionMessage(message))

    async def reader() -> None:
        async with read_writer:
            await read_lines(stdin, max_bytes, on_line, lambda head: answer(oversize_error(max_bytes, head)))

    async def writer() -> None:
        try:
            async with write_reader:
                async for session_message in write_reader:
                    await emit(_dump(session_message.message))
        finally:
            written.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            yield read_stream, write_stream
            with anyio.move_on_after(2):
                await written.wait()
            tg.cancel_scope.cancel()
    finally:
        for restore in (restore_out, restore_in):
            if restore is not None:
                restore()


async def read_lines(stream: BinaryIO, max_bytes: int, on_line: Callable[[bytes], Awaitable[None]],
                     on_oversize: Callable[[bytes], Awaitable[None]]) -> None:
    """Feed each newline-terminated line of `stream` to `on_line`; a line past `max_bytes` is discarded as it
    arrives (never buffered) and reported once to `on_oversize` with its first bytes."""
    buf = bytearray()
    head: bytes | None = None  # set while discarding an oversize line
    while True:
        chunk = await anyio.to_thread.run_sync(_read1, stream, abandon_on_cancel=True)
        if not chunk:
            return
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if head is None and len(buf) + len(piece) > max_bytes:
                head = bytes(buf[:512] + piece[:512])[:512]
                buf.clear()
            elif head is None:
                buf += piece
            if nl < 0:
                break
            if head is not None:
                await on_oversize(head)
                head = None
            else:
                line = bytes(buf)
                buf.clear()
                await on_line(line)
            start = nl + 1


def _read1(stream: BinaryIO) -> bytes:
    read1 = getattr(stream, "read1", None)
    return bytes(read1(CHUNK) if read1 is not None else stream.read(CHUNK))


def _write(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)
    stream.flush()


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
    reads it; when only Python's does, it is the same JSON tamed; when neither does, the SDK answers -32700."""
    import pydantic_core

    try:
        obj = pydantic_core.from_json(body)
        rewrite = False
    except ValueError:
        try:
            obj = load(body.decode("utf-8"))
        except (UnicodeDecodeError, ParseError):
            return body, None
        rewrite = True
    _message, problem = _envelope(obj)
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
