"""Effects of AWS operations, decided from the botocore service model and the request (no I/O, no credentials).

The rule: a call that changes state is `irreversible` unless this adapter records its undo for
exactly this request (undo_table.py); then it is `write` or `destructive` and `compensable`. Reads are
recognised from the model (HTTP GET/HEAD, or a reading verb on an operation that is not an HTTP
PUT/DELETE/PATCH) and from the request (a PartiQL SELECT). Forbidden are credentials handed over
(members botocore marks sensitive), backups and their protection, identity, audit, and data or
access leaving the account. Name patterns only ever tighten a decision, never loosen it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from safe_mcp.effects import Effect
from safe_mcp_aws.sensitive import credential_point
from safe_mcp_aws.undo_table import cover

if TYPE_CHECKING:
    from botocore.model import OperationModel

__all__ = ["CONTROL_PLANE", "Verdict", "classify_operation", "control_plane", "split_words", "verb_of"]


class Verdict(NamedTuple):
    effect: Effect
    reason: str
    compensable: bool = False


READ_VERBS = frozenset({
    "Describe", "List", "Get", "Head", "Search", "Lookup", "Query", "Scan", "Select", "Check", "Validate",
    "Estimate", "Preview", "Simulate", "Filter", "View", "Read", "Detect", "Contains",
    "Can", "Is", "Count", "Decode", "Evaluate", "Calculate", "Analyze",
    "Download", "Retrieve", "Fetch", "Show", "Compare",
})  # not Poll or Verify: polling claims work items, verifying registers factors and identities
DELETE_VERBS = frozenset({"Delete", "Terminate", "Purge", "Destroy", "Drop", "Erase", "Wipe", "Empty", "Truncate",
                          "Remove", "Deregister", "Revoke", "Disable", "Detach", "Disassociate", "Release"})

# What a change touches, read from the operation's name: used to explain, and (tests) to make sure
# no control-plane change is ever given a recorded undo that would make it a plain write.
CONTROL_PLANE: dict[str, re.Pattern[str]] = {
    "access and policy": re.compile(r"Polic(y|ies)|Acl|Permission|PublicAccess|Grant|Principal|Trust"),
    "data leaving the account": re.compile(r"Replication|Share|Sharing|Export|Transfer"),
    "a protection": re.compile(r"Versioning|Lifecycle|TimeToLive|ContinuousBackups|Protection|Retention|"
                               r"Encryption|Logging|Lock"),
    "passwords or credentials": re.compile(r"Password|Credential|AccessKey|LoginProfile|Secret|Certificate"),
    "network exposure": re.compile(r"^Authorize|Ingress|Egress|PublicAccessBlock|Peering|Firewall|"
                                   r"NetworkAcl|InternetGateway|Listener"),
    "running code": re.compile(r"Command|Invoke|FunctionCode|^CreateFunction|ExecuteCommand|RunTask|"
                               r"StartSession|Automation|Script|UserData"),
    "DNS": re.compile(r"ResourceRecordSets|HostedZone|RecordSet|Dns"),
}

# Explicit effects that the general rule would get wrong.
EXPLICIT: dict[str, Verdict] = {
    "ec2:TerminateInstances": Verdict(Effect.IRREVERSIBLE, "terminating an instance destroys it and its instance storage"),
    "s3:SelectObjectContent": Verdict(Effect.READ, "S3 Select reads an object"),
    "stepfunctions:GetActivityTask": Verdict(Effect.IRREVERSIBLE, "it claims a task for this caller"),
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
    "ecr-public:GetAuthorizationToken": "it returns registry credentials",
    "ec2:CreateKeyPair": "it returns the new key pair's private key",
    "ssm:StartSession": "it returns a session token that opens a shell on the host",
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
    # the same effect through the other door: an overwrite can drop every deny rule a delete would
    "s3:PutBucketPolicy": "it replaces the bucket policy, deny rules included (deleting it is forbidden too)",
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
_ISSUING = frozenset({"Get", "Create", "Generate", "Request", "Regenerate", "Reset", "Rotate", "Export",
                      "Download", "Retrieve", "Issue", "Assume"})
_CREDENTIAL_NOUNS = frozenset({"Token", "Credentials", "Credential", "Password", "PasswordData", "SecretValue"})
_ACCOUNT_IN_ARN = re.compile(r"arn:aws[\w-]*:[\w-]*:[\w-]*:(\d{12}):")
_ACCOUNT_KEY = re.compile(r"account|owner|^userids?$|^valuestoadd$|principal", re.I)
_CHANGE_VERBS = frozenset({"Create", "Put", "Update", "Modify", "Start", "Stop", "Run", "Execute", "Send", "Invoke",
                           "Set", "Add", "Attach", "Associate", "Enable", "Reset", "Rotate", "Restore", "Import",
                           "Export", "Copy", "Replace", "Apply", "Grant", "Authorize", "Register", "Tag", "Untag"})
_STATEMENT_OPS = frozenset({"dynamodb:ExecuteStatement", "dynamodb:BatchExecuteStatement", "dynamodb:ExecuteTransaction"})
_SELECT = re.compile(r"\s*select\s", re.I)


def split_words(name: str) -> list[str]:
    """`DeleteDBSnapshot` -> ["Delete", "DB", "Snapshot"]."""
    return _WORD.findall(name)


def verb_of(name: str) -> str:
    """The leading verb of an operation name, past a Batch/Admin prefix."""
    words = split_words(name)
    if words[:1] and words[0] in _PREFIXES and len(words) > 1:
        return words[1]
    return words[0] if words else ""


def control_plane(name: str) -> list[str]:
    """The control-plane categories an operation's name falls into (explanations and tests only)."""
    return [label for label, pattern in CONTROL_PLANE.items() if pattern.search(name)]


