"""The request an agent sends: its service, operation and params, validated against the botocore model
before anything is sent. Nothing here does I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safe_mcp.adapter import Call, Classification
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError

__all__ = ["identifiers", "parse", "refused_out_of_scope", "validate"]


_ID_KEYS = ("Bucket", "Key", "Name", "Id", "Ids", "Arn", "Url", "TableName", "QueueUrl")


def identifiers(params: Mapping[str, Any]) -> str:
    """The names and ids a request points at (bucket/key, instance ids, table and item key...)."""
    found = []
    for k, v in params.items():
        if k.endswith(_ID_KEYS) and isinstance(v, (str, list)):
            found.append(f"{k}={v if isinstance(v, str) else ', '.join(map(str, v[:10]))}")
        elif k in {"Key", "Item"} and isinstance(v, Mapping):
            found.append(f"{k}={ {a: b for a, b in list(v.items())[:5]} }")
    if isinstance(params.get("Delete"), Mapping):
        keys = [o.get("Key") for o in params["Delete"].get("Objects", []) if isinstance(o, Mapping)]
        found.append(f"keys={', '.join(map(str, keys[:10]))}" + (" ..." if len(keys) > 10 else ""))
    return "; ".join(found)


def refused_out_of_scope(problem: str) -> Classification:
    return Classification(effect=Effect.FORBIDDEN, reason=f"out of scope: {problem}; nothing was sent")


def parse(call: Call) -> tuple[str, str, dict[str, Any]]:
    service, operation = call.args.get("service"), call.args.get("operation")
    if not isinstance(service, str) or not service.strip():
        raise AdapterError('service must be a boto3 service name, e.g. "s3"')
    if not isinstance(operation, str) or not operation.strip():
        raise AdapterError('operation must be an operation name, e.g. "ListObjectsV2" or "list_objects_v2"')
    params = call.args.get("params") or {}
    if not isinstance(params, dict):
        raise AdapterError("params must be an object of the operation's parameters")
    return service.strip().lower(), operation.strip(), dict(params)


def validate(service: str, op: Any, params: dict[str, Any]) -> None:
    """botocore's own parameter validation, before anything is sent (its message is kept)."""
    from botocore.exceptions import ParamValidationError
    from botocore.validate import ParamValidator

    if op.input_shape is None:
        if params:
            raise AdapterError(f"{service}.{op.name} takes no params")
        return
    shaped = dict(params)
    if service == "s3" and isinstance(shaped.get("CopySource"), Mapping):
        src = shaped["CopySource"]  # boto3 accepts a dict and turns it into the wire string
        unknown = sorted(set(src) - {"Bucket", "Key", "VersionId"})
        if unknown:  # boto3 would drop them silently (a misspelled VersionId copies the latest version)
            raise AdapterError(f"invalid params for {service}.{op.name}: CopySource has unknown keys "
                               f"{', '.join(unknown)}; it takes Bucket, Key and VersionId")
        shaped["CopySource"] = f"{src.get('Bucket', '')}/{src.get('Key', '')}"
    report = ParamValidator().validate(shaped, op.input_shape)
    if report.has_errors():
        raise AdapterError(f"invalid params for {service}.{op.name}: {ParamValidationError(report=report.generate_report())}")
