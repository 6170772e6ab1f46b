"""OAuth 2.1 resource-server mode: access tokens are JWTs from one OpenID provider, checked against its JWKS.

`OidcVerifier` is the MCP SDK's `TokenVerifier` protocol. A token is accepted only when its signature
verifies with a key the issuer publishes (an asymmetric algorithm, never `none` or HS*), and `iss`, `aud`,
`exp`, `nbf` and `sub` hold. The issuer's keys are fetched lazily, cached, refetched when their time is
up, and refetched early when a token names an unknown `kid` (key rotation), at most once per
`refetch_interval`, so a flood of made-up kids never turns into a flood of requests to the provider.

The token's subject becomes the caller (`oidc:<sub>`): sessions, budgets and receipts are keyed on it.
Its groups or roles claim picks a safe-mcp role; `approver`-only tokens are refused on the MCP tools,
like approver tokens from `safe-mcp token create`.

PyJWT does the JOSE work: the MCP SDK already depends on it (with `cryptography`), so resource-server mode
adds no new package, and it checks exp/nbf/iss/aud with required claims in one call.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio

from safe_mcp.errors import ConfigError

Role = Literal["agent", "approver", "admin"]

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken

__all__ = ["ALGORITHMS", "IssuerKeys", "OidcVerifier", "role_of"]

log = logging.getLogger("safe_mcp.oidc")

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""Asymmetric algorithms only: a shared-secret (HS*) or unsigned (`none`) token is never accepted."""
_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_SUBJECT = re.compile(r"^[\x21-\x7e]{1,200}$")
_ROLE_ORDER: tuple[Role, ...] = ("admin", "agent", "approver")


def role_of(claims: Mapping[str, Any], claim: str, roles: Mapping[Role, Sequence[str]]) -> Role | None:
    """The safe-mcp role `claims` earn: the highest whose values meet the token's `claim` (a dotted path).

    With no `roles` map every token is an agent; with one, a token matching none of it has no role (None).
    """
    if not roles:
        return "agent"
    value: Any = claims
    for part in claim.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    held = {value} if isinstance(value, str) else {v for v in value if isinstance(v, str)} if isinstance(
        value, list) else set()
    return next((r for r in _ROLE_ORDER if held & set(roles.get(r, ()))), None)