def classify_operation(service: str, op: OperationModel, params: Mapping[str, Any],
                       account: str | None = None) -> Verdict:
    """The effect of calling `op` of `service` with `params`, why, and whether undo will be recorded.

    `account` is the target's own account: any other account named in a changing request is refused.
    """
    name = op.name
    key = f"{service}:{name}"
    verb = verb_of(name)
    forbidden = _forbidden(service, op, verb, params)
    if forbidden:
        return Verdict(Effect.FORBIDDEN, forbidden)
    if key in EXPLICIT:
        return EXPLICIT[key]
    if _reads(key, op, verb, params):
        return Verdict(Effect.READ, f"{name} reads")
    if service in FORBIDDEN_WRITES_IN:
        return Verdict(Effect.FORBIDDEN, f"{key}: {FORBIDDEN_WRITES_IN[service]}")
    foreign = sorted(a for a in _accounts(params) if a != account) if account else []
    if foreign:
        return Verdict(Effect.FORBIDDEN, f"{key} names account {', '.join(foreign)}: data or access would leave "
                                         f"account {account}")
    found, gap = cover(key, params)
    if found is not None:
        return Verdict(found.effect, f"{key} ({found.effect.value}, undo is recorded)", True)
    return Verdict(Effect.IRREVERSIBLE, _why_irreversible(key, name, verb, gap))


def _reads(key: str, op: OperationModel, verb: str, params: Mapping[str, Any]) -> bool:
    if key in _STATEMENT_OPS:
        return _only_selects(key, params)
    method = str(op.http.get("method", "POST")).upper()
    if op.metadata.get("protocol") in {"rest-json", "rest-xml"}:
        if method in {"GET", "HEAD"}:  # a GET named for a change (ConfirmTopicRuleDestination) is not trusted
            return verb not in _CHANGE_VERBS - {"Export"} and verb not in DELETE_VERBS \
                and verb not in {"Confirm", "Verify", "Assume"}
        if method in {"PUT", "DELETE", "PATCH"}:
            return False
    if verb in READ_VERBS:
        return True
    # botocore's own `readonly` trait (Geocode, Autocomplete...): trusted unless the name says it changes something
    trait = getattr(op, "_operation_model", {}).get("readonly") is True
    return trait and verb not in _CHANGE_VERBS and verb not in DELETE_VERBS


