"""Approvers proven by the team's OpenID provider on the approval page (`[approvals] oidc_client_id`).

A real provider (oauth2-mock-server) and a real `safe-mcp serve` over HTTP: an agent with an OIDC access
token asks for a `human` action; an approver signs in (authorization code + PKCE, state, nonce) and decides
as `oidc:SUB`. The write runs on the SQLite file only after enough distinct subjects approved; an agent-role
subject, the requester itself, and every bad sign-in (state mismatch, replayed code, another browser, wrong
nonce, audience, issuer, expired, foreign key, forged cookie) decide nothing.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
import support
from oidc_support import Browser, Provider

from safe_mcp.errors import ConfigError
from safe_mcp.trust.config import parse_config

pytestmark = pytest.mark.anyio

ROLES = '{ agent = ["eng"], approver = ["sre-leads"], admin = ["platform"] }'
SAM = {"sub": "sam-7", "groups": ["sre-leads"], "name": "Sam Lead", "email": "sam@example.com"}
PAT = {"sub": "pat-3", "groups": ["platform"]}
EVE = {"sub": "eve-1", "groups": ["eng"]}
ENV = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}  # TOTP enrolment uses the key-file fallback


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(tmp: Path, issuer: str, port: int, approvals: str = "") -> Path:
    for db in ("shop.db", "vault.db"):
        with sqlite3.connect(tmp / db) as c:
            c.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
    return support.write_config(tmp, f"""
        [server]
        auth = "oidc"
        issuer = "{issuer}"
        audience = "http://127.0.0.1:{port}/mcp"
        roles = {ROLES}

        [approvals]
        oidc_client_id = "safe-mcp-approvals"
        {approvals}

        [confirm]
        min_delay_s = 0

        [targets.shop]
        kind = "sqlite"
        path = "shop.db"
        access = "read-write"

        [targets.vault]
        kind = "sqlite"
        path = "vault.db"
        access = "read-write"
        approvals_required = 2
        """)


@pytest.fixture(scope="module")
def server(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    port = support.free_port()
    config = _config(tmp_path_factory.mktemp("approvers"), provider.issuer, port)
    with support.serving(config, "http", port=port, env=ENV):
        yield port, config


@pytest.fixture
def browser(server: tuple[int, Path]) -> Iterator[Browser]:
    b = Browser(f"http://127.0.0.1:{server[0]}")
    yield b
    b.close()


def _columns(config: Path, db: str = "shop.db") -> list[str]:
    with sqlite3.connect(config.parent / db) as c:
        return [r[1] for r in c.execute("PRAGMA table_info(orders)")]


def _receipts(config: Path, word: str) -> list[str]:
    return [str(b) for (b,) in support.ledger_rows(config, "SELECT body FROM receipts WHERE body LIKE ? ORDER BY seq",
                                                   (f"%{word}%",))]


async def _request(provider: Provider, port: int, config: Path, column: str, *, target: str = "shop",
                   sub: str = "", groups: tuple[str, ...] = ("eng",)) -> tuple[str, str]:
    """An agent (OIDC access token) asks for an irreversible change; returns (action id, agent token).

    Each test's agent is its own subject: refused confirms count toward the per-principal circuit breaker."""
    url = f"http://127.0.0.1:{port}/mcp"
    token = provider.token(sub=sub or f"agent-{column}", aud=url, groups=list(groups))
    async with support.http_client(url, config, token=token) as client:
        pending = await support.call(client, "sql_execute", target=target,
                                     sql=f"ALTER TABLE orders ADD COLUMN {column} TEXT")
    return str(pending["pending"]["action_id"]), token


async def _confirm(port: int, config: Path, token: str, action: str) -> tuple[bool, str]:
    async with support.http_client(f"http://127.0.0.1:{port}/mcp", config, token=token) as client:
        r = await client.call_tool("confirm", {"action_id": action})
    return not r.is_error, r.content[0].text if r.content else ""


