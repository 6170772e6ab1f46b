"""The keys of a mail target: `[targets.NAME]` with kind = "smtp" or kind = "ses"."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from safe_mcp.adapter import AdapterSettings
from safe_mcp_email.message import ascii_domain

__all__ = ["MailSettings", "SesSettings", "SmtpSettings", "is_loopback"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MailSettings(AdapterSettings):
    """What every mail target shares: sender, allow-list, hold, limits, and the sender loop's pace."""

    from_: str = Field(alias="from", description="the sender address (From header and envelope sender)")
    allow_recipients: list[str] = Field(
        min_length=1,
        description='patterns every recipient (to, cc, bcc, reply_to) must match, e.g. "*@example.com"; '
                    "case-insensitive, on the address only")
    hold_s: float = Field(120, ge=0, description="mail waits this long in the outbox and can be cancelled; "
                                                 "0 makes a send irreversible (it then needs confirm.irreversible)")
    max_recipients: int = Field(10, ge=1, description="to + cc + bcc of one message at most")
    messages_per_hour: int = Field(20, ge=1, description="messages queued per rolling hour at most")
    max_body_bytes: int = Field(256_000, ge=1, description="the body's size in UTF-8 bytes at most")
    max_attempts: int = Field(8, ge=1, description="delivery attempts before a message is marked failed")
    retry_base_s: float = Field(30, gt=0, description="first retry delay; doubles on each failed attempt (max 1 h)")
    poll_s: float = Field(1.0, gt=0, le=60, description="how often the sender looks for due messages")

    @field_validator("allow_recipients")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        out = []
        for p in value:
            if "@" not in p or any(c.isspace() for c in p):
                raise ValueError(f"{p!r} is not an address pattern; use forms like \"*@example.com\" or \"ops@example.com\"")
            # Compared with addresses in their normalised form, so an IDN pattern is kept as punycode.
            local, _, domain = p.rpartition("@")
            out.append(f"{local}@{ascii_domain(domain)}".lower())
        return out


class SmtpSettings(MailSettings):
    host: str = Field(description="the SMTP server")
    port: int = Field(587, ge=1, le=65535)
    tls: Literal["starttls", "implicit", "none"] = Field(
        "starttls", description='starttls (default), implicit (SMTPS, usually port 465) or none (loopback test servers only)')
    username: str | None = Field(None, description="login name; omit for servers without authentication")
    password: str | None = Field(None, description='a secret reference: "keyring:NAME" or "env:VAR"')
    timeout_s: float = Field(30, gt=0, description="network timeout of one delivery attempt")

    @model_validator(mode="after")
    def _tls_only_off_on_loopback(self) -> SmtpSettings:
        if self.tls == "none" and not is_loopback(self.host):
            raise ValueError(f'tls = "none" is allowed only for loopback test servers, not {self.host!r}; '
                             'use tls = "starttls" or "implicit"')
        if self.password and not self.username:
            raise ValueError("password is set but username is not")
        return self


class SesSettings(MailSettings):
    region: str = Field(description="the SES region, e.g. eu-west-1")
    account: str = Field(pattern=r"^\d{12}$", description="refuse to send when the credentials belong to another account")
    endpoint_url: str | None = Field(None, description="an SES-compatible endpoint (moto, LocalStack); default AWS")
    profile: str | None = Field(None, description="an AWS profile name (credentials from the AWS config files)")
    access_key_id: str | None = Field(None, description='a secret reference: "keyring:NAME" or "env:VAR"')
    secret_access_key: str | None = Field(None, description='a secret reference: "keyring:NAME" or "env:VAR"')
    configuration_set: str | None = Field(None, description="an SES configuration set to send with")

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> SesSettings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        if self.profile and self.access_key_id:
            raise ValueError("set either profile or access keys, not both")
        return self
