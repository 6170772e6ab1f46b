"""Fixtures: the real test APIs on loopback ports, and the secrets their targets reference."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from apis import TOKEN, Hosting, Payments


@pytest.fixture(autouse=True)
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_TOKEN", TOKEN)
    monkeypatch.setenv("HOSTING_TOKEN", TOKEN)
    monkeypatch.delenv("SAFE_MCP_POLICY", raising=False)


@pytest.fixture
def payments() -> Iterator[Payments]:
    with Payments().serving() as api:
        assert isinstance(api, Payments)
        yield api


@pytest.fixture
def hosting() -> Iterator[Hosting]:
    with Hosting().serving() as api:
        assert isinstance(api, Hosting)
        yield api
