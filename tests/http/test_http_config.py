"""What an http target's config may say: errors name the key and the fix; the org policy's hosts apply."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import write_config

from safe_mcp.errors import ConfigError
from safe_mcp.trust.config import load_config
from safe_mcp.trust.orgpolicy import effective_config

TARGET = """
[targets.api]
kind = "http"
base_url = "{base}"
access = "read-write"
{extra}
"""

OP = """
[[targets.api.operations]]
name = "{name}"
method = "{method}"
path = "{path}"
{extra}
"""


def op(name: str = "op", method: str = "POST", path: str = "/v1/x", extra: str = "") -> str:
    return OP.format(name=name, method=method, path=path, extra=extra)


def load(tmp_path: Path, text: str) -> None:
    load_config(write_config(tmp_path, text))


@pytest.mark.parametrize(("text", "says"), [
    (TARGET.format(base="https://u:p@api.internal", extra="") + op(), "base_url"),
    (TARGET.format(base="https://api.internal/?a=1", extra="") + op(), "base_url"),
    (TARGET.format(base="ftp://api.internal", extra="") + op(), "base_url"),
    (TARGET.format(base="https://api.internal", extra='headers = { Authorization = "Bearer x" }') + op(),
     "secrets may not be written"),
    (TARGET.format(base="https://api.internal", extra='headers = { Host = "env:X" }') + op(), "not a header name"),
    (TARGET.format(base="https://api.internal", extra=""), "nothing else can be called"),
    (TARGET.format(base="https://api.internal", extra="") + op(path="v1/x"), "starting with one /"),
    (TARGET.format(base="https://api.internal", extra="") + op(path="//evil.test/x"), "starting with one /"),
    (TARGET.format(base="https://api.internal", extra="") + op(path="/v1/x?force=1"), "query"),
    (TARGET.format(base="https://api.internal", extra="") + op(path="/v1/{result.id}"), "not available here"),
    (TARGET.format(base="https://api.internal", extra="") + op(method="TRACE"), "method"),
    (TARGET.format(base="https://api.internal", extra="") + op(extra='preview = { method = "POST", path = "/v1/x" }'),
     "preview.method"),
    (TARGET.format(base="https://api.internal", extra="") + op(extra='guard = { method = "GET", path = "/v1/x" }'),
     "guard"),
    (TARGET.format(base="https://api.internal", extra="") + op(extra='idempotency_header = "Authorization"'),
     "header"),
    (TARGET.format(base="https://api.internal", extra="") + op(extra='efect = "write"'), "efect"),
    (TARGET.format(base="https://api.internal", extra="") + op() + op(), "declared twice"),
    (TARGET.format(base="https://api.internal", extra="") + op(method="DELETE", extra='effect = "harmless"'), "effect"),
])
def test_invalid_http_targets_are_refused_naming_the_key(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert says in str(err.value) and "targets.api" in str(err.value)


def test_the_org_policys_hosts_apply_to_base_url(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, TARGET.format(base="https://billing.example.com", extra="") + op())
    pol = tmp_path / "policy.toml"
    pol.write_text('[allow]\nhosts = ["*.internal"]\n')
    with pytest.raises(ConfigError) as err:
        effective_config(cfg, str(pol))
    assert "billing.example.com" in str(err.value)
    pol.write_text('[allow]\nhosts = ["*.example.com"]\n')
    assert effective_config(cfg, str(pol)).targets["api"].kind == "http"


def test_the_issue_example_is_valid(tmp_path: Path) -> None:
    text = """
        [targets.billing]
        kind = "http"
        base_url = "https://billing.internal"
        access = "read-write"
        headers = { Authorization = "env:BILLING_TOKEN" }

        [[targets.billing.operations]]
        name = "refund"
        method = "POST"
        path = "/v1/refunds"
        effect = "write"
        idempotency_header = "Idempotency-Key"
        preview = { method = "GET", path = "/v1/charges/{body.charge}" }
        compensate = { method = "POST", path = "/v1/refunds/{result.id}/cancel" }

        [[targets.billing.operations]]
        name = "delete_volume"
        method = "DELETE"
        path = "/v1/volumes/{id}"
        effect = "irreversible"
        """
    config = load_config(write_config(tmp_path, text))
    described = config.targets["billing"].adapter_cls.describe(config.targets["billing"].settings)
    assert "refund (POST /v1/refunds): write" in described["reaches"]
    assert "delete_volume (DELETE /v1/volumes/{id}): irreversible" in described["reaches"]


def test_credentials_never_travel_in_clear_text_beyond_loopback(tmp_path: Path) -> None:
    plain = TARGET.format(base="http://billing.internal", extra='headers = { Authorization = "env:X" }') + op()
    with pytest.raises(ConfigError) as err:
        load(tmp_path, plain)
    assert "clear text" in str(err.value)
    load(tmp_path, plain.replace('access = "read-write"', 'access = "read-write"\ninsecure_http = true'))
    load(tmp_path, plain.replace("http://billing.internal", "http://127.0.0.1:8080"))
    load(tmp_path, plain.replace("http://billing.internal", "https://billing.internal"))
