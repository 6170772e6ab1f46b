"""Effects of AWS operations, decided from the botocore service model (no I/O, no credentials).

The general rule reads the operation's name (its leading verb) and, for REST protocols, its HTTP
method; the tables below hold the exceptions that matter: backups and their protection, identity,
key deletion, audit trails, credentials. A verb this module does not know is `irreversible`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safe_mcp.effects import Effect

if TYPE_CHECKING:
    from botocore.model import OperationModel

__all__ = ["COMPENSATED", "classify_operation", "split_words"]

READ_VERBS = frozenset({
    "Describe", "List", "Get", "Head", "Search", "Lookup", "Query", "Scan", "Select", "Check", "Validate",
    "Estimate", "Preview", "Simulate", "Filter", "View", "Read", "Detect", "Verify", "Discover", "Contains",
    "Can", "Is", "Count", "Decode", "Evaluate", "Calculate", "Analyze",
    "Download", "Poll", "Retrieve", "Fetch", "Show", "Compare",
})
WRITE_VERBS = frozenset({
    "Create", "Put", "Update", "Modify", "Start", "Run", "Stop", "Reboot", "Tag", "Untag", "Attach", "Associate",
    "Enable", "Add", "Set", "Register", "Send", "Publish", "Invoke", "Copy", "Import", "Export", "Upload",
    "Restore", "Reset", "Replace", "Accept", "Cancel", "Change", "Authorize", "Allocate", "Assign",
    "Request", "Apply", "Rotate", "Execute", "Complete", "Confirm", "Initiate", "Provision", "Write", "Increase",
    "Decrease", "Move", "Promote", "Resume", "Pause", "Retry", "Respond", "Submit", "Subscribe", "Unsubscribe",
    "Grant", "Generate", "Encrypt", "Decrypt", "Re", "Deploy", "Rebuild", "Renew", "Receive", "Signal",
    "Notify", "Activate", "Link", "Merge", "Ingest", "Label", "Claim", "Archive", "Enter", "Exit", "Rename",
    "Recover", "Refresh", "Configure", "Upgrade", "Restart", "Approve", "Acknowledge", "Record",
    "Invite", "Clone", "Build", "Index", "Sync", "Synthesize", "Translate", "Transcribe", "Train", "Unmonitor", "Monitor",
})
DESTRUCTIVE_VERBS = frozenset({
    "Detach", "Disassociate", "Deregister", "Revoke", "Remove", "Disable", "Release", "Abort", "Unassign",
    "Unlink", "Deactivate", "Unregister", "Unshare", "Reject", "Overwrite", "Disconnect", "Dissociate",
    "Suspend",
})
IRREVERSIBLE_VERBS = frozenset({"Delete", "Terminate", "Purge", "Destroy", "Drop", "Erase", "Wipe", "Empty", "Truncate"})

# Operations whose undo this adapter records (see compensate.py): their effect drops to what
# the compensation makes it.
COMPENSATED: dict[str, Effect] = {
    "s3:PutObject": Effect.WRITE,  # an overwrite escalates to destructive at execution
    "s3:CopyObject": Effect.WRITE,
    "s3:DeleteObject": Effect.DESTRUCTIVE,
    "s3:DeleteObjects": Effect.DESTRUCTIVE,
    "ec2:StopInstances": Effect.WRITE,
    "ec2:StartInstances": Effect.WRITE,
    "ec2:CreateTags": Effect.WRITE,
    "ec2:DeleteTags": Effect.DESTRUCTIVE,
    "ec2:AuthorizeSecurityGroupIngress": Effect.WRITE,
    "ec2:AuthorizeSecurityGroupEgress": Effect.WRITE,
    "ec2:RevokeSecurityGroupIngress": Effect.DESTRUCTIVE,
    "ec2:RevokeSecurityGroupEgress": Effect.DESTRUCTIVE,
}

# Explicit effects that the general rule would get wrong.
EXPLICIT: dict[str, tuple[Effect, str]] = {
    "ec2:TerminateInstances": (Effect.IRREVERSIBLE, "terminating an instance destroys it and its instance storage"),
    "s3:SelectObjectContent": (Effect.READ, "S3 Select reads an object"),
    "s3:WriteGetObjectResponse": (Effect.WRITE, "answers an Object Lambda request"),
    "sqs:ReceiveMessage": (Effect.WRITE, "receiving hides messages from other consumers"),
    "ec2:GetPasswordData": (Effect.FORBIDDEN, "it returns an instance's administrator password"),
}

# Never through safe-mcp: backups and their protection, identity, keys, audit, credentials.
FORBIDDEN_OPS: dict[str, str] = {
    **{f"kms:{op}": "KMS key deletion or disabling makes encrypted data unreadable"
       for op in ("ScheduleKeyDeletion", "DeleteImportedKeyMaterial", "DisableKey", "PutKeyPolicy",
                  "DisableKeyRotation")},
    **{f"sts:{op}": "it mints new credentials, which would leave safe-mcp in the results"
       for op in ("AssumeRole", "AssumeRoleWithSAML", "AssumeRoleWithWebIdentity", "AssumeRoot",
                  "GetSessionToken", "GetFederationToken")},
    "ecr:GetAuthorizationToken": "it returns registry credentials",
    # Secrets stores: a read would put a secret into the agent's context, where injected text can ask
    # it to post the value anywhere. Secrets reach code through config references, not through the agent.
    "secretsmanager:GetSecretValue": "it returns a secret's value",
    "secretsmanager:BatchGetSecretValue": "it returns secrets' values",
    "kms:Decrypt": "it returns decrypted data keys or secrets",
    "kms:GenerateDataKey": "it returns a plaintext data key",
    "codeartifact:GetAuthorizationToken": "it returns repository credentials",
    "s3:PutObjectLockConfiguration": "object lock protects data from deletion",
    "s3:PutObjectRetention": "object lock retention protects data from deletion",
    "s3:PutObjectLegalHold": "legal holds protect data from deletion",
    "s3:DeleteBucketPolicy": "bucket policies often hold deny rules that protect data",
    "rds:DeleteDBInstanceAutomatedBackup": "it deletes automated backups",
    "rds:DeleteDBClusterAutomatedBackup": "it deletes automated backups",
    "dynamodb:DeleteBackup": "it deletes a backup",
    "dlm:DeleteLifecyclePolicy": "snapshot lifecycle policies are backups",
    "dlm:UpdateLifecyclePolicy": "snapshot lifecycle policies are backups",
}
FORBIDDEN_SERVICES: dict[str, str] = {
    "organizations": "AWS Organizations changes accounts and their guardrails",
    "account": "account settings and closure",
}
FORBIDDEN_WRITES_IN: dict[str, str] = {
    "iam": "IAM users, keys, roles and policies (creation, attachment, deletion) are changed by humans",
    "backup": "AWS Backup vaults, plans and recovery points are backups",
    "cloudtrail": "CloudTrail is the audit trail",
    "sso-admin": "identity-center permission sets and assignments",
    "identitystore": "identity-center users and groups",
}
_BACKUP_NOUN = re.compile(r"Snapshot|Backup|RecoveryPoint|Vault|Archive")
_BACKUP_VERBS = frozenset({"Delete", "Modify", "Update", "Put", "Remove", "Disable", "Purge", "Disassociate",
                           "Unlock", "Reset", "Deregister"})
_PREFIXES = frozenset({"Batch", "Admin"})  # BatchDeleteX, AdminDeleteUser: the verb is the next word
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|$)|[A-Z]?[a-z]+|\d+")


def split_words(name: str) -> list[str]:
    """`DeleteDBSnapshot` -> ["Delete", "DB", "Snapshot"]."""
    return _WORD.findall(name)


def classify_operation(service: str, op: OperationModel, params: Mapping[str, Any]) -> tuple[Effect, str]:
    """The effect of calling `op` of `service` with `params`, and why."""
    name = op.name
    key = f"{service}:{name}"
    forbidden = _forbidden(service, name, params)
    if forbidden:
        return Effect.FORBIDDEN, forbidden
    if key in EXPLICIT:
        return EXPLICIT[key]
    if service in FORBIDDEN_WRITES_IN or key in COMPENSATED:
        general, why = _general(op)
        if service in FORBIDDEN_WRITES_IN and general is not Effect.READ:
            return Effect.FORBIDDEN, f"{key}: {FORBIDDEN_WRITES_IN[service]}"
        if key in COMPENSATED:
            effect = COMPENSATED[key]
            if key.startswith("ec2:RevokeSecurityGroup") and not params.get("IpPermissions"):
                return Effect.IRREVERSIBLE, f"{key} by rule id: the revoked rules are not recorded for undo"
            return effect, f"{key} ({effect.value}, undo is recorded)"
        return general, why
    return _general(op)


def _general(op: OperationModel) -> tuple[Effect, str]:
    words = split_words(op.name)
    verb = words[0] if words else ""
    if verb in _PREFIXES and len(words) > 1:
        verb = words[1]
    method = str(op.http.get("method", "POST")).upper()
    rest = op.metadata.get("protocol") in {"rest-json", "rest-xml"}
    if verb in IRREVERSIBLE_VERBS:
        return Effect.IRREVERSIBLE, f"{op.name} deletes or ends something and safe-mcp keeps no copy"
    if verb in DESTRUCTIVE_VERBS:
        return Effect.DESTRUCTIVE, f"{op.name} removes or detaches something"
    if verb in READ_VERBS:
        if rest and method in {"PUT", "DELETE", "PATCH"}:
            return Effect.WRITE, f"{op.name} is named like a read but is an HTTP {method}"
        return Effect.READ, f"{op.name} reads"
    if verb in WRITE_VERBS:
        if rest and method == "DELETE":
            return Effect.IRREVERSIBLE, f"{op.name} is an HTTP DELETE"
        return Effect.WRITE, f"{op.name} changes state"
    if rest and method in {"GET", "HEAD"}:
        return Effect.READ, f"{op.name} is an HTTP {method}"
    if rest and method == "DELETE":
        return Effect.IRREVERSIBLE, f"{op.name} is an HTTP DELETE"
    return Effect.IRREVERSIBLE, f"{op.name}: safe-mcp does not know what this verb does, so it takes the strictest class"


def _forbidden(service: str, name: str, params: Mapping[str, Any]) -> str:
    key = f"{service}:{name}"
    if service in FORBIDDEN_SERVICES:
        return f"{key}: {FORBIDDEN_SERVICES[service]}"
    if key in FORBIDDEN_OPS:
        return f"{key}: {FORBIDDEN_OPS[key]}"
    words = split_words(name)
    verb = words[1] if words[:1] and words[0] in _PREFIXES and len(words) > 1 else (words[0] if words else "")
    if verb in _BACKUP_VERBS and _BACKUP_NOUN.search(name):
        return f"{key}: it deletes or changes a backup, snapshot or its protection"
    return _forbidden_by_params(key, params)


def _forbidden_by_params(key: str, p: Mapping[str, Any]) -> str:
    """Calls that are ordinary except for the parameters that remove a protection."""
    if key == "s3:PutBucketVersioning":
        conf = p.get("VersioningConfiguration") or {}
        if conf.get("Status") != "Enabled" or conf.get("MFADelete") == "Disabled":
            return f"{key}: suspending versioning (or MFA delete) removes the protection of old versions"
    if key in {"s3:PutBucketLifecycleConfiguration", "s3:PutBucketLifecycle"}:
        conf = p.get("LifecycleConfiguration") or {}
        for rule in conf.get("Rules", []) or []:
            if any(k in rule for k in ("Expiration", "NoncurrentVersionExpiration")):
                return f"{key}: a lifecycle rule that expires objects deletes data"
    if key == "s3:DeleteObject" and p.get("VersionId"):
        return f"{key} with VersionId deletes an object version permanently"
    if key == "s3:DeleteObjects":
        objects = (p.get("Delete") or {}).get("Objects") or []
        if any(isinstance(o, Mapping) and o.get("VersionId") for o in objects):
            return f"{key} with VersionId deletes object versions permanently"
    if key.startswith("s3:") and p.get("BypassGovernanceRetention"):
        return f"{key} with BypassGovernanceRetention overrides object lock"
    if key in {"ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory"} \
            and p.get("WithDecryption"):
        return f"{key} with WithDecryption returns SecureString secrets in clear text"
    if key == "ec2:ModifyInstanceAttribute":
        flag = p.get("DisableApiTermination")
        value = flag.get("Value") if isinstance(flag, Mapping) else flag
        if value is False:
            return f"{key}: removing termination protection"
    if key in {"rds:ModifyDBInstance", "rds:ModifyDBCluster"}:
        if p.get("BackupRetentionPeriod") == 0:
            return f"{key} with BackupRetentionPeriod=0 turns automated backups off and deletes them"
        if p.get("DeletionProtection") is False:
            return f"{key}: removing deletion protection"
    if key in {"rds:DeleteDBInstance", "rds:DeleteDBCluster"} and (
            p.get("SkipFinalSnapshot") or p.get("DeleteAutomatedBackups", key == "rds:DeleteDBInstance")):
        return f"{key} without a final snapshot, or deleting its automated backups, leaves no backup"
    if key == "redshift:DeleteCluster" and p.get("SkipFinalClusterSnapshot"):
        return f"{key} with SkipFinalClusterSnapshot leaves no backup"
    if key == "dynamodb:UpdateContinuousBackups":
        spec = p.get("PointInTimeRecoverySpecification") or {}
        if spec.get("PointInTimeRecoveryEnabled") is False:
            return f"{key}: turning point-in-time recovery off"
    if key == "dynamodb:DeleteTable" and (p.get("DeletionProtectionEnabled") is False):
        return f"{key}: removing deletion protection"
    return ""
