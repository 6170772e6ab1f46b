"""The operations whose undo this adapter records, and which requests of them it covers. No I/O.

A mutating call is `write` or `destructive` only when its operation is in `COVERED` and `gap(params)`
is empty: the compensator records the before-state and can put it back. Anything else that changes
state is `irreversible` (classify.py). Request content decides: the same PutObject with a public ACL
or an object lock is not covered, because undo could not take the ACL's exposure or the lock back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from safe_mcp.effects import Effect

__all__ = ["COVERED", "CREATES", "Cover", "Create", "cover"]


@dataclass(frozen=True)
class Cover:
    effect: Effect
    """The effect when covered; a put over an existing item or object escalates to destructive when it runs."""
    kind: str
    """The compensation kind compensate.apply runs."""
    gap: Callable[[Mapping[str, Any]], str]
    """Why this request is not covered ("" when it is)."""


@dataclass(frozen=True)
class Create:
    """CreateX and the DeleteX that undoes it, with where the new resource's id comes from."""

    service: str
    inverse: str
    ids: Mapping[str, str]
    """Parameter of the inverse -> "params.Name" (from the request) or "result.A.B" (from the response)."""


def _none(_: Mapping[str, Any]) -> str:
    return ""


_PRIVATE_ACLS = frozenset({"private", "bucket-owner-full-control", "bucket-owner-read"})


def _s3_exposure(p: Mapping[str, Any]) -> str:
    """ACLs, grants and object locks: undo of the object cannot take back exposure or a lock."""
    if p.get("ACL") not in (None, *_PRIVATE_ACLS):
        return f"ACL={p['ACL']!r} grants access beyond the account"
    grants = sorted(k for k in p if k.startswith("Grant"))
    if grants:
        return f"{', '.join(grants)} grant access; undo cannot take a grant back once used"
    locks = sorted(k for k in p if k.startswith("ObjectLock"))
    if locks:
        return f"{', '.join(locks)} locks the object, so undo could not remove it"
    return ""


def _attributes_policy(p: Mapping[str, Any]) -> str:
    attrs = p.get("Attributes") or p.get("attributes") or {}
    named = sorted(k for k in attrs if "Policy" in k) if isinstance(attrs, Mapping) else []
    if named or p.get("ResourcePolicy") or p.get("policy"):
        return f"it sets an access policy ({', '.join(named) or 'ResourcePolicy'})"
    return ""


def _sg_rules(p: Mapping[str, Any]) -> str:
    if not p.get("IpPermissions"):
        return "rules given by id or by the legacy CidrIp/FromPort parameters are not recorded for undo"
    return ""


def _bucket_create(p: Mapping[str, Any]) -> str:
    if p.get("ObjectLockEnabledForBucket"):
        return "a bucket with object lock cannot be deleted once locked objects are in it"
    return _s3_exposure(p)


