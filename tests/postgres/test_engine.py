"""The engine enforces whatever the classifier says; the role audit; serve's refusal of writable roles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from postgres_support import Pg
from safe_mcp_postgres import PostgresAdapter, PostgresSettings
from support import free_port, wait_port

from safe_mcp.adapter import Budget, Call, Classification
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError

READ = Classification(effect=Effect.READ, reason="pretend the classifier was fooled", detail={"op": "read"})
BUDGET = Budget(rows_returned=10, rows_affected=10, allowed_effect=Effect.READ)


def adapter(pg: Pg, user: str = "postgres", **settings: object) -> PostgresAdapter:
    s = PostgresSettings(dsn=pg.dsn(user), pool_min_size=0, **settings)  # type: ignore[arg-type]
    return PostgresAdapter("t", s, {}, base_dir=".", state_dir=".")


def count(pg: Pg) -> int:
    with pg.connect() as conn:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("sql", [
    "SELECT 1; DELETE FROM items",
    "COMMIT; DELETE FROM items",
    "DELETE FROM items",
    "WITH d AS (DELETE FROM items RETURNING 1) SELECT * FROM d",
    "SELECT * INTO pwned FROM items",
])
def test_fooled_classifier_still_cannot_write(pg: Pg, sql: str) -> None:
    a = adapter(pg)
    try:
        before = count(pg)
        with pytest.raises(AdapterError) as err:
            a.execute(Call(target="t", tool="sql_query", args={"sql": sql}), READ, BUDGET)
        assert "multiple commands" in str(err.value) or "READ ONLY" in str(err.value) or "read-only" in str(err.value)
        assert count(pg) == before
    finally:
        a.close()


def test_timeouts_are_enforced_and_explained(pg: Pg) -> None:
    a = adapter(pg, statement_timeout_ms=400, lock_timeout_ms=100)
    try:
        with pytest.raises(AdapterError) as err:
            a.execute(Call(target="t", tool="sql_query", args={"sql": "SELECT pg_sleep(2)"}), READ, BUDGET)
        assert "statement_timeout_ms = 400" in str(err.value) and "[targets.t]" in str(err.value)
        with psycopg.connect(pg.dsn()) as holder:
            holder.execute("LOCK TABLE nokey IN ACCESS EXCLUSIVE MODE")
            write = Classification(effect=Effect.WRITE, reason="w", detail={"op": "update", "schema": None,
                                                                            "name": "nokey"})
            with pytest.raises(AdapterError) as err:
                a.execute(Call(target="t", tool="sql_execute", args={"sql": "UPDATE nokey SET b = b WHERE a = 1"}),
                          write, Budget(rows_returned=10, rows_affected=10, allowed_effect=Effect.IRREVERSIBLE))
            assert "lock_timeout_ms = 100" in str(err.value)
            holder.rollback()
    finally:
        a.close()


def test_audit_reports_what_the_role_could_do(pg: Pg) -> None:
    for user, can_write, needle in ((pg.reader, False, None), (pg.writer, True, "can write to"),
                                    ("postgres", True, "superuser")):
        a = adapter(pg, user)
        try:
            report = a.audit()
        finally:
            a.close()
        assert report["can_write"] is can_write, (user, report)
        if needle:
            assert any(needle in f for f in report["findings"]), report


def _serve(config: Path) -> subprocess.Popen[bytes]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "safe_mcp", "serve", "--config", str(config), "--transport", "http",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.port = port  # type: ignore[attr-defined]
    return proc


def test_serve_refuses_a_network_listener_for_a_writable_read_only_role(pg: Pg, tmp_path: Path) -> None:
    cfg = tmp_path / "writable.toml"
    cfg.write_text(f'[targets.db]\nkind = "postgres"\ndsn = "{pg.dsn(pg.writer)}"\npassword = "env:SAFE_MCP_TEST_PG_'
                   f'PASSWORD"\n[state]\npath = "{tmp_path}/s"\n')
    proc = _serve(cfg)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"allow_writable_role" in err and b"targets.db" in err

    for name, body in (("reader.toml", f'dsn = "{pg.dsn(pg.reader)}"\n'),
                       ("allowed.toml", f'dsn = "{pg.dsn(pg.writer)}"\nallow_writable_role = true\n'
                                        'password = "env:SAFE_MCP_TEST_PG_PASSWORD"\n')):
        ok = tmp_path / name
        ok.write_text(f'[targets.db]\nkind = "postgres"\n{body}[state]\npath = "{tmp_path}/s"\n')
        proc = _serve(ok)
        try:
            wait_port(proc.port, proc)  # type: ignore[attr-defined]
        finally:
            proc.terminate()
            proc.wait(10)
            assert proc.stderr is not None
            proc.stderr.close()
