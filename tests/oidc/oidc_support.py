"""A real OpenID provider (npm oauth2-mock-server, installed into .tools by scripts/test) for the OIDC tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import support

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / ".tools/node_modules/oauth2-mock-server/dist/index.mjs"


@dataclass
class Provider:
    issuer: str
    proc: subprocess.Popen[str]

    def token(self, *, ttl: int | None = None, **claims: Any) -> str:
        """A signed access token from the provider's own token endpoint, with `claims` in its payload."""
        form = {"grant_type": "client_credentials", "claims": json.dumps(claims)}
        if ttl is not None:
            form["ttl"] = str(ttl)
        req = urllib.request.Request(self.issuer + "/token", data=urllib.parse.urlencode(form).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            token: str = json.load(r)["access_token"]
        return token

    def rotate(self) -> str:
        """Add a signing key; the provider publishes it and signs with its keys in turn. Returns its kid."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("rotate\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        assert line[0] == "rotated", line
        return line[1]


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    node = shutil.which("node")
    support.require(node is not None and PACKAGE.exists(), "oauth2-mock-server is not installed (run scripts/test)")
    assert node is not None
    proc = subprocess.Popen([node, str(Path(__file__).with_name("provider.mjs")), str(PACKAGE)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        issuer = proc.stdout.readline().strip()
        assert issuer.startswith("http://localhost:"), issuer
        yield Provider(issuer, proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


class Browser:
    """An approver's browser on the approval page: follows the sign-in redirects by hand and keeps cookies."""

    def __init__(self, base: str) -> None:
        import httpx2

        self.base = base  # http://127.0.0.1:PORT
        self.http = httpx2.Client(follow_redirects=False, timeout=20)

    def close(self) -> None:
        self.http.close()

    def start(self, claims: dict[str, Any], *, ttl: int | None = None, foreign: bool = False) -> str:
        """Begin a sign-in as `claims` (the provider has no form); return the callback URL the provider sent."""
        r = self.http.get(self.base + "/approvals/login")
        assert r.status_code == 303, (r.status_code, r.text)
        extra = {"claims": json.dumps(claims)}
        if ttl is not None:
            extra["ttl"] = str(ttl)
        if foreign:
            extra["foreign"] = "1"
        r = self.http.get(r.headers["location"] + "&" + urllib.parse.urlencode(extra))
        assert r.status_code in (302, 303), (r.status_code, r.text)
        callback: str = r.headers["location"]
        assert callback.startswith(self.base + "/approvals/callback?"), callback
        return callback

    def sign_in(self, claims: dict[str, Any], **kw: Any) -> Any:
        """A whole sign-in; returns the callback's response."""
        return self.http.get(self.start(claims, **kw))

    def page(self) -> str:
        r = self.http.get(self.base + "/approvals")
        assert r.status_code == 200, r.text
        return str(r.text)

    def decide(self, action_id: str, decision: str, code: str = "", reason: str = "") -> Any:
        import re

        match = re.search(r'name="csrf" value="([^"]+)"', self.page())
        csrf = match.group(1) if match else ""
        return self.http.post(self.base + "/approvals", headers={"Origin": self.base}, data={
            "action_id": action_id, "decision": decision, "code": code, "reason": reason, "csrf": csrf})
