"""Classification from the botocore service model: every operation of every service, and the exceptions."""

from __future__ import annotations

from typing import Any

import botocore.session as botocore_session
import pytest
from safe_mcp_aws.classify import classify_operation

from safe_mcp.effects import Effect


@pytest.fixture(scope="module")
def models() -> Any:
    return botocore_session.get_session()


def effect(models: Any, service: str, op: str, params: dict[str, Any] | None = None) -> Effect:
    return classify_operation(service, models.get_service_model(service).operation_model(op), params or {})[0]


def test_every_operation_of_every_service_has_an_effect(models: Any) -> None:
    seen = 0
    for service in models.get_available_services():
        model = models.get_service_model(service)
        for name in model.operation_names:
            got, reason = classify_operation(service, model.operation_model(name), {})
            assert isinstance(got, Effect) and reason
            if name.startswith(("Describe", "List")) and service not in {"organizations", "account"}:
                assert got is Effect.READ, f"{service}:{name} -> {got}"
            if name.startswith(("Delete", "Terminate")):
                assert got.rank >= Effect.DESTRUCTIVE.rank, f"{service}:{name} -> {got}"
            seen += 1
    assert seen > 10_000


@pytest.mark.parametrize(("service", "op", "params", "expected"), [
    ("s3", "GetObject", {}, Effect.READ),
    ("s3", "HeadObject", {}, Effect.READ),
    ("s3", "ListObjectsV2", {}, Effect.READ),
    ("s3", "PutObject", {}, Effect.WRITE),
    ("s3", "DeleteObject", {}, Effect.DESTRUCTIVE),
    ("s3", "DeleteObjects", {"Delete": {"Objects": [{"Key": "a"}]}}, Effect.DESTRUCTIVE),
    ("s3", "DeleteBucket", {}, Effect.IRREVERSIBLE),
    ("s3", "PutBucketVersioning", {"VersioningConfiguration": {"Status": "Enabled"}}, Effect.WRITE),
    ("ec2", "DescribeInstances", {}, Effect.READ),
    ("ec2", "StopInstances", {}, Effect.WRITE),
    ("ec2", "StartInstances", {}, Effect.WRITE),
    ("ec2", "TerminateInstances", {}, Effect.IRREVERSIBLE),
    ("ec2", "DetachVolume", {}, Effect.DESTRUCTIVE),
    ("ec2", "RevokeSecurityGroupIngress", {"IpPermissions": [{"IpProtocol": "tcp"}]}, Effect.DESTRUCTIVE),
    ("ec2", "RevokeSecurityGroupIngress", {"SecurityGroupRuleIds": ["sgr-1"]}, Effect.IRREVERSIBLE),
    ("logs", "FilterLogEvents", {}, Effect.READ),
    ("logs", "PutLogEvents", {}, Effect.WRITE),
    ("logs", "DeleteLogGroup", {}, Effect.IRREVERSIBLE),
    ("dynamodb", "BatchGetItem", {}, Effect.READ),
    ("dynamodb", "BatchWriteItem", {}, Effect.WRITE),
    ("lambda", "GetFunction", {}, Effect.READ),
    ("sqs", "ReceiveMessage", {}, Effect.WRITE),
    ("sqs", "PurgeQueue", {}, Effect.IRREVERSIBLE),
    ("iam", "ListUsers", {}, Effect.READ),
    ("cognito-idp", "AdminDeleteUser", {}, Effect.IRREVERSIBLE),
    # forbidden: backups and their protection, identity, keys, audit, organizations, credentials
    ("secretsmanager", "GetSecretValue", {"SecretId": "x"}, Effect.FORBIDDEN),
    ("secretsmanager", "DescribeSecret", {"SecretId": "x"}, Effect.READ),
    ("ssm", "GetParameter", {"Name": "x", "WithDecryption": True}, Effect.FORBIDDEN),
    ("ssm", "GetParameter", {"Name": "x"}, Effect.READ),
    ("kms", "Decrypt", {}, Effect.FORBIDDEN),
    ("rds", "DeleteDBSnapshot", {}, Effect.FORBIDDEN),
    ("rds", "DeleteDBClusterSnapshot", {}, Effect.FORBIDDEN),
    ("rds", "ModifyDBSnapshotAttribute", {}, Effect.FORBIDDEN),
    ("rds", "DeleteDBInstance", {"SkipFinalSnapshot": True}, Effect.FORBIDDEN),
    ("rds", "ModifyDBInstance", {"BackupRetentionPeriod": 0}, Effect.FORBIDDEN),
    ("ec2", "DeleteSnapshot", {}, Effect.FORBIDDEN),
    ("ec2", "ModifySnapshotAttribute", {}, Effect.FORBIDDEN),
    ("ec2", "ModifyInstanceAttribute", {"DisableApiTermination": {"Value": False}}, Effect.FORBIDDEN),
    ("redshift", "DeleteClusterSnapshot", {}, Effect.FORBIDDEN),
    ("redshift", "BatchDeleteClusterSnapshots", {}, Effect.FORBIDDEN),
    ("backup", "DeleteBackupVault", {}, Effect.FORBIDDEN),
    ("backup", "DeleteRecoveryPoint", {}, Effect.FORBIDDEN),
    ("backup", "UpdateRecoveryPointLifecycle", {}, Effect.FORBIDDEN),
    ("s3", "PutBucketVersioning", {"VersioningConfiguration": {"Status": "Suspended"}}, Effect.FORBIDDEN),
    ("s3", "PutObjectLockConfiguration", {}, Effect.FORBIDDEN),
    ("s3", "PutBucketLifecycleConfiguration",
     {"LifecycleConfiguration": {"Rules": [{"Status": "Enabled", "Expiration": {"Days": 1}}]}}, Effect.FORBIDDEN),
    ("s3", "DeleteObject", {"VersionId": "v1"}, Effect.FORBIDDEN),
    ("s3", "DeleteObjects", {"Delete": {"Objects": [{"Key": "a", "VersionId": "v1"}]}}, Effect.FORBIDDEN),
    ("iam", "CreateUser", {}, Effect.FORBIDDEN),
    ("iam", "CreateAccessKey", {}, Effect.FORBIDDEN),
    ("iam", "AttachUserPolicy", {}, Effect.FORBIDDEN),
    ("iam", "CreatePolicy", {}, Effect.FORBIDDEN),
    ("kms", "ScheduleKeyDeletion", {}, Effect.FORBIDDEN),
    ("cloudtrail", "StopLogging", {}, Effect.FORBIDDEN),
    ("cloudtrail", "DeleteTrail", {}, Effect.FORBIDDEN),
    ("organizations", "LeaveOrganization", {}, Effect.FORBIDDEN),
    ("sts", "AssumeRole", {}, Effect.FORBIDDEN),
    ("sts", "GetCallerIdentity", {}, Effect.READ),
])
def test_effects(models: Any, service: str, op: str, params: dict[str, Any], expected: Effect) -> None:
    assert effect(models, service, op, params) is expected