async def test_a_signed_in_approver_approves_and_the_write_runs(provider: Provider, server: tuple[int, Path],
                                                                browser: Browser) -> None:
    port, config = server
    action, token = await _request(provider, port, config, "approved_col")
    assert "Sign in" in browser.page() and action not in browser.page()  # nothing shown before sign-in
    r = browser.sign_in(SAM)
    assert r.status_code == 200 and "oidc:sam-7" in r.text, r.text
    assert "safe_mcp_approver" in r.headers["set-cookie"] and "samesite=strict" in r.headers["set-cookie"].lower()
    assert "httponly" in r.headers["set-cookie"].lower()
    page = browser.page()
    assert action in page and "signed in as <strong>oidc:sam-7</strong>" in page and 'name="name"' not in page
    assert 'name="code"' not in page  # no TOTP on top by default with provider sign-in
    ok, _ = await _confirm(port, config, token, action)
    assert not ok and "approved_col" not in _columns(config)  # not yet approved
    r = browser.decide(action, "approve")
    assert r.status_code == 200 and f"action {action} is approved" in r.text, r.text
    ok, text = await _confirm(port, config, token, action)
    assert ok, text
    assert "approved_col" in _columns(config)
    approvals = [b for b in _receipts(config, action) if '"approve"' in b]
    assert approvals and "approved by oidc:sam-7 (Sam Lead <sam@example.com>) via web" in approvals[0], approvals
    assert support.ledger_rows(config, "SELECT approver FROM approvals WHERE action_id = ?", (action,)) == [
        ("oidc:sam-7",)]


async def test_a_signed_in_approver_denies_and_nothing_runs(provider: Provider, server: tuple[int, Path],
                                                            browser: Browser) -> None:
    port, config = server
    action, token = await _request(provider, port, config, "denied_col")
    assert browser.sign_in(SAM).status_code == 200
    r = browser.decide(action, "deny", reason="not on a Friday")
    assert r.status_code == 200 and "is denied" in r.text, r.text
    ok, text = await _confirm(port, config, token, action)
    assert not ok and "denied_col" not in _columns(config), text
    assert any("denied by oidc:sam-7" in b and "not on a Friday" in b for b in _receipts(config, action))


async def test_an_agent_role_subject_is_refused_and_the_target_is_unchanged(
        provider: Provider, server: tuple[int, Path], browser: Browser) -> None:
    port, config = server
    action, token = await _request(provider, port, config, "eve_col")
    r = browser.sign_in(EVE)
    assert r.status_code == 403 and "Not an approver" in r.text and "oidc:eve-1" in r.text, r.text
    assert "safe_mcp_approver" not in r.headers.get("set-cookie", "")
    assert "Sign in" in browser.page()
    r = browser.decide(action, "approve")
    assert r.status_code == 403 and "Not signed in" in r.text
    ok, _ = await _confirm(port, config, token, action)
    assert not ok and "eve_col" not in _columns(config)
    assert support.ledger_rows(config, "SELECT COUNT(*) FROM approvals WHERE action_id = ?", (action,)) == [(0,)]


async def test_two_approvals_need_two_distinct_subjects(provider: Provider, server: tuple[int, Path]) -> None:
    port, config = server
    action, token = await _request(provider, port, config, "two_col", target="vault")
    base = f"http://127.0.0.1:{port}"
    first, again, other = Browser(base), Browser(base), Browser(base)
    try:
        assert first.sign_in(SAM).status_code == 200
        assert "1 of 2 approvals" in first.decide(action, "approve").text
        # The same person, signed in again in another browser (a new session), is still one approver.
        assert again.sign_in({**SAM, "name": "Sam Again"}).status_code == 200
        r = again.decide(action, "approve")
        assert r.status_code == 403 and "oidc:sam-7 already decided" in r.text, r.text
        ok, _ = await _confirm(port, config, token, action)
        assert not ok and "two_col" not in _columns(config, "vault.db")
        assert other.sign_in(PAT).status_code == 200  # an admin may approve too
        assert f"action {action} is approved" in other.decide(action, "approve").text
    finally:
        for b in (first, again, other):
            b.close()
    ok, text = await _confirm(port, config, token, action)
    assert ok and "two_col" in _columns(config, "vault.db"), text
    assert sorted(str(r[0]) for r in support.ledger_rows(
        config, "SELECT approver FROM approvals WHERE action_id = ?", (action,))) == ["oidc:pat-3", "oidc:sam-7"]


