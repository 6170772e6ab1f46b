"""CreateX undone by DeleteX, with the id taken from the request or the result (undo_table.CREATES).

Several creates are idempotent (CreateQueue, CreateTopic, CreateBucket in us-east-1 answer with the
existing resource), so whether the resource existed is asked first: a create that found it there
records an empty compensation, and undo never deletes what the call did not make. Undo refuses
while the resource holds anything put there since (messages, items, objects, subscriptions, rules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from safe_mcp.errors import AdapterError
from safe_mcp_aws.undo_table import CREATES

__all__ = ["existed", "record", "undo"]

Client = Any
Clients = Callable[[str], Client]
_MISSING = frozenset({"404", "NoSuchBucket", "NotFound", "ResourceNotFoundException", "NotFoundException",
                      "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "InvalidGroup.NotFound",
                      "InvalidGroupId.NotFound", "NoSuchUpload"})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _absent(probe: Callable[[], Any]) -> bool:
    try:
        probe()
    except ClientError as exc:
        if _code(exc) in _MISSING:
            return True
        raise
    return False


def existed(clients: Clients, key: str, params: Mapping[str, Any], region: str, account: str) -> bool:
    """Whether the resource the create names is already there (then the call creates nothing)."""
    p = params
    if key == "s3:CreateBucket":
        return not _absent(lambda: clients("s3").head_bucket(Bucket=p["Bucket"]))
    if key == "sqs:CreateQueue":
        return not _absent(lambda: clients("sqs").get_queue_url(QueueName=p["QueueName"]))
    if key == "sns:CreateTopic":
        arn = f"arn:aws:sns:{region}:{account}:{p['Name']}"
        return not _absent(lambda: clients("sns").get_topic_attributes(TopicArn=arn))
    if key == "dynamodb:CreateTable":
        return not _absent(lambda: clients("dynamodb").describe_table(TableName=p["TableName"]))
    if key == "logs:CreateLogGroup":
        found = clients("logs").describe_log_groups(logGroupNamePrefix=p["logGroupName"]).get("logGroups", [])
        return any(g.get("logGroupName") == p["logGroupName"] for g in found)
    if key == "logs:CreateLogStream":
        found = clients("logs").describe_log_streams(logGroupName=p["logGroupName"],
                                                     logStreamNamePrefix=p["logStreamName"]).get("logStreams", [])
        return any(s.get("logStreamName") == p["logStreamName"] for s in found)
    return False  # CreateSecurityGroup, CreateMultipartUpload: AWS refuses a duplicate or makes a new one


def record(key: str, params: Mapping[str, Any], result: Mapping[str, Any], existed_before: bool) -> dict[str, Any]:
    """The compensation for a create that ran: the inverse call with the new resource's id."""
    spec = CREATES[key]
    if existed_before:
        return {"op": "created", "key": key, "affected": 0, "call": None,
                "note": "the resource existed before this call; it made nothing, so undo deletes nothing"}
    args = {}
    for name, where in spec.ids.items():
        source, _, path = where.partition(".")
        value: Any = params if source == "params" else result
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            raise AdapterError(f"{key}: the response has no {path}; undo could not be recorded")
        args[name] = value
    return {"op": "created", "key": key, "affected": 1, "service": spec.service, "call": spec.inverse, "params": args}


def _leftovers(clients: Clients, key: str, args: Mapping[str, Any]) -> str:
    """What the new resource holds now that undo would destroy ("" when it is as the create left it)."""
    if key == "s3:CreateBucket":
        listed = clients("s3").list_object_versions(Bucket=args["Bucket"], MaxKeys=1)
        if listed.get("Versions") or listed.get("DeleteMarkers"):
            return f"bucket {args['Bucket']} holds objects now"
    elif key == "sqs:CreateQueue":
        attrs = clients("sqs").get_queue_attributes(
            QueueUrl=args["QueueUrl"], AttributeNames=["ApproximateNumberOfMessages",
                                                       "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        if any(int(v) for v in attrs.values()):
            return f"queue {args['QueueUrl']} holds messages now"
    elif key == "sns:CreateTopic":
        subs = clients("sns").list_subscriptions_by_topic(TopicArn=args["TopicArn"]).get("Subscriptions", [])
        if subs:
            return f"topic {args['TopicArn']} has {len(subs)} subscriptions now"
    elif key == "dynamodb:CreateTable":
        if clients("dynamodb").scan(TableName=args["TableName"], Limit=1, Select="COUNT").get("Count"):
            return f"table {args['TableName']} holds items now"
    elif key == "ec2:CreateSecurityGroup":
        group = clients("ec2").describe_security_groups(GroupIds=[args["GroupId"]])["SecurityGroups"][0]
        if group.get("IpPermissions"):
            return f"security group {args['GroupId']} has ingress rules now"
    elif key == "s3:CreateMultipartUpload":  # raises NoSuchUpload once completed or aborted
        clients("s3").list_parts(Bucket=args["Bucket"], Key=args["Key"], UploadId=args["UploadId"], MaxParts=1)
    elif key == "logs:CreateLogGroup":
        streams = clients("logs").describe_log_streams(logGroupName=args["logGroupName"], limit=1).get("logStreams")
        if streams:
            return f"log group {args['logGroupName']} holds log streams now"
    elif key == "logs:CreateLogStream":
        events = clients("logs").get_log_events(logGroupName=args["logGroupName"],
                                                logStreamName=args["logStreamName"], limit=1).get("events")
        if events:
            return f"log stream {args['logStreamName']} holds events now"
    return ""


def undo(clients: Clients, comp: Mapping[str, Any]) -> tuple[int, str]:
    """Delete what the create made, if it is still there and still empty.

    Raises:
        AdapterError: it is gone already, or holds data put there since (named); nothing was deleted.
    """
    if not comp.get("call"):
        return 0, str(comp.get("note", "nothing to undo"))
    key, args = str(comp["key"]), dict(comp["params"])
    try:
        left = _leftovers(clients, key, args)
    except ClientError as exc:
        if _code(exc) in _MISSING:
            raise AdapterError(f"{key}: {args} is gone already; nothing to undo") from None
        raise
    if left:
        raise AdapterError(f"{left}; undo would destroy data put there after this call (nothing was deleted)")
    from botocore import xform_name

    getattr(clients(str(comp["service"])), xform_name(str(comp["call"])))(**args)
    return 1, f"{comp['call']} {', '.join(str(v) for v in args.values())}"
