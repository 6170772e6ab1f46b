"""Classification from the botocore service model: every operation of every service, and the exceptions."""

from __future__ import annotations

from typing import Any

import botocore.session as botocore_session
import pytest
from safe_mcp_aws.classify import classify_operation, control_plane, verb_of
from safe_mcp_aws.compensate import HANDLERS
from safe_mcp_aws.sensitive import REDACTED, redact, sensitive_paths
from safe_mcp_aws.undo_table import COVERED, CREATES

from safe_mcp.effects import Effect


@pytest.fixture(scope="module")
def models() -> Any:
    return botocore_session.get_session()


ACCOUNT = "123456789012"


def effect(models: Any, service: str, op: str, params: dict[str, Any] | None = None) -> Effect:
    return classify_operation(service, models.get_service_model(service).operation_model(op), params or {},
                              ACCOUNT).effect


def every_operation(models: Any) -> Any:
    for service in models.get_available_services():
        model = models.get_service_model(service)
        for name in model.operation_names:
            yield service, model.operation_model(name)


def test_every_operation_of_every_service_has_an_effect(models: Any) -> None:
    seen = 0
    for service in models.get_available_services():
        model = models.get_service_model(service)
        for name in model.operation_names:
            got, reason, _ = classify_operation(service, model.operation_model(name), {}, ACCOUNT)
            assert isinstance(got, Effect) and reason
            if name.startswith(("Describe", "List")) and service not in {"organizations", "account"}:
                assert got is Effect.READ or (got is Effect.FORBIDDEN and "credential" in reason), \
                    f"{service}:{name} -> {got}: {reason}"
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
    ("s3", "PutBucketVersioning", {"VersioningConfiguration": {"Status": "Enabled"}}, Effect.IRREVERSIBLE),
    ("ec2", "DescribeInstances", {}, Effect.READ),
    ("ec2", "StopInstances", {}, Effect.WRITE),
    ("ec2", "StartInstances", {}, Effect.WRITE),
    ("ec2", "TerminateInstances", {}, Effect.IRREVERSIBLE),
    ("ec2", "DetachVolume", {}, Effect.IRREVERSIBLE),
    ("ec2", "RevokeSecurityGroupIngress", {"IpPermissions": [{"IpProtocol": "tcp"}]}, Effect.DESTRUCTIVE),
    ("ec2", "RevokeSecurityGroupIngress", {"SecurityGroupRuleIds": ["sgr-1"]}, Effect.IRREVERSIBLE),
    ("logs", "FilterLogEvents", {}, Effect.READ),
    ("logs", "PutLogEvents", {}, Effect.IRREVERSIBLE),
    ("logs", "DeleteLogGroup", {}, Effect.IRREVERSIBLE),
    ("dynamodb", "BatchGetItem", {}, Effect.READ),
    ("dynamodb", "BatchWriteItem", {}, Effect.WRITE),
    ("dynamodb", "BatchWriteItem", {"RequestItems": {"t": [{"PutRequest": {"Item": {}}},
                                                           {"DeleteRequest": {"Key": {}}}]}}, Effect.DESTRUCTIVE),
    ("dynamodb", "PutItem", {}, Effect.WRITE),
    ("dynamodb", "DeleteItem", {}, Effect.DESTRUCTIVE),
    ("dynamodb", "ExecuteStatement", {"Statement": "SELECT * FROM t"}, Effect.READ),
    ("dynamodb", "ExecuteStatement", {"Statement": "DELETE FROM t WHERE pk = 1"}, Effect.IRREVERSIBLE),
    ("dynamodb", "ExecuteStatement", {"Statement": " update t SET a = 1 WHERE pk = 1"}, Effect.IRREVERSIBLE),
    ("dynamodb", "ExecuteStatement", {"Statement": "SELECT * FROM t; DELETE FROM t"}, Effect.IRREVERSIBLE),
    ("dynamodb", "BatchExecuteStatement", {"Statements": [{"Statement": "SELECT a FROM t"},
                                                          {"Statement": "DELETE FROM t WHERE pk = 1"}]},
     Effect.IRREVERSIBLE),
    ("dynamodb", "ExecuteTransaction", {"TransactStatements": [{"Statement": "SELECT a FROM t"}]}, Effect.READ),
    ("dynamodb", "TransactWriteItems", {"TransactItems": [{"Put": {}}]}, Effect.WRITE),
    ("dynamodb", "TransactWriteItems", {"TransactItems": [{"Put": {}}, {"Delete": {}}]}, Effect.DESTRUCTIVE),
    ("s3", "CompleteMultipartUpload", {}, Effect.WRITE),
    ("s3", "UploadPartCopy", {}, Effect.IRREVERSIBLE),
    ("s3", "PutObject", {"ACL": "public-read"}, Effect.IRREVERSIBLE),
    ("s3", "PutObject", {"GrantRead": "uri=http://acs.amazonaws.com/groups/global/AllUsers"}, Effect.IRREVERSIBLE),
    ("s3", "PutObject", {"ObjectLockMode": "COMPLIANCE"}, Effect.IRREVERSIBLE),
    ("s3", "PutBucketAcl", {}, Effect.IRREVERSIBLE),
    ("s3", "PutPublicAccessBlock", {}, Effect.IRREVERSIBLE),
    ("s3", "DeletePublicAccessBlock", {}, Effect.IRREVERSIBLE),
    ("s3", "PutBucketReplication", {}, Effect.IRREVERSIBLE),
    ("s3", "PutBucketPolicy", {}, Effect.FORBIDDEN),
    ("s3", "CreateBucket", {}, Effect.WRITE),
    ("s3", "CreateBucket", {"ObjectLockEnabledForBucket": True}, Effect.IRREVERSIBLE),
    ("sqs", "CreateQueue", {}, Effect.WRITE),
    ("sqs", "CreateQueue", {"Attributes": {"Policy": "{}"}}, Effect.IRREVERSIBLE),
    ("sqs", "SetQueueAttributes", {}, Effect.IRREVERSIBLE),
    ("sns", "CreateTopic", {}, Effect.WRITE),
    ("ec2", "CreateSecurityGroup", {}, Effect.WRITE),
    ("ec2", "AuthorizeSecurityGroupIngress", {"IpPermissions": [{"IpProtocol": "-1"}]}, Effect.IRREVERSIBLE),
    ("ssm", "SendCommand", {}, Effect.IRREVERSIBLE),
    ("ecs", "ExecuteCommand", {}, Effect.FORBIDDEN),
    ("lambda", "UpdateFunctionCode", {}, Effect.IRREVERSIBLE),
    ("lambda", "Invoke", {}, Effect.IRREVERSIBLE),
    ("lambda", "AddPermission", {"Principal": "111122223333"}, Effect.FORBIDDEN),
    ("route53", "ChangeResourceRecordSets", {}, Effect.IRREVERSIBLE),
    ("swf", "PollForActivityTask", {}, Effect.IRREVERSIBLE),
    # botocore's readonly trait makes a read, unless the name says it changes something
    ("geo-places", "Geocode", {}, Effect.READ),
    # an HTTP GET named for a change is not trusted to be a read; assuming a role mints credentials
    ("iot", "ConfirmTopicRuleDestination", {}, Effect.IRREVERSIBLE),
    ("deadline", "AssumeQueueRoleForUser", {}, Effect.FORBIDDEN),
    ("apigatewayv2", "ExportApi", {}, Effect.READ),
    ("ivs", "StartViewerSessionRevocation", {}, Effect.IRREVERSIBLE),
    ("cognito-idp", "VerifySoftwareToken", {}, Effect.IRREVERSIBLE),
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
    ("ec2", "ModifyInstanceAttribute", {"Attribute": "disableApiTermination", "Value": "false"}, Effect.FORBIDDEN),
    ("ec2", "ModifyInstanceAttribute", {"DisableApiStop": {"Value": False}}, Effect.FORBIDDEN),
    ("ec2", "ModifyImageAttribute", {"LaunchPermission": {"Add": [{"Group": "all"}]}}, Effect.FORBIDDEN),
    ("ec2", "ModifyImageAttribute", {"LaunchPermission": {"Add": [{"UserId": "111122223333"}]}}, Effect.FORBIDDEN),
    ("ec2", "GetPasswordData", {}, Effect.FORBIDDEN),
    ("ec2", "CreateKeyPair", {}, Effect.FORBIDDEN),
    ("rds", "ModifyDBInstance", {"DeletionProtection": False}, Effect.FORBIDDEN),
    ("rds", "ModifyDBInstance", {"BackupRetentionPeriod": "0"}, Effect.FORBIDDEN),
    ("rds", "ModifyDBInstance", {"BackupRetentionPeriod": 7}, Effect.IRREVERSIBLE),
    ("dynamodb", "UpdateTable", {"DeletionProtectionEnabled": False}, Effect.FORBIDDEN),
    ("dynamodb", "UpdateContinuousBackups",
     {"PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": False}}, Effect.FORBIDDEN),
    ("dynamodb", "UpdateTimeToLive", {"TimeToLiveSpecification": {"Enabled": True, "AttributeName": "t"}},
     Effect.FORBIDDEN),
    ("s3", "PutBucketReplication", {"ReplicationConfiguration": {"Role": "arn:aws:iam::123456789012:role/r", "Rules": [
        {"Destination": {"Bucket": "arn:aws:s3:::b", "Account": "111122223333"}}]}}, Effect.FORBIDDEN),
    ("sqs", "SetQueueAttributes", {"Attributes": {"Policy": '{"Principal": {"AWS": "111122223333"}}'}},
     Effect.FORBIDDEN),
    ("iam", "CreateLoginProfile", {}, Effect.FORBIDDEN),
    ("iam", "UpdateLoginProfile", {}, Effect.FORBIDDEN),
    ("secretsmanager", "GetRandomPassword", {}, Effect.FORBIDDEN),
    ("cognito-idp", "InitiateAuth", {}, Effect.FORBIDDEN),
    ("lightsail", "GetBucketAccessKeys", {}, Effect.FORBIDDEN),
    ("ssm", "StartSession", {}, Effect.FORBIDDEN),
    # the same protection switch in other services and spellings
    ("docdb", "ModifyDBCluster", {"DeletionProtection": False}, Effect.FORBIDDEN),
    ("neptune", "ModifyDBCluster", {"BackupRetentionPeriod": 0}, Effect.FORBIDDEN),
    ("cloudformation", "UpdateTerminationProtection", {"EnableTerminationProtection": False}, Effect.FORBIDDEN),
    ("elbv2", "ModifyLoadBalancerAttributes",
     {"Attributes": [{"Key": "deletion_protection.enabled", "Value": "false"}]}, Effect.FORBIDDEN),
    ("redshift", "ModifyCluster", {"AutomatedSnapshotRetentionPeriod": 0}, Effect.FORBIDDEN),
    ("elasticache", "ModifyReplicationGroup", {"SnapshotRetentionLimit": 0}, Effect.FORBIDDEN),
    ("s3", "PutBucketVersioning", {"VersioningConfiguration": {"Status": "Enabled", "MFADelete": "disabled"}},
     Effect.FORBIDDEN),
    ("ecr", "PutLifecyclePolicy", {"lifecyclePolicyText": '{"rules": [{"action": {"type": "expire"}}]}'},
     Effect.FORBIDDEN),
    ("s3control", "PutBucketLifecycleConfiguration",
     {"LifecycleConfiguration": {"Rules": [{"Expiration": {"Days": 1}}]}}, Effect.FORBIDDEN),
    ("s3", "PutBucketLifecycleConfiguration",
     {"LifecycleConfiguration": {"Rules": [{"Status": "Enabled", "Transitions": [{"Days": 1}]}]}}, Effect.IRREVERSIBLE),
    ("dynamodb", "ExportTableToPointInTime", {"S3BucketOwner": "111122223333"}, Effect.FORBIDDEN),
    ("kms", "CreateGrant", {"GranteePrincipal": "arn:aws:iam::111122223333:root"}, Effect.FORBIDDEN),
    ("ram", "CreateResourceShare", {"principals": ["111122223333"]}, Effect.FORBIDDEN),
    ("ram", "CreateResourceShare", {"principals": ["123456789012"]}, Effect.IRREVERSIBLE),
    ("rds", "DescribeDBInstances", {}, Effect.READ),
    ("lambda", "GetFunctionConfiguration", {}, Effect.READ),
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


