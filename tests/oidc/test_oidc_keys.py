"""The verifier's key handling against the real provider: lazy fetch, cache, rotation, rate-limited refetch,
a provider that goes away, a discovery document for another issuer; and the claim-to-role map."""

from __future__ import annotations

import anyio
import jwt
import pytest
import support
from oidc_support import Provider

from safe_mcp.trust.oidc import OidcVerifier, role_of

pytestmark = pytest.mark.anyio
AUD = "https://mcp.example/mcp"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_rotated_key_is_fetched_once_and_unknown_kids_do_not_flood(provider: Provider) -> None:
    v = OidcVerifier(provider.issuer, AUD, refetch_interval=3600)
    assert v._fetched == 0  # nothing is fetched before the first token
    first = await v.verify_token(provider.token(sub="alice", aud=AUD))
    assert first is not None and first.client_id == "oidc:alice" and first.claims == {"role": "agent",
                                                                                       "iss": provider.issuer}
    fetched = v._fetched
    new_kid = provider.rotate()
    # The provider signs with its keys in turn: get one token signed by the new key.
    token = next(t for t in (provider.token(sub="bob", aud=AUD) for _ in range(4))
                 if jwt.get_unverified_header(t)["kid"] == new_kid)
    # Within the refetch interval an unknown kid is not fetched again: refused for now.
    assert await v.verify_token(token) is None and v._fetched == fetched
    v._fetched -= 3601  # the interval has passed
    got = await v.verify_token(token)
    assert got is not None and got.subject == "bob" and new_kid in v._keys


async def test_concurrent_first_requests_share_one_fetch(provider: Provider) -> None:
    v = OidcVerifier(provider.issuer, AUD)
    tokens = [provider.token(sub=f"u{i}", aud=AUD) for i in range(5)]
    results: list[object] = []

    async def one(t: str) -> None:
        results.append(await v.verify_token(t))

    async with anyio.create_task_group() as tg:
        for t in tokens:
            tg.start_soon(one, t)
    assert len(results) == 5 and None not in results


async def test_unreachable_provider_keeps_cached_keys(provider: Provider) -> None:
    v = OidcVerifier(provider.issuer, AUD, refetch_interval=0, cache_seconds=0)
    assert await v.verify_token(provider.token(sub="alice", aud=AUD)) is not None
    token = provider.token(sub="alice", aud=AUD)
    dead = support.free_port()
    v._jwks_uri = f"http://127.0.0.1:{dead}/jwks"  # the provider's JWKS endpoint stops answering
    assert await v.verify_token(token) is not None  # stale cache, refetch failed: the known keys still verify


async def test_discovery_for_another_issuer_is_not_trusted(provider: Provider) -> None:
    # The document at this URL names another issuer (no trailing slash): its keys are never loaded.
    v = OidcVerifier(provider.issuer + "/", AUD)
    assert await v.verify_token(provider.token(sub="alice", aud=AUD, iss=provider.issuer + "/")) is None
    assert v._keys == {}


def test_role_map() -> None:
    roles = {"agent": ["eng"], "approver": ["sre"], "admin": ["platform"]}
    assert role_of({"groups": ["eng", "sales"]}, "groups", roles) == "agent"
    assert role_of({"groups": ["eng", "platform"]}, "groups", roles) == "admin"
    assert role_of({"groups": "sre"}, "groups", roles) == "approver"
    assert role_of({"groups": ["sales"]}, "groups", roles) is None
    assert role_of({}, "groups", roles) is None
    assert role_of({"groups": [{"eng": 1}]}, "groups", roles) is None
    assert role_of({"realm_access": {"roles": ["platform"]}}, "realm_access.roles", roles) == "admin"
    assert role_of({"realm_access": ["platform"]}, "realm_access.roles", roles) is None
    assert role_of({"groups": []}, "groups", {}) == "agent"  # no map: every valid token is an agent
