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
