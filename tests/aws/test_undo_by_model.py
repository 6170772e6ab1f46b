"""Writes through the gate against moto, checking AWS after the call and after undo: overwrites by another
door (copy, multipart, PutItem, BatchWriteItem), creates undone by their delete, and undo that refuses
when the target moved on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_support import aws_config, unique
from botocore.exceptions import ClientError
from support import call, connect, refused

pytestmark = pytest.mark.anyio

AGENT_CONFIRMS = 'irreversible = "agent"'


async def aws(client: Any, service: str, operation: str, **params: Any) -> dict[str, Any]:
    return await call(client, "aws_call", target="cloud", service=service, operation=operation, params=params)


async def confirmed(client: Any, pending: dict[str, Any], effect: str) -> dict[str, Any]:
    assert pending["status"] == "pending" and pending["effect"] == effect, pending
    done = await call(client, "confirm", action_id=pending["pending"]["action_id"])
    assert done["status"] == "ok" and done["undo"], done
    return done


def body(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


async def test_copy_and_multipart_onto_an_existing_key_are_destructive_and_undone(
        tmp_path: Path, moto_endpoint: str, boto: Callable[[str], Any]) -> None:
    s3 = boto("s3")
    bucket = unique("doors")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="report.csv", Body=b"the original")
    s3.put_object(Bucket=bucket, Key="other.csv", Body=b"something else")
    async with connect(aws_config(tmp_path, moto_endpoint, tail=AGENT_CONFIRMS)) as client:
        pending = await aws(client, "s3", "CopyObject", Bucket=bucket, Key="report.csv",
                            CopySource={"Bucket": bucket, "Key": "other.csv"})
        assert body(s3, bucket, "report.csv") == b"the original", "nothing ran before the confirmation"
        done = await confirmed(client, pending, "destructive")
        assert body(s3, bucket, "report.csv") == b"something else"
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert body(s3, bucket, "report.csv") == b"the original"

        # multipart: the create runs at once (its undo aborts the upload); completing onto the key is destructive
        started = await aws(client, "s3", "CreateMultipartUpload", Bucket=bucket, Key="report.csv")
        assert started["status"] == "ok" and started["effect"] == "write" and started["undo"]
        upload = started["result"]["UploadId"]
        part = await aws(client, "s3", "UploadPart", Bucket=bucket, Key="report.csv", UploadId=upload,
                         PartNumber=1, Body="replaced by multipart")
        part = await call(client, "confirm", action_id=part["pending"]["action_id"])
        etag = part["result"]["ETag"]
        pending = await aws(client, "s3", "CompleteMultipartUpload", Bucket=bucket, Key="report.csv", UploadId=upload,
                            MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]})
        assert body(s3, bucket, "report.csv") == b"the original"
        done = await confirmed(client, pending, "destructive")
        assert body(s3, bucket, "report.csv") == b"replaced by multipart"
        # the upload is complete: undo of its creation has nothing to abort and says so
        text = await refused(client, "undo", receipt_id=started["receipt_id"])
        assert "gone already" in text
        # someone writes the key again: undo of the completion refuses and keeps their bytes
        s3.put_object(Bucket=bucket, Key="report.csv", Body=b"newer data")
        text = await refused(client, "undo", receipt_id=done["receipt_id"])
        assert "changed after this call" in text and "report.csv" in text
        assert body(s3, bucket, "report.csv") == b"newer data"


async def test_dynamodb_put_over_an_item_and_batch_deletes_are_undone(
        tmp_path: Path, moto_endpoint: str, boto: Callable[[str], Any]) -> None:
    ddb = boto("dynamodb")
    table = unique("items")
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    for i in range(3):
        ddb.put_item(TableName=table, Item={"pk": {"S": f"k{i}"}, "n": {"N": str(i)}, "b": {"B": b"\x00\xff"}})

    def item(pk: str) -> dict[str, Any] | None:
        found = ddb.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True).get("Item")
        return dict(found) if found else None

    original = item("k0")
    async with connect(aws_config(tmp_path, moto_endpoint)) as client:
        # a new item: a write, at once, undone by deleting it
        done = await aws(client, "dynamodb", "PutItem", TableName=table, Item={"pk": {"S": "new"}, "n": {"N": "9"}})
        assert done["status"] == "ok" and done["effect"] == "write" and item("new")
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert item("new") is None
        # a put that replaces a whole item is destructive: confirmed first, and undo brings the old item back
        pending = await aws(client, "dynamodb", "PutItem", TableName=table, Item={"pk": {"S": "k0"}})
        assert item("k0") == original
        done = await confirmed(client, pending, "destructive")
        assert item("k0") == {"pk": {"S": "k0"}}
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert item("k0") == original
        # BatchWriteItem carrying deletes is destructive by its content
        pending = await aws(client, "dynamodb", "BatchWriteItem", RequestItems={table: [
            {"DeleteRequest": {"Key": {"pk": {"S": "k1"}}}}, {"PutRequest": {"Item": {"pk": {"S": "k9"}}}}]})
        assert item("k1") is not None and item("k9") is None
        done = await confirmed(client, pending, "destructive")
        assert item("k1") is None and item("k9") is not None
        # UpdateItem of an existing item, then someone else changes it: undo refuses and names it
        pending = await aws(client, "dynamodb", "UpdateItem", TableName=table, Key={"pk": {"S": "k2"}},
                            UpdateExpression="SET n = :v", ExpressionAttributeValues={":v": {"N": "42"}})
        updated = await confirmed(client, pending, "destructive")
        ddb.put_item(TableName=table, Item={"pk": {"S": "k2"}, "n": {"N": "7"}})
        text = await refused(client, "undo", receipt_id=updated["receipt_id"])
        assert "changed after this call" in text and "k2" in text
        assert item("k2") == {"pk": {"S": "k2"}, "n": {"N": "7"}}
        # the batch is still as it left it: undo puts k1 back and removes k9
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert item("k1") == {"pk": {"S": "k1"}, "n": {"N": "1"}, "b": {"B": b"\x00\xff"}} and item("k9") is None


async def test_partiql_select_reads_and_other_statements_wait(tmp_path: Path, moto_endpoint: str,
                                                              boto: Callable[[str], Any]) -> None:
    ddb = boto("dynamodb")
    table = unique("partiql")
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=table, Item={"pk": {"S": "a"}, "n": {"N": "1"}})
    async with connect(aws_config(tmp_path, moto_endpoint)) as client:
        got = await aws(client, "dynamodb", "ExecuteStatement", Statement=f'SELECT * FROM "{table}"')
        assert got["effect"] == "read" and len(got["result"]["Items"]) == 1
        for statement in (f"DELETE FROM \"{table}\" WHERE pk = 'a'", f"UPDATE \"{table}\" SET n = 5 WHERE pk = 'a'"):
            pending = await aws(client, "dynamodb", "ExecuteStatement", Statement=statement)
            assert pending["status"] == "pending" and pending["effect"] == "irreversible"
            text = await refused(client, "confirm", action_id=pending["pending"]["action_id"])
            assert "human" in text
        pending = await aws(client, "dynamodb", "BatchExecuteStatement", Statements=[
            {"Statement": f'SELECT * FROM "{table}"'}, {"Statement": f"DELETE FROM \"{table}\" WHERE pk = 'a'"}])
        assert pending["status"] == "pending" and pending["effect"] == "irreversible"
    assert ddb.get_item(TableName=table, Key={"pk": {"S": "a"}})["Item"]["n"] == {"N": "1"}


async def test_creates_are_undone_by_their_delete(tmp_path: Path, moto_endpoint: str,
                                                  boto: Callable[[str], Any]) -> None:
    sqs, sns, ddb, s3, ec2 = (boto(s) for s in ("sqs", "sns", "dynamodb", "s3", "ec2"))
    names = {k: unique(k) for k in ("queue", "topic", "table", "bucket", "sg", "old")}
    async with connect(aws_config(tmp_path, moto_endpoint)) as client:
        receipts = {}
        for service, op, params in [
            ("sqs", "CreateQueue", {"QueueName": names["queue"]}),
            ("sns", "CreateTopic", {"Name": names["topic"]}),
            ("dynamodb", "CreateTable", {"TableName": names["table"], "BillingMode": "PAY_PER_REQUEST",
                                         "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                                         "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}]}),
            ("s3", "CreateBucket", {"Bucket": names["bucket"]}),
            ("ec2", "CreateSecurityGroup", {"GroupName": names["sg"], "Description": "made by the agent"}),
        ]:
            done = await aws(client, service, op, **params)
            assert done["status"] == "ok" and done["effect"] == "write" and done["undo"], (op, done)
            receipts[op] = done
        queue_url = sqs.get_queue_url(QueueName=names["queue"])["QueueUrl"]
        topic_arn = receipts["CreateTopic"]["result"]["TopicArn"]
        group = receipts["CreateSecurityGroup"]["result"]["GroupId"]
        assert sns.get_topic_attributes(TopicArn=topic_arn)
        assert ddb.describe_table(TableName=names["table"])
        s3.head_bucket(Bucket=names["bucket"])

        # undo refuses while a resource holds data put there since, and deletes nothing
        sqs.send_message(QueueUrl=queue_url, MessageBody="work")
        ddb.put_item(TableName=names["table"], Item={"pk": {"S": "x"}})
        s3.put_object(Bucket=names["bucket"], Key="k", Body=b"x")
        for op, what in [("CreateQueue", "messages"), ("CreateTable", "items"), ("CreateBucket", "objects")]:
            text = await refused(client, "undo", receipt_id=receipts[op]["receipt_id"])
            assert what in text, text
        assert sqs.get_queue_url(QueueName=names["queue"])
        ddb.describe_table(TableName=names["table"])
        s3.head_bucket(Bucket=names["bucket"])
        # emptied again, they are deleted by undo
        sqs.purge_queue(QueueUrl=queue_url)
        ddb.delete_item(TableName=names["table"], Key={"pk": {"S": "x"}})
        s3.delete_object(Bucket=names["bucket"], Key="k")
        for op in receipts:
            await call(client, "undo", receipt_id=receipts[op]["receipt_id"])
        with pytest.raises(ClientError):
            sqs.get_queue_url(QueueName=names["queue"])
        with pytest.raises(ClientError):
            sns.get_topic_attributes(TopicArn=topic_arn)
        with pytest.raises(ClientError):
            ddb.describe_table(TableName=names["table"])
        with pytest.raises(ClientError):
            s3.head_bucket(Bucket=names["bucket"])
        assert not ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [group]}])["SecurityGroups"]

        # a create that finds the resource already there (CreateQueue is idempotent) makes nothing, and undo
        # deletes nothing: the queue that was there before survives
        old_url = sqs.create_queue(QueueName=names["old"])["QueueUrl"]
        done = await aws(client, "sqs", "CreateQueue", QueueName=names["old"])
        assert done["status"] == "ok"
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert sqs.get_queue_url(QueueName=names["old"])["QueueUrl"] == old_url


async def test_received_messages_are_put_back_by_undo(tmp_path: Path, moto_endpoint: str,
                                                      boto: Callable[[str], Any]) -> None:
    sqs = boto("sqs")
    url = sqs.create_queue(QueueName=unique("work"))["QueueUrl"]
    for i in range(2):
        sqs.send_message(QueueUrl=url, MessageBody=f"job {i}")

    def visible() -> int:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

    async with connect(aws_config(tmp_path, moto_endpoint)) as client:
        got = await aws(client, "sqs", "ReceiveMessage", QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600)
        assert got["status"] == "ok" and got["effect"] == "write" and got["affected"] == 2
        assert visible() == 0
        await call(client, "undo", receipt_id=got["receipt_id"])
        assert visible() == 2
        # a received message the agent then deleted cannot come back: undo says so, and refuses when none can
        got = await aws(client, "sqs", "ReceiveMessage", QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600)
        for m in got["result"]["Messages"]:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        text = await refused(client, "undo", receipt_id=got["receipt_id"])
        assert "nothing left to put back" in text
        assert visible() == 0
