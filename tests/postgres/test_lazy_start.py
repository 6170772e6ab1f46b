"""Start-up imports only what answering initialize and tools/list needs: a PostgreSQL (and SQLite) target's adapter,
psycopg and pglast are imported on the target's first call. The config is still judged whole at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from postgres_support import SECRET, Pg
from support import call, write_config

pytestmark = pytest.mark.anyio

LAZY = ("psycopg", "psycopg_pool", "pglast", "safe_mcp_postgres.adapter", "safe_mcp_postgres.engine",
        "safe_mcp_sqlite.adapter")


def imported(log: Path) -> set[str]:
    """Modules a `python -X importtime` process has imported so far, from its stderr."""
    names = set()
    for line in log.read_text().splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name)
    return names


def both(pg: Pg, tmp_path: Path, dsn_user: str = "postgres") -> Path:
    import sqlite3

    db = tmp_path / "s.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t VALUES (1, 'one')")
    pw = 'password = "env:SAFE_MCP_TEST_PG_PASSWORD"\n' if dsn_user == pg.writer else ""
    return write_config(tmp_path, f'[targets.s]\nkind = "sqlite"\npath = "{db}"\naccess = "read-write"\n'
                                  f'[targets.p]\nkind = "postgres"\ndsn = "{pg.dsn(dsn_user)}"\naccess = "read-write"\n'
                                  f'{pw}[state]\npath = "{tmp_path / "state"}"\n')


async def test_stdio_answers_tools_list_before_importing_the_adapters_then_the_first_call_imports_them(
        pg: Pg, tmp_path: Path) -> None:
    config = both(pg, tmp_path, pg.writer)
    log = tmp_path / "stderr.log"
    params = StdioServerParameters(command="/bin/sh", args=[
        "-c", f'exec "$0" "$@" 2>"{log}"', sys.executable, "-X", "importtime", "-m", "safe_mcp", "serve",
        "--config", str(config)], env={**os.environ})
    async with Client(params) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"sql_query", "sql_execute", "sql_schema", "targets"} <= tools
        targets = await call(client, "targets")
        assert [t["name"] for t in targets["targets"]] == ["s", "p"]
        before = imported(log)
        assert "safe_mcp.gate.pipeline" in before  # the log is read while the server runs: it sees imports
        # State on PostgreSQL (SAFE_MCP_STATE_URL) needs psycopg for the state store itself, not the adapter's.
        lazy = set(LAZY) - ({"psycopg"} if os.environ.get("SAFE_MCP_STATE_URL") else set())
        assert not before & lazy, sorted(before & lazy)

        got = await call(client, "sql_query", target="p", sql="SELECT name FROM items WHERE id = 1")
        assert got["rows"] == [["item 1"]]
        after_pg = imported(log)
        assert {"psycopg", "pglast", "safe_mcp_postgres.adapter"} <= after_pg
        assert "safe_mcp_sqlite.adapter" not in after_pg  # each kind on its own first use

        got = await call(client, "sql_query", target="s", sql="SELECT v FROM t WHERE id = 1")
        assert got["rows"] == [["one"]]
        assert "safe_mcp_sqlite.adapter" in imported(log)
    assert SECRET not in log.read_text()


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "safe_mcp", "check", "--offline", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env={**os.environ})


BAD = [
    ('dsn = "postgresql://u:hunter2@h/db"', "targets.p.dsn", "this URL contains a password"),
    ('dsn = "postgresql://u@h/db?password=hunter2"', "targets.p.dsn", "this URL contains a password"),
    ('dsn = "host=h password=hunter2"', "targets.p.dsn", "this URL contains a password"),
    ("dsn = \"host=h password='hunter2'\"", "targets.p.dsn", "this URL contains a password"),
    ('dsn = "host=h bogus=1"', "targets.p.dsn", "not a valid PostgreSQL connection string"),
    ('dsn = "postgresql://h/db?bogus=1"', "targets.p.dsn", "not a valid PostgreSQL connection string"),
    ('dsn = "host=\'unterminated"', "targets.p.dsn", "not a valid PostgreSQL connection string"),
    ('dsn = "postgresql://h/db"\npool_max_size = 0', "targets.p.pool_max_size", "0 is out of range"),
    ('dsn = "postgresql://h/db"\npassword = "hunter2"', "targets.p.password", "secrets may not be written"),
    ('dsn = "postgresql://h/db"\nhooks = [{ before = ["DELETE"], run = "nope" }]', "targets.p.hooks", "nope"),
    ('dsn = "postgresql://h/db"\nstatement_timeout = 5', "targets.p.statement_timeout", "statement_timeout_ms"),
    ("dsn = 5", "targets.p.dsn", "expected a string"),
]


@pytest.mark.parametrize(("setting", "key", "says"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_bad_postgres_setting_still_fails_at_start(tmp_path: Path, setting: str, key: str, says: str,
                                                      command: str) -> None:
    config = write_config(tmp_path, f'[targets.p]\nkind = "postgres"\n{setting}\n[state]\npath = "{tmp_path / "s"}"\n')
    if command == "check":
        r = check(config)
    else:  # stdin closed at once: a serve that got past its config would exit 0 at end of input
        r = subprocess.run([sys.executable, "-m", "safe_mcp", "serve", "--config", str(config)], input="",
                           capture_output=True, text=True, timeout=60, env={**os.environ})
    assert r.returncode != 0
    assert key in r.stderr and says in r.stderr, r.stderr
    assert "hunter2" not in r.stdout + r.stderr
