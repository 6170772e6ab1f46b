"""Ed25519 signatures over org policy files: keygen, sign, verify. The signature is `FILE.sig` beside the file.

Keys are PEM (PKCS#8 private, SubjectPublicKeyInfo public); the signature is base64 over the domain prefix
and the file's exact bytes, so a one-byte edit anywhere in the file is refused.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from safe_mcp.errors import ConfigError

__all__ = ["keygen", "sign_file", "signature_path", "verify_file"]

_DOMAIN = b"safe-mcp/policy-signature/v1\x00"


def signature_path(policy: Path) -> Path:
    return policy.with_name(policy.name + ".sig")


def keygen(out_dir: Path) -> tuple[Path, Path]:
    """Write `policy.key` (mode 0600) and `policy.pub` into `out_dir`; never overwrites.

    Raises:
        ConfigError: a key file already exists.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out_dir / "policy.key", out_dir / "policy.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise ConfigError(str(p), "", "already exists; refusing to overwrite a key", "choose another --out directory")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path


def sign_file(policy: Path, key: Path) -> Path:
    """Sign `policy` with the private key in `key`; write and return `policy.sig`.

    Raises:
        ConfigError: the policy or key cannot be read, or the key is not an Ed25519 private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = policy.read_bytes()
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(str(exc.filename or key), "", f"cannot read: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(key), "", f"not a PEM private key: {exc}",
                          "use the policy.key from `safe-mcp policy keygen`") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(str(key), "", "not an Ed25519 key", "use the policy.key from `safe-mcp policy keygen`")
    sig = base64.b64encode(private.sign(_DOMAIN + data)).decode() + "\n"
    out = signature_path(policy)
    out.write_text(sig, encoding="ascii")
    return out


def verify_file(policy: Path, data: bytes, pubkey: Path) -> None:
    """Accept `data` (the bytes of `policy`) only with a valid `policy.sig` by the pinned key. Fails closed.

    Raises:
        ConfigError: the key is unreadable, the signature is missing or malformed, or it does not match.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    src = str(policy)
    try:
        public = serialization.load_pem_public_key(pubkey.read_bytes())
    except OSError as exc:
        raise ConfigError(str(pubkey), "", f"cannot read the pinned public key: {exc.strerror}",
                          "fix SAFE_MCP_POLICY_PUBKEY or the install's policy.pub") from None
    except ValueError as exc:
        raise ConfigError(str(pubkey), "", f"the pinned public key is not a PEM public key: {exc}",
                          "use the policy.pub from `safe-mcp policy keygen`") from None
    if not isinstance(public, Ed25519PublicKey):
        raise ConfigError(str(pubkey), "", "the pinned public key is not Ed25519",
                          "use the policy.pub from `safe-mcp policy keygen`")
    sig_path = signature_path(policy)
    try:
        sig = base64.b64decode(sig_path.read_text(encoding="ascii").strip(), validate=True)
    except FileNotFoundError:
        raise ConfigError(src, "", f"the org policy is not signed ({sig_path.name} is missing) and a public key is pinned "
                          f"({pubkey})", f"sign it: safe-mcp policy sign {src} --key policy.key") from None
    except (OSError, UnicodeDecodeError, binascii.Error, ValueError):
        raise ConfigError(src, "", f"the signature {sig_path} is unreadable or malformed",
                          "sign the policy again with `safe-mcp policy sign`") from None
    try:
        public.verify(sig, _DOMAIN + data)
    except InvalidSignature:
        raise ConfigError(src, "", f"the org policy does not match its signature {sig_path.name} under the pinned key "
                          f"{pubkey}: it was edited after signing or signed with another key",
                          "restore the policy your security team signed, or have them sign the new one") from None
