"""What a shipped batch is made of and where it goes: the gateway's Ed25519 key, the signed head, the S3 client
and how its failures read. Shared by `safe_mcp.gate.ship` (writing) and `safe_mcp.gate.ship_verify` (reading)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_mcp.errors import SafeMcpError
from safe_mcp.state.receipts import canonical_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from safe_mcp.trust.config import ShipSettings

__all__ = ["KEY_FILE", "ShipError", "aws_error", "aws_errors", "batch_key", "check_object_lock", "gateway_key",
           "head_bytes", "key_id", "raw_public", "s3_client"]

HEAD_DOMAIN = b"safe-mcp/receipts-head/v1\x00"
KEY_FILE = "ship.key"


class ShipError(SafeMcpError):
    """Shipping failed or was refused; the message says why and what to do."""



# --- the gateway's signing key --------------------------------------------------------------------


def gateway_key(state_dir: Path) -> Ed25519PrivateKey:
    """The gateway's Ed25519 key in `state_dir/ship.key` (0600), made on first use.

    Raises:
        ShipError: the key cannot be read or written, or is not an Ed25519 key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = state_dir / KEY_FILE
    try:
        if not path.exists():
            state_dir.mkdir(parents=True, exist_ok=True)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileExistsError:
        return gateway_key(state_dir)  # another process made it first
    except OSError as exc:
        raise ShipError(f"cannot read or create the shipping key {path}: {exc.strerror}; "
                        "check the state directory's permissions") from None
    except ValueError:
        raise ShipError(f"{path} is not a PEM private key; move it away and a new key is made") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ShipError(f"{path} is not an Ed25519 key; move it away and a new key is made")
    return key


def raw_public(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


def head_bytes(head: dict[str, Any]) -> bytes:
    return HEAD_DOMAIN + canonical_json(head).encode()

# --- S3 -------------------------------------------------------------------------------------------


def s3_client(settings: ShipSettings) -> Any:
    """An S3 client with the standard AWS credential chain, or `profile`.

    Raises:
        ShipError: the profile does not exist or the client cannot be made.
    """
    import boto3
    from botocore.config import Config as BotoConfig

    try:
        session = boto3.session.Session(profile_name=settings.profile, region_name=settings.region)
        return session.client("s3", endpoint_url=settings.endpoint_url,
                              config=BotoConfig(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=20))
    except aws_errors() as exc:
        raise aws_error("cannot reach", settings, exc) from None


def aws_error(action: str, settings: ShipSettings, exc: Exception) -> ShipError:
    """A botocore failure as a ShipError naming the bucket and what to check (never credentials)."""
    from botocore.exceptions import ClientError, NoCredentialsError, ProfileNotFound

    where = f"s3://{settings.bucket}/{settings.prefix}"
    if isinstance(exc, NoCredentialsError):
        return ShipError(f"{action} {where}: no AWS credentials found; set profile under [receipts.ship] "
                         "or provide credentials through the standard AWS chain")
    if isinstance(exc, ProfileNotFound):
        return ShipError(f"{action} {where}: the AWS profile {settings.profile!r} does not exist; fix profile under "
                         "[receipts.ship]")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return ShipError(f"{action} {where}: {err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": "))
    return ShipError(f"{action} {where}: {type(exc).__name__}: {exc}; check endpoint_url, region and the network")


def aws_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def check_object_lock(s3: Any, settings: ShipSettings) -> None:
    try:
        conf = s3.get_object_lock_configuration(Bucket=settings.bucket)
    except aws_errors() as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code == "ObjectLockConfigurationNotFoundError":
            conf = {}
        else:
            raise aws_error("cannot read the Object Lock configuration of", settings, exc) from None
    if conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        raise ShipError(f"refusing to ship: bucket {settings.bucket} does not have Object Lock enabled, so shipped "
                        "receipts could be deleted; create a bucket with Object Lock (aws s3api create-bucket "
                        "--object-lock-enabled-for-bucket ...) and name it under [receipts.ship]")


def batch_key(settings: ShipSettings, first: int, last: int) -> str:
    return f"{settings.prefix}batches/{first:012d}-{last:012d}.jsonl"