async def test_the_requesting_subject_cannot_approve_its_own_action(provider: Provider, server: tuple[int, Path],
                                                                    browser: Browser) -> None:
    port, config = server
    # pat is an admin: the same subject may call tools as an agent and sign in as an approver.
    action, token = await _request(provider, port, config, "own_col", sub="pat-3", groups=("platform",))
    assert browser.sign_in(PAT).status_code == 200
    r = browser.decide(action, "approve")
    assert r.status_code == 403 and "oidc:pat-3 requested action" in r.text and "cannot approve it" in r.text, r.text
    ok, _ = await _confirm(port, config, token, action)
    assert not ok and "own_col" not in _columns(config)


BAD_SIGN_INS = {
    "wrong nonce": ({"nonce": "not-this-sign-in"}, {}),
    "wrong audience": ({"aud": "another-client"}, {}),
    "wrong issuer": ({"iss": "http://localhost:1"}, {}),
    "expired": ({}, {"ttl": -120}),
    "foreign key": ({}, {"foreign": True}),
}


@pytest.mark.parametrize("case", [*sorted(BAD_SIGN_INS), "state mismatch", "replayed code", "another browser"])
async def test_bad_sign_ins_are_refused_and_decide_nothing(provider: Provider, server: tuple[int, Path],
                                                           browser: Browser, case: str) -> None:
    port, config = server
    column = "bad_" + case.replace(" ", "_")
    action, token = await _request(provider, port, config, column)
    if case in BAD_SIGN_INS:
        claims, kw = BAD_SIGN_INS[case]
        r = browser.sign_in({**SAM, **claims}, **kw)
        assert r.status_code == 403 and "Sign-in refused" in r.text, (case, r.status_code, r.text)
    elif case == "state mismatch":
        callback = browser.start(SAM)
        r = browser.http.get(callback.replace("state=", "state=x"))
        assert r.status_code == 400 and "state mismatch" in r.text, r.text
    elif case == "replayed code":
        callback = browser.start(SAM)
        assert browser.http.get(callback).status_code == 200
        browser.http.cookies.clear()  # the attacker replays the callback URL without the approver's session
        r = browser.http.get(callback)
        assert r.status_code == 400 and "already used" in r.text, r.text
    else:  # the callback URL carried to another browser (login CSRF): it lacks the browser-binding cookie
        callback = browser.start(SAM)
        thief = Browser(browser.base)
        try:
            r = thief.http.get(callback)
        finally:
            thief.close()
        assert r.status_code == 400 and "another browser" in r.text, r.text
        browser.http.cookies.clear()
    assert "safe_mcp_approver" not in r.headers.get("set-cookie", "")
    assert "Sign in" in browser.page()
    assert browser.decide(action, "approve").status_code == 403
    ok, _ = await _confirm(port, config, token, action)
    assert not ok and column not in _columns(config)
    assert support.ledger_rows(config, "SELECT COUNT(*) FROM approvals WHERE action_id = ?", (action,)) == [(0,)]


