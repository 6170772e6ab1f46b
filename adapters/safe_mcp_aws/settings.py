"""The keys of an aws target (pure pydantic: importing it loads no AWS library)."""

from __future__ import annotations

from pydantic import Field

from safe_mcp.adapter import AdapterSettings

__all__ = ["AwsSettings"]


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
