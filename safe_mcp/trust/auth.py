"""Bearer tokens for HTTP/SSE: created by `safe-mcp token create`, stored only as hashes in the state store.

A token is shown once. Each has a name (it goes into every receipt of the calls it makes) and a role:
`agent` and `admin` may call the MCP tools; `approver` tokens are for approving and are refused there.
Revocation takes effect on the next request: every request is checked against the store.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from safe_mcp.errors import ConfigError
from safe_mcp.state.store import StateStore

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken

__all__ = ["MCP_SCOPE", "ROLES", "TokenInfo", "TokenStore", "TokenVerifier"]

Role = Literal["agent", "approver", "admin"]
ROLES: tuple[Role, ...] = ("agent", "approver", "admin")
MCP_SCOPE = "mcp"
_SCOPES = {"agent": [MCP_SCOPE], "admin": [MCP_SCOPE, "approve", "admin"], "approver": ["approve"]}
_DOMAIN = b"safe-mcp/token/v1\x00"
_PREFIX = "smcp_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT UNIQUE NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_live_name ON tokens (name) WHERE revoked IS NULL;
"""
TOKEN_TABLES = _SCHEMA
"""The DDL of this module's tables in the state store (for `safe-mcp state migrate`)."""



class TokenInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    role: Role
    created: float
    revoked: float | None = None


def _hash(token: str) -> str:
    return hashlib.sha256(_DOMAIN + token.encode()).hexdigest()


class TokenStore:
    """The `tokens` table of the state store (state.db under the config's state directory)."""

    def __init__(self, store: StateStore, *, owned: bool = False) -> None:
        """Use `store`'s connection; `owned` closes it with this object (see `open`).

        Raises:
            StateError: the table could not be created.
        """
        self._store, self._owned = store, owned
        with store.transaction() as db:
            for stmt in store.ddl(_SCHEMA):
                db.execute(stmt)

    def create(self, name: str, role: str) -> str:
        """Store a new token's hash and return the token (the only time it exists in clear).

        Raises:
            ConfigError: bad name or role, or a live token already has this name.
        """
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}", name):
            raise ConfigError("token", "--name", f"invalid name {name!r}", "use letters, digits, . _ - @ (64 at most)")
        if role not in ROLES:
            raise ConfigError("token", "--role", f"invalid role {role!r}", f"use one of {', '.join(ROLES)}")
        token = _PREFIX + secrets.token_urlsafe(32)
        with self._store.transaction() as db:
            if db.execute("SELECT 1 FROM tokens WHERE name = ? AND revoked IS NULL", (name,)).fetchone():
                raise ConfigError("token", "--name", f"a live token named {name!r} exists",
                                  f"revoke it first (safe-mcp token revoke {name}) or choose another name")
            db.execute("INSERT INTO tokens (name, role, hash, created) VALUES (?, ?, ?, ?)",
                       (name, role, _hash(token), time.time()))
        return token

    def list(self) -> list[TokenInfo]:
        rows = self._store.query("SELECT name, role, created, revoked FROM tokens ORDER BY created")
        return [TokenInfo(name=r[0], role=r[1], created=r[2], revoked=r[3]) for r in rows]

    def revoke(self, name: str) -> bool:
        """Revoke the live token named `name`; False when there is none."""
        with self._store.transaction() as db:
            cur = db.execute("UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL", (time.time(), name))
            return cur.rowcount > 0

    def lookup(self, token: str) -> TokenInfo | None:
        """The live token `token` is, or None (unknown, malformed or revoked)."""
        if not token.startswith(_PREFIX) or len(token) > 200:
            return None
        digest = _hash(token)
        rows = self._store.query("SELECT name, role, created, revoked, hash FROM tokens WHERE hash = ?", (digest,))
        row = rows[0] if rows else None
        if row is None or row[3] is not None or not hmac.compare_digest(row[4], digest):
            return None
        return TokenInfo(name=row[0], role=row[1], created=row[2])

    def close(self) -> None:
        if self._owned:
            self._store.close()


class TokenVerifier:
    """The MCP SDK's `TokenVerifier` protocol over a `TokenStore`: the token's name becomes the client id."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    async def verify_token(self, token: str) -> AccessToken | None:
        from mcp.server.auth.provider import AccessToken

        info = self.store.lookup(token)
        if info is None:
            return None
        return AccessToken(token="", client_id=info.name, scopes=list(_SCOPES[info.role]), subject=info.name,
                           claims={"role": info.role})
