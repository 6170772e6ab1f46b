"""The adapter contract below the gate: a confirm on a target that moved since the preview sends nothing
(Drifted), and an unreachable endpoint is the target's problem (TargetUnavailable), never the call's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_support import ACCOUNT, KEY_ID, REGION, SECRET, unique
from support import free_port

from safe_mcp.adapter import Budget, Call
from safe_mcp.effects import Effect
from safe_mcp.errors import Drifted, TargetUnavailable


def adapter(tmp_path: Path, endpoint: str) -> Any:
    from safe_mcp_aws import AwsAdapter, AwsSettings

    settings = AwsSettings(region=REGION, account=ACCOUNT, endpoint_url=endpoint)
    return AwsAdapter("cloud", settings, {"access_key_id": KEY_ID, "secret_access_key": SECRET},
                      base_dir=str(tmp_path), state_dir=str(tmp_path))


def budget(**extra: Any) -> Budget:
    return Budget(rows_returned=100, rows_affected=100, allowed_effect=Effect.DESTRUCTIVE, **extra)


def test_confirm_after_the_target_moved_sends_nothing(tmp_path: Path, moto_endpoint: str,
                                                      boto: Callable[[str], Any]) -> None:
    s3, ddb = boto("s3"), boto("dynamodb")
    bucket = unique("drift")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a", Body=b"one")
    table = unique("drift")
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=table, Item={"pk": {"S": "x"}, "v": {"N": "1"}})
    a = adapter(tmp_path, moto_endpoint)
    try:
        call = Call(target="cloud", tool="aws_call", args={"service": "s3", "operation": "DeleteObjects", "params": {
            "Bucket": bucket, "Delete": {"Objects": [{"Key": "a"}, {"Key": "b"}]}}})
        cls = a.classify(call)
        shown = a.preview(call, cls, budget())
        assert shown.fingerprint
        s3.put_object(Bucket=bucket, Key="b", Body=b"appeared after the preview")
        with pytest.raises(Drifted) as caught:
            a.execute(call, cls, budget(expect=shown))
        assert caught.value.preview.fingerprint != shown.fingerprint
        assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == ["a", "b"]
        # measured again and confirmed as it now is, it runs
        now = caught.value.preview
        out = a.execute(call, cls, budget(expect=now))
        assert out.compensation and "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="a")

        call = Call(target="cloud", tool="aws_call", args={"service": "dynamodb", "operation": "PutItem", "params": {
            "TableName": table, "Item": {"pk": {"S": "x"}, "v": {"N": "2"}}}})
        cls = a.classify(call)
        shown = a.preview(call, cls, budget())
        ddb.put_item(TableName=table, Item={"pk": {"S": "x"}, "v": {"N": "5"}})
        with pytest.raises(Drifted):
            a.execute(call, cls, budget(expect=shown))
        assert ddb.get_item(TableName=table, Key={"pk": {"S": "x"}})["Item"]["v"] == {"N": "5"}
    finally:
        a.close()


def test_an_unreachable_endpoint_is_target_unavailable(tmp_path: Path) -> None:
    a = adapter(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(TargetUnavailable) as caught:
            a.classify(Call(target="cloud", tool="aws_call", args={"service": "s3", "operation": "ListBuckets"}))
        assert "endpoint_url" in caught.value.remedy
    finally:
        a.close()


def test_sensitive_inputs_can_be_redacted_for_receipts(tmp_path: Path) -> None:
    a = adapter(tmp_path, "http://127.0.0.1:9")
    call = Call(target="cloud", tool="aws_call", args={"service": "rds", "operation": "ModifyDBInstance", "params": {
        "DBInstanceIdentifier": "db1", "MasterUserPassword": "n3w-pa55word"}})
    got = a.redacted_args(call)
    assert got["params"]["DBInstanceIdentifier"] == "db1" and "n3w-pa55word" not in str(got)
    call = Call(target="cloud", tool="aws_call", args={"service": "secretsmanager", "operation": "PutSecretValue",
                                                       "params": {"SecretId": "s", "SecretString": "hunter2"}})
    assert "hunter2" not in str(a.redacted_args(call))
