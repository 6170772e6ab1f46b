"""Responses trimmed to what an agent needs: JSON values, no ResponseMetadata, bodies read up to a cap."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any

__all__ = ["read_body", "trim"]

_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-yaml", "application/javascript")


def trim(value: Any, max_body_bytes: int, content_type: str = "") -> Any:
    """A JSON-able copy of a botocore response; streams are read (and closed) up to `max_body_bytes`."""
    if isinstance(value, dict):
        ctype = str(value.get("ContentType") or content_type)
        return {k: trim(v, max_body_bytes, ctype) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, (list, tuple, set)):
        return [trim(v, max_body_bytes, content_type) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray)):
        return _summarise(bytes(value), truncated=False, content_type=content_type)
    if hasattr(value, "read") and hasattr(value, "close"):
        return read_body(value, max_body_bytes, content_type)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "__iter__"):  # an event stream: not something to hand an agent
        close = getattr(value, "close", None)
        if callable(close):
            close()
        return {"stream": type(value).__name__, "note": "event streams are not read by safe-mcp"}
    return str(value)


def read_body(stream: Any, limit: int, content_type: str = "") -> dict[str, Any]:
    """Read at most `limit` bytes of a stream and close it."""
    try:
        data = stream.read(limit + 1)
    finally:
        stream.close()
    truncated = len(data) > limit
    return _summarise(data[:limit], truncated=truncated, content_type=content_type)


def _summarise(data: bytes, *, truncated: bool, content_type: str) -> dict[str, Any]:
    out: dict[str, Any] = {"bytes_read": len(data), "truncated": truncated}
    text = _as_text(data, content_type, truncated)
    if text is not None:
        out["text"] = text
        return out
    out.update({"binary": True, "sha256": hashlib.sha256(data).hexdigest(),
                "head_base64": base64.b64encode(data[:48]).decode()})
    if content_type:
        out["content_type"] = content_type
    return out


def _as_text(data: bytes, content_type: str, truncated: bool) -> str | None:
    if content_type and not content_type.startswith(_TEXT_TYPES) and content_type != "binary/octet-stream":
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cut through a multi-byte character at the cap is still text.
        if not (truncated and exc.start >= len(data) - 3):
            return None
        text = data[: exc.start].decode("utf-8")
    if any(ord(c) < 9 or 13 < ord(c) < 32 for c in text[:4096]):
        return None
    return text
