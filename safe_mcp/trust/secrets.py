"""Secret references (`keyring:NAME`, `env:VAR`), their resolution, and scrubbing.

Resolved values live only in memory, in the adapters that need them and in the
`Scrubber`, which removes every one of them from whatever leaves the server.
"""

from __future__ import annotations

import os

from safe_mcp.errors import ConfigError
from safe_mcp.trust.scrub import REDACTED, Scrubber

__all__ = ["KEYRING_SERVICE", "REDACTED", "Scrubber", "resolve_ref"]

KEYRING_SERVICE = "safe-mcp"


def resolve_ref(ref: str, *, source: str, key: str) -> str:
    """Return the secret behind a reference.

    Raises:
        ConfigError: the reference is malformed or names nothing.
    """
    scheme, _, name = ref.partition(":")
    if scheme == "env":
        value = os.environ.get(name)
        if not value:
            raise ConfigError(source, key, f"environment variable {name} is not set", f"export {name}=... before starting")
        return value
    if scheme == "keyring":
        from safe_mcp.trust.secretstore import file_secret, secrets_file

        file = secrets_file()
        if file is not None:
            return file_secret(file, name, source=source, key=key)
        try:
            import keyring
            import keyring.errors
        except ImportError:  # pragma: no cover - keyring is a core dependency
            raise ConfigError(source, key, "the keyring package is not installed", "pip install keyring") from None
        try:
            value = keyring.get_password(KEYRING_SERVICE, name)
        except keyring.errors.KeyringError as exc:
            raise ConfigError(
                source, key, f"no usable keyring backend ({type(exc).__name__})",
                "on a headless machine set SAFE_MCP_SECRETS_FILE=/path/secrets.toml (mode 0600) and store it with "
                f"`safe-mcp secrets set {name}`, use an env:VAR reference, or install a keyring backend",
            ) from None
        if not value:
            raise ConfigError(source, key, f"keyring has no secret named {name!r}", f"run: safe-mcp secrets set {name}")
        return value
    raise ConfigError(source, key, f"not a secret reference: {ref!r}", 'use "keyring:NAME" or "env:VAR"')


