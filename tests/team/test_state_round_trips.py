"""The gate's conversations with its state store (STYLE: one per step): a write costs a bounded number of
round trips on a PostgreSQL state, and the budgets it is admitted under hold when two instances share
the store and race for the last write of a budget."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from state_counting import CountingPostgresDb, CountingSqliteDb
from support import write_config

from safe_mcp.adapter import Call
from safe_mcp.errors import Refused
from safe_mcp.faces.demo import create_shop
from safe_mcp.gate.calls import Caller
from safe_mcp.gate.pipeline import Gate
from safe_mcp.gate.runtime import Runtime
from safe_mcp.state.store import StateStore
from safe_mcp.trust.config import load_config
from safe_mcp.trust.secrets import Scrubber

INCREMENT = "UPDATE orders SET quantity = quantity + 1 WHERE id = 1"


def shop_config(tmp_path: Path, state: str, limits: str = "") -> Path:
    if not (tmp_path / "shop.db").exists():
        create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, f"""
[targets.admin]
kind = "sqlite"
path = "shop.db"
access = "read-write"

[state]
{state}

[limits]
{limits}
""")


def quantity(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "shop.db") as db:
        return int(db.execute("SELECT quantity FROM orders WHERE id = 1").fetchone()[0])


def write(call_sql: str = INCREMENT, **args: Any) -> Call:
    return Call(target="admin", tool="sql_execute", args={"sql": call_sql, **args})


# --- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "conversations", "round_trips"), [
    ({}, 2, 3),                                  # admitted with its intent (2 round trips), settled (1)
    ({"idempotency_key": "k-{i}"}, 3, 4),        # and the claim of its key (1)
], ids=["plain", "idempotency_key"])
def test_a_write_on_postgresql_state_costs_at_most_three_round_trips(
        tmp_path: Path, state_url: str, args: dict[str, str], conversations: int, round_trips: int) -> None:
    config = load_config(shop_config(tmp_path, 'path = "state"\n'))
    db = CountingPostgresDb(state_url, schema="rt")
    store = StateStore(db=db)
    gate = Gate(config, store, Scrubber(()))
    me = Caller(session="s", client="rt")
    try:
        before = quantity(tmp_path)
        gate.run(write(**{k: v.format(i=0) for k, v in args.items()}), me)  # the adapter connects on first use
        for i in range(1, 4):
            c0, r0 = db.conversations, db.round_trips
            result = gate.run(write(**{k: v.format(i=i) for k, v in args.items()}), me)
            assert result.status == "ok" and result.affected == 1, result
            assert db.conversations - c0 <= conversations
            assert db.round_trips - r0 <= round_trips, "a write on PostgreSQL state costs more round trips again"
        assert quantity(tmp_path) == before + 4
        assert store.verify().ok and store.open_intents() == []
        assert [r.outcome for r in store.receipts(2)] == ["intent", "executed"]
    finally:
        store.close()


def test_a_write_on_sqlite_state_costs_two_conversations(tmp_path: Path) -> None:
    config = load_config(shop_config(tmp_path, 'path = "state"\n'))
    (tmp_path / "state").mkdir(mode=0o700)
    db = CountingSqliteDb(tmp_path / "state" / "state.db")
    store = StateStore(db=db)
    gate = Gate(config, store, Scrubber(()))
    me = Caller(session="s", client="rt")
    try:
        gate.run(write(), me)
        c0 = db.conversations
        statements: list[str] = []
        db._db.set_trace_callback(statements.append)  # the real sqlite3 connection under the store
        assert gate.run(write(), me).status == "ok"
        db._db.set_trace_callback(None)
        assert db.conversations - c0 <= 2
        # Each budget counter is one row of a single upsert, not a statement per scope and bucket (was 26).
        assert len(statements) <= 16, statements
        assert sum(s.startswith("INSERT INTO counters") for s in statements) == 2
        assert store.verify().ok
    finally:
        store.close()


# --- two instances racing for the last write of a budget ---------------------------------------

def _state(kind: str, url: str) -> str:
    return f'url = "{url}"\n' if kind == "postgres" else 'path = "state"\n'


@pytest.mark.parametrize("budget", ["writes_per_minute", "writes_per_hour"])
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_two_instances_on_one_state_cannot_both_take_the_last_write_of_a_budget(
        tmp_path: Path, state_url: str, kind: str, budget: str) -> None:
    cfg = shop_config(tmp_path, _state(kind, state_url), f"{budget} = 1\n")
    one, two = Runtime(load_config(cfg), session="one"), Runtime(load_config(cfg), session="two")
    alice = [Caller(session="one", client="a", principal="alice"), Caller(session="two", client="b", principal="alice")]
    try:
        for rt, me in zip((one, two), alice, strict=True):  # each adapter connects before the race
            rt.gate.run(Call(target="admin", tool="sql_query", args={"sql": "SELECT 1"}), me)
        before = quantity(tmp_path)
        # The target is held busy, so the first write is admitted and waits inside its execution: the
        # moment the second instance is asked, the first has not finished.
        holder = sqlite3.connect(tmp_path / "shop.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        outcomes: dict[str, object] = {}

        def attempt(name: str, gate: Gate, me: Caller) -> None:
            try:
                outcomes[name] = gate.run(write(), me).status
            except Refused as exc:
                outcomes[name] = exc

        first = threading.Thread(target=attempt, args=("one", one.gate, alice[0]))
        first.start()
        deadline = time.monotonic() + 10
        while not one.store.open_intents() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert one.store.open_intents(), "the first write never started"
        second = threading.Thread(target=attempt, args=("two", two.gate, alice[1]))
        second.start()
        second.join(1.5)
        holder.execute("ROLLBACK")
        holder.close()
        first.join(10)
        second.join(10)

        assert outcomes["one"] == "ok", outcomes
        refusal = outcomes["two"]
        assert isinstance(refusal, Refused) and f"budget {budget} (1) is used up" in str(refusal), outcomes
        assert quantity(tmp_path) == before + 1, "both instances ran the write"
        assert one.store.verify().ok and one.store.open_intents() == []
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_a_write_that_did_not_run_gives_its_place_in_the_budget_back(tmp_path: Path, state_url: str, kind: str) -> None:
    cfg = shop_config(tmp_path, _state(kind, state_url), "writes_per_minute = 1\nwrites_per_session = 1\n")
    rt = Runtime(load_config(cfg), session="s")
    me = Caller(session="s", client="c")
    try:
        before = quantity(tmp_path)
        with pytest.raises(Refused, match="failed"):
            rt.gate.run(write("UPDATE orders SET id = 2 WHERE id = 1"), me)  # the primary key refuses it
        assert rt.gate.run(write(), me).status == "ok", "the failed write still held the only write of the budget"
        with pytest.raises(Refused, match="writes_per_session"):
            rt.gate.run(write(), me)
        assert quantity(tmp_path) == before + 1
        assert rt.store.verify().ok and rt.store.open_intents() == []
    finally:
        rt.close()


# --- the chain under concurrent writers --------------------------------------------------------

@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_two_stores_appending_at_once_keep_one_verifiable_chain(tmp_path: Path, state_url: str, kind: str) -> None:
    """Each store builds on the head it last wrote (PostgreSQL) or locks it: interleaved appends from two
    stores and several threads each still make one unbroken chain, with every receipt in it once."""
    def open_store() -> StateStore:
        if kind == "postgres":
            return StateStore(db=CountingPostgresDb(state_url, schema="race"))
        return StateStore(tmp_path / "state")

    stores = [open_store(), open_store()]
    ids: list[str] = []
    lock = threading.Lock()

    def writer(store: StateStore, n: int) -> None:
        for i in range(n):
            receipt = store.append(session="s", client="c", target="t", tool="sql_execute", effect="write",
                                   args={"i": i}, decision="allow", reason="race", outcome="executed", policy_digest="p")
            if i % 7 == 0:
                store.append_later(session="s", client="c", target="t", tool="sql_query", effect="read",
                                   args={}, decision="allow", reason="read", outcome="executed", policy_digest="p")
            with lock:
                ids.append(receipt.id)

    try:
        threads = [threading.Thread(target=writer, args=(store, 30)) for store in stores for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for store in stores:
            store.flush()
        report = stores[0].verify()
        assert report.ok, report
        written = {r[1] for r in stores[1].iter_receipts()}
        assert len(ids) == 120 and set(ids) <= written
        assert report.count == 120 + 2 * 2 * 5  # and the reads, each once
    finally:
        for store in stores:
            store.close()


def test_a_failed_transaction_leaves_no_prepared_statement_half_made(state_url: str) -> None:
    """Statements queued after a failure in a pipeline are skipped, their Parse too: a statement due to be
    prepared there must not be taken for prepared afterwards ("prepared statement does not exist")."""
    from safe_mcp.errors import StateError
    from safe_mcp.state.db import PostgresDb

    db = PostgresDb(state_url, schema="prepared_probe")
    try:
        with db.transaction() as tx:
            tx.execute("CREATE TABLE IF NOT EXISTS t (n integer)")
        for round_ in range(8):  # past psycopg's prepare threshold (5) for every statement below
            with pytest.raises(StateError), db.transaction() as tx:
                tx.execute("SELECT 1 / ?", (0,))  # fails: everything queued after it is skipped
                tx.execute("INSERT INTO t VALUES (?)", (round_,))
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (?)", (100 + round_,))
        assert db.query("SELECT n FROM t ORDER BY n") == [(100 + i,) for i in range(8)]
    finally:
        db.close()