def _only_selects(key: str, p: Mapping[str, Any]) -> bool:
    """PartiQL: a read when every statement is one SELECT (an UPDATE or DELETE changes items without undo)."""
    if key == "dynamodb:ExecuteStatement":
        statements = [p.get("Statement")]
    else:
        listed = p.get("Statements") or p.get("TransactStatements") or []
        statements = [s.get("Statement") for s in listed if isinstance(s, Mapping)] if isinstance(listed, list) else []
    return bool(statements) and all(isinstance(s, str) and _SELECT.match(s) and ";" not in s for s in statements)


def _why_irreversible(key: str, name: str, verb: str, gap: str) -> str:
    areas = control_plane(name)
    what = f"{key} changes {' and '.join(areas)}" if areas else f"{key} changes state"
    if verb in DELETE_VERBS:
        what = f"{key} deletes, ends or removes something"
    if key in _STATEMENT_OPS:
        what = f"{key} runs a PartiQL statement that is not a SELECT"
    if gap:
        return f"{what}; undo is not recorded for this request: {gap}"
    return f"{what} and safe-mcp records no undo for it, so it is irreversible"


def _forbidden(service: str, op: OperationModel, verb: str, params: Mapping[str, Any]) -> str:
    name = op.name
    key = f"{service}:{name}"
    if service in FORBIDDEN_SERVICES:
        return f"{key}: {FORBIDDEN_SERVICES[service]}"
    if key in FORBIDDEN_OPS:
        return f"{key}: {FORBIDDEN_OPS[key]}"
    if verb not in {"Delete", "Terminate"}:
        point = credential_point(op, verb)
        if point:
            return f"{key}: {point}; credentials never reach the agent"
        if verb == "Assume":
            return f"{key}: assuming a role mints credentials; credentials never reach the agent"
        words = split_words(name)
        if verb in _ISSUING and words and words[-1] in _CREDENTIAL_NOUNS:
            return f"{key}: it hands over a {words[-1].lower()}; credentials never reach the agent"
    if verb in _BACKUP_VERBS and _BACKUP_NOUN.search(name):
        return f"{key}: it deletes or changes a backup, snapshot or its protection"
    return _forbidden_by_params(key, params)


def _false(value: Any) -> bool:
    """False, however it is spelled: False, "false", "False", 0, "0"."""
    if isinstance(value, Mapping):
        value = value.get("Value")
    return value is False or (isinstance(value, (str, int)) and str(value).strip().lower() in {"false", "0"})


def _true(value: Any) -> bool:
    if isinstance(value, Mapping):
        value = value.get("Value")
    return value is True or (isinstance(value, (str, int)) and str(value).strip().lower() in {"true", "1"})