def test_every_write_records_undo(models: Any) -> None:
    """Every operation classified write or destructive is compensable, with a compensator that runs its undo."""
    found = set()
    for service, op in every_operation(models):
        verdict = classify_operation(service, op, {}, ACCOUNT)
        if verdict.effect in {Effect.WRITE, Effect.DESTRUCTIVE}:
            key = f"{service}:{op.name}"
            assert verdict.compensable, key
            assert key in COVERED and COVERED[key].kind in HANDLERS, key
            found.add(key)
        else:
            assert not verdict.compensable, (service, op.name)
    # and every covered operation is reached by the classifier (with some request)
    revokes = {k for k in COVERED if ":Revoke" in k}
    assert found | revokes == set(COVERED)
    assert all(COVERED[k].kind == "created" for k in CREATES)


def test_no_control_plane_change_is_a_plain_write() -> None:
    """Access, sharing, protections, credentials, exposure, code, DNS: never given an undo that makes them a write.
    Revoking security-group rules closes access, and is the one control-plane change with recorded undo."""
    for key in COVERED:
        name = key.split(":", 1)[1]
        assert not control_plane(name) or verb_of(name) == "Revoke", (key, control_plane(name))


def test_credentials_are_never_handed_over(models: Any) -> None:
    """Whatever the access of the target, an operation whose result is a credential is forbidden."""
    forbidden = 0
    for service, op in every_operation(models):
        paths = list(sensitive_paths(op.output_shape))
        top = [p for p in paths if p.count(".") == 1 and any(
            w in p.lower() for w in ("secretaccesskey", "password", "secretstring", "plaintext", "privatekey"))]
        if top and not op.name.startswith(("Delete", "Terminate")):
            assert classify_operation(service, op, {}, ACCOUNT).effect is Effect.FORBIDDEN, (service, op.name, top)
            forbidden += 1
    assert forbidden >= 15


def test_sensitive_members_are_redacted(models: Any) -> None:
    op = models.get_service_model("rds").operation_model("DescribeDBInstances")
    out = redact({"DBInstances": [{"DBInstanceIdentifier": "db1", "PendingModifiedValues": {
        "MasterUserPassword": "hunter2-secret", "AllocatedStorage": 5}}]}, op.output_shape)
    assert out["DBInstances"][0]["PendingModifiedValues"] == {"MasterUserPassword": REDACTED, "AllocatedStorage": 5}
    assert out["DBInstances"][0]["DBInstanceIdentifier"] == "db1"
    op = models.get_service_model("ssm").operation_model("GetParameter")
    assert redact({"Parameter": {"Name": "n", "Value": "v"}}, op.output_shape)["Parameter"] == {
        "Name": "n", "Value": REDACTED}


def test_an_alias_or_snake_case_decides_like_the_canonical_name(models: Any) -> None:
    model = models.get_service_model("s3")
    assert model.service_name == "s3"
    assert effect(models, "s3", "PutBucketPolicy") is Effect.FORBIDDEN
