"""Fixtures shared by the team-gateway tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import fresh_database


@pytest.fixture
def state_url() -> Iterator[str]:
    """A fresh PostgreSQL database for a state store (removed after the test)."""
    with fresh_database("safe_mcp_team") as url:
        yield url
