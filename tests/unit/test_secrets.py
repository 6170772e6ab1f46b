"""Secrets are references, resolved at start; their values are scrubbed from everything that leaves."""

from __future__ import annotations

import pytest

from safe_mcp.errors import ConfigError
from safe_mcp.trust.secrets import REDACTED, Scrubber, resolve_ref


def test_env_reference_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFE_MCP_TEST_SECRET", "s3cr3t-value")
    assert resolve_ref("env:SAFE_MCP_TEST_SECRET", source="f", key="k") == "s3cr3t-value"


def test_missing_env_reference_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFE_MCP_NOPE", raising=False)
    with pytest.raises(ConfigError, match="export SAFE_MCP_NOPE"):
        resolve_ref("env:SAFE_MCP_NOPE", source="f", key="targets.db.password")


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="keyring:NAME"):
        resolve_ref("vault:x", source="f", key="k")


def test_scrubber_removes_secrets_anywhere_in_nested_data() -> None:
    scrub = Scrubber(["hunter2-long", "tok"])
    data = {"rows": [["a hunter2-long b", 3]], "hunter2-long": {"x": ("hunter2-long",)}}
    out = scrub(data)
    assert "hunter2-long" not in repr(out)
    assert out["rows"][0][0] == f"a {REDACTED} b" and out["rows"][0][1] == 3
    assert scrub("tok") == "tok", "values shorter than 4 characters are not treated as secrets"


def test_log_scrubber_keeps_uvicorn_access_records_formattable() -> None:
    import logging

    from uvicorn.logging import AccessFormatter

    from safe_mcp.trust.secretstore import ScrubFilter

    fmt = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    f = ScrubFilter(Scrubber(["hunter2-long-secret"]))
    plain = logging.LogRecord("uvicorn.access", logging.INFO, "x", 1, '%s - "%s %s HTTP/%s" %d',
                              ("127.0.0.1:1", "GET", "/sse", "1.1", 200), None)
    assert f.filter(plain) and fmt.format(plain) == '127.0.0.1:1 - "GET /sse HTTP/1.1" 200 OK'
    leaky = logging.LogRecord("uvicorn.access", logging.INFO, "x", 1, '%s - "%s %s HTTP/%s" %d',
                              ("127.0.0.1:1", "GET", "/x?token=hunter2-long-secret", "1.1", 200), None)
    assert f.filter(leaky)
    line = fmt.format(leaky)
    assert "hunter2-long-secret" not in line and REDACTED in line