COVERED: dict[str, Cover] = {
    "s3:PutObject": Cover(Effect.WRITE, "s3_restore", _s3_exposure),
    "s3:CopyObject": Cover(Effect.WRITE, "s3_restore", _s3_exposure),
    "s3:CompleteMultipartUpload": Cover(Effect.WRITE, "s3_restore", _none),
    "s3:DeleteObject": Cover(Effect.DESTRUCTIVE, "s3_restore", _none),
    "s3:DeleteObjects": Cover(Effect.DESTRUCTIVE, "s3_restore", _none),
    "ec2:StopInstances": Cover(Effect.WRITE, "ec2_start", _none),
    "ec2:StartInstances": Cover(Effect.WRITE, "ec2_stop", _none),
    "ec2:CreateTags": Cover(Effect.WRITE, "ec2_tags", _none),
    "ec2:DeleteTags": Cover(Effect.DESTRUCTIVE, "ec2_tags", _none),
    # Removing a rule closes access; undo re-adds exactly the rules named. (Adding rules is network
    # exposure: never covered, so it is irreversible even though its undo is still recorded.)
    "ec2:RevokeSecurityGroupIngress": Cover(Effect.DESTRUCTIVE, "ec2_sg", _sg_rules),
    "ec2:RevokeSecurityGroupEgress": Cover(Effect.DESTRUCTIVE, "ec2_sg", _sg_rules),
    "dynamodb:PutItem": Cover(Effect.WRITE, "ddb_items", _none),
    "dynamodb:UpdateItem": Cover(Effect.WRITE, "ddb_items", _none),
    "dynamodb:DeleteItem": Cover(Effect.DESTRUCTIVE, "ddb_items", _none),
    "dynamodb:BatchWriteItem": Cover(Effect.WRITE, "ddb_items", _none),
    "dynamodb:TransactWriteItems": Cover(Effect.WRITE, "ddb_items", _none),
    # receiving hides messages from other consumers for a while; undo makes them visible again
    "sqs:ReceiveMessage": Cover(Effect.WRITE, "sqs_visible", _none),
    # Creates undone by their delete, while the new resource is still as the call left it (empty).
    "s3:CreateBucket": Cover(Effect.WRITE, "created", _bucket_create),
    "s3:CreateMultipartUpload": Cover(Effect.WRITE, "created", _s3_exposure),
    "sqs:CreateQueue": Cover(Effect.WRITE, "created", _attributes_policy),
    "sns:CreateTopic": Cover(Effect.WRITE, "created", _attributes_policy),
    "dynamodb:CreateTable": Cover(Effect.WRITE, "created", _attributes_policy),
    "ec2:CreateSecurityGroup": Cover(Effect.WRITE, "created", _none),
    "logs:CreateLogGroup": Cover(Effect.WRITE, "created", _none),
    "logs:CreateLogStream": Cover(Effect.WRITE, "created", _none),
}

CREATES: dict[str, Create] = {
    "s3:CreateBucket": Create("s3", "DeleteBucket", {"Bucket": "params.Bucket"}),
    "s3:CreateMultipartUpload": Create("s3", "AbortMultipartUpload", {
        "Bucket": "params.Bucket", "Key": "params.Key", "UploadId": "result.UploadId"}),
    "sqs:CreateQueue": Create("sqs", "DeleteQueue", {"QueueUrl": "result.QueueUrl"}),
    "sns:CreateTopic": Create("sns", "DeleteTopic", {"TopicArn": "result.TopicArn"}),
    "dynamodb:CreateTable": Create("dynamodb", "DeleteTable", {"TableName": "params.TableName"}),
    "ec2:CreateSecurityGroup": Create("ec2", "DeleteSecurityGroup", {"GroupId": "result.GroupId"}),
    "logs:CreateLogGroup": Create("logs", "DeleteLogGroup", {"logGroupName": "params.logGroupName"}),
    "logs:CreateLogStream": Create("logs", "DeleteLogStream", {
        "logGroupName": "params.logGroupName", "logStreamName": "params.logStreamName"}),
}


def cover(key: str, params: Mapping[str, Any]) -> tuple[Cover | None, str]:
    """The cover of `key` for this request, or (None, why not)."""
    found = COVERED.get(key)
    if found is None:
        return None, ""
    gap = found.gap(params)
    if gap:
        return None, gap
    if key == "dynamodb:BatchWriteItem":
        requests = [r for rs in (params.get("RequestItems") or {}).values() for r in rs or []]
        if any(isinstance(r, Mapping) and "DeleteRequest" in r for r in requests):
            return Cover(Effect.DESTRUCTIVE, found.kind, found.gap), ""
    if key == "dynamodb:TransactWriteItems":
        entries = params.get("TransactItems") or []
        if any(isinstance(e, Mapping) and "Delete" in e for e in entries):
            return Cover(Effect.DESTRUCTIVE, found.kind, found.gap), ""
    return found, ""

