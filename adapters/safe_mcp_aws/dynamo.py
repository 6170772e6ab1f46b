"""DynamoDB items: before-images for PutItem, UpdateItem, DeleteItem and BatchWriteItem, and their undo.

Before the write each item the request names is read (strongly consistent); after it, again. Undo
puts every before-image back (or deletes an item that did not exist), but only when every item is
still exactly as the write left it. Binary attribute values are kept as base64 so the record is JSON.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from safe_mcp.errors import AdapterError

__all__ = ["after", "before", "items_named", "undo"]

Client = Any
Target = tuple[str, dict[str, Any]]  # (table, key in DynamoDB's typed JSON)


def _key_names(ddb: Client, table: str, cache: dict[str, list[str]]) -> list[str]:
    if table not in cache:
        schema = ddb.describe_table(TableName=table)["Table"]["KeySchema"]
        cache[table] = [str(k["AttributeName"]) for k in schema]
    return cache[table]


def items_named(ddb: Client, operation: str, params: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(table, key, "put"|"update"|"delete") for every item the request writes."""
    cache: dict[str, list[str]] = {}
    out: list[tuple[str, dict[str, Any], str]] = []
    if operation == "BatchWriteItem":
        for table, requests in (params.get("RequestItems") or {}).items():
            for req in requests or []:
                if "PutRequest" in req:
                    item = req["PutRequest"].get("Item") or {}
                    out.append((table, {k: item.get(k) for k in _key_names(ddb, table, cache)}, "put"))
                elif "DeleteRequest" in req:
                    out.append((table, dict(req["DeleteRequest"].get("Key") or {}), "delete"))
        return out
    if operation == "TransactWriteItems":  # ConditionCheck entries write nothing
        for entry in params.get("TransactItems") or []:
            for kind, action in (("Put", "put"), ("Update", "update"), ("Delete", "delete")):
                if kind in entry:
                    body = entry[kind]
                    table = str(body.get("TableName"))
                    key = {k: (body.get("Item") or {}).get(k) for k in _key_names(ddb, table, cache)} \
                        if kind == "Put" else dict(body.get("Key") or {})
                    out.append((table, key, action))
        return out
    table = str(params.get("TableName"))
    if operation == "PutItem":
        item = params.get("Item") or {}
        return [(table, {k: item.get(k) for k in _key_names(ddb, table, cache)}, "put")]
    return [(table, dict(params.get("Key") or {}), "update" if operation == "UpdateItem" else "delete")]


def _get(ddb: Client, table: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
    item = ddb.get_item(TableName=table, Key=dict(key), ConsistentRead=True).get("Item")
    return dict(item) if item else None


def before(ddb: Client, named: list[tuple[str, dict[str, Any], str]]) -> list[dict[str, Any]]:
    """One record per item: table, key, and the item as it is now (None: absent)."""
    return [{"table": t, "key": _jsonable(k), "action": a, "before": _jsonable(_get(ddb, t, k))} for t, k, a in named]


def after(ddb: Client, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill in what each item holds after the write; items the write did not change are dropped."""
    kept = []
    for item in items:
        item["after"] = _jsonable(_get(ddb, item["table"], _typed(item["key"])))
        if item["after"] != item["before"]:
            kept.append(item)
    return kept


def undo(ddb: Client, items: list[dict[str, Any]]) -> int:
    """Put every before-image back; refuses, changing nothing, when any item moved on since the write.

    Raises:
        AdapterError: an item changed after the write (named), so undo would destroy newer data.
    """
    for item in items:
        now = _jsonable(_get(ddb, item["table"], _typed(item["key"])))
        if now != item["after"]:
            raise AdapterError(f"item {item['key']} in table {item['table']} changed after this call; undo would "
                               "destroy newer data (nothing was undone)")
    for item in reversed(items):
        if item["before"] is None:
            ddb.delete_item(TableName=item["table"], Key=_typed(item["key"]))
        else:
            ddb.put_item(TableName=item["table"], Item=_typed(item["before"]))
    return len(items)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"__b64__": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    return value


def _typed(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"__b64__"}:
            return base64.b64decode(value["__b64__"])
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return value
