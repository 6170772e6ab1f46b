"""The keys of an aws target and its spec (pure pydantic: importing it loads no AWS library and not the adapter)."""

from __future__ import annotations

from pydantic import Field

from safe_mcp.adapter import AdapterSettings, AdapterSpec

__all__ = ["AwsSettings", "AwsSpec"]


class AwsSettings(AdapterSettings):
    region: str = Field(description="every call goes to this region; params naming another region are refused")
    account: str = Field(pattern=r"^\d{12}$",
                         description="the AWS account id the credentials must belong to (checked with STS first)")
    profile: str | None = Field(None, description="a profile from ~/.aws/config; absent: the environment's credentials")
    endpoint_url: str | None = Field(None, description="an AWS-compatible endpoint (moto, MinIO, LocalStack)")
    services: tuple[str, ...] | None = Field(None, description='allowed services, e.g. ["s3", "ec2", "logs"]; absent: any')
    buckets: tuple[str, ...] | None = Field(None, description="allowed S3 buckets (glob patterns); absent: any")
    resources: tuple[str, ...] | None = Field(
        None, description='allowed resource ARNs (glob patterns, e.g. "arn:aws:ec2:*:*:instance/*"); absent: any')
    quarantine_prefix: str = Field(".safe-mcp-quarantine/", min_length=1,
                                   description="where S3 objects are kept before a delete or overwrite, in the same bucket")
    max_body_bytes: int = Field(1_048_576, ge=0, description="S3 bodies are read up to this size, then truncated")
    access_key_id: str | None = Field(None, description='"keyring:NAME" or "env:VAR"; absent: profile or environment')
    secret_access_key: str | None = Field(None, description='"keyring:NAME" or "env:VAR"')
    session_token: str | None = Field(None, description='"keyring:NAME" or "env:VAR" (temporary credentials)')


class AwsSpec(AdapterSpec):
    kind = "aws"
    settings_model = AwsSettings
    tools = frozenset({"aws_call"})
    secret_keys = frozenset({"access_key_id", "secret_access_key", "session_token"})

    @classmethod
    def describe(cls, settings: AdapterSettings) -> dict[str, str]:
        assert isinstance(settings, AwsSettings)
        s = settings
        where = f"AWS account {s.account}, region {s.region}"
        if s.profile:
            where += f", profile {s.profile}"
        if s.endpoint_url:
            where += f", endpoint {s.endpoint_url}"
        return {
            "reaches": where,
            "compensation": (f"S3 deletes and overwrites (put, copy, multipart) keep the object (its version, or a "
                             f"copy under {s.quarantine_prefix}); DynamoDB item writes keep before-images; EC2 "
                             "stop/start, tags and revoked security-group rules are set back; received SQS messages "
                             "become visible again; new buckets, queues, topics, tables, security groups, log "
                             "groups and multipart uploads are deleted while still empty. Every other change is "
                             "irreversible (a human approves it)"),
            "services": ", ".join(s.services) if s.services is not None else "any service boto3 knows",
            "buckets": ", ".join(s.buckets) if s.buckets is not None else "any",
            "resources": ", ".join(s.resources) if s.resources is not None else "any",
            "forbidden": ("credentials handed over (members botocore marks sensitive are redacted everywhere else), "
                          "deleting or changing backups and snapshots and their protection (versioning, object "
                          "lock, expiring lifecycle or TTL rules, object versions, deletion/termination protection, "
                          "backup retention, point-in-time recovery), bucket policy changes, any other account "
                          "named in a change, IAM, KMS key deletion, CloudTrail, Organizations"),
        }
