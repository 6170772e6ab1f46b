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
    breaches = _contract_breaches(session)
    if breaches and reporter is not None:
        reporter.write_line("safe-mcp: adapters broke the effect contract (a compensable write recorded no "
                            "compensation); failing the run:", red=True)
        for line in breaches[:20]:
            reporter.write_line(f"  {line}", red=True)
        session.exitstatus = 1


# Targets named like this breach the contract on purpose (the test of the breach receipt itself).
BREACH_ON_PURPOSE = "breach_probe"


def _contract_breaches(session: pytest.Session) -> list[str]:
    """A meta-test over every adapter and every test: any ledger the suite wrote (in this process or in
    servers it started) that holds a contract-breach receipt fails the run."""
    import json
    import sqlite3

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return []
    try:
        base = factory.getbasetemp()
    except (OSError, ValueError):
        return []
    found = []
    for db_path in base.rglob("state.db"):
        try:
            with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
                rows = db.execute("SELECT body FROM receipts WHERE body LIKE '%contract breach%'").fetchall()
        except sqlite3.Error:
            continue
        for (body,) in rows:
            r = json.loads(body)
            if r.get("target") != BREACH_ON_PURPOSE and str(r.get("reason", "")).startswith("contract breach"):
                found.append(f"{db_path.parent.parent.name}: {r['target']} {r['tool']} {r['args']}: {r['reason'][:160]}")
    return found
