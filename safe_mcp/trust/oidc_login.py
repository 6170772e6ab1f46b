"""Approvers sign in with the team's OpenID provider: the approval page is an OIDC client.

Authorization code flow with PKCE (S256), a `state` and a `nonce` per sign-in. The ID token is checked
with the same key machinery as agents' access tokens (`IssuerKeys`: asymmetric algorithms only, keys
from the issuer's JWKS): signature, `iss`, `aud` = the client id (and `azp` when there are several
audiences), `exp`, `iat`, `sub` and the `nonce` of this sign-in. The role comes from the same claim and
role map as agents' tokens (`[server] roles_claim`, `roles`). The client secret, when there is one, is a
secret reference resolved once, sent only to the provider's token endpoint, and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from safe_mcp.trust.oidc import IssuerKeys, Role, role_of

__all__ = ["Approver", "LoginFailed", "LoginStart", "OidcLogin", "approver_of_access_token"]

log = logging.getLogger("safe_mcp.oidc")
_SUBJECT = re.compile(r"^[\x21-\x7e]{1,200}$")
_PRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")


class LoginFailed(Exception):
    """A sign-in that must not count; the message says why (never a token or a secret)."""


class LoginStart(BaseModel):
    """What one sign-in needs to remember until its callback: never shown to the browser except `url`/`state`."""

    model_config = ConfigDict(frozen=True)

    url: str
    state: str
    nonce: str
    verifier: str
    redirect_uri: str


class Approver(BaseModel):
    """Who signed in: keyed by the provider's subject (`name` = "oidc:SUB"); `display` is for people only."""

    model_config = ConfigDict(frozen=True)

    subject: str
    role: Role | None
    display: str

    @property
    def name(self) -> str:
        return f"oidc:{self.subject}"


class OidcLogin:
    """The approval page's client of `issuer`; `client_secret` is the resolved secret (or None)."""

    def __init__(self, issuer: str, client_id: str, client_secret: str | None, *, scopes: Sequence[str],
                 roles_claim: str, roles: Mapping[Role, Sequence[str]], timeout: float = 10.0) -> None:
        self.issuer, self.client_id = issuer, client_id
        self._secret = client_secret
        self.scopes = ["openid", *[s for s in scopes if s != "openid"]]
        self.roles_claim, self.roles = roles_claim, dict(roles)
        self._timeout = timeout
        self.keys = IssuerKeys(issuer, timeout=timeout)

    async def start(self, redirect_uri: str) -> LoginStart:
        """A new sign-in: the provider URL to send the browser to, with fresh state, nonce and PKCE verifier.

        Raises:
            LoginFailed: the provider's discovery document cannot be fetched or names no authorization endpoint.
        """
        meta = await self.keys.discovery()
        endpoint = meta.get("authorization_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise LoginFailed(f"cannot reach the sign-in provider {self.issuer} (no authorization endpoint)")
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri,
            "scope": " ".join(self.scopes), "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": "S256"})
        url = endpoint + ("&" if "?" in endpoint else "?") + query
        return LoginStart(url=url, state=state, nonce=nonce, verifier=verifier, redirect_uri=redirect_uri)

    async def finish(self, start: LoginStart, code: str) -> Approver:
        """Exchange `code` for an ID token and check it against `start`; the approver it proves.

        Raises:
            LoginFailed: the exchange failed or the ID token is not valid for this sign-in.
        """
        import httpx2

        meta = await self.keys.discovery()
        endpoint = meta.get("token_endpoint")
        if not isinstance(endpoint, str):
            raise LoginFailed(f"the provider {self.issuer} names no token endpoint")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": start.redirect_uri,
                "code_verifier": start.verifier, "client_id": self.client_id}
        headers = {"Accept": "application/json"}
        if self._secret is not None:  # client_secret_basic (RFC 6749 2.3.1: both parts form-encoded)
            pair = f"{urllib.parse.quote(self.client_id, safe='')}:{urllib.parse.quote(self._secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            async with httpx2.AsyncClient(timeout=self._timeout, follow_redirects=False) as http:
                r = await http.post(endpoint, data=form, headers=headers)
            body = r.json() if r.status_code == 200 else {}
        except (httpx2.HTTPError, ValueError) as exc:
            raise LoginFailed(f"the provider's token endpoint failed ({type(exc).__name__})") from None
        if r.status_code != 200:
            raise LoginFailed(f"the provider refused the sign-in code (HTTP {r.status_code}); sign in again")
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(id_token, str):
            raise LoginFailed("the provider returned no ID token; is \"openid\" an allowed scope of this client?")
        claims = await self.keys.decode(id_token, self.client_id, ("exp", "iat", "iss", "aud", "sub", "nonce"))
        if claims is None:
            raise LoginFailed("the ID token is not valid for this page (signature, issuer, audience or expiry)")
        if not hmac.compare_digest(str(claims.get("nonce", "")), start.nonce):
            raise LoginFailed("the ID token's nonce is not this sign-in's")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.client_id:
            raise LoginFailed("the ID token was issued to another client (azp)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not _SUBJECT.match(sub):
            raise LoginFailed("the ID token has no usable subject")
        return Approver(subject=sub, role=role_of(claims, self.roles_claim, self.roles), display=_display(claims))


async def approver_of_access_token(keys: IssuerKeys, token: str, audience: str, roles_claim: str,
                                   roles: Mapping[Role, Sequence[str]]) -> Approver | None:
    """Who an access token for `audience` (this server) proves, for a CLI deciding with a bearer token; None when
    the token is not valid here. The role is the caller's to check."""
    claims = await keys.decode(token, audience, ("exp", "iss", "aud", "sub"))
    sub = claims.get("sub") if claims is not None else None
    if claims is None or not isinstance(sub, str) or not _SUBJECT.match(sub):
        return None
    return Approver(subject=sub, role=role_of(claims, roles_claim, roles), display=_display(claims))


def _display(claims: Mapping[str, Any]) -> str:
    """A name people recognise (name and email when the token has them); never used as a key."""
    parts = [str(claims[k]) for k in ("name", "email") if isinstance(claims.get(k), str) and claims[k]]
    if not parts and isinstance(claims.get("preferred_username"), str):
        parts = [claims["preferred_username"]]
    text = " <".join(parts[:2]) + (">" if len(parts) == 2 else "")
    return _PRINTABLE.sub("", text)[:120]