class IssuerKeys:
    """The signing keys (and discovery document) of one issuer, fetched lazily and cached; see the module docstring.

    Shared by `OidcVerifier` (agents' access tokens) and `safe_mcp.trust.oidc_login` (approvers' ID tokens), so
    both trust exactly the same keys under the same refetch rules.
    """

    def __init__(self, issuer: str, *, leeway: float = 10.0, timeout: float = 5.0, cache_seconds: float = 3600.0,
                 refetch_interval: float = 30.0) -> None:
        self.issuer = issuer
        self._leeway, self._timeout = leeway, timeout
        self._cache_seconds, self._refetch_interval = cache_seconds, refetch_interval
        self._keys: dict[str, tuple[Any, str | None]] = {}  # kid -> (jwt.PyJWK, the "alg" the JWK pins, if any)
        self._lock = anyio.Lock()  # one fetch at a time; a request waiting on it then finds the fetched keys
        self._fetched = 0.0  # monotonic time of the last fetch attempt (successful or not)
        self._loaded = 0.0  # monotonic time of the last successful fetch
        self._jwks_uri: str | None = None
        self._discovery: dict[str, Any] = {}  # the issuer's discovery document, once fetched

    async def discovery(self) -> dict[str, Any]:
        """The issuer's discovery document (fetched with its keys); {} when it cannot be fetched now."""
        async with self._lock:
            now = time.monotonic()
            if not self._discovery and (not self._fetched or now - self._fetched >= self._refetch_interval):
                self._fetched = now
                await self._fetch()
            return dict(self._discovery)

    async def decode(self, token: str, audience: str, require: Sequence[str]) -> dict[str, Any] | None:
        """The claims of `token` when its signature verifies with one of the issuer's keys (an asymmetric
        algorithm) and `iss`, `aud` (= `audience`), `exp`, `nbf` hold and every `require`d claim is present;
        else None."""
        import jwt

        if len(token) > 16384:
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS or (kid is not None and not isinstance(kid, str)):
            return None
        key = await self._key(kid, alg)
        if key is None:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[alg], audience=audience, issuer=self.issuer, leeway=self._leeway,
                options={"require": list(require), "verify_signature": True})
        except jwt.PyJWTError as exc:
            log.info("oidc token refused: %s", type(exc).__name__)
            return None
        return claims

    async def _key(self, kid: str | None, alg: str) -> Any:
        """The issuer's key for `kid` that fits `alg`, fetching the JWKS when stale or when `kid` is new."""
        async with self._lock:
            now = time.monotonic()
            stale = not self._loaded or now - self._loaded > self._cache_seconds
            unknown = self._pick(kid, alg) is None
            if (stale or unknown) and (not self._fetched or now - self._fetched >= self._refetch_interval):
                self._fetched = now
                await self._fetch()
            return self._pick(kid, alg)

    def _pick(self, kid: str | None, alg: str) -> Any:
        fits = {k: key for k, (key, pinned) in self._keys.items()
                if key.key_type == _KTY[alg[:2]] and pinned in (None, alg)}
        if kid is not None:
            return fits.get(kid)
        return next(iter(fits.values())) if len(fits) == 1 else None  # no kid: only an unambiguous key will do

    async def _fetch(self) -> None:
        """Refresh the keys from the issuer's discovery document; on failure keep the keys already held."""
        import httpx2
        import jwt

        try:
            async with httpx2.AsyncClient(timeout=self._timeout, follow_redirects=False) as http:
                if self._jwks_uri is None:
                    base = self.issuer.rstrip("/")
                    r = await http.get(base + "/.well-known/openid-configuration")
                    if r.status_code == 404:
                        r = await http.get(base + "/.well-known/oauth-authorization-server")
                    r.raise_for_status()
                    meta = r.json()
                    if meta.get("issuer") != self.issuer or not isinstance(meta.get("jwks_uri"), str):
                        log.warning("oidc discovery at %s names issuer %r, not %r (or no jwks_uri): check "
                                    "server.issuer", base, meta.get("issuer"), self.issuer)
                        return
                    if self.issuer.startswith("https://") and not meta["jwks_uri"].startswith("https://"):
                        log.warning("oidc discovery of %s names a jwks_uri that is not https: refused", self.issuer)
                        return
                    self._jwks_uri, self._discovery = meta["jwks_uri"], dict(meta)
                r = await http.get(self._jwks_uri)
                r.raise_for_status()
                doc = r.json()
        except (httpx2.HTTPError, json.JSONDecodeError, AttributeError) as exc:
            log.warning("oidc: cannot fetch the keys of %s (%s); keeping %d cached key(s)", self.issuer,
                        type(exc).__name__, len(self._keys))
            return
        keys: dict[str, Any] = {}
        for i, jwk in enumerate(doc.get("keys", []) if isinstance(doc, dict) else []):
            if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP") or jwk.get("use", "sig") != "sig":
                continue  # symmetric ("oct") and encryption keys are never signing keys here
            try:
                pinned = jwk.get("alg")
                keys[str(jwk.get("kid", f"#{i}"))] = (jwt.PyJWK(jwk), pinned if isinstance(pinned, str) else None)
            except jwt.PyJWTError:
                continue
        self._keys, self._loaded = keys, time.monotonic()


class OidcVerifier(IssuerKeys):
    """Verifies access tokens issued by `issuer` for `audience`; see the module docstring."""

    def __init__(self, issuer: str, audience: str, *, roles_claim: str = "groups",
                 roles: Mapping[Role, Sequence[str]] | None = None, leeway: float = 10.0, timeout: float = 5.0,
                 cache_seconds: float = 3600.0, refetch_interval: float = 30.0) -> None:
        if not issuer or not audience:
            raise ConfigError("server", "issuer" if not issuer else "audience", "missing for auth = \"oidc\"",
                              "set server.issuer and server.audience")
        super().__init__(issuer, leeway=leeway, timeout=timeout, cache_seconds=cache_seconds,
                         refetch_interval=refetch_interval)
        self.audience = audience
        self.roles_claim, self.roles = roles_claim, dict(roles or {})

    async def verify_token(self, token: str) -> AccessToken | None:
        """The caller `token` proves, or None (401) for any token that is not valid here."""
        from mcp.server.auth.provider import AccessToken

        claims = await self.decode(token, self.audience, ("exp", "iss", "aud", "sub"))
        if claims is None:
            return None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not _SUBJECT.match(sub):
            return None
        role = role_of(claims, self.roles_claim, self.roles)
        if role is None or role == "approver":
            log.info("oidc token for %s refused: its %s grant no role that may call tools", sub, self.roles_claim)
            return None
        raw_scope = claims.get("scope", claims.get("scp", ""))
        scopes = raw_scope.split() if isinstance(raw_scope, str) else [s for s in raw_scope if isinstance(s, str)] \
            if isinstance(raw_scope, list) else []
        exp = claims.get("exp")
        return AccessToken(token="", client_id=f"oidc:{sub}", scopes=scopes, subject=sub,
                           expires_at=int(exp) if isinstance(exp, (int, float)) else None, resource=self.audience,
                           claims={"role": role, "iss": self.issuer})
