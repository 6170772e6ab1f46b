"""`[server] auth = "oidc"` over real streamable HTTP, against a real OpenID provider.

A valid access token reaches the tools and its subject is the principal in receipts and budgets; every
kind of bad token (expired, not yet valid, wrong audience, wrong issuer, foreign key, none/HS256, no
subject, approver-only) is a 401 and leaves no trace in the target or the ledger. The Protected Resource
Metadata names the real issuer; with static tokens nothing points at safe-mcp as an authorization server.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import jwt
import pytest
import support
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from oidc_support import Provider

pytestmark = pytest.mark.anyio

ROLES = '{ agent = ["eng"], approver = ["sre-leads"], admin = ["platform"] }'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(tmp: Path, issuer: str, port: int) -> Path:
    db = tmp / "shop.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
    return support.write_config(tmp, f"""
        [server]
        auth = "oidc"
        issuer = "{issuer}"
        audience = "http://127.0.0.1:{port}/mcp"
        roles_claim = "groups"
        required_scopes = ["mcp:tools"]
        roles = {ROLES}

        [targets.shop]
        kind = "sqlite"
        path = "shop.db"
        access = "read-write"
        """)


@pytest.fixture(scope="module")
def server(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    port = support.free_port()
    config = _config(tmp_path_factory.mktemp("oidc"), provider.issuer, port)
    with support.serving(config, "http", port=port):
        yield f"http://127.0.0.1:{port}/mcp", config


def _foreign(provider: Provider, *, same_kid: bool) -> str:
    """A token with every right claim, signed by a key the provider never published."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    real = jwt.get_unverified_header(provider.token(sub="x"))["kid"]
    return jwt.encode(_claims(provider), key, algorithm="RS256",
                      headers={"kid": real if same_kid else uuid.uuid4().hex})


def _claims(provider: Provider, **extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"iss": provider.issuer, "aud": AUD[0], "sub": "mallory", "groups": ["eng"], "iat": now,
            "nbf": now - 5, "exp": now + 600, **extra}


AUD: list[str] = [""]  # this module's server audience, set by the test before bad tokens are built


def _b64(d: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def _public_pem_hs256(provider: Provider) -> str:
    """HS256 keyed with the provider's public key (the classic key-confusion attack)."""
    from jwt.algorithms import RSAAlgorithm

    with httpx2.Client() as http:
        jwks = http.get(provider.issuer + "/jwks").json()
    pub = RSAAlgorithm.from_jwk(json.dumps(jwks["keys"][0]))
    assert isinstance(pub, rsa.RSAPublicKey)
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    import hmac

    head, body = _b64({"alg": "HS256", "typ": "JWT", "kid": jwks["keys"][0]["kid"]}), _b64(_claims(provider))
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


BAD: dict[str, Callable[[Provider], str]] = {
    "expired": lambda p: p.token(sub="mallory", aud=AUD[0], groups=["eng"], ttl=-120),
    "not yet valid": lambda p: p.token(sub="mallory", aud=AUD[0], groups=["eng"], nbf=int(time.time()) + 600),
    "wrong audience": lambda p: p.token(sub="mallory", aud="http://127.0.0.1:1/mcp", groups=["eng"]),
    "no audience": lambda p: p.token(sub="mallory", groups=["eng"]),
    "wrong issuer": lambda p: p.token(sub="mallory", aud=AUD[0], groups=["eng"], iss="http://localhost:1"),
    "foreign key, unknown kid": lambda p: _foreign(p, same_kid=False),
    "foreign key, provider's kid": lambda p: _foreign(p, same_kid=True),
    "alg none": lambda p: f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(p))}.",
    "HS256 with the public key": _public_pem_hs256,
    "no subject": lambda p: p.token(aud=AUD[0], groups=["eng"]),
    "approver only": lambda p: p.token(sub="mallory", aud=AUD[0], groups=["sre-leads"]),
    "no mapped group": lambda p: p.token(sub="mallory", aud=AUD[0], groups=["sales"]),
    "garbage": lambda p: "not-a-jwt",
}


def _insert(sql_body: str) -> dict[str, object]:
    return {"target": "shop", "sql": f"INSERT INTO notes (body) VALUES ('{sql_body}')"}


