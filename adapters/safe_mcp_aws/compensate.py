"""Before-state for the operations whose undo is recorded, and the undo itself (`HANDLERS`).

S3 objects: before a delete or overwrite (put, copy, multipart completion) the current object is kept,
either as the version id it has (versioned buckets) or as a copy under the quarantine prefix; undo
puts it back, but only while the key still holds what this call left there. EC2: stop/start are each
other's undo; tags and security-group rules record what they were and are set back, tags only while
they still hold what the call wrote. DynamoDB items (dynamo.py), creates (creates.py) and received
SQS messages have handlers of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from safe_mcp.errors import AdapterError
from safe_mcp.state.receipts import new_id

__all__ = ["HANDLERS", "apply", "ec2_instance_states", "ec2_sg_record", "ec2_tags_record", "s3_keep", "s3_state"]

Client = Any
Clients = Callable[[str], Client]


# ---------------------------------------------------------------------- S3


def s3_state(s3: Client, bucket: str, key: str) -> dict[str, Any] | None:
    """The current object at bucket/key (etag, size, version id), or None when there is none."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    return {"etag": head.get("ETag"), "size": head.get("ContentLength"), "version_id": head.get("VersionId"),
            "content_type": head.get("ContentType")}


def s3_versioned(s3: Client, bucket: str) -> bool:
    return bool(s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled")


def s3_keep(s3: Client, bucket: str, keys: list[str], quarantine: str) -> list[dict[str, Any]]:
    """Keep what `keys` hold now so they can be put back: one record per key, `mode` says how."""
    versioned = s3_versioned(s3, bucket)
    stamp = new_id("q")
    items = []
    for key in keys:
        state = s3_state(s3, bucket, key)
        item: dict[str, Any] = {"bucket": bucket, "key": key}
        if state is None:
            item["mode"] = "absent"
        elif versioned and state["version_id"] not in (None, "null"):
            item.update(mode="version", version_id=state["version_id"], size=state["size"], etag=state["etag"])
        else:
            qkey = f"{quarantine}{stamp}/{key}"
            s3.copy_object(Bucket=bucket, Key=qkey, CopySource={"Bucket": bucket, "Key": key},
                           MetadataDirective="COPY")
            item.update(mode="quarantine", quarantine_key=qkey, size=state["size"], etag=state["etag"])
        items.append(item)
    return items


def _s3_undo(clients: Clients, comp: Mapping[str, Any]) -> tuple[int, str]:
    s3 = clients("s3")
    items = list(comp.get("items", []))
    for item in items:  # check every key first, so that undo never half-applies on moved state
        now = s3_state(s3, item["bucket"], item["key"])
        after = item.get("after_etag")
        where = f"s3://{item['bucket']}/{item['key']}"
        if after is None and now is not None:
            raise AdapterError(f"{where} was written again after this call; undo would overwrite newer data")
        if after is not None and (now is None or now["etag"] != after):
            raise AdapterError(f"{where} changed after this call; undo would destroy newer data")
    for item in reversed(items):
        bucket, key = item["bucket"], item["key"]
        if item["mode"] == "absent":
            s3.delete_object(Bucket=bucket, Key=key)
        elif item["mode"] == "version":
            s3.copy_object(Bucket=bucket, Key=key, MetadataDirective="COPY",
                           CopySource={"Bucket": bucket, "Key": key, "VersionId": item["version_id"]})
        else:
            s3.copy_object(Bucket=bucket, Key=key, MetadataDirective="COPY",
                           CopySource={"Bucket": bucket, "Key": item["quarantine_key"]})
            s3.delete_object(Bucket=bucket, Key=item["quarantine_key"])
    return len(items), f"{len(items)} S3 objects put back as they were"


# ---------------------------------------------------------------------- EC2


def ec2_instance_states(ec2: Client, ids: list[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=ids):
        for res in page.get("Reservations", []):
            for inst in res.get("Instances", []):
                states[inst["InstanceId"]] = inst["State"]["Name"]
    return states


def ec2_tags_record(ec2: Client, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What CreateTags/DeleteTags will change, and how to set it back."""
    resources = list(params.get("Resources", []))
    before: dict[tuple[str, str], str] = {}
    for page in ec2.get_paginator("describe_tags").paginate(Filters=[{"Name": "resource-id", "Values": resources}]):
        for tag in page.get("Tags", []):
            before[(tag["ResourceId"], tag["Key"])] = tag.get("Value", "")
    tags = params.get("Tags")
    restore, remove = [], []
    if operation == "CreateTags":
        for rid in resources:
            for tag in tags or []:
                if (rid, tag["Key"]) in before:
                    restore.append({"resource": rid, "key": tag["Key"], "value": before[(rid, tag["Key"])]})
                else:
                    remove.append({"resource": rid, "key": tag["Key"]})
    else:
        keys = None if not tags else {t["Key"] for t in tags}
        restore = [{"resource": rid, "key": k, "value": v} for (rid, k), v in sorted(before.items())
                   if rid in resources and (keys is None or k in keys)]
    # what the call leaves, so that undo can tell whether someone changed these tags since
    if operation == "CreateTags":
        expect = [{"resource": rid, "key": t["Key"], "value": t.get("Value", "")} for rid in resources for t in tags or []]
    else:
        expect = [{"resource": r["resource"], "key": r["key"], "value": None} for r in restore]
    return {"op": "ec2_tags", "restore": restore, "remove": remove, "expect": expect,
            "affected": len(restore) + len(remove)}


def ec2_sg_record(ec2: Client, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Authorize and revoke are each other's undo; the group's rules before are kept for the record."""
    ident = {k: params[k] for k in ("GroupId", "GroupName") if k in params}
    groups = ec2.describe_security_groups(**({"GroupIds": [ident["GroupId"]]} if "GroupId" in ident
                                             else {"GroupNames": [ident["GroupName"]]}))["SecurityGroups"]
    field = "IpPermissionsEgress" if operation.endswith("Egress") else "IpPermissions"
    inverse = operation.replace("Authorize", "Revoke") if operation.startswith("Authorize") \
        else operation.replace("Revoke", "Authorize")
    perms = list(params.get("IpPermissions", []))
    return {"op": "ec2_sg", "call": inverse, "params": {**ident, "IpPermissions": perms},
            "before": groups[0].get(field, []) if groups else [], "affected": len(perms)}


def _ec2_undo_instances(clients: Clients, comp: Mapping[str, Any]) -> tuple[int, str]:
    ec2 = clients("ec2")
    ids = list(comp.get("instance_ids", []))
    if not ids:
        return 0, "no instance needed changing"
    states = ec2_instance_states(ec2, ids)
    gone = [i for i in ids if states.get(i) in {None, "terminated", "shutting-down"}]
    if gone:
        raise AdapterError(f"instances {', '.join(gone)} are terminated or gone; they cannot be restored")
    if comp["op"] == "ec2_start":
        if any(states[i] == "stopping" for i in ids):
            ec2.get_waiter("instance_stopped").wait(InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": 24})
        todo = [i for i in ids if states[i] != "running"]
        if todo:
            ec2.start_instances(InstanceIds=todo)
        return len(ids), f"started {', '.join(ids)} again"
    todo = [i for i in ids if states[i] in {"running", "pending"}]
    if todo:
        ec2.stop_instances(InstanceIds=todo)
    return len(ids), f"stopped {', '.join(ids)} again"


def _ec2_undo_tags(clients: Clients, comp: Mapping[str, Any]) -> tuple[int, str]:
    ec2 = clients("ec2")
    expect = list(comp.get("expect", []))
    resources = sorted({e["resource"] for e in expect})
    now: dict[tuple[str, str], str] = {}
    if resources:
        for page in ec2.get_paginator("describe_tags").paginate(
                Filters=[{"Name": "resource-id", "Values": resources}]):
            for tag in page.get("Tags", []):
                now[(tag["ResourceId"], tag["Key"])] = tag.get("Value", "")
    moved = [f"{e['resource']} tag {e['key']}" for e in expect if now.get((e["resource"], e["key"])) != e["value"]]
    if moved:
        raise AdapterError(f"{', '.join(moved)} changed after this call; undo would overwrite newer tags "
                           "(nothing was undone)")
    for item in comp.get("restore", []):
        ec2.create_tags(Resources=[item["resource"]], Tags=[{"Key": item["key"], "Value": item["value"]}])
    for item in comp.get("remove", []):
        ec2.delete_tags(Resources=[item["resource"]], Tags=[{"Key": item["key"]}])
    n = len(comp.get("restore", [])) + len(comp.get("remove", []))
    return n, f"{n} tags set back"


def _ec2_undo_sg(clients: Clients, comp: Mapping[str, Any]) -> tuple[int, str]:
    ec2 = clients("ec2")
    method = getattr(ec2, _snake(comp["call"]))
    method(**comp["params"])
    return int(comp.get("affected", 0)), f"security-group rules set back ({comp['call']})"


def apply(clients: Clients, comp: Mapping[str, Any]) -> tuple[int, str]:
    """Run the undo recorded in `comp`; returns (items restored, summary).

    Raises:
        AdapterError: the state moved on, or AWS refused (nothing more was changed than reported).
        ClientError: AWS refused; the caller translates it.
    """
    handler = HANDLERS.get(str(comp.get("op")))
    if handler is None:
        raise AdapterError(f"unknown compensation {comp.get('op')!r}")
    return handler(clients, comp)


def _sqs_visible(clients: Clients, comp: Mapping[str, Any]) -> tuple[int, str]:
    """Received messages become visible again. SQS cannot test a receipt handle without using it, so a
    message deleted or received by someone else since is named in the summary (it stays as it is); when
    none can be put back, undo refuses."""
    sqs = clients("sqs")
    messages = list(comp.get("messages", []))
    if not messages:
        return 0, "no message was received"
    entries = [{"Id": str(i), "ReceiptHandle": m["handle"], "VisibilityTimeout": 0} for i, m in enumerate(messages)]
    failed = sqs.change_message_visibility_batch(QueueUrl=comp["queue_url"], Entries=entries).get("Failed", [])
    gone = [str(messages[int(f["Id"])]["message_id"]) for f in failed]
    if len(gone) == len(messages):
        raise AdapterError(f"messages {', '.join(gone)} were deleted or received again since this call; there is "
                           "nothing left to put back")
    done = len(messages) - len(gone)
    tail = f"; {', '.join(gone)} were deleted or received again since and stay as they are" if gone else ""
    return done, f"{done} messages visible in the queue again{tail}"


def _ddb_undo(clients: Clients, comp: Mapping[str, Any]) -> tuple[int, str]:
    from safe_mcp_aws import dynamo

    n = dynamo.undo(clients("dynamodb"), list(comp.get("items", [])))
    return n, f"{n} DynamoDB items put back as they were"


def _created_undo(clients: Clients, comp: Mapping[str, Any]) -> tuple[int, str]:
    from safe_mcp_aws import creates

    return creates.undo(clients, comp)


HANDLERS: dict[str, Callable[[Clients, Mapping[str, Any]], tuple[int, str]]] = {
    "s3_restore": _s3_undo, "ec2_start": _ec2_undo_instances, "ec2_stop": _ec2_undo_instances,
    "ec2_tags": _ec2_undo_tags, "ec2_sg": _ec2_undo_sg, "ddb_items": _ddb_undo, "created": _created_undo,
    "sqs_visible": _sqs_visible,
}
"""Every compensation kind undo_table.COVERED names, and the function that runs it."""


def _snake(name: str) -> str:
    from botocore import xform_name

    return str(xform_name(name))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
