"""Values as JSON can carry them."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import ipaddress
import uuid
from typing import Any

__all__ = ["json_rows", "jsonable"]


def json_rows(rows: list[Any], mixed: list[int]) -> list[Any]:
    """Rows JSON can carry, converting only the columns whose type needs it (tuples serialise as lists)."""
    if not mixed:
        return rows
    out = []
    for r in rows:
        row = list(r)
        for i in mixed:
            row[i] = jsonable(row[i])
        out.append(row)
    return out


def jsonable(value: Any) -> Any:
    """A value as JSON can carry it: exact numbers and binary as strings, times in ISO 8601."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (uuid.UUID, ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                          ipaddress.IPv6Network, ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return str(value)
    return str(value)
