"""Nothing outlives a call on a pooled connection; the trash and the journal survive every attack;
reads are bounded in safe-mcp's memory. Each checked on the database (or the process) afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from postgres_support import Pg
from safe_mcp_postgres import PostgresAdapter, PostgresSettings
from support import call, connect, refused

from safe_mcp.adapter import Budget, Call, Classification
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError

FOOLED_WRITE = Classification(effect=Effect.IRREVERSIBLE, reason="pretend the classifier was fooled",
                              detail={"op": "plain"})
FOOLED_READ = Classification(effect=Effect.READ, reason="pretend", detail={"op": "read"})
WIDE = Budget(rows_returned=100, rows_affected=100, allowed_effect=Effect.IRREVERSIBLE)


@pytest.fixture
def one(pg: Pg) -> Iterator[PostgresAdapter]:
    """An adapter whose pool holds exactly one connection, so every call reuses the same session."""
    s = PostgresSettings(dsn=pg.dsn(), pool_min_size=0, pool_max_size=1, statement_timeout_ms=2000)
    a = PostgresAdapter("one", s, {}, base_dir=".", state_dir=".")
    yield a
    a.close()


INSPECT = """SELECT pg_backend_pid(),
  (SELECT count(*) FROM pg_prepared_statements WHERE from_sql),
  (SELECT count(*) FROM pg_cursors WHERE name <> ''),
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
  (SELECT count(*) FROM pg_listening_channels()),
  (SELECT count(*) FROM pg_class WHERE relpersistence = 't'),
  current_setting('statement_timeout'), current_setting('search_path'), current_setting('work_mem'),
  current_user::text, session_user::text"""

POISON = [
    "CREATE TEMP TABLE poison_t (a int)",
    "CREATE TABLE pg_temp.poison_t2 (a int)",
    "CREATE VIEW pg_temp.poison_v AS SELECT 1",
    "CREATE SEQUENCE pg_temp.poison_s",
    "SELECT 1 AS a INTO TEMP poison_t3",
    "PREPARE poison_p AS SELECT 1",
    "DECLARE poison_c CURSOR WITH HOLD FOR SELECT 1",
    "SELECT pg_advisory_lock(4242)",
    "SELECT pg_advisory_lock_shared(4243)",
    "LISTEN poison",
    "SET statement_timeout = 0",
    "SET work_mem = '1GB'",
    "SELECT set_config('search_path', 'pg_temp, public', false)",
    "SET search_path = pg_temp, public",
    "SET ROLE {reader}",
    "SET SESSION AUTHORIZATION {reader}",
]


def inspect(a: PostgresAdapter) -> tuple[Any, ...]:
    out = a.execute(Call(target="one", tool="sql_query", args={"sql": INSPECT}), FOOLED_READ, WIDE)
    return tuple(out.result["rows"][0])


@pytest.mark.parametrize("poison", POISON)
def test_nothing_outlives_a_call_on_a_pooled_connection(pg: Pg, one: PostgresAdapter, poison: str) -> None:
    statement = poison.format(reader=pg.reader)
    # The classifier refuses every one of them ...
    assert one.classify(Call(target="one", tool="sql_execute", args={"sql": statement})).effect is Effect.FORBIDDEN
    # ... and should it be fooled, the session is reset before the connection is used again.
    clean = inspect(one)
    with contextlib.suppress(AdapterError):  # SET ROLE then fails to journal, and is rolled back: fine too
        one.execute(Call(target="one", tool="sql_execute", args={"sql": statement}), FOOLED_WRITE, WIDE)
    after = inspect(one)
    assert after[0] == clean[0], "the check must run on the same pooled session"
    assert after == clean, f"{statement!r} left state behind: {clean} -> {after}"
    assert clean[1:6] == (0, 0, 0, 0, 0) and clean[6] == "2s" and clean[9] == clean[10] == "postgres"
    with pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
        assert conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [clean[0]]).fetchone() == ("idle",)


@pytest.mark.parametrize("poison", POISON)
def test_a_fooled_read_leaves_nothing_either(pg: Pg, one: PostgresAdapter, poison: str) -> None:
    clean = inspect(one)
    with contextlib.suppress(AdapterError):  # a read-only transaction refuses some; either way nothing may remain
        one.execute(Call(target="one", tool="sql_query", args={"sql": poison.format(reader=pg.reader)}),
                    FOOLED_READ, WIDE)
    assert inspect(one) == clean


# ------------------------------------------------------------------ the trash and the journal

TRASH_ATTACKS = [
    "DROP SCHEMA _safe_mcp_trash CASCADE",
    "DROP SCHEMA IF EXISTS _safe_mcp_trash",
    "ALTER SCHEMA _safe_mcp_trash RENAME TO mine",
    "ALTER SCHEMA _safe_mcp_trash OWNER TO {reader}",
    "GRANT ALL ON SCHEMA _safe_mcp_trash TO PUBLIC",
    "REVOKE ALL ON SCHEMA _safe_mcp_trash FROM postgres",
    "GRANT ALL ON ALL TABLES IN SCHEMA _safe_mcp_trash TO PUBLIC",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA _safe_mcp_trash GRANT ALL ON TABLES TO PUBLIC",
    "DROP TABLE _safe_mcp_trash.{trashed}",
    'DROP TABLE "_safe_mcp_trash"."{trashed}"',
    "DROP TABLE U&\"\\005fsafe_mcp_trash\".{trashed}",
    "TRUNCATE _safe_mcp_trash.{trashed}",
    "DELETE FROM _safe_mcp_trash.{trashed}",
    "UPDATE _safe_mcp_trash.{trashed} SET total = 0 WHERE true",
    "INSERT INTO _safe_mcp_trash.{trashed} (id, customer) VALUES (999, 'x')",
    "ALTER TABLE _safe_mcp_trash.{trashed} RENAME TO gone",
    "ALTER TABLE _safe_mcp_trash.{trashed} SET SCHEMA public",
    "ALTER TABLE _safe_mcp_trash.{trashed} DROP COLUMN total",
    "CREATE TABLE _safe_mcp_trash.{original} (id int)",
    "ALTER TABLE items SET SCHEMA _safe_mcp_trash",
    "COMMENT ON SCHEMA _safe_mcp_trash IS 'mine'",
    "SELECT * FROM _safe_mcp_trash.{trashed}",
    "SELECT '_safe_mcp_trash.{trashed}'::regclass",
    "DROP SCHEMA _safe_mcp CASCADE",
    "DELETE FROM _safe_mcp.journal",
    "DROP OWNED BY CURRENT_USER",
    "CREATE SCHEMA _safe_mcp_trash2",
]


def trash_state(pg: Pg) -> list[tuple[Any, ...]]:
    with pg.connect() as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT n.nspname, n.nspowner::regrole::text, coalesce(n.nspacl::text, ''), c.relname, "
            "coalesce(c.relacl::text, ''), (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid), c.relkind "
            "FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid "
            "WHERE n.nspname LIKE '\\_safe\\_mcp%' ORDER BY 1, 4").fetchall()]


@pytest.mark.anyio
async def test_the_trash_and_the_journal_survive_every_attack(pg: Pg, tmp_path: Path) -> None:
    original = f"doomed_{uuid.uuid4().hex[:6]}"
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {original} (id int PRIMARY KEY, customer text, total int); "
                     f"INSERT INTO {original} SELECT g, 'c' || g, g FROM generate_series(1, 7) g")
    async with connect(pg.config(tmp_path), "memory") as client:
        pending = await call(client, "sql_execute", target="su_rw", sql=f"DROP TABLE {original}")
        await anyio.sleep(0.15)
        dropped = await call(client, "confirm", action_id=pending["pending"]["action_id"])
        state = trash_state(pg)
        trashed = next(r[3] for r in state if r[0] == "_safe_mcp_trash" and r[6] == "r" and r[3].startswith(original))
        for attack in TRASH_ATTACKS:
            text = attack.format(trashed=trashed, original=original, reader=pg.reader)
            for tool, target in (("sql_execute", "su_rw"), ("sql_query", "su_ro"), ("sql_execute", "r_rw")):
                r = await client.call_tool(tool, {"target": target, "sql": text})
                assert r.is_error, f"{tool} did not refuse {text!r}: {r.structured_content}"
                assert "forbidden" in r.content[0].text or "refused" in r.content[0].text
            assert trash_state(pg) == state, f"{text!r} changed the trash or the journal"
        with pg.connect() as conn:
            assert conn.execute(f"SELECT count(*) FROM _safe_mcp_trash.{trashed}").fetchone() == (7,)
        await call(client, "undo", receipt_id=dropped["receipt_id"])
        with pg.connect() as conn:
            assert conn.execute(f"SELECT count(*), sum(total) FROM {original}").fetchone() == (7, 28)
            conn.execute(f"DROP TABLE {original}")
        text = await refused(client, "sql_execute", target="su_rw", sql="CREATE TEMP TABLE x (a int)")
        assert "temporary" in text


# ------------------------------------------------------------------ reads bounded in memory

def _peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@pytest.mark.parametrize(("query", "row"), [
    # 200 MB in 500 wide rows, within rows_returned
    ("SELECT g, repeat(md5(g::text), 12500) AS wide FROM generate_series(1, 500) g", 400_000),
    # 200 MB in many narrow rows
    ("SELECT g, repeat('y', 1000) AS narrow FROM generate_series(1, 200000) g", 1_000),
    # small rows first, then huge ones: an estimate from the first rows must not size the next fetch
    ("SELECT g, CASE WHEN g <= 60 THEN 'x' ELSE repeat('z', 2000000) END AS late FROM generate_series(1, 120) g",
     2_000_000),
])
def test_a_huge_result_stays_within_the_byte_cap_in_memory(pg: Pg, one: PostgresAdapter, query: str,
                                                            row: int) -> None:
    """Memory grows with the cap and one row (held by libpq's buffer, its result and Python at once), never
    with the size of the result."""
    cap = 1_000_000
    read = Call(target="one", tool="sql_query", args={"sql": query})
    cls = one.classify(read)
    assert cls.effect is Effect.READ
    budget = Budget(rows_returned=500, rows_affected=0, allowed_effect=Effect.READ, bytes_returned=cap)
    one.execute(read, cls, budget.model_copy(update={"bytes_returned": 1024}))  # warm the pool and the code
    if not _reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable here")
    base = _peak_kb()
    out = one.execute(read, cls, budget)
    grown = (_peak_kb() - base) * 1024
    assert out.result["truncated"] is True
    returned = sum(len(str(v)) for r in out.result["rows"] for v in r)
    assert returned <= cap
    assert grown < cap * 2 + row * 5 + 4_000_000, f"memory grew by {grown} bytes for a {cap}-byte cap"


def test_the_byte_cap_truncates_and_says_so(one: PostgresAdapter) -> None:
    read = Call(target="one", tool="sql_query", args={"sql": "SELECT g, repeat('x', 1000) FROM generate_series(1, 50) g"})
    budget = Budget(rows_returned=500, rows_affected=0, allowed_effect=Effect.READ, bytes_returned=10_240)
    out = one.execute(read, one.classify(read), budget)
    assert out.result["truncated"] is True and 5 <= out.result["row_count"] < 11
    assert "bytes_returned=10240" in out.summary
    small = one.execute(read, one.classify(read), budget.model_copy(update={"bytes_returned": 1_000_000}))
    assert small.result["truncated"] is False and small.result["row_count"] == 50
    budget = budget.model_copy(update={"bytes_returned": 1_000_000})
    capped = one.execute(read, one.classify(read), budget.model_copy(update={"rows_returned": 50}))
    assert capped.result["truncated"] is False and capped.result["row_count"] == 50
    capped = one.execute(read, one.classify(read), budget.model_copy(update={"rows_returned": 49}))
    assert capped.result["truncated"] is True and capped.result["row_count"] == 49


@pytest.mark.parametrize("n", [0, 1, 2, 3, 40, 200])
@pytest.mark.parametrize("limit", [0, 1, 2, 3, 39, 500])
def test_rows_returned_is_exact_at_every_boundary(one: PostgresAdapter, n: int, limit: int) -> None:
    """The first rows come with the cursor's DECLARE, the rest batch by batch: whatever the result size and
    the cap, exactly min(n, cap) rows come back, in order, and `truncated` says whether more existed."""
    read = Call(target="one", tool="sql_query", args={"sql": f"SELECT g FROM generate_series(1, {n}) g ORDER BY g"})
    budget = Budget(rows_returned=limit, rows_affected=0, allowed_effect=Effect.READ, bytes_returned=1_000_000)
    out = one.execute(read, one.classify(read), budget)
    assert [r[0] for r in out.result["rows"]] == list(range(1, min(n, limit) + 1))
    assert out.result["truncated"] is (n > limit)


@pytest.mark.parametrize(("cap", "rows"), [(100, 0), (10_000, 1), (30_000, 2), (60_000, 3)])
def test_the_byte_cap_counts_binary_values_of_the_first_rows(one: PostgresAdapter, cap: int, rows: int) -> None:
    """bytea is measured by its bytes on the wire (hex text: two a byte), in the rows that come with the DECLARE
    as in the later ones."""
    read = Call(target="one", tool="sql_query",
                args={"sql": "SELECT g, decode(repeat('ab', 4000 * g), 'hex') AS b FROM generate_series(1, 3) g "
                             "ORDER BY g"})
    budget = Budget(rows_returned=500, rows_affected=0, allowed_effect=Effect.READ, bytes_returned=cap)
    out = one.execute(read, one.classify(read), budget)
    assert out.result["row_count"] == rows
    assert out.result["truncated"] is (rows < 3)


def test_a_cascade_cannot_reach_the_trash(pg: Pg, one: PostgresAdapter) -> None:
    """A human-approved DROP ... CASCADE of something a trashed table depends on is rolled back."""
    tag = uuid.uuid4().hex[:6]
    with pg.connect() as conn:
        conn.execute(f"CREATE DOMAIN money_{tag} AS numeric(10, 2); "
                     f"CREATE TABLE kept_{tag} (id int PRIMARY KEY, amount money_{tag}); "
                     f"INSERT INTO kept_{tag} VALUES (1, 9.5)")
    drop = Call(target="one", tool="sql_execute", args={"sql": f"DROP TABLE kept_{tag}"})
    out = one.execute(drop, one.classify(drop), WIDE)
    state = trash_state(pg)
    cascade = Call(target="one", tool="sql_execute", args={"sql": f"DROP DOMAIN money_{tag} CASCADE"})
    assert one.classify(cascade).effect is Effect.IRREVERSIBLE
    with pytest.raises(AdapterError) as err:
        one.execute(cascade, one.classify(cascade), WIDE)
    assert "trash" in str(err.value)
    assert trash_state(pg) == state
    one.compensate(out.compensation or {}, WIDE)
    with pg.connect() as conn:
        assert conn.execute(f"SELECT amount::text FROM kept_{tag}").fetchone() == ("9.50",)
        conn.execute(f"DROP TABLE kept_{tag}; DROP DOMAIN money_{tag}")


def test_statements_repeated_across_resets_keep_working(pg: Pg, one: PostgresAdapter) -> None:
    """The session is discarded between calls; nothing on the client may still count on what it held."""
    read = Call(target="one", tool="sql_query", args={"sql": "SELECT id FROM items WHERE id = $1", "params": [1]})
    write = Call(target="one", tool="sql_execute", args={"sql": "UPDATE items SET qty = qty WHERE id = $1",
                                                         "params": [1]})
    for _ in range(12):
        assert [list(r) for r in one.execute(read, one.classify(read), WIDE).result["rows"]] == [[1]]
        one.execute(write, one.classify(write), WIDE)
        with one.engine.connection() as conn:
            assert conn.execute("SELECT $1::int", [7]).fetchone() == (7,)
