"""Where a call points (buckets, regions, resource ARNs) against the target's allow-lists. No I/O."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from typing import Any

from safe_mcp_aws.settings import AwsSettings

__all__ = ["buckets_named", "out_of_scope", "resource_arns", "s3_keys_named"]

_REGION_KEYS = frozenset({"Region", "SourceRegion", "DestinationRegion", "RegionName", "TargetRegion"})
_EC2_ID = re.compile(r"^(i|vol|sg|snap|ami|subnet|vpc|eni|igw|rtb|eipalloc|nat|lt|key)-[0-9a-f]{8,17}$")
_EC2_TYPES = {"i": "instance", "vol": "volume", "sg": "security-group", "snap": "snapshot", "ami": "image",
              "subnet": "subnet", "vpc": "vpc", "eni": "network-interface", "igw": "internet-gateway",
              "rtb": "route-table", "eipalloc": "elastic-ip", "nat": "natgateway", "lt": "launch-template",
              "key": "key-pair"}


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v, key)


def buckets_named(service: str, params: Mapping[str, Any]) -> list[str]:
    if service != "s3":
        return []
    names = [params["Bucket"]] if isinstance(params.get("Bucket"), str) else []
    src = params.get("CopySource")
    if isinstance(src, str):
        names.append(src.lstrip("/").split("/", 1)[0])
    elif isinstance(src, Mapping) and isinstance(src.get("Bucket"), str):
        names.append(src["Bucket"])
    return names


def s3_keys_named(operation: str, params: Mapping[str, Any]) -> list[str]:
    """The object keys a call writes or deletes (DeleteObjects: every key in the request)."""
    if operation == "DeleteObjects":
        objects = (params.get("Delete") or {}).get("Objects") or []
        return [str(o.get("Key")) for o in objects if isinstance(o, Mapping)]
    key = params.get("Key")
    return [key] if isinstance(key, str) else []


def resource_arns(service: str, params: Mapping[str, Any], s: AwsSettings) -> list[str]:
    arns = []
    for _key, value in _strings(params):
        if value.startswith("arn:"):
            arns.append(value)
        elif service == "ec2" and _EC2_ID.match(value):
            kind = _EC2_TYPES[value.split("-", 1)[0]]
            arns.append(f"arn:aws:ec2:{s.region}:{s.account}:{kind}/{value}")
    return arns


def out_of_scope(service: str, operation: str, params: Mapping[str, Any], s: AwsSettings, *, read: bool) -> str:
    """Why the call points outside the target, or "" when it stays inside."""
    if s.services is not None and service not in s.services:
        return f"service {service!r} is not in this target's services ({', '.join(s.services) or 'none'})"
    for key, value in _strings(params):
        if key in _REGION_KEYS and value != s.region:
            return f"{key}={value!r}: this target works in region {s.region} only"
    if service == "s3" and operation == "CreateBucket":
        where = (params.get("CreateBucketConfiguration") or {}).get("LocationConstraint")
        if where and where != s.region:
            return f"LocationConstraint={where!r}: this target works in region {s.region} only"
    if s.buckets is not None:
        for bucket in buckets_named(service, params):
            if not any(fnmatch.fnmatchcase(bucket, pat) for pat in s.buckets):
                return f"bucket {bucket!r} is not in this target's buckets ({', '.join(s.buckets) or 'none'})"
    if s.resources is not None:
        for arn in resource_arns(service, params, s):
            if not any(fnmatch.fnmatchcase(arn, pat) for pat in s.resources):
                return f"resource {arn} is not in this target's resources"
    if service == "s3" and not read:
        for key in s3_keys_named(operation, params):
            if key.startswith(s.quarantine_prefix):
                return f"key {key!r} is under {s.quarantine_prefix!r}, where safe-mcp keeps copies for undo"
    return ""
