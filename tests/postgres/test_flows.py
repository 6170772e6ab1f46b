"""The foundation flows on PostgreSQL over a real MCP client: read, schema, write, dry run, pending, confirm,
receipts, idempotency, limits, undo (rows, dropped and truncated tables, created tables)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from postgres_support import SECRET, Pg
from support import call, connect, refused

pytestmark = pytest.mark.anyio


@pytest.fixture
def table(pg: Pg) -> Iterator[str]:
    name = f"orders_{uuid.uuid4().hex[:8]}"
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, customer text NOT NULL, total numeric(10,2), "
                     f"note text, seen timestamptz, tags text[], data jsonb, blob bytea)")
        conn.execute(f"INSERT INTO {name} SELECT g, 'c' || g, g * 10.5, CASE WHEN g % 2 = 0 THEN NULL ELSE 'n''' || g "
                     f"END, '2024-01-01'::timestamptz + g * interval '1 day', ARRAY['x', NULL], "
                     f"jsonb_build_object('g', g), decode('00ff', 'hex') FROM generate_series(1, 12) g")
        conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO "{pg.writer}", "{pg.reader}"')
    yield name
    with pg.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def digest(pg: Pg, table: str) -> tuple[int, str]:
    with pg.connect() as conn:
        row = conn.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) "
                           f"FROM {table} t").fetchone()
        assert row is not None
        return int(row[0]), str(row[1])


async def test_read_write_pending_confirm_undo_over_stdio(pg: Pg, tmp_path: Path, table: str) -> None:
    config = pg.config(tmp_path, "[limits]\nrows_returned = 5\nrows_affected = 50\n")
    original = digest(pg, table)
    async with connect(config, "stdio") as client:
        rows = await call(client, "sql_query", target="r_ro", sql=f"SELECT id, total, note FROM {table} WHERE id = $1",
                          params=[3])
        assert rows["rows"] == [[3, "31.50", "n'3"]] and rows["receipt_id"].startswith("rcpt_")
        capped = await call(client, "sql_query", target="r_ro", sql=f"SELECT * FROM {table}")
        assert capped["row_count"] == 5 and capped["truncated"] is True
        schema = await call(client, "sql_schema", target="r_ro", table=table)
        assert [c["name"] for c in schema["tables"][0]["columns"]][:3] == ["id", "customer", "total"]
        assert any("PRIMARY KEY" in c for c in schema["tables"][0]["constraints"])

        text = await refused(client, "sql_execute", target="r_ro", sql=f"DELETE FROM {table} WHERE id = 1")
        assert "read-only" in text

        # a write with its before-image, then undo
        done = await call(client, "sql_execute", target="r_rw", sql=f"UPDATE {table} SET total = 0, note = NULL "
                          "WHERE id <= $1", params=[2])
        assert done["status"] == "ok" and done["affected"] == 2 and done["undo"]
        assert digest(pg, table) != original
        undone = await call(client, "undo", receipt_id=done["receipt_id"])
        assert undone["affected"] == 2
        assert digest(pg, table) == original

        # dry run: exact count and before-images, nothing changed
        dry = await call(client, "sql_execute", target="r_rw", sql=f"DELETE FROM {table} WHERE id > 8", dry_run=True)
        assert dry["status"] == "dry_run" and dry["affected"] == 4
        assert dry["preview"]["sample"][0]["before"]["id"] == 9
        assert digest(pg, table) == original

        # a WHERE-less delete is destructive: pending with the exact preview, then confirm, then undo
        pending = await call(client, "sql_execute", target="r_rw", sql=f"DELETE FROM {table}")
        assert pending["status"] == "pending" and pending["affected"] == 12
        assert len(pending["pending"]["preview"]["sample"]) == 5
        assert digest(pg, table) == original, "a pending action must change nothing"
        await anyio.sleep(0.15)
        confirmed = await call(client, "confirm", action_id=pending["pending"]["action_id"])
        assert confirmed["status"] == "ok" and confirmed["affected"] == 12
        assert digest(pg, table)[0] == 0
        await call(client, "undo", receipt_id=confirmed["receipt_id"])
        assert digest(pg, table) == original

        # a WHERE that matches every row is escalated to destructive by what the engine measured
        every = await call(client, "sql_execute", target="r_rw", sql=f"UPDATE {table} SET note = 'x' WHERE id > 0")
        assert every["status"] == "pending" and every["effect"] == "destructive"
        assert digest(pg, table) == original

        # over rows_affected: rolled back
        (tmp_path / "small").mkdir()
        async with connect(pg.config(tmp_path / "small", "[limits]\nrows_affected = 3\n"), "memory") as small:
            text = await refused(small, "sql_execute", target="r_rw", sql=f"DELETE FROM {table} WHERE id < 6")
            assert "rolled back" in text and "rows_affected" in text
        assert digest(pg, table) == original

        # idempotency: the retry returns the first result and runs nothing
        first = await call(client, "sql_execute", target="r_rw", sql=f"INSERT INTO {table} (id, customer) "
                           "VALUES ($1, $2)", params=[100, "new"], idempotency_key="k-1")
        again = await call(client, "sql_execute", target="r_rw", sql=f"INSERT INTO {table} (id, customer) "
                           "VALUES ($1, $2)", params=[100, "new"], idempotency_key="k-1")
        assert first["status"] == "ok" and again["status"] == "duplicate"
        assert digest(pg, table)[0] == 13
        await call(client, "undo", receipt_id=first["receipt_id"])
        assert digest(pg, table) == original

        # undo refuses to overwrite newer data
        one = await call(client, "sql_execute", target="r_rw", sql=f"UPDATE {table} SET note = 'a' WHERE id = 5")
        await call(client, "sql_execute", target="r_rw", sql=f"UPDATE {table} SET note = 'b' WHERE id = 5")
        text = await refused(client, "undo", receipt_id=one["receipt_id"])
        assert "id=5 was changed after this write" in text
        with pg.connect() as conn:
            assert conn.execute(f"SELECT note FROM {table} WHERE id = 5").fetchone() == ("b",)

        # no key: irreversible, waits for a human
        nokey = await call(client, "sql_execute", target="r_rw", sql="UPDATE nokey SET b = 'z' WHERE a = 1")
        assert nokey["status"] == "pending" and nokey["pending"]["confirm_by"] == "human"
        assert "primary key" in nokey["message"]

        found = await call(client, "receipts", receipt_id=confirmed["receipt_id"])
        assert found["receipts"][0]["outcome"] == "executed"


async def test_drop_truncate_create_are_undoable(pg: Pg, tmp_path: Path, table: str) -> None:
    config = pg.config(tmp_path)
    original = digest(pg, table)
    async with connect(config, "memory") as client:
        pending = await call(client, "sql_execute", target="su_rw", sql=f"DROP TABLE {table}")
        assert pending["status"] == "pending" and pending["affected"] == 12
        await anyio.sleep(0.15)
        dropped = await call(client, "confirm", action_id=pending["pending"]["action_id"])
        text = await refused(client, "sql_query", target="su_ro", sql=f"SELECT * FROM {table}")
        assert "does not exist" in text and "the tables are" in text
        await call(client, "undo", receipt_id=dropped["receipt_id"])
        assert digest(pg, table) == original

        pending = await call(client, "sql_execute", target="su_rw", sql=f"TRUNCATE {table}")
        assert pending["status"] == "pending" and pending["affected"] == 12
        await anyio.sleep(0.15)
        truncated = await call(client, "confirm", action_id=pending["pending"]["action_id"])
        assert digest(pg, table)[0] == 0
        await call(client, "undo", receipt_id=truncated["receipt_id"])
        assert digest(pg, table) == original

        # the restricted role cannot drop (not the owner): refused with the reason, nothing changed
        text = await refused(client, "sql_execute", target="r_rw", sql=f"DROP TABLE {table}")
        assert "must be owner" in text
        assert digest(pg, table) == original
    with pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = '_safe_mcp_trash' AND tablename "
                            "LIKE %s", [table + "%"]).fetchone() == (0,)

    async with connect(config, "memory") as client:
        name = f"made_{uuid.uuid4().hex[:6]}"
        made = await call(client, "sql_execute", target="su_rw", sql=f"CREATE TABLE {name} (id int PRIMARY KEY)")
        assert made["status"] == "ok" and made["undo"]
        await call(client, "undo", receipt_id=made["receipt_id"])
        text = await refused(client, "sql_query", target="su_ro", sql=f"SELECT * FROM {name}")
        assert "does not exist" in text

        text = await refused(client, "sql_execute", target="su_rw", sql=f"DELETE FROM _safe_mcp_trash.{table}")
        assert "trash" in text


async def test_cascading_delete_is_irreversible(pg: Pg, tmp_path: Path) -> None:
    async with connect(pg.config(tmp_path), "memory") as client:
        r = await call(client, "sql_execute", target="su_rw", sql="DELETE FROM parent WHERE id = 1")
        assert r["status"] == "pending" and r["effect"] == "irreversible" and "cascade" in r["message"]
    with pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM child").fetchone() == (2,)


async def test_errors_are_actionable_and_never_leak_secrets(pg: Pg, tmp_path: Path) -> None:
    config = pg.config(tmp_path)
    async with connect(config, "memory") as client:
        text = await refused(client, "sql_query", target="r_ro", sql="SELECT * FROM no_such_table")
        assert "no_such_table" in text and "items" in text
        text = await refused(client, "sql_query", target="r_ro", sql="SELECT no_such_col FROM items")
        assert "sql_schema" in text
        text = await refused(client, "sql_query", target="r_ro", sql="SELEC 1")
        assert "syntax error" in text
        text = await refused(client, "sql_query", target="r_ro", sql="SELECT * FROM items WHERE id = $1",
                             params={"id": 1})
        assert "$1" in text
        ok = await call(client, "sql_query", target="r_ro", sql="SELECT current_user")
        assert ok["rows"] == [[pg.writer]]
        await refused(client, "sql_execute", target="r_rw", sql="INSERT INTO items (id, name) VALUES (1, 'dup')")
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = bad / "safe-mcp.toml"
    cfg.write_text(f'[targets.down]\nkind = "postgres"\ndsn = "postgresql://{pg.writer}@127.0.0.1:1/{pg.db}"\n'
                   f'password = "env:SAFE_MCP_TEST_PG_PASSWORD"\nconnect_timeout_s = 2\n[state]\npath = "{bad}/s"\n')
    async with connect(cfg, "memory") as client:
        text = await refused(client, "sql_query", target="down", sql="SELECT 1")
        assert "Cannot reach PostgreSQL at 127.0.0.1:1" in text and "no connection became free" not in text
        assert SECRET not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the password leaked into {path}"



async def journaled_intents(pg: Pg, tmp_path: Path, table: str) -> dict[str, str]:
    """Run a write and its undo through the gate; the kinds journaled under the two intent receipts."""
    async with connect(pg.config(tmp_path), "memory") as client:
        done = await call(client, "sql_execute", target="r_rw", sql=f"UPDATE {table} SET total = 1 WHERE id = 2")
        await call(client, "undo", receipt_id=done["receipt_id"])
        latest = (await call(client, "receipts", limit=20))["receipts"]
    intents = [r["id"] for r in latest if r["outcome"] == "intent"]
    assert len(intents) == 2, latest
    with pg.connect() as conn:
        return dict(conn.execute("SELECT intent_id, kind FROM _safe_mcp.journal WHERE intent_id = ANY(%s)",
                                 [intents]).fetchall())


async def test_a_write_journals_its_intent_receipt_in_the_target(pg: Pg, tmp_path: Path, table: str) -> None:
    assert "write" in (await journaled_intents(pg, tmp_path, table)).values()


async def test_an_undo_journals_its_intent_receipt_in_the_target(pg: Pg, tmp_path: Path, table: str) -> None:
    assert "undo" in (await journaled_intents(pg, tmp_path, table)).values()


async def test_confirm_of_a_drifted_delete_comes_back_as_a_new_pending_action(pg: Pg, tmp_path: Path,
                                                                               table: str) -> None:
    async with connect(pg.config(tmp_path), "memory") as client:
        pending = await call(client, "sql_execute", target="r_rw", sql=f"DELETE FROM {table}")
        assert pending["status"] == "pending" and pending["affected"] == 12
        with pg.connect() as conn:
            conn.execute(f"INSERT INTO {table} (id, customer) VALUES (99, 'arrived after the preview')")
        await anyio.sleep(0.15)
        again = await call(client, "confirm", action_id=pending["pending"]["action_id"])
        assert again["status"] == "pending" and again["affected"] == 13
        assert digest(pg, table)[0] == 13, "nothing may be deleted beyond what was confirmed"


async def test_reads_are_capped_in_bytes_over_mcp(pg: Pg, tmp_path: Path) -> None:
    config = pg.config(tmp_path, "[limits]\nbytes_returned = 2048\n")
    async with connect(config, "memory") as client:
        wide = await call(client, "sql_query", target="r_ro",
                          sql="SELECT g, repeat('x', 1000) FROM generate_series(1, 10) g")
        assert wide["truncated"] is True and wide["row_count"] == 2
        narrow = await call(client, "sql_query", target="r_ro", sql="SELECT g FROM generate_series(1, 10) g")
        assert narrow["truncated"] is False and narrow["row_count"] == 10
