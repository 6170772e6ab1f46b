"""Undo that tells the truth, confirms that re-measure, the journal inside the target, and a database
that is down: each checked against the database's own state, driving the adapter directly."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from postgres_support import Pg
from safe_mcp_postgres import PostgresAdapter, PostgresSettings

from safe_mcp.adapter import Budget, Call
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, Drifted, Escalated, TargetUnavailable


def make(pg: Pg, user: str = "postgres", **settings: object) -> PostgresAdapter:
    s = PostgresSettings(dsn=pg.dsn(user), pool_min_size=0, **settings)  # type: ignore[arg-type]
    return PostgresAdapter("t", s, {}, base_dir=".", state_dir=".")


@pytest.fixture
def a(pg: Pg) -> Iterator[PostgresAdapter]:
    adapter = make(pg)
    yield adapter
    adapter.close()


def budget(effect: Effect = Effect.DESTRUCTIVE, **kw: Any) -> Budget:
    return Budget(rows_returned=100, rows_affected=1000, allowed_effect=effect, **kw)


def sql(text: str, params: list[Any] | None = None) -> Call:
    args: dict[str, Any] = {"sql": text}
    if params is not None:
        args["params"] = params
    return Call(target="t", tool="sql_execute", args=args)


def run(a: PostgresAdapter, call: Call, **kw: Any) -> Any:
    return a.execute(call, a.classify(call), budget(**kw))


def rows(pg: Pg, query: str) -> list[tuple[Any, ...]]:
    with pg.connect() as conn:
        return [tuple(r) for r in conn.execute(query).fetchall()]


@pytest.fixture
def t(pg: Pg) -> Iterator[str]:
    name = f"acc_{uuid.uuid4().hex[:8]}"
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, owner text, balance int)")
        conn.execute(f"INSERT INTO {name} SELECT g, 'o' || g, g * 10 FROM generate_series(1, 20) g")
    yield name
    with pg.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


# ------------------------------------------------------------------ complete before-images

HAZARDS = {
    "rule": "CREATE TABLE {t}_log (id int); CREATE RULE r AS ON UPDATE TO {t} DO ALSO INSERT INTO {t}_log "
            "VALUES (old.id); CREATE RULE d AS ON DELETE TO {t} DO ALSO INSERT INTO {t}_log VALUES (old.id)",
    "inheritance": "CREATE TABLE {t}_kid () INHERITS ({t}); INSERT INTO {t}_kid VALUES (100, 'kid', 1)",
    "trigger": "CREATE TABLE {t}_log (id int); CREATE FUNCTION {t}_f() RETURNS trigger LANGUAGE plpgsql AS "
               "$$BEGIN INSERT INTO {t}_log VALUES (1); RETURN NEW; END$$; CREATE TRIGGER tg BEFORE UPDATE OR DELETE "
               "ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_f()",
    "cascade": "CREATE TABLE {t}_ref (id int PRIMARY KEY, acc int REFERENCES {t} ON DELETE CASCADE ON UPDATE CASCADE); "
               "INSERT INTO {t}_ref VALUES (1, 1)",
}


@pytest.mark.parametrize("hazard", list(HAZARDS))
@pytest.mark.parametrize("write", ["UPDATE {t} SET balance = 0, id = id WHERE id <= 2", "DELETE FROM {t} WHERE id <= 2"])
def test_writes_whose_effects_escape_the_before_images_are_irreversible(pg: Pg, a: PostgresAdapter, t: str,
                                                                       hazard: str, write: str) -> None:
    with pg.connect() as conn:
        conn.execute(HAZARDS[hazard].format(t=t))
    before = rows(pg, f"SELECT * FROM {t} ORDER BY id")
    call = sql(write.format(t=t))
    cls = a.classify(call)
    assert cls.compensable
    with pg.connect() as conn:
        logged = conn.execute(f"SELECT to_regclass('{t}_log') IS NOT NULL").fetchone() == (True,)
    preview = a.preview(call, cls, budget())
    assert preview.effect is Effect.IRREVERSIBLE and "no undo" in preview.notes[0]
    if hazard in ("rule", "trigger"):
        assert preview.affected is None, "code that runs later must not run for a preview"
    if logged:
        assert rows(pg, f"SELECT count(*) FROM {t}_log") == [(0,)]
    with pytest.raises(Escalated) as esc:
        a.execute(call, cls, budget(Effect.DESTRUCTIVE))
    assert esc.value.effect is Effect.IRREVERSIBLE
    assert rows(pg, f"SELECT * FROM {t} ORDER BY id") == before, "nothing may be committed"
    with pg.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {t}_log, {t}_kid, {t}_ref CASCADE; DROP FUNCTION IF EXISTS {t}_f() CASCADE")


def test_partitioned_parent_is_irreversible_and_a_leaf_is_restored_into_itself(pg: Pg, a: PostgresAdapter) -> None:
    p = f"part_{uuid.uuid4().hex[:6]}"
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {p} (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);"
                     f"CREATE TABLE {p}_eu PARTITION OF {p} FOR VALUES IN ('eu');"
                     f"CREATE TABLE {p}_us PARTITION OF {p} FOR VALUES IN ('us');"
                     f"INSERT INTO {p} SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 10) g")
    where = f"SELECT tableoid::regclass::text, * FROM {p} ORDER BY id"
    original = rows(pg, where)
    # A row moved between partitions by the parent is not in any one table's images.
    with pytest.raises(Escalated):
        run(a, sql(f"UPDATE {p} SET region = 'us' WHERE id = 2"))
    assert rows(pg, where) == original
    out = run(a, sql(f"DELETE FROM {p}_eu WHERE id <= 6"))
    assert out.affected == 3 and out.compensation is not None
    assert [r[1] for r in rows(pg, where) if r[0] == f"{p}_eu"] == [8, 10]
    a.compensate(out.compensation, budget())
    assert rows(pg, where) == original, "rows must come back into the partition they came from"
    with pg.connect() as conn:
        conn.execute(f"DROP TABLE {p}")


def test_undo_on_an_inheritance_child_puts_rows_back_in_the_child(pg: Pg, a: PostgresAdapter, t: str) -> None:
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {t}_kid (PRIMARY KEY (id)) INHERITS ({t}); "
                     f"INSERT INTO {t}_kid VALUES (100, 'kid', 1), (101, 'kid', 2)")
    where = f"SELECT tableoid::regclass::text, * FROM {t} ORDER BY id"
    original = rows(pg, where)
    out = run(a, sql(f"DELETE FROM {t}_kid WHERE id = 100"))
    a.compensate(out.compensation, budget())
    assert rows(pg, where) == original
    assert rows(pg, f"SELECT count(*) FROM ONLY {t}") == [(20,)]
    with pg.connect() as conn:
        conn.execute(f"DROP TABLE {t}_kid")


# ------------------------------------------------------------------ undo checks what the write left

def test_undo_of_an_insert_refuses_when_the_row_changed_or_went(pg: Pg, a: PostgresAdapter, t: str) -> None:
    out = run(a, sql(f"INSERT INTO {t} VALUES (500, 'new', 1), (501, 'new', 2)"))
    with pg.connect() as conn:
        conn.execute(f"UPDATE {t} SET balance = 99 WHERE id = 501")
    with pytest.raises(AdapterError) as err:
        a.compensate(out.compensation, budget())
    assert "id=501 was changed" in str(err.value)
    assert rows(pg, f"SELECT id, balance FROM {t} WHERE id >= 500 ORDER BY id") == [(500, 1), (501, 99)]
    with pg.connect() as conn:
        conn.execute(f"DELETE FROM {t} WHERE id = 501")
    with pytest.raises(AdapterError) as err:
        a.compensate(out.compensation, budget())
    assert "id=501 was deleted" in str(err.value)
    assert rows(pg, f"SELECT id FROM {t} WHERE id >= 500") == [(500,)]


def test_undo_of_a_delete_refuses_when_the_key_was_taken(pg: Pg, a: PostgresAdapter, t: str) -> None:
    out = run(a, sql(f"DELETE FROM {t} WHERE id IN (3, 4)"))
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (4, 'someone else', 7)")
    with pytest.raises(AdapterError) as err:
        a.compensate(out.compensation, budget())
    assert "(id)=(4)" in str(err.value)
    assert rows(pg, f"SELECT id, owner FROM {t} WHERE id IN (3, 4)") == [(4, "someone else")]


def test_undo_restores_exactly(pg: Pg, a: PostgresAdapter, t: str) -> None:
    original = rows(pg, f"SELECT * FROM {t} ORDER BY id")
    for write in (f"UPDATE {t} SET balance = balance + 1, owner = NULL WHERE id % 3 = 0",
                  f"DELETE FROM {t} WHERE id > 15", f"INSERT INTO {t} VALUES (77, 'x', 0)",
                  f"UPDATE {t} SET id = id + 1000 WHERE id = 1"):
        out = run(a, sql(write))
        assert rows(pg, f"SELECT * FROM {t} ORDER BY id") != original
        back = a.compensate(out.compensation, budget())
        assert back.affected == out.affected
        assert rows(pg, f"SELECT * FROM {t} ORDER BY id") == original, write


# ------------------------------------------------------------------ confirm re-measures

def test_confirm_refuses_a_bigger_or_other_change_than_previewed(pg: Pg, a: PostgresAdapter, t: str) -> None:
    call = sql(f"DELETE FROM {t} WHERE balance > $1", [150])
    cls = a.classify(call)
    shown = a.preview(call, cls, budget())
    assert shown.affected == 5 and shown.fingerprint
    original = rows(pg, f"SELECT * FROM {t} ORDER BY id")

    with pg.connect() as conn:  # one more row now matches
        conn.execute(f"UPDATE {t} SET balance = 1000 WHERE id = 1")
    with pytest.raises(Drifted) as drift:
        a.execute(call, cls, budget(expect=shown))
    assert drift.value.preview.affected == 6 and "6 rows" in drift.value.reason
    changed = rows(pg, f"SELECT * FROM {t} ORDER BY id")
    assert len(changed) == 20, "nothing may be committed"

    with pg.connect() as conn:  # same count, other rows
        conn.execute(f"UPDATE {t} SET balance = 10 WHERE id = 20")
    with pytest.raises(Drifted) as drift:
        a.execute(call, cls, budget(expect=shown))
    assert drift.value.preview.affected == 5 and "no longer the ones" in drift.value.reason
    assert len(rows(pg, f"SELECT * FROM {t}")) == 20

    with pg.connect() as conn:
        conn.execute(f"UPDATE {t} SET balance = 200 WHERE id = 20; UPDATE {t} SET balance = 10 WHERE id = 1")
    assert rows(pg, f"SELECT * FROM {t} ORDER BY id") == original
    out = a.execute(call, cls, budget(expect=shown))
    assert out.affected == 5 and len(rows(pg, f"SELECT * FROM {t}")) == 15


def test_confirm_of_a_truncate_refuses_when_more_rows_would_go(pg: Pg, a: PostgresAdapter, t: str) -> None:
    call = sql(f"TRUNCATE {t}")
    cls = a.classify(call)
    shown = a.preview(call, cls, budget())
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {t} VALUES (99, 'late', 1)")
    with pytest.raises(Drifted):
        a.execute(call, cls, budget(expect=shown))
    assert rows(pg, f"SELECT count(*) FROM {t}") == [(21,)]


# ------------------------------------------------------------------ the journal inside the target

def test_reconcile_answers_from_the_journal(pg: Pg, a: PostgresAdapter, t: str) -> None:
    original = rows(pg, f"SELECT * FROM {t} ORDER BY id")
    call = sql(f"UPDATE {t} SET balance = 0 WHERE id <= 4")
    intent = f"rcpt_{uuid.uuid4().hex}"
    out = a.execute(call, a.classify(call), budget(intent_id=intent))
    assert a.journals is True
    found = a.reconcile(intent, call)
    assert found.state == "executed" and found.outcome is not None
    assert found.outcome.affected == 4 and found.outcome.compensation == out.compensation
    a.compensate(found.outcome.compensation, budget(intent_id="undo_" + intent))
    assert rows(pg, f"SELECT * FROM {t} ORDER BY id") == original
    undone = a.reconcile("undo_" + intent, call)
    assert undone.state == "executed" and undone.outcome is not None and undone.outcome.affected == 4

    assert a.reconcile(f"rcpt_{uuid.uuid4().hex}", call).state == "not_executed"

    # a write that failed (rolled back) left no journal entry either
    bad = f"rcpt_{uuid.uuid4().hex}"
    with pytest.raises(AdapterError):
        a.execute(sql(f"UPDATE {t} SET id = 1 WHERE id = 2"), a.classify(sql(f"UPDATE {t} SET id = 1 WHERE id = 2")),
                  budget(intent_id=bad))
    assert a.reconcile(bad, call).state == "not_executed"

    # table-level writes journal their compensation too
    drop = sql(f"DROP TABLE {t}")
    intent = f"rcpt_{uuid.uuid4().hex}"
    out = a.execute(drop, a.classify(drop), budget(intent_id=intent))
    found = a.reconcile(intent, drop)
    assert found.state == "executed" and found.outcome is not None
    assert found.outcome.compensation == out.compensation
    a.compensate(found.outcome.compensation, budget())
    assert rows(pg, f"SELECT * FROM {t} ORDER BY id") == original


def test_an_irreversible_write_is_journaled_without_a_compensation(pg: Pg, a: PostgresAdapter) -> None:
    call = sql("UPDATE nokey SET b = b WHERE a = 1")
    intent = f"rcpt_{uuid.uuid4().hex}"
    out = a.execute(call, a.classify(call), budget(Effect.IRREVERSIBLE, intent_id=intent))
    assert out.compensation is None
    found = a.reconcile(intent, call)
    assert found.state == "executed" and found.outcome is not None and found.outcome.compensation is None


def test_agents_cannot_touch_the_journal(pg: Pg, a: PostgresAdapter, t: str) -> None:
    run(a, sql(f"UPDATE {t} SET balance = 1 WHERE id = 1"))
    before = rows(pg, "SELECT intent_id, kind, affected FROM _safe_mcp.journal ORDER BY 1")
    assert before
    for attack in ("DELETE FROM _safe_mcp.journal", "DROP TABLE _safe_mcp.journal", "DROP SCHEMA _safe_mcp CASCADE",
                   "TRUNCATE _safe_mcp.journal", "UPDATE _safe_mcp.journal SET affected = 0 WHERE true",
                   'ALTER TABLE "_safe_mcp"."journal" RENAME TO j2', "ALTER SCHEMA _safe_mcp RENAME TO x",
                   "GRANT ALL ON _safe_mcp.journal TO PUBLIC", "SELECT * FROM _safe_mcp.journal",
                   "INSERT INTO _safe_mcp.journal (intent_id, kind, affected) VALUES ('forged', 'write', 1)",
                   "SELECT * FROM U&\"\\005fsafe_mcp\".journal", "CREATE TABLE _safe_mcp.x (a int)",
                   "ALTER TABLE items SET SCHEMA _safe_mcp", "COMMENT ON TABLE _safe_mcp.journal IS 'x'"):
        cls = a.classify(sql(attack))
        assert cls.effect is Effect.FORBIDDEN, attack
        assert "_safe_mcp" in cls.reason
    assert rows(pg, "SELECT intent_id, kind, affected FROM _safe_mcp.journal ORDER BY 1") == before


# ------------------------------------------------------------------ compensable exactly when undo is recorded

@pytest.mark.parametrize(("statement", "compensable"), [
    ("INSERT INTO items (name) VALUES ('x')", True), ("UPDATE items SET qty = 1 WHERE id = 1", True),
    ("DELETE FROM items", True), ("DROP TABLE items", True), ("TRUNCATE items", True),
    ("CREATE TABLE z (a int)", True), ("CREATE VIEW zv AS SELECT 1", True), ("CREATE INDEX zi ON items (qty)", True),
    ("ALTER TABLE items ADD COLUMN z int", False), ("CREATE SEQUENCE zs", False), ("DROP INDEX items_pkey", False),
    ("TRUNCATE items CASCADE", False), ("MERGE INTO items USING nokey ON items.id = nokey.a WHEN MATCHED THEN DELETE",
                                        False),
    ("INSERT INTO items (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET qty = 0", False),
    ("CREATE INDEX CONCURRENTLY zc ON items (qty)", False), ("SELECT 1", False),
    ("CREATE OR REPLACE VIEW zv AS SELECT 1", False), ("DROP VIEW zv", False),
    ("CREATE TABLE zk () INHERITS (items)", False), ("CREATE TABLE zp PARTITION OF parted FOR VALUES IN (1)", False),
])
def test_compensable_exactly_when_a_compensation_is_recorded(a: PostgresAdapter, statement: str,
                                                             compensable: bool) -> None:
    cls = a.classify(sql(statement))
    assert cls.compensable is compensable, (statement, cls)
    if not compensable:
        assert cls.effect in (Effect.IRREVERSIBLE, Effect.READ, Effect.FORBIDDEN)


# ------------------------------------------------------------------ a database that is down

def test_a_database_that_is_down_is_reported_as_down(pg: Pg) -> None:
    down = PostgresAdapter("down", PostgresSettings(dsn=f"postgresql://postgres@127.0.0.1:1/{pg.db}"), {},
                           base_dir=".", state_dir=".")
    assert down.s.connect_timeout_s == 3
    try:
        for attempt in (lambda: down.execute(Call(target="down", tool="sql_query", args={"sql": "SELECT 1"}),
                                             down.classify(Call(target="down", tool="sql_query",
                                                                args={"sql": "SELECT 1"})), budget()),
                        down.audit):
            started = time.monotonic()
            with pytest.raises(TargetUnavailable) as err:
                attempt()
            assert time.monotonic() - started < 2, "a refused connection is reported at once"
            assert "Cannot reach PostgreSQL at 127.0.0.1:1" in str(err.value)
            assert "no connection became free" not in str(err.value)
            assert "running" in err.value.remedy and "connect_timeout_s" in err.value.remedy
    finally:
        down.close()


def test_a_database_that_goes_down_after_connecting_is_reported_as_down(pg: Pg, a: PostgresAdapter) -> None:
    read = Call(target="t", tool="sql_query", args={"sql": "SELECT 1"})
    a.execute(read, a.classify(read), budget())
    with pg.connect() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'safe-mcp/t' "
                     "AND datname = current_database()")
    with pytest.raises(TargetUnavailable) as err:
        a.execute(read, a.classify(read), budget())
    assert "127.0.0.1:5432" in str(err.value)
    out = a.execute(read, a.classify(read), budget())  # and it recovers once the server is back
    assert [list(r) for r in out.result["rows"]] == [[1]]



@pytest.mark.parametrize("tie", [
    "CREATE VIEW {t}_v AS SELECT * FROM {t}",
    "CREATE TABLE {t}_kid () INHERITS ({t})",
])
def test_a_drop_that_would_leave_things_attached_to_the_trash_is_refused(pg: Pg, a: PostgresAdapter, t: str,
                                                                         tie: str) -> None:
    with pg.connect() as conn:
        conn.execute(tie.format(t=t))
    drop = sql(f"DROP TABLE {t}")
    with pytest.raises(AdapterError) as err:
        run(a, drop)
    assert "tied to" in str(err.value)
    assert rows(pg, f"SELECT count(*) FROM ONLY {t}") == [(20,)]
    assert rows(pg, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    f"WHERE n.nspname = '_safe_mcp_trash' AND c.relname LIKE '{t}%'") == [(0,)]
    with pg.connect() as conn:
        conn.execute(f"DROP VIEW IF EXISTS {t}_v; DROP TABLE IF EXISTS {t}_kid")


def test_a_table_that_would_shadow_another_on_the_search_path_is_not_a_plain_write(pg: Pg, a: PostgresAdapter) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS postgres")  # "$user" comes before public on the search path
    try:
        for statement in ("CREATE TABLE postgres.items (id int)", "CREATE VIEW postgres.items AS SELECT 1 AS id"):
            with pytest.raises(Escalated) as esc:
                run(a, sql(statement), effect=Effect.WRITE)
            assert esc.value.effect is Effect.IRREVERSIBLE and "search path" in esc.value.reason
            assert rows(pg, "SELECT to_regclass('postgres.items') IS NULL") == [(True,)]
        made = run(a, sql("CREATE TABLE postgres.unique_name_x (id int)"), effect=Effect.WRITE)
        a.compensate(made.compensation, budget())
    finally:
        with pg.connect() as conn:
            conn.execute("DROP SCHEMA postgres CASCADE")


def test_the_journal_is_created_by_the_first_write_and_never_by_a_preview(pg: Pg) -> None:
    db = f"safe_mcp_fresh_{uuid.uuid4().hex[:8]}"
    with pg.connect(dbname="test") as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    fresh = PostgresAdapter("f", PostgresSettings(dsn=pg.dsn(db=db), pool_min_size=0), {}, base_dir=".",
                            state_dir=".")
    try:
        with psycopg.connect(pg.dsn(db=db), autocommit=True) as conn:
            conn.execute("CREATE TABLE k (id int PRIMARY KEY, v text); INSERT INTO k VALUES (1, 'a')")
            schemas = "SELECT count(*) FROM pg_namespace WHERE nspname = '_safe_mcp'"
            call = sql("UPDATE k SET v = 'b' WHERE id = 1")
            fresh.preview(call, fresh.classify(call), budget())
            assert conn.execute(schemas).fetchone() == (0,), "a preview must leave nothing behind"
            out = fresh.execute(call, fresh.classify(call), budget(intent_id="i-1"))
            assert conn.execute(schemas).fetchone() == (1,)
            compression = conn.execute("SELECT attcompression FROM pg_attribute WHERE attrelid = "
                                       "'_safe_mcp.journal'::regclass AND attname = 'old'").fetchone()
            assert compression in (("l",), ("",)), compression
            fresh.compensate(out.compensation, budget())
            assert conn.execute("SELECT v FROM k").fetchone() == ("a",)
    finally:
        fresh.close()
        with pg.connect(dbname="test") as admin:
            admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')


def test_undo_works_on_identity_and_generated_columns(pg: Pg, a: PostgresAdapter) -> None:
    name = f"ident_{uuid.uuid4().hex[:6]}"
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {name} (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int, "
                     f"doubled int GENERATED ALWAYS AS (v * 2) STORED); INSERT INTO {name} (v) SELECT generate_series(1, 5)")
    original = rows(pg, f"SELECT * FROM {name} ORDER BY id")
    try:
        for write in (f"UPDATE {name} SET v = v + 10 WHERE id <= 3", f"DELETE FROM {name} WHERE id > 3",
                      f"INSERT INTO {name} (v) VALUES (100)"):
            out = run(a, sql(write))
            a.compensate(out.compensation, budget())
            assert rows(pg, f"SELECT * FROM {name} ORDER BY id") == original, write
    finally:
        with pg.connect() as conn:
            conn.execute(f"DROP TABLE {name}")


def test_concurrent_index_runs_outside_a_transaction_and_reconcile_says_unknown(pg: Pg, a: PostgresAdapter,
                                                                               t: str) -> None:
    make_index = sql(f"CREATE INDEX CONCURRENTLY {t}_owner ON {t} (owner)")
    out = a.execute(make_index, a.classify(make_index), budget(Effect.IRREVERSIBLE, intent_id="i-conc"))
    assert out.compensation is None
    assert rows(pg, f"SELECT to_regclass('{t}_owner') IS NOT NULL") == [(True,)]
    assert a.reconcile("i-conc", make_index).state == "unknown"


def test_the_journal_is_not_listed_as_a_table(a: PostgresAdapter, t: str) -> None:
    run(a, sql(f"UPDATE {t} SET balance = 1 WHERE id = 1"))
    listed = a.execute(Call(target="t", tool="sql_schema", args={}), a.classify(Call(target="t", tool="sql_schema",
                                                                                    args={})), budget())
    names = [x["name"] for x in listed.result["tables"]]
    assert t in names and not any("_safe_mcp" in n for n in names)


def test_reconcile_says_unknown_when_the_role_cannot_read_the_journal(pg: Pg, a: PostgresAdapter, t: str) -> None:
    run(a, sql(f"UPDATE {t} SET balance = 1 WHERE id = 1"))  # the journal exists
    reader = make(pg, pg.reader)
    try:
        found = reader.reconcile("rcpt_whatever", sql(f"UPDATE {t} SET balance = 2 WHERE id = 1"))
        assert found.state == "unknown" and "journal" in found.detail
    finally:
        reader.close()


def test_old_journal_entries_are_pruned_and_their_undo_says_so(pg: Pg, a: PostgresAdapter, t: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from safe_mcp_postgres import journal

    old = run(a, sql(f"UPDATE {t} SET balance = 0 WHERE id = 1"), intent_id="i-old-" + t)
    with pg.connect() as conn:
        conn.execute("UPDATE _safe_mcp.journal SET at = now() - interval '31 days' WHERE intent_id = %s",
                     ["i-old-" + t])
    monkeypatch.setattr(journal, "_PRUNE_ONE_IN", 1)
    run(a, sql(f"UPDATE {t} SET balance = 1 WHERE id = 2"), intent_id="i-new-" + t)
    assert rows(pg, f"SELECT intent_id FROM _safe_mcp.journal WHERE intent_id LIKE 'i-%-{t}'") == [("i-new-" + t,)]
    with pytest.raises(AdapterError) as err:
        a.compensate(old.compensation, budget())
    assert "gone from the journal" in str(err.value)
    assert rows(pg, f"SELECT balance FROM {t} WHERE id = 1") == [(0,)]


def test_a_trigger_inherited_from_a_partitioned_parent_makes_a_leaf_write_irreversible(pg: Pg,
                                                                                      a: PostgresAdapter) -> None:
    p = f"trg_{uuid.uuid4().hex[:6]}"
    with pg.connect() as conn:
        conn.execute(f"CREATE TABLE {p} (id int PRIMARY KEY, v int) PARTITION BY RANGE (id);"
                     f"CREATE TABLE {p}_a PARTITION OF {p} FOR VALUES FROM (0) TO (100);"
                     f"CREATE TABLE {p}_log (n int);"
                     f"CREATE FUNCTION {p}_f() RETURNS trigger LANGUAGE plpgsql AS "
                     f"$$BEGIN INSERT INTO {p}_log VALUES (1); RETURN NULL; END$$;"
                     f"CREATE TRIGGER t AFTER DELETE ON {p} FOR EACH ROW EXECUTE FUNCTION {p}_f();"
                     f"INSERT INTO {p} VALUES (1, 1), (2, 2)")
    try:
        with pytest.raises(Escalated) as esc:
            run(a, sql(f"DELETE FROM {p}_a WHERE id = 1"))
        assert esc.value.effect is Effect.IRREVERSIBLE and "trigger" in esc.value.reason
        assert rows(pg, f"SELECT count(*) FROM {p}") == [(2,)]
        assert rows(pg, f"SELECT count(*) FROM {p}_log") == [(0,)]
    finally:
        with pg.connect() as conn:
            conn.execute(f"DROP TABLE {p}, {p}_log; DROP FUNCTION {p}_f()")


def test_undo_of_a_create_refuses_when_the_new_object_changed(pg: Pg, a: PostgresAdapter) -> None:
    name = f"made_{uuid.uuid4().hex[:6]}"
    made = run(a, sql(f"CREATE TABLE {name} AS SELECT g AS id FROM generate_series(1, 3) g"), effect=Effect.WRITE)
    assert made.affected == 3
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {name} VALUES (4)")
    with pytest.raises(AdapterError) as err:
        a.compensate(made.compensation, budget())
    assert "changed after it was created" in str(err.value)
    assert rows(pg, f"SELECT count(*) FROM {name}") == [(4,)]
    with pg.connect() as conn:
        conn.execute(f"DELETE FROM {name} WHERE id = 4")
    a.compensate(made.compensation, budget())
    assert rows(pg, f"SELECT to_regclass('{name}') IS NULL") == [(True,)]
