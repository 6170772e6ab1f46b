"""Configs and an org-policy-aware client for the http adapter's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mcp import Client

BILLING = """
[targets.billing]
kind = "http"
base_url = "{url}"
access = "read-write"
headers = {{ Authorization = "env:BILLING_TOKEN" }}
timeout_s = {timeout}
retries = {retries}

[[targets.billing.operations]]
name = "refund"
method = "POST"
path = "/v1/refunds"
effect = "write"
idempotency_header = "Idempotency-Key"
preview = {{ method = "GET", path = "/v1/charges/{{body.charge}}" }}
compensate = {{ method = "POST", path = "/v1/refunds/{{result.id}}/cancel" }}
guard = {{ method = "GET", path = "/v1/refunds/{{result.id}}", field = "status" }}

[[targets.billing.operations]]
name = "get_charge"
method = "GET"
path = "/v1/charges/{{id}}"

[[targets.billing.operations]]
name = "echo"
method = "GET"
path = "/v1/echo"

[[targets.billing.operations]]
name = "big"
method = "GET"
path = "/v1/big"

[[targets.billing.operations]]
name = "moved"
method = "GET"
path = "/v1/moved"

[[targets.billing.operations]]
name = "elsewhere"
method = "GET"
path = "/v1/elsewhere"
"""

HOSTING = """
[targets.hosting]
kind = "http"
base_url = "{url}"
access = "read-write"
headers = {{ Authorization = "env:HOSTING_TOKEN" }}

[[targets.hosting.operations]]
name = "list_volumes"
method = "GET"
path = "/v1/volumes"

[[targets.hosting.operations]]
name = "get_volume"
method = "GET"
path = "/v1/volumes/{{id}}"

[[targets.hosting.operations]]
name = "delete_volume"
method = "DELETE"
path = "/v1/volumes/{{id}}"
effect = "irreversible"

[[targets.hosting.operations]]
name = "delete_backup"
method = "DELETE"
path = "/v1/volumes/{{id}}/backups/{{backup}}"

[[targets.hosting.operations]]
name = "create_volume"
method = "POST"
path = "/v1/volumes"
compensate = {{ method = "DELETE", path = "/v1/volumes/{{result.id}}" }}
"""


def billing(url: str, timeout: float = 5, retries: int = 2) -> str:
    return BILLING.format(url=url, timeout=timeout, retries=retries)


def hosting_target(url: str) -> str:
    return HOSTING.format(url=url)


@asynccontextmanager
async def gated(config: Path, policy: Path | None = None) -> AsyncIterator[Client]:
    """An in-memory MCP client on safe-mcp serving `config` clamped by the org policy `policy`."""
    from safe_mcp.faces.server import build_server
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.orgpolicy import effective_config

    async with Client(build_server(Runtime(effective_config(config, str(policy) if policy else None)))) as client:
        yield client
