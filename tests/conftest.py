"""Shared test set-up. Tests that need a service must not skip silently in CI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# In CI (or when asked) a missing service is a failure, never a skip.
REQUIRE_SERVICES = os.environ.get("SAFE_MCP_REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"


# SAFE_MCP_TEST_STATE=postgres runs every state-touching test with its state on the machine's PostgreSQL:
# a database made for this run, one schema per config's state path (SAFE_MCP_STATE_URL, which safe-mcp
# itself honours), dropped at the end.
STATE_ON_POSTGRES = os.environ.get("SAFE_MCP_TEST_STATE") == "postgres"
_STATE_DB: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if not STATE_ON_POSTGRES:
        return
    import uuid

    import psycopg

    name = f"safe_mcp_state_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    _STATE_DB.append(name)
    os.environ["SAFE_MCP_STATE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{name}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not STATE_ON_POSTGRES:
        return
    keep = [i for i in items if i.get_closest_marker("sqlite_state") is None]
    dropped = [i for i in items if i.get_closest_marker("sqlite_state") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _STATE_DB:
        return
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{_STATE_DB[0]}" WITH (FORCE)')
    os.environ.pop("SAFE_MCP_STATE_URL", None)


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
    if _STATE_DB:
        import psycopg

        with psycopg.connect(os.environ["SAFE_MCP_STATE_URL"], autocommit=True) as pg:
            schemas = [r[0] for r in pg.execute("SELECT schema_name FROM information_schema.schemata "
                                                "WHERE schema_name LIKE 's\\_%'").fetchall()]
            for schema in schemas:
                rows = pg.execute(f'SELECT body FROM "{schema}".receipts WHERE body LIKE %s',
                                  ("%contract breach%",)).fetchall()
                for (body,) in rows:
                    r = json.loads(body)
                    if r.get("target") != BREACH_ON_PURPOSE and str(r.get("reason", "")).startswith("contract breach"):
                        found.append(f"{schema}: {r['target']} {r['tool']}: {r['reason'][:160]}")
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
