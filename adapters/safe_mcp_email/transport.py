"""Delivering one message: SMTP (standard library) and SES v2 (boto3, imported only for ses targets).

Every failure is sorted into one of three kinds, because that decides whether a retry is safe:
`retry` (nothing left: connection refused, 4xx before or after DATA), `permanent` (a 5xx, bad
credentials, no TLS where TLS is required) and `unknown` (the content may have reached the server:
the connection dropped after the message was sent, a read timeout). `unknown` is never retried.
"""

from __future__ import annotations

import importlib
import re
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from safe_mcp_email.settings import SesSettings, SmtpSettings

__all__ = ["Delivered", "DeliveryFailed", "SesSender", "send_smtp"]


@dataclass(frozen=True)
class Delivered:
    reply: str
    provider_id: str | None = None


class DeliveryFailed(Exception):
    def __init__(self, kind: Literal["retry", "permanent", "unknown"], text: str) -> None:
        self.kind, self.text = kind, text
        super().__init__(text)


def _reply(code: int, resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp
    return f"{code} {' '.join(text.split())}"


def _by_code(code: int, resp: bytes | str, step: str) -> DeliveryFailed:
    kind: Literal["retry", "permanent"] = "retry" if 400 <= code < 500 or code < 200 else "permanent"
    return DeliveryFailed(kind, f"the server refused {step}: {_reply(code, resp)}")


def _wire(raw: bytes) -> bytes:
    """CRLF line ends, leading dots doubled, and the end-of-data line (RFC 5321 4.5.2)."""
    data = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", raw)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def send_smtp(s: SmtpSettings, password: str | None, envelope_from: str, rcpts: list[str], raw: bytes) -> Delivered:
    """Send one message over one SMTP session.

    Raises:
        DeliveryFailed: see the module docstring for its kinds.
    """
    ctx = ssl.create_default_context()
    try:
        if s.tls == "implicit":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=ctx)
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed("retry", f"cannot connect to {s.host}:{s.port}: {type(exc).__name__}: {exc}") from None
    try:
        try:
            conn.ehlo()
            if s.tls == "starttls":
                if not conn.has_extn("starttls"):
                    raise DeliveryFailed("permanent", f"{s.host} does not offer STARTTLS; refusing to send in clear text")
                conn.starttls(context=ctx)
                conn.ehlo()
            if s.username and password:
                conn.login(s.username, password)
            code, resp = conn.mail(envelope_from)
            if code != 250:
                raise _by_code(code, resp, f"the sender {envelope_from}")
            for rcpt in rcpts:
                code, resp = conn.rcpt(rcpt)
                if code not in (250, 251):
                    # Never deliver to part of the list: the whole message waits or fails.
                    raise _by_code(code, resp, f"the recipient {rcpt}")
            conn.putcmd("data")
            code, resp = conn.getreply()
            if code != 354:
                raise _by_code(code, resp, "DATA")
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryFailed("permanent", f"login failed: {_reply(exc.smtp_code, exc.smtp_error)}") from None
        except smtplib.SMTPResponseException as exc:
            raise _by_code(exc.smtp_code, exc.smtp_error, "the session") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryFailed("retry", f"the session failed before the message was sent: "
                                          f"{type(exc).__name__}: {exc}") from None
        # From here on the content is on its way: a lost connection leaves it unknown, never retried.
        try:
            conn.send(_wire(raw))
            code, resp = conn.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryFailed("unknown", f"the connection failed after the message was sent, before the server "
                                            f"replied ({type(exc).__name__}); it may have been delivered") from None
        if code != 250:
            raise _by_code(code, resp, "the message")
        return Delivered(reply=_reply(code, resp))
    finally:
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            conn.close()


def _boto(module: str) -> Any:
    """boto3 and botocore, imported on first use (smtp targets never pay for them); they ship no
    type information, so they are typed Any here rather than through a mypy override."""
    return importlib.import_module(module)


class SesSender:
    """SES v2 through boto3, with the account guard: nothing is queued or sent with credentials
    that belong to another account than the configured one."""

    def __init__(self, s: SesSettings, secrets: Mapping[str, str]) -> None:
        self.s = s
        self._secrets = secrets
        self._client: Any = None
        self._checked = False

    def _session(self) -> Any:
        boto3, Config = _boto("boto3"), _boto("botocore.config").Config

        kwargs: dict[str, Any] = {"region_name": self.s.region}
        if self.s.profile:
            kwargs["profile_name"] = self.s.profile
        if self.s.access_key_id:
            kwargs["aws_access_key_id"] = self._secrets.get("access_key_id")
            kwargs["aws_secret_access_key"] = self._secrets.get("secret_access_key")
        session = boto3.session.Session(**kwargs)
        # botocore must not retry on its own: a retried send could be a second email.
        config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=30)
        return session, config

    def check_account(self) -> None:
        """Raises DeliveryFailed("permanent") on another account, ("retry") when STS cannot be reached."""
        if self._checked:
            return
        errors = _boto("botocore.exceptions")

        try:
            session, config = self._session()
            sts = session.client("sts", endpoint_url=self.s.endpoint_url, config=config)
            account = sts.get_caller_identity()["Account"]
        except errors.ClientError as exc:
            raise DeliveryFailed("permanent", f"STS refused to identify the credentials: "
                                              f"{exc.response.get('Error', {}).get('Code', 'error')}") from None
        except errors.BotoCoreError as exc:
            raise DeliveryFailed("retry", f"cannot check the AWS account: {type(exc).__name__}: {exc}") from None
        if account != self.s.account:
            raise DeliveryFailed("permanent", f"the credentials belong to AWS account {account}, not the configured "
                                              f"{self.s.account}; refusing to send")
        self._checked = True

    def send(self, envelope_from: str, rcpts: list[str], raw: bytes) -> Delivered:
        """Raises DeliveryFailed."""
        errors = _boto("botocore.exceptions")

        self.check_account()
        try:
            if self._client is None:
                session, config = self._session()
                self._client = session.client("sesv2", endpoint_url=self.s.endpoint_url, config=config)
            kwargs: dict[str, Any] = {"FromEmailAddress": envelope_from, "Destination": {"ToAddresses": rcpts},
                                      "Content": {"Raw": {"Data": raw}}}
            if self.s.configuration_set:
                kwargs["ConfigurationSetName"] = self.s.configuration_set
            resp = self._client.send_email(**kwargs)
        except (errors.EndpointConnectionError, errors.ConnectTimeoutError) as exc:
            raise DeliveryFailed("retry", f"cannot reach SES: {type(exc).__name__}") from None
        except errors.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "error"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400) or 400)
            text = f"SES refused the message: {code}: {err.get('Message', '')}".strip()
            if code in {"TooManyRequestsException", "Throttling", "ThrottlingException", "LimitExceededException"}:
                raise DeliveryFailed("retry", text) from None
            raise DeliveryFailed("unknown" if status >= 500 else "permanent", text) from None
        except errors.BotoCoreError as exc:
            raise DeliveryFailed("unknown", f"the request to SES failed after it was sent "
                                            f"({type(exc).__name__}); it may have been delivered") from None
        return Delivered(reply=f"SES accepted: MessageId {resp['MessageId']}", provider_id=str(resp["MessageId"]))
