"""Every bypass class of THREATS.md, as a superuser and as a restricted role, through a real MCP client.

Each statement must be refused by sql_query on a read-only target and must not run through
sql_execute on a read-write target (refused, or held as a pending action). Afterwards the
database, the files, the sessions, the locks and the notification channel are checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from postgres_support import Pg
from support import connect

pytestmark = pytest.mark.anyio

M = "{marker}"
CORPUS: dict[str, list[str]] = {
    "1-escape-transaction": [
        "COMMIT; DROP TABLE items",
        "ROLLBACK; DELETE FROM items",
        "END; DELETE FROM items",
        "ABORT; DELETE FROM items",
        "SET TRANSACTION READ WRITE; DELETE FROM items",
        "SELECT 1; DROP TABLE items",
        "/* harmless */ COMMIT; DROP TABLE items",
        "-- a comment\nCOMMIT; DELETE FROM items",
        "SELECT 1 /* ; */; DELETE FROM items",
        "COMMIT",
        "BEGIN READ WRITE",
        "START TRANSACTION READ WRITE",
        "SAVEPOINT s1",
        "SET default_transaction_read_only = off",
    ],
    "2-hidden-writes": [
        "WITH d AS (DELETE FROM items RETURNING *) SELECT count(*) FROM d",
        "WITH u AS (UPDATE items SET qty = 0 RETURNING 1) SELECT 1",
        "WITH i AS (INSERT INTO items (name) VALUES ('x') RETURNING id) SELECT * FROM i",
        "WITH a AS (SELECT 1), d AS (DELETE FROM nokey RETURNING 1) SELECT * FROM a",
        "SELECT * INTO pwned FROM items",
        "SELECT 1 AS a UNION SELECT 2 INTO pwned2",
        "CREATE TABLE pwned AS SELECT * FROM items",
        "SELECT * FROM items FOR UPDATE",
        "SELECT * FROM items FOR SHARE SKIP LOCKED",
        "SELECT * FROM (SELECT * FROM items FOR NO KEY UPDATE) s",
        "EXPLAIN ANALYZE DELETE FROM items",
        "EXPLAIN (ANALYZE, FORMAT JSON) UPDATE items SET qty = 0",
        "EXPLAIN ANALYZE SELECT * INTO pwned FROM items",
        "SELECT nextval('items_id_seq')",
        "SELECT setval('items_id_seq', 1000)",
        "SELECT (SELECT setval('items_id_seq', 99))",
        "VALUES (nextval('items_id_seq'))",
        "SELECT * FROM items WHERE id IN (SELECT nextval('items_id_seq'))",
        "SELECT evil()",
        "SELECT public.evil()",
        "DO $$ BEGIN DELETE FROM items; END $$",
        "CALL evil_proc()",
        "PREPARE p AS DELETE FROM items",
        "EXECUTE p",
        "DEALLOCATE ALL",
        "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM items",
        "CREATE TABLE t_default (a int DEFAULT nextval('items_id_seq'))",
        "CREATE TABLE t_default2 (a text DEFAULT pg_read_file('/etc/hostname'))",
        "CREATE TEMP TABLE tmp_x (a int)",
        "INSERT INTO items (name) VALUES ('x') ON CONFLICT (id) DO UPDATE SET qty = 0",
        "MERGE INTO items USING nokey ON items.id = nokey.a WHEN MATCHED THEN DELETE",
    ],
    "3-side-effects": [
        f"COPY items TO PROGRAM 'touch {M}'",
        f"COPY items TO '{M}'",
        "COPY items FROM '/etc/hostname'",
        "COPY (SELECT 1) TO STDOUT",
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT pg_read_binary_file('/etc/hostname')",
        "SELECT * FROM pg_ls_dir('.')",
        "SELECT pg_stat_file('postgresql.conf')",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'",
        "SELECT lo_import('/etc/hostname')",
        f"SELECT lo_export(1, '{M}')",
        "SELECT lo_unlink(1)",
        "SELECT lo_create(0)",
        "SELECT dblink_exec('dbname=test', 'CREATE TABLE pwned ()')",
        "SELECT * FROM dblink('dbname=test', 'SELECT 1') AS t(a int)",
        "SELECT pg_create_logical_replication_slot('pwn', 'test_decoding')",
        "SELECT pg_create_physical_replication_slot('pwn')",
        "SELECT pg_advisory_lock(42)",
        "SELECT pg_try_advisory_lock(42)",
        "SELECT pg_advisory_xact_lock(42)",
        "SELECT pg_advisory_lock_shared(42)",
        "SELECT pg_reload_conf()",
        "SELECT pg_rotate_logfile()",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SELECT set_config('statement_timeout', '0', false)",
        "NOTIFY pwn, 'x'",
        "SELECT pg_notify('pwn', 'x')",
        "LISTEN pwn",
        "LOCK TABLE items IN ACCESS EXCLUSIVE MODE",
        "SELECT cron.schedule('* * * * *', 'DELETE FROM items')",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SET LOCAL role TO postgres",
        "RESET ROLE",
        "RESET ALL",
        "SET statement_timeout = 0",
        "ALTER SYSTEM SET log_statement = 'all'",
        "SELECT pg_sleep(10)",
        "SELECT pg_switch_wal()",
        "CHECKPOINT",
        "VACUUM items",
        "LOAD 'plpgsql'",
        "CREATE EXTENSION IF NOT EXISTS dblink",
        "GRANT ALL ON items TO PUBLIC",
        "ALTER ROLE CURRENT_USER SUPERUSER",
        "CREATE ROLE pwned SUPERUSER",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "DISCARD ALL",
        "SELECT txid_current()",
    ],
    "4-validator-tricks": [
        'SELECT "pg_sleep"(1)',
        "SELECT U&\"\\0070g_read_file\"('/etc/hostname')",
        "SELECT U&\"\\0070g_advisory_lock\"(42)",
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'",
        'SELECT "pg_catalog"."pg_read_file"(\'/etc/hostname\')',
        "SELECT PG_READ_FILE('/etc/hostname')",
        "SELECT \"PG_READ_FILE\"('/etc/hostname')",
        "SELECT * FROM pg_read_file('/etc/hostname')",
        "SELECT * FROM items, LATERAL (SELECT pg_advisory_lock(items.id)) l",
        "SELECT * FROM items CROSS JOIN LATERAL pg_try_advisory_lock(items.id) l",
        "SELECT * FROM ROWS FROM (pg_ls_dir('.'), generate_series(1, 2))",
        "SELECT pg_sleep/**/(1)",
        "SELECT $$;$$; DELETE FROM items",
        "SELECT $tag$ ' $tag$; DELETE FROM items",
        "SELECT '--';\nDROP TABLE items",
        "SELECT E'\\';'; DELETE FROM items",
        "SELECT query_to_xml('DELETE FROM items RETURNING 1', true, true, '')",
        "SELECT table_to_xml('items', true, true, '')",
        "SELECT * FROM items WHERE id = (SELECT pg_advisory_lock(1)::text::int)",
        "WITH x AS (SELECT pg_advisory_lock(1)) SELECT * FROM x",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE pg_try_advisory_lock(n) AND n < 3) "
        "SELECT * FROM r",
        "SELECT 1 UNION SELECT pg_advisory_lock(1)::int",
        "SELECT * FROM items ORDER BY pg_advisory_lock(id)",
        "SELECT count(*) FILTER (WHERE pg_try_advisory_lock(1)) FROM items",
        "SELECT xmlparse(document pg_read_file('/etc/hostname'))",
        "SELECT 1 OPERATOR(public.+) 2",
        "SELECT * FROM items WHERE name = ANY (SELECT pg_ls_dir('.'))",
        "SELECT (pg_read_file('/etc/hostname'))::text",
        "SELECT array_agg(x) FROM (SELECT lo_import('/etc/hostname') x) s",
        "SELEC 1",
        "SELECT * FROM items WHERE",
    ],
}
# Writes that are legitimate through sql_execute on a read-write target (they are only bypasses of reads).
LEGIT_WRITES = {"SELECT * INTO pwned FROM items", "SELECT 1 AS a UNION SELECT 2 INTO pwned2",
                "CREATE TABLE pwned AS SELECT * FROM items"}
CASES = [(cls, i, sql) for cls, stmts in CORPUS.items() for i, sql in enumerate(stmts)]


def snapshot(pg: Pg) -> dict[str, Any]:
    """What a bypass could have changed: catalog, data, sequences, locks, sessions, roles, files."""
    with pg.connect() as conn:
        def q(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(sql).fetchall()]

        return {
            "relations": q("SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                           "ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                           "AND n.nspname NOT LIKE 'pg_%' ORDER BY 1, 2"),
            "items": q("SELECT md5(string_agg(i::text, ',' ORDER BY id)) FROM items i"),
            "nokey": q("SELECT md5(string_agg(n::text, ',' ORDER BY a)) FROM nokey n"),
            "children": q("SELECT count(*) FROM child"),
            "sequence": q("SELECT last_value, is_called FROM items_id_seq"),
            "functions": q("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                           "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"),
            # Only this database: other tests' and other state stores' sessions on the cluster are not this test's trace.
            "advisory": q("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                          "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            "roles": q("SELECT rolname, rolsuper FROM pg_roles WHERE rolname NOT LIKE 'pg_%' "
                       "AND rolname NOT LIKE 'safe_mcp_%' ORDER BY 1"),
            "slots": q("SELECT count(*) FROM pg_replication_slots"),
            "large_objects": q("SELECT count(*) FROM pg_largeobject_metadata"),
            "extensions": q("SELECT extname FROM pg_extension ORDER BY 1"),
            "grants": q("SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = 'PUBLIC' "
                        "AND table_schema = 'public'"),
            "busy_sessions": q("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'safe-mcp/%' "
                               "AND datname = current_database() AND state NOT IN ('idle')"),
            "prepared": q("SELECT count(*) FROM pg_prepared_xacts"),
        }


@pytest.mark.parametrize("role", ["superuser", "restricted"])
@pytest.mark.parametrize("cls", list(CORPUS))
async def test_bypass_is_refused_and_leaves_no_trace(pg: Pg, tmp_path: Path, role: str, cls: str) -> None:
    ro, rw = ("su_ro", "su_rw") if role == "superuser" else ("r_ro", "r_rw")
    config = pg.config(tmp_path)
    with pg.connect(application_name="victim") as victim, pg.connect() as listener:
        listener.execute("LISTEN pwn")
        before = snapshot(pg)
        async with connect(config, "memory") as client:
            for sql in CORPUS[cls]:
                legit = sql in LEGIT_WRITES
                sql = sql.replace(M, pg.marker)
                r = await client.call_tool("sql_query", {"target": ro, "sql": sql})
                assert r.is_error, f"sql_query ran {sql!r}: {r.structured_content}"
                assert "refused" in r.content[0].text
                w = await client.call_tool("sql_execute", {"target": rw, "sql": sql, "dry_run": legit})
                if not w.is_error:
                    assert w.structured_content is not None
                    status = w.structured_content["status"]
                    if legit:
                        assert status == "dry_run", f"sql_execute ran {sql!r}"
                    else:
                        assert status == "pending", f"sql_execute ran {sql!r}"
                        assert w.structured_content["pending"]["confirm_by"] == "human", sql
                after = snapshot(pg)
                assert after == before, f"{sql!r} left a trace"
                assert victim.execute("SELECT 1").fetchone() == (1,), f"{sql!r} terminated the victim session"
                assert list(listener.notifies(timeout=0.01, stop_after=1)) == [], f"{sql!r} delivered a notification"
                assert not os.path.exists(pg.marker), f"{sql!r} wrote a file on the server"
