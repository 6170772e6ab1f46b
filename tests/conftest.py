"""Shared test set-up. Tests that need a service must not skip silently in CI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# In CI (or when asked) a missing service is a failure, never a skip.
REQUIRE_SERVICES = os.environ.get("SAFE_MCP_REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if REQUIRE_SERVICES and skipped:
        terminalreporter.write_line(
            f"safe-mcp: {len(skipped)} test(s) were skipped while services are required; failing the run", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if REQUIRE_SERVICES and reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = 1