async def test_a_forged_or_altered_session_cookie_is_not_a_sign_in(provider: Provider, server: tuple[int, Path],
                                                                   browser: Browser) -> None:
    port, config = server
    action, token = await _request(provider, port, config, "forged_col")
    assert browser.sign_in(EVE).status_code == 403
    assert browser.sign_in(SAM).status_code == 200
    real = browser.http.cookies["safe_mcp_approver"]
    blob, mac = real.split(".")
    doc = json.loads(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)))
    for forged in (f"{blob}.{'0' * len(mac)}",
                   base64.urlsafe_b64encode(json.dumps({**doc, "sub": "pat-3"}).encode()).decode().rstrip("=")
                   + "." + mac):
        browser.http.cookies.clear()
        browser.http.cookies.set("safe_mcp_approver", forged, domain="127.0.0.1", path="/approvals")
        assert "Sign in" in browser.page()
        assert browser.decide(action, "approve").status_code == 403
    ok, _ = await _confirm(port, config, token, action)
    assert not ok and "forged_col" not in _columns(config)


async def test_host_origin_and_csrf_still_guard_the_signed_in_page(provider: Provider, server: tuple[int, Path],
                                                                   browser: Browser) -> None:
    port, config = server
    action, token = await _request(provider, port, config, "guard_col")
    assert browser.sign_in(SAM).status_code == 200
    base = browser.base
    assert browser.http.get(base + "/approvals/login", headers={"Host": "evil.example"}).status_code == 403
    assert browser.http.get(base + "/approvals/callback?state=x&code=y",
                            headers={"Host": "evil.example"}).status_code == 403
    form = {"action_id": action, "decision": "approve", "csrf": "wrong"}
    assert browser.http.post(base + "/approvals", headers={"Origin": base}, data=form).status_code == 403
    form["csrf"] = re.search(r'name="csrf" value="([^"]+)"', browser.page()).group(1)  # type: ignore[union-attr]
    assert browser.http.post(base + "/approvals", headers={"Origin": "http://evil.example"}, data=form).status_code \
        == 403
    ok, _ = await _confirm(port, config, token, action)
    assert not ok and "guard_col" not in _columns(config)


async def test_totp_on_top_needs_the_code_of_the_signed_in_subject(provider: Provider, tmp_path: Path) -> None:
    port = support.free_port()
    config = _config(tmp_path, provider.issuer, port, approvals="totp = true")
    env = {**os.environ, **ENV}
    enrol = subprocess.run([sys.executable, "-m", "safe_mcp", "approver", "add", "oidc:sam-7", "--config",
                            str(config)], capture_output=True, text=True, timeout=60, env=env)
    assert enrol.returncode == 0, enrol.stderr
    totp = pyotp.TOTP(re.search(r"secret=([A-Z2-7]+)", enrol.stdout).group(1))  # type: ignore[union-attr]
    with support.serving(config, "http", port=port, env=ENV):
        action, token = await _request(provider, port, config, "totp_col")
        # The code alone (the CLI path) is not enough for a provider subject.
        cli = subprocess.run([sys.executable, "-m", "safe_mcp", "approve", action, "--as", "oidc:sam-7", "--config",
                              str(config)], input=totp.now() + "\n", capture_output=True, text=True, timeout=60,
                             env=env)
        assert cli.returncode != 0 and "sign in on the approval page" in cli.stderr, (cli.stdout, cli.stderr)
        b = Browser(f"http://127.0.0.1:{port}")
        try:
            assert b.sign_in(SAM).status_code == 200
            assert 'name="code"' in b.page()
            r = b.decide(action, "approve", code="000000")
            assert r.status_code == 403 and "wrong or reused code for approver oidc:sam-7" in r.text, r.text
            ok, _ = await _confirm(port, config, token, action)
            assert not ok and "totp_col" not in _columns(config)
            # Signed in as pat, sam's code does not help: the code must be the signed-in subject's.
            other = Browser(b.base)
            try:
                assert other.sign_in(PAT).status_code == 200
                assert other.decide(action, "approve", code=totp.at(time.time() + 30)).status_code == 403
            finally:
                other.close()
            r = b.decide(action, "approve", code=totp.now())
            assert r.status_code == 200 and "is approved" in r.text, r.text
        finally:
            b.close()
        ok, text = await _confirm(port, config, token, action)
        assert ok and "totp_col" in _columns(config), text