async def test_valid_token_calls_tools_as_its_subject(provider: Provider, server: tuple[str, Path]) -> None:
    url, config = server
    token = provider.token(sub="alice@example.com", aud=url, groups=["eng"], scope="openid mcp:tools")
    async with support.http_client(url, config, token=token) as client:
        r = await client.call_tool("sql_execute", _insert("by alice"))
        assert not r.is_error, r.content
    with sqlite3.connect(config.parent / "shop.db") as c:
        assert c.execute("SELECT body FROM notes").fetchall() == [("by alice",)]
    bodies = [json.loads(str(b)) for (b,) in support.ledger_rows(config, "SELECT body FROM receipts")]
    mine = [b for b in bodies if "INSERT" in json.dumps(b)]
    assert mine and all("oidc:alice@example.com" in json.dumps(b) for b in mine), mine
    assert support.ledger_rows(config, "SELECT COUNT(*) FROM receipts WHERE body LIKE '%mallory%'") == [(0,)]
    # Budgets count against the subject, whatever client or session it comes through.
    scopes = {str(r[0]) for r in support.ledger_rows(config, "SELECT scope FROM counters WHERE kind = 'write'")}
    assert "oidc:alice@example.com" in scopes, scopes
    assert all(s.startswith("oidc:alice@example.com") for s in scopes), scopes  # sessions too


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_tokens_are_401_and_leave_no_trace(provider: Provider, server: tuple[str, Path], case: str) -> None:
    url, config = server
    AUD[0] = url
    token = BAD[case](provider)
    before = support.ledger_rows(config, "SELECT COUNT(*) FROM receipts")
    async with httpx2.AsyncClient() as http:
        r = await http.post(url, headers={"Authorization": f"Bearer {token}", "Accept":
                                          "application/json, text/event-stream", "Content-Type": "application/json"},
                            json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                                "name": "sql_execute", "arguments": _insert(case)}})
    assert r.status_code == 401, (case, r.status_code, r.text)
    assert "resource_metadata=" in r.headers["www-authenticate"]
    assert support.ledger_rows(config, "SELECT COUNT(*) FROM receipts") == before
    with sqlite3.connect(config.parent / "shop.db") as c:
        assert c.execute("SELECT COUNT(*) FROM notes WHERE body = ?", (case,)).fetchone() == (0,)


async def test_token_without_the_required_scope_is_403(provider: Provider, server: tuple[str, Path]) -> None:
    url, config = server
    before = support.ledger_rows(config, "SELECT COUNT(*) FROM receipts")
    token = provider.token(sub="carol", aud=url, groups=["eng"], scope="openid")
    async with httpx2.AsyncClient() as http:
        r = await http.post(url, headers={"Authorization": f"Bearer {token}",
                                          "Accept": "application/json, text/event-stream"},
                            json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                                "name": "sql_execute", "arguments": _insert("carol")}})
    assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["www-authenticate"], r.text
    assert support.ledger_rows(config, "SELECT COUNT(*) FROM receipts") == before


async def test_no_token_is_401_pointing_at_metadata_naming_the_real_issuer(provider: Provider,
                                                                            server: tuple[str, Path]) -> None:
    url, _ = server
    async with httpx2.AsyncClient() as http:
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                            headers={"Accept": "application/json, text/event-stream"})
        assert r.status_code == 401
        meta_url = r.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
        meta = (await http.get(meta_url)).json()
    assert meta["resource"] == url
    assert meta["authorization_servers"] == [provider.issuer]
    assert meta["scopes_supported"] == ["mcp:tools"]
    assert "127.0.0.1" not in provider.issuer  # the provider is not safe-mcp


async def test_static_tokens_publish_no_authorization_server(tmp_path: Path) -> None:
    config = support.write_config(tmp_path, support.SHOP_TARGETS)
    with support.serving(config, "http") as port:
        async with httpx2.AsyncClient() as http:
            r = await http.post(f"http://127.0.0.1:{port}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                headers={"Accept": "application/json, text/event-stream"})
            assert r.status_code == 401
            assert "resource_metadata" not in r.headers.get("www-authenticate", "")
            for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource",
                         "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
                got = await http.get(f"http://127.0.0.1:{port}{path}")
                assert got.status_code == 404, (path, got.status_code, got.text[:200])
        # and the static token still works
        async with support.http_client(f"http://127.0.0.1:{port}/mcp", config) as client:
            assert not (await client.call_tool("targets", {})).is_error


def test_config_needs_issuer_and_audience(tmp_path: Path) -> None:
    config = support.write_config(tmp_path, '[server]\nauth = "oidc"\naudience = "https://mcp.example/mcp"\n'
                                  + support.SHOP_TARGETS)
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "serve", "--config", str(config), "--transport", "http",
                        "--port", str(support.free_port())], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "issuer" in r.stderr, r.stderr


async def test_sse_takes_the_same_tokens(provider: Provider, tmp_path: Path) -> None:
    from mcp import Client
    from mcp.client.sse import sse_client

    port = support.free_port()
    config = _config(tmp_path, provider.issuer, port)
    good = provider.token(sub="dave", aud=f"http://127.0.0.1:{port}/mcp", groups=["platform"], scope="mcp:tools")
    with support.serving(config, "sse", port=port):
        async with Client(sse_client(f"http://127.0.0.1:{port}/sse", headers={"Authorization": f"Bearer {good}"})) as c:
            assert not (await c.call_tool("sql_execute", _insert("by dave"))).is_error
        async with httpx2.AsyncClient() as http:
            expired = provider.token(sub="dave", aud=f"http://127.0.0.1:{port}/mcp", groups=["platform"],
                                     scope="mcp:tools", ttl=-120)
            r = await http.get(f"http://127.0.0.1:{port}/sse", headers={"Authorization": f"Bearer {expired}"})
            assert r.status_code == 401
    bodies = support.ledger_rows(config, "SELECT body FROM receipts WHERE body LIKE '%by dave%'")
    assert bodies and all("oidc:dave" in str(b[0]) for b in bodies)
