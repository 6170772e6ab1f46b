"""Every operation in the undo table, run through the adapter against moto: it records a compensation,
and that compensation undoes it (checked in AWS). A new covered operation without a case here fails."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_support import ACCOUNT, KEY_ID, REGION, SECRET, run_instance, unique
from safe_mcp_aws.undo_table import COVERED

from safe_mcp.adapter import Budget, Call
from safe_mcp.effects import Effect

Arrange = Callable[[Callable[[str], Any]], tuple[dict[str, Any], Callable[[], Any]]]
"""Sets the stage in moto; returns (params, probe): probe() is the state the call changes, read from AWS."""


def _bucket(boto: Callable[[str], Any], *keys: str) -> str:
    name = unique("cov")
    boto("s3").create_bucket(Bucket=name)
    for key in keys:
        boto("s3").put_object(Bucket=name, Key=key, Body=b"before")
    return name


def _s3_keys(boto: Callable[[str], Any], bucket: str) -> Callable[[], Any]:
    def probe() -> Any:
        s3 = boto("s3")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
                if not o["Key"].startswith(".safe-mcp")]
        return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in sorted(keys)}
    return probe


def _table(boto: Callable[[str], Any]) -> str:
    ddb = boto("dynamodb")
    name = unique("cov")
    ddb.create_table(TableName=name, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=name, Item={"pk": {"S": "a"}, "v": {"N": "1"}})
    return name


def _items(boto: Callable[[str], Any], table: str) -> Callable[[], Any]:
    return lambda: sorted(str(i) for i in boto("dynamodb").scan(TableName=table)["Items"])


def s3_put(boto: Any) -> Any:
    b = _bucket(boto, "k")
    return {"Bucket": b, "Key": "k", "Body": "after"}, _s3_keys(boto, b)


def s3_copy(boto: Any) -> Any:
    b = _bucket(boto, "k", "src")
    return {"Bucket": b, "Key": "new", "CopySource": {"Bucket": b, "Key": "src"}}, _s3_keys(boto, b)


def s3_complete(boto: Any) -> Any:
    s3 = boto("s3")
    b = _bucket(boto, "k")
    upload = s3.create_multipart_upload(Bucket=b, Key="k")["UploadId"]
    etag = s3.upload_part(Bucket=b, Key="k", UploadId=upload, PartNumber=1, Body=b"after")["ETag"]
    return {"Bucket": b, "Key": "k", "UploadId": upload,
            "MultipartUpload": {"Parts": [{"ETag": etag, "PartNumber": 1}]}}, _s3_keys(boto, b)


def s3_delete(boto: Any) -> Any:
    b = _bucket(boto, "k")
    return {"Bucket": b, "Key": "k"}, _s3_keys(boto, b)


def s3_delete_many(boto: Any) -> Any:
    b = _bucket(boto, "k1", "k2")
    return {"Bucket": b, "Delete": {"Objects": [{"Key": "k1"}, {"Key": "k2"}]}}, _s3_keys(boto, b)


def _instance_state(boto: Any, instance: str) -> Callable[[], Any]:
    return lambda: boto("ec2").describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0][
        "State"]["Name"]


def ec2_stop(boto: Any) -> Any:
    i = run_instance(boto("ec2"))
    return {"InstanceIds": [i]}, _instance_state(boto, i)


def ec2_start(boto: Any) -> Any:
    i = run_instance(boto("ec2"))
    boto("ec2").stop_instances(InstanceIds=[i])
    return {"InstanceIds": [i]}, _instance_state(boto, i)


def _tags(boto: Any, instance: str) -> Callable[[], Any]:
    return lambda: sorted((t["Key"], t["Value"]) for t in boto("ec2").describe_tags(
        Filters=[{"Name": "resource-id", "Values": [instance]}])["Tags"])


def ec2_tag(boto: Any) -> Any:
    i = run_instance(boto("ec2"))
    return {"Resources": [i], "Tags": [{"Key": "env", "Value": "prod"}]}, _tags(boto, i)


def ec2_untag(boto: Any) -> Any:
    i = run_instance(boto("ec2"))
    boto("ec2").create_tags(Resources=[i], Tags=[{"Key": "env", "Value": "prod"}])
    return {"Resources": [i], "Tags": [{"Key": "env"}]}, _tags(boto, i)


_RULE = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}


def _revoke(direction: str) -> Arrange:
    def arrange(boto: Any) -> Any:
        ec2 = boto("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        group = ec2.create_security_group(GroupName=unique("sg"), Description="t", VpcId=vpc)["GroupId"]
        getattr(ec2, f"authorize_security_group_{direction}")(GroupId=group, IpPermissions=[_RULE])
        field = "IpPermissions" if direction == "ingress" else "IpPermissionsEgress"
        probe = lambda: len(ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0][field])  # noqa: E731
        return {"GroupId": group, "IpPermissions": [_RULE]}, probe
    return arrange


def ddb_put(boto: Any) -> Any:
    t = _table(boto)
    return {"TableName": t, "Item": {"pk": {"S": "b"}}}, _items(boto, t)


def ddb_update(boto: Any) -> Any:
    t = _table(boto)
    return {"TableName": t, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET v = :v",
            "ExpressionAttributeValues": {":v": {"N": "2"}}}, _items(boto, t)


def ddb_delete(boto: Any) -> Any:
    t = _table(boto)
    return {"TableName": t, "Key": {"pk": {"S": "a"}}}, _items(boto, t)


def ddb_batch(boto: Any) -> Any:
    t = _table(boto)
    return {"RequestItems": {t: [{"PutRequest": {"Item": {"pk": {"S": "c"}}}},
                                 {"DeleteRequest": {"Key": {"pk": {"S": "a"}}}}]}}, _items(boto, t)


def ddb_transact(boto: Any) -> Any:
    t = _table(boto)
    return {"TransactItems": [{"Put": {"TableName": t, "Item": {"pk": {"S": "d"}}}},
                              {"Update": {"TableName": t, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET v = :v",
                                          "ExpressionAttributeValues": {":v": {"N": "3"}}}},
                              {"ConditionCheck": {"TableName": t, "Key": {"pk": {"S": "zz"}},
                                                  "ConditionExpression": "attribute_not_exists(pk)"}}]}, _items(boto, t)


def sqs_receive(boto: Any) -> Any:
    sqs = boto("sqs")
    url = sqs.create_queue(QueueName=unique("cov"))["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    return {"QueueUrl": url, "VisibilityTimeout": 600}, lambda: sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"]


def _exists(probe: Callable[[], Any]) -> Callable[[], bool]:
    def check() -> bool:
        from botocore.exceptions import ClientError

        try:
            return bool(probe())
        except ClientError:
            return False
    return check


def s3_create_bucket(boto: Any) -> Any:
    name = unique("cov")
    return {"Bucket": name}, _exists(lambda: boto("s3").head_bucket(Bucket=name))


def s3_create_upload(boto: Any) -> Any:
    b = _bucket(boto)
    return {"Bucket": b, "Key": "k"}, lambda: len(boto("s3").list_multipart_uploads(Bucket=b).get("Uploads", []))


def sqs_create(boto: Any) -> Any:
    name = unique("cov")
    return {"QueueName": name}, _exists(lambda: boto("sqs").get_queue_url(QueueName=name))


def sns_create(boto: Any) -> Any:
    name = unique("cov")
    arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}"
    return {"Name": name}, _exists(lambda: boto("sns").get_topic_attributes(TopicArn=arn))


def ddb_create(boto: Any) -> Any:
    name = unique("cov")
    return {"TableName": name, "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}]}, \
        _exists(lambda: boto("dynamodb").describe_table(TableName=name))


def sg_create(boto: Any) -> Any:
    name = unique("cov")
    return {"GroupName": name, "Description": "t"}, lambda: len(boto("ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"])


def logs_group(boto: Any) -> Any:
    name = unique("cov")
    return {"logGroupName": name}, lambda: [g["logGroupName"] for g in boto("logs").describe_log_groups(
        logGroupNamePrefix=name)["logGroups"]]


def logs_stream(boto: Any) -> Any:
    group = unique("cov")
    boto("logs").create_log_group(logGroupName=group)
    return {"logGroupName": group, "logStreamName": "s"}, lambda: len(boto("logs").describe_log_streams(
        logGroupName=group)["logStreams"])


CASES: dict[str, Arrange] = {
    "s3:PutObject": s3_put, "s3:CopyObject": s3_copy, "s3:CompleteMultipartUpload": s3_complete,
    "s3:DeleteObject": s3_delete, "s3:DeleteObjects": s3_delete_many,
    "ec2:StopInstances": ec2_stop, "ec2:StartInstances": ec2_start, "ec2:CreateTags": ec2_tag,
    "ec2:DeleteTags": ec2_untag, "ec2:RevokeSecurityGroupIngress": _revoke("ingress"),
    "ec2:RevokeSecurityGroupEgress": _revoke("egress"),
    "dynamodb:PutItem": ddb_put, "dynamodb:UpdateItem": ddb_update, "dynamodb:DeleteItem": ddb_delete,
    "dynamodb:BatchWriteItem": ddb_batch, "dynamodb:TransactWriteItems": ddb_transact, "sqs:ReceiveMessage": sqs_receive,
    "s3:CreateBucket": s3_create_bucket, "s3:CreateMultipartUpload": s3_create_upload, "sqs:CreateQueue": sqs_create,
    "sns:CreateTopic": sns_create, "dynamodb:CreateTable": ddb_create, "ec2:CreateSecurityGroup": sg_create,
    "logs:CreateLogGroup": logs_group, "logs:CreateLogStream": logs_stream,
}


def test_every_covered_operation_has_a_case() -> None:
    assert set(CASES) == set(COVERED)


@pytest.mark.parametrize("key", sorted(COVERED))
def test_covered_operation_records_undo_that_restores_aws(key: str, tmp_path: Path, moto_endpoint: str,
                                                          boto: Callable[[str], Any]) -> None:
    from safe_mcp_aws import AwsAdapter, AwsSettings

    service, operation = key.split(":")
    params, probe = CASES[key](boto)
    before = probe()
    adapter = AwsAdapter("cloud", AwsSettings(region=REGION, account=ACCOUNT, endpoint_url=moto_endpoint),
                         {"access_key_id": KEY_ID, "secret_access_key": SECRET},
                         base_dir=str(tmp_path), state_dir=str(tmp_path))
    budget = Budget(rows_returned=100, rows_affected=100, allowed_effect=Effect.DESTRUCTIVE)
    try:
        call = Call(target="cloud", tool="aws_call", args={"service": service, "operation": operation,
                                                           "params": params})
        cls = adapter.classify(call)
        assert cls.compensable and cls.effect in {Effect.WRITE, Effect.DESTRUCTIVE}, cls
        outcome = adapter.execute(call, cls, budget)
        assert outcome.compensation is not None, f"{key} recorded no compensation"
        assert probe() != before, f"{key} changed nothing in AWS; the case does not exercise it"
        undone = adapter.compensate(outcome.compensation, budget)
        assert undone.affected >= 1
        assert probe() == before, f"undo of {key} did not restore AWS"
    finally:
        adapter.close()