@pytest.mark.parametrize(("body", "key"), [
    ('[approvals]\noidc_client_id = "c"\n', "approvals.oidc_issuer"),  # auth = token: no issuer to default to
    ('[server]\nroles = { approver = ["x"] }\n[approvals]\noidc_client_id = "c"\noidc_issuer = "http://example.com"\n',
     "approvals.oidc_issuer"),  # plain http beyond loopback
    ('[approvals]\noidc_client_id = "c"\noidc_issuer = "https://id.example"\n', "server.roles"),
    ('[server]\nroles = { approver = ["x"] }\n[approvals]\noidc_client_id = "c"\noidc_issuer = "https://id.example"\n'
     'oidc_client_secret = "hunter2"\n', "approvals.oidc_client_secret"),
    ('[approvals]\ntotp = false\n', "approvals.totp"),
    ('[approvals]\noidc_client_secret = "env:X"\n', "approvals.oidc_client_secret"),
])
def test_provider_sign_in_config_is_refused_when_incomplete(body: str, key: str) -> None:
    import tomllib

    raw = tomllib.loads(body + '[targets.shop]\nkind = "sqlite"\npath = "shop.db"\n')
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, source="t.toml", base_dir="/tmp")
    assert key in str(exc.value), str(exc.value)
    assert "hunter2" not in str(exc.value)


async def test_a_cli_decides_with_a_bearer_access_token(provider: Provider, server: tuple[int, Path]) -> None:
    import httpx2

    port, config = server
    action, token = await _request(provider, port, config, "bearer_col", target="vault")
    aud = f"http://127.0.0.1:{port}/mcp"
    url = f"http://127.0.0.1:{port}/approvals/decide"
    body = {"action_id": action, "decision": "approve"}
    with httpx2.Client(timeout=20) as http:
        def post(bearer: str | None, **extra: str) -> httpx2.Response:
            headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
            return http.post(url, json={**body, **extra}, headers=headers)

        for bad in (None, "not-a-jwt", provider.token(sub="sam-7", aud=aud, groups=["sre-leads"], ttl=-120),
                    provider.token(sub="sam-7", aud="http://127.0.0.1:1/mcp", groups=["sre-leads"]),
                    provider.token(sub="sam-7", aud=aud, groups=["sre-leads"], iss="http://localhost:1")):
            assert post(bad).status_code == 401
        r = post(provider.token(sub="eve-1", aud=aud, groups=["eng"]))
        assert r.status_code == 403 and "only approver or admin may decide" in r.json()["error"], r.text
        sam = provider.token(sub="sam-7", aud=aud, groups=["sre-leads"], name="Sam Lead")
        assert http.post(url, json=body, headers={"Authorization": f"Bearer {sam}", "Origin": "http://evil.example"}
                         ).status_code == 403
        r = post(sam)
        assert r.status_code == 200 and r.json()["approver"] == "oidc:sam-7" and "1 of 2" in r.json()["message"]
        # The same subject through the page is still the same approver.
        b = Browser(f"http://127.0.0.1:{port}")
        try:
            assert b.sign_in(SAM).status_code == 200
            assert "oidc:sam-7 already decided" in b.decide(action, "approve").text
        finally:
            b.close()
        ok, _ = await _confirm(port, config, token, action)
        assert not ok and "bearer_col" not in _columns(config, "vault.db")
        r = post(provider.token(sub="pat-3", aud=aud, groups=["platform"]))
        assert r.status_code == 200 and "is approved" in r.json()["message"], r.text
    ok, text = await _confirm(port, config, token, action)
    assert ok and "bearer_col" in _columns(config, "vault.db"), text
    assert any("via api" in b and "oidc:pat-3" in b for b in _receipts(config, action))