def _forbidden_by_params(key: str, p: Mapping[str, Any]) -> str:
    """Calls that are ordinary except for the parameters that remove a protection."""
    if key == "s3:PutBucketVersioning":
        conf = p.get("VersioningConfiguration") or {}
        if conf.get("Status") != "Enabled" or str(conf.get("MFADelete", "")).lower() == "disabled":
            return f"{key}: suspending versioning (or MFA delete) removes the protection of old versions"
    # any service's lifecycle rule (S3, S3 on Outposts, ECR's JSON policy text) that expires things deletes them
    if "Lifecycle" in key and any("expir" in text.lower() for text in (*_keys(p), *_strings(p))):
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
    # two spellings: DisableApiTermination={"Value": False}, or Attribute="disableApiTermination", Value="false"
    if key == "ec2:ModifyInstanceAttribute" and (
            _false(p.get("DisableApiTermination")) or _false(p.get("DisableApiStop"))
            or (str(p.get("Attribute", "")).lower() in {"disableapitermination", "disableapistop"}
                and _false(p.get("Value")))):
        return f"{key}: removing termination or stop protection"
    if key in {"ec2:ModifyImageAttribute", "ec2:ModifyFpgaImageAttribute"} and "all" in _strings(p):
        return f"{key}: sharing an image with everyone"
    if key in {"rds:ModifyDBInstance", "rds:ModifyDBCluster"}:
        if "BackupRetentionPeriod" in p and _false(p.get("BackupRetentionPeriod")):
            return f"{key} with BackupRetentionPeriod=0 turns automated backups off and deletes them"
        if "DeletionProtection" in p and _false(p.get("DeletionProtection")):
            return f"{key}: removing deletion protection"
    if key in {"rds:DeleteDBInstance", "rds:DeleteDBCluster"} and (
            _true(p.get("SkipFinalSnapshot")) or p.get("DeleteAutomatedBackups", key == "rds:DeleteDBInstance")):
        return f"{key} without a final snapshot, or deleting its automated backups, leaves no backup"
    if key == "redshift:DeleteCluster" and _true(p.get("SkipFinalClusterSnapshot")):
        return f"{key} with SkipFinalClusterSnapshot leaves no backup"
    if key == "dynamodb:UpdateContinuousBackups":
        spec = p.get("PointInTimeRecoverySpecification") or {}
        if _false(spec.get("PointInTimeRecoveryEnabled")):
            return f"{key}: turning point-in-time recovery off"
    if key in {"dynamodb:UpdateTable", "dynamodb:DeleteTable"} and "DeletionProtectionEnabled" in p \
            and _false(p.get("DeletionProtectionEnabled")):
        return f"{key}: removing deletion protection"
    switched = _protection_off(key, p)
    if switched:
        return switched
    if key == "dynamodb:UpdateTimeToLive" and _true((p.get("TimeToLiveSpecification") or {}).get("Enabled")):
        return f"{key}: a TTL rule expires (deletes) every item whose attribute is past, with no copy kept"
    return ""


# Protections, by parameter name, in any service's request and at any depth: the same switch has the
# same name in RDS, DocumentDB, Neptune, DynamoDB, CloudFormation, ELB, Redshift and more.
_MUST_STAY_ON = frozenset({"DeletionProtection", "DeletionProtectionEnabled", "TerminationProtection",
                           "EnableTerminationProtection", "DisableApiTermination", "DisableApiStop",
                           "PointInTimeRecoveryEnabled", "EnableDeletionProtection", "MFADelete"})
_MUST_STAY_ABOVE_ZERO = frozenset({"BackupRetentionPeriod", "AutomatedSnapshotRetentionPeriod",
                                   "SnapshotRetentionLimit", "ManualSnapshotRetentionPeriod"})


def _protection_off(key: str, p: Mapping[str, Any]) -> str:
    if verb_of(key.split(":", 1)[1]) == "Create":  # a new resource has nothing to lose yet
        return ""
    for name, value in _pairs(p):
        if name in _MUST_STAY_ON and _false(value):
            return f"{key}: {name}={value!r} switches a protection off"
        if name in _MUST_STAY_ABOVE_ZERO and _false(value):
            return f"{key}: {name}=0 turns automated backups off and deletes them"
    # attribute lists: {"Key": "deletion_protection.enabled", "Value": "false"} (ELB and others)
    for _, value in _pairs([p]):
        if isinstance(value, Mapping) and "protection" in str(value.get("Key", "")).lower() \
                and _false(value.get("Value")):
            return f"{key}: {value['Key']}={value['Value']!r} switches a protection off"
    return ""


def _pairs(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (name, value) in a request at any depth; a list's items come as ("", item)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k), v
            yield from _pairs(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield "", v
            yield from _pairs(v)


def _keys(value: Any) -> Iterator[str]:
    return (k for k, _ in _pairs(value) if k)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _accounts(value: Any, key: str = "") -> Iterator[str]:
    """12-digit account ids a request names: in ARNs anywhere (policy documents included), and as the
    value of account-like parameters (AccountId, UserIds, ValuesToAdd, Principal...)."""
    if isinstance(value, str):
        yield from _ACCOUNT_IN_ARN.findall(value)
        if _ACCOUNT_KEY.search(key) and re.fullmatch(r"\d{12}", value.strip()):
            yield value.strip()
        if value.lstrip().startswith("{"):  # a JSON document (policy): "AWS": "111122223333"
            yield from re.findall(r'"AWS"\s*:\s*"(\d{12})"', value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _accounts(v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _accounts(v, key)
