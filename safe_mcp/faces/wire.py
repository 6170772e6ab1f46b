"""JSON-RPC on the wire, before the SDK parses it: no I/O here (the guards in stdio_guard and http_guard wait on
the streams). The SDK's parser rejects lone surrogates and deep nesting and its stdio reader then answers nothing;
here every request parses as Python's json does, or gets a JSON-RPC error to answer. What no target can take is
re-expressed (`tame`) so that it reaches the tool it addresses, where `strict_args` refuses it with a receipt.
"""

from __future__ import annotations

import json
import re
from typing import Any

from safe_mcp.faces.strict_args import SURROGATE_STAND_IN

__all__ = ["INVALID_REQUEST", "PARSE_ERROR", "ParseError", "dump", "envelope", "error", "load", "oversize_error",
           "tame"]

WIRE_DEPTH = 64
"""Deepest nesting carried on; deeper containers become 0 (still deeper than `strict_args.MAX_DEPTH` allows)."""

PARSE_ERROR, INVALID_REQUEST = -32700, -32600


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
    """A JSON-RPC error response to send as it is."""
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


def envelope(obj: Any) -> tuple[Any, dict[str, Any] | None]:
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


def dump(message: Any) -> bytes:
    """One outgoing SDK message as a line of JSON; never fails for what a target returned."""
    from pydantic_core import PydanticSerializationError

    try:
        text: str = message.model_dump_json(by_alias=True, exclude_unset=True)
    except PydanticSerializationError:
        # Something unencodable in a result (a lone surrogate from a target): escaped, still an answer.
        text = json.dumps(message.model_dump(by_alias=True, exclude_unset=True), default=str)
    return text.encode("utf-8") + b"\n"
