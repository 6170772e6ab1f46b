"""Through the MCP client in memory: classification across services, scope, forbidden calls, results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_support import ACCOUNT, KEY_ID, SECRET, aws_config, run_instance, unique
from support import call, connect, free_port, refused

pytestmark = pytest.mark.anyio


@pytest.fixture
def bucket(boto: Callable[[str], Any]) -> str:
    name = unique("scope")
    boto("s3").create_bucket(Bucket=name)
    return name


async def test_classification_across_services(tmp_path: Path, moto_endpoint: str, bucket: str,
                                              boto: Callable[[str], Any]) -> None:
    instance = run_instance(boto("ec2"))
    cfg = aws_config(tmp_path, moto_endpoint)
    cases = [
        ("s3", "ListObjectsV2", {"Bucket": bucket}, "read"),
        ("s3", "PutObject", {"Bucket": bucket, "Key": "new.txt", "Body": "x"}, "write"),
        ("ec2", "DescribeInstances", {}, "read"),
        ("ec2", "TerminateInstances", {"InstanceIds": [instance]}, "irreversible"),
        ("logs", "DescribeLogGroups", {}, "read"),
        ("logs", "DeleteLogGroup", {"logGroupName": "app"}, "irreversible"),
        ("dynamodb", "ListTables", {}, "read"),
        ("sqs", "ListQueues", {}, "read"),
    ]
    async with connect(cfg) as client:
        for service, op, params, expected in cases:
            got = await client.call_tool("aws_call", {"target": "cloud", "service": service, "operation": op,
                                                      "params": params, "dry_run": True})
            assert not got.is_error, (service, op, got.content[0].text)
            assert got.structured_content["effect"] == expected, (service, op, got.structured_content)
            assert got.structured_content["status"] == "dry_run"
        # nothing was written by the dry runs
        listed = await call(client, "aws_call", target="cloud", service="s3", operation="list_objects_v2",
                            params={"Bucket": bucket})
        assert listed["effect"] == "read" and listed["result"].get("KeyCount", 0) == 0
        assert "ResponseMetadata" not in listed["result"]


@pytest.mark.parametrize(("service", "op", "params", "why"), [
    ("rds", "DeleteDBSnapshot", {"DBSnapshotIdentifier": "nightly"}, "backup"),
    ("ec2", "DeleteSnapshot", {"SnapshotId": "snap-0123456789abcdef0"}, "snapshot"),
    ("backup", "DeleteRecoveryPoint", {"BackupVaultName": "v", "RecoveryPointArn": "arn:aws:backup:x"}, "backup"),
    ("s3", "PutBucketVersioning", {"Bucket": "b", "VersioningConfiguration": {"Status": "Suspended"}}, "versioning"),
    ("s3", "DeleteObject", {"Bucket": "b", "Key": "k", "VersionId": "v1"}, "version"),
    ("iam", "CreateAccessKey", {"UserName": "agent"}, "credential"),
    ("iam", "CreateUser", {"UserName": "agent"}, "IAM"),
    ("kms", "ScheduleKeyDeletion", {"KeyId": "k"}, "KMS"),
    ("cloudtrail", "StopLogging", {"Name": "trail"}, "audit"),
    ("organizations", "ListAccounts", {}, "Organizations"),
])
async def test_backups_and_guardrails_are_forbidden(tmp_path: Path, moto_endpoint: str, service: str, op: str,
                                                    params: dict[str, Any], why: str) -> None:
    async with connect(aws_config(tmp_path, moto_endpoint)) as client:
        text = await refused(client, "aws_call", target="cloud", service=service, operation=op, params=params)
    assert "forbidden" in text and why in text


async def test_account_mismatch_refuses_every_call(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    cfg = aws_config(tmp_path, moto_endpoint, account="111111111111")
    async with connect(cfg) as client:
        for op, params in [("ListBuckets", {}), ("ListObjectsV2", {"Bucket": bucket})]:
            text = await refused(client, "aws_call", target="cloud", service="s3", operation=op, params=params)
            assert ACCOUNT in text and "111111111111" in text


async def test_out_of_scope_is_refused_before_any_request(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: any request would fail differently
    cfg = aws_config(tmp_path, nowhere, extra='services = ["s3", "logs"]\nbuckets = ["allowed-*"]\n'
                                              'resources = ["arn:aws:ec2:*:*:instance/i-00000000000000001"]')
    async with connect(cfg) as client:
        text = await refused(client, "aws_call", target="cloud", service="s3", operation="GetObject",
                             params={"Bucket": bucket, "Key": "a"})
        assert f"bucket {bucket!r} is not in this target's buckets" in text and "out of scope" in text
        text = await refused(client, "aws_call", target="cloud", service="s3", operation="CopyObject",
                             params={"Bucket": "allowed-x", "Key": "a", "CopySource": {"Bucket": bucket, "Key": "b"}})
        assert bucket in text
        text = await refused(client, "aws_call", target="cloud", service="ec2", operation="DescribeInstances")
        assert "service 'ec2' is not in this target's services" in text
        text = await refused(client, "aws_call", target="cloud", service="s3", operation="CreateBucket",
                             params={"Bucket": "allowed-y", "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}})
        assert "region us-east-1 only" in text
    # the resource allow-list (EC2 ids become ARNs)
    cfg = aws_config(tmp_path, nowhere, extra='resources = ["arn:aws:ec2:*:*:instance/i-00000000000000001"]')
    async with connect(cfg) as client:
        text = await refused(client, "aws_call", target="cloud", service="ec2", operation="StopInstances",
                             params={"InstanceIds": ["i-0123456789abcdef0"]})
        assert "resource arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0 is not in" in text


async def test_malformed_params_give_botocores_message(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    async with connect(aws_config(tmp_path, moto_endpoint)) as client:
        text = await refused(client, "aws_call", target="cloud", service="s3", operation="PutObject",
                             params={"Bucket": bucket, "Body": "x", "Nope": 1})
        assert "Parameter validation failed" in text
        assert 'Missing required parameter in input: "Key"' in text and 'Unknown parameter in input: "Nope"' in text
        text = await refused(client, "aws_call", target="cloud", service="s3", operation="DeleteObjekt",
                             params={"Bucket": bucket, "Key": "k"})
        assert "did you mean DeleteObject" in text
        text = await refused(client, "aws_call", target="cloud", service="s4", operation="ListBuckets")
        assert "no service 's4'" in text


async def test_results_are_trimmed_capped_and_paginated(tmp_path: Path, moto_endpoint: str, bucket: str,
                                                        boto: Callable[[str], Any]) -> None:
    s3 = boto("s3")
    s3.put_object(Bucket=bucket, Key="big.txt", Body=b"a" * 5000, ContentType="text/plain")
    s3.put_object(Bucket=bucket, Key="blob.bin", Body=bytes(range(256)), ContentType="application/octet-stream")
    for i in range(7):
        s3.put_object(Bucket=bucket, Key=f"many/{i}", Body=b"x")
    cfg = aws_config(tmp_path, moto_endpoint, extra="max_body_bytes = 1000", access="read-only")
    async with connect(cfg) as client:
        got = await call(client, "aws_call", target="cloud", service="s3", operation="GetObject",
                         params={"Bucket": bucket, "Key": "big.txt"})
        body = got["result"]["Body"]
        assert body == {"bytes_read": 1000, "truncated": True, "text": "a" * 1000}
        assert got["result"]["ContentLength"] == 5000 and "ResponseMetadata" not in got["result"]
        got = await call(client, "aws_call", target="cloud", service="s3", operation="GetObject",
                         params={"Bucket": bucket, "Key": "blob.bin"})
        assert got["result"]["Body"]["binary"] is True and got["result"]["Body"]["bytes_read"] == 256
        assert "text" not in got["result"]["Body"] and len(got["result"]["Body"]["sha256"]) == 64
        got = await call(client, "aws_call", target="cloud", service="s3", operation="ListObjectsV2",
                         params={"Bucket": bucket, "Prefix": "many/"}, max_items=3)
        assert len(got["result"]["Contents"]) == 3 and got["result"]["truncated"] is True
        # a read-only target refuses writes, and no credential appears anywhere
        text = await refused(client, "aws_call", target="cloud", service="s3", operation="DeleteObject",
                             params={"Bucket": bucket, "Key": "big.txt"})
        assert "read-only" in text
        receipts = await call(client, "receipts", limit=50)
    blob = str(receipts) + "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()
                                   and p.stat().st_size < 5_000_000)
    assert KEY_ID not in blob and SECRET not in blob
