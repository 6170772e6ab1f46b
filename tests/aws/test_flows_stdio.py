"""The main flows end to end: an MCP client over stdio, safe-mcp in a subprocess, moto over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_support import aws_config, run_instance, unique
from support import call, connect, refused

pytestmark = pytest.mark.anyio

LIMITS = """
[limits]
rows_affected = 3
"""


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


async def confirm(client: Any, pending: dict[str, Any]) -> dict[str, Any]:
    assert pending["status"] == "pending", pending
    return await call(client, "confirm", action_id=pending["pending"]["action_id"])


async def test_s3_delete_overwrite_bulk_and_retry(tmp_path: Path, moto_endpoint: str,
                                                  boto: Callable[[str], Any]) -> None:
    s3 = boto("s3")
    bucket = unique("plain")
    s3.create_bucket(Bucket=bucket)
    original = bytes(range(256)) * 40
    s3.put_object(Bucket=bucket, Key="data/report.bin", Body=original)
    cfg = aws_config(tmp_path, moto_endpoint, extra=f'services = ["s3"]\nbuckets = ["{bucket}"]', tail=LIMITS)
    async with connect(cfg, "stdio") as client:
        # delete: a pending action whose preview names the key and its size; nothing deleted yet
        pending = await call(client, "aws_call", target="cloud", service="s3", operation="DeleteObject",
                             params={"Bucket": bucket, "Key": "data/report.bin"})
        assert pending["effect"] == "destructive" and pending["affected"] == 1
        assert pending["preview"]["sample"] == [{"bucket": bucket, "key": "data/report.bin", "exists": True,
                                                 "size": len(original)}]
        assert "data/report.bin" in keys(s3, bucket)
        done = await confirm(client, pending)
        assert done["status"] == "ok" and done["undo"]
        assert keys(s3, bucket, "data/") == []
        assert any(k.endswith("/data/report.bin") for k in keys(s3, bucket, ".safe-mcp-quarantine/"))
        # undo: the exact bytes are back, the quarantine copy is gone
        undone = await call(client, "undo", receipt_id=done["receipt_id"])
        assert undone["affected"] == 1
        assert s3.get_object(Bucket=bucket, Key="data/report.bin")["Body"].read() == original
        assert keys(s3, bucket, ".safe-mcp-quarantine/") == []
        # the agent cannot touch the quarantine prefix
        text = await refused(client, "aws_call", target="cloud", service="s3", operation="DeleteObject",
                             params={"Bucket": bucket, "Key": ".safe-mcp-quarantine/x"})
        assert "undo" in text

        # a put to a new key is a write and runs at once; a retry with the same key runs nothing
        args = {"target": "cloud", "service": "s3", "operation": "PutObject", "idempotency_key": "put-1",
                "params": {"Bucket": bucket, "Key": "notes.txt", "Body": "first"}}
        first = await call(client, "aws_call", **args)
        assert first["status"] == "ok" and first["effect"] == "write"
        s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"changed by someone else")
        again = await call(client, "aws_call", **args)
        assert again["status"] == "duplicate" and again["receipt_id"] == first["receipt_id"]
        assert s3.get_object(Bucket=bucket, Key="notes.txt")["Body"].read() == b"changed by someone else"

        # overwriting is destructive: it escalates to a pending action, and undo restores the old bytes
        pending = await call(client, "aws_call", target="cloud", service="s3", operation="PutObject",
                             params={"Bucket": bucket, "Key": "data/report.bin", "Body": "overwritten"})
        assert pending["effect"] == "destructive" and "overwrites" in pending["message"] + str(pending["preview"])
        done = await confirm(client, pending)
        assert s3.get_object(Bucket=bucket, Key="data/report.bin")["Body"].read() == b"overwritten"
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert s3.get_object(Bucket=bucket, Key="data/report.bin")["Body"].read() == original

        # a bulk delete counts every key: over rows_affected it is refused and nothing is deleted
        for i in range(5):
            s3.put_object(Bucket=bucket, Key=f"bulk/{i}", Body=b"x")
        text = await refused(client, "aws_call", target="cloud", service="s3", operation="DeleteObjects",
                             params={"Bucket": bucket, "Delete": {"Objects": [{"Key": f"bulk/{i}"} for i in range(5)]}})
        assert "5 rows" in text and "limit of 3" in text
        assert len(keys(s3, bucket, "bulk/")) == 5
        # within the limit it runs after confirmation, and undo brings every key back
        pending = await call(client, "aws_call", target="cloud", service="s3", operation="DeleteObjects",
                             params={"Bucket": bucket, "Delete": {"Objects": [{"Key": f"bulk/{i}"} for i in range(3)]}})
        assert pending["affected"] == 3 and len(pending["preview"]["sample"]) == 3
        done = await confirm(client, pending)
        assert done["affected"] == 3 and keys(s3, bucket, "bulk/") == ["bulk/3", "bulk/4"]
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert len(keys(s3, bucket, "bulk/")) == 5


async def test_versioned_bucket_undo_uses_versions(tmp_path: Path, moto_endpoint: str,
                                                   boto: Callable[[str], Any]) -> None:
    s3 = boto("s3")
    bucket = unique("versioned")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="state.json", Body=b'{"v": 1}')
    async with connect(aws_config(tmp_path, moto_endpoint), "stdio") as client:
        pending = await call(client, "aws_call", target="cloud", service="s3", operation="DeleteObject",
                             params={"Bucket": bucket, "Key": "state.json"})
        assert any("versioned" in n for n in pending["preview"]["notes"])
        done = await confirm(client, pending)
        assert keys(s3, bucket) == []
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert s3.get_object(Bucket=bucket, Key="state.json")["Body"].read() == b'{"v": 1}'
        assert keys(s3, bucket, ".safe-mcp-quarantine/") == []  # versions, not copies
        # undo runs once, and refuses when the key moved on
        text = await refused(client, "undo", receipt_id=done["receipt_id"])
        assert "already undone" in text
        pending = await call(client, "aws_call", target="cloud", service="s3", operation="DeleteObject",
                             params={"Bucket": bucket, "Key": "state.json"})
        done = await confirm(client, pending)
        s3.put_object(Bucket=bucket, Key="state.json", Body=b'{"v": 2}')
        text = await refused(client, "undo", receipt_id=done["receipt_id"])
        assert "written again" in text
        assert s3.get_object(Bucket=bucket, Key="state.json")["Body"].read() == b'{"v": 2}'


async def test_ec2_stop_undo_and_protected_terminate(tmp_path: Path, moto_endpoint: str,
                                                     boto: Callable[[str], Any]) -> None:
    ec2 = boto("ec2")
    instance = run_instance(ec2)
    protected = run_instance(ec2, protected=True)

    def state(i: str) -> str:
        return str(ec2.describe_instances(InstanceIds=[i])["Reservations"][0]["Instances"][0]["State"]["Name"])

    cfg = aws_config(tmp_path, moto_endpoint, tail='irreversible = "agent"')
    async with connect(cfg, "stdio") as client:
        dry = await call(client, "aws_call", target="cloud", service="ec2", operation="StopInstances",
                         params={"InstanceIds": [instance]}, dry_run=True)
        assert dry["status"] == "dry_run" and dry["preview"]["sample"] == [{"instance": instance, "state": "running"}]
        assert any("EC2 DryRun" in n for n in dry["preview"]["notes"])
        assert state(instance) == "running"

        stopped = await call(client, "aws_call", target="cloud", service="ec2", operation="StopInstances",
                             params={"InstanceIds": [instance]})
        assert stopped["status"] == "ok" and stopped["effect"] == "write" and stopped["undo"]
        assert state(instance) == "stopped"
        await call(client, "undo", receipt_id=stopped["receipt_id"])
        assert state(instance) == "running"

        text = await refused(client, "aws_call", target="cloud", service="ec2", operation="TerminateInstances",
                             params={"InstanceIds": [protected]})
        assert "termination protection" in text and protected in text
        assert state(protected) == "running"
        pending = await call(client, "aws_call", target="cloud", service="ec2", operation="TerminateInstances",
                             params={"InstanceIds": [instance]})
        assert pending["effect"] == "irreversible"
        done = await confirm(client, pending)
        assert done["undo"] is None and state(instance) in {"shutting-down", "terminated"}
