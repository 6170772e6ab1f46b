"""kill -9 at random moments during idempotent writes, on SQLite (WAL and rollback journal) and PostgreSQL.

A real `safe-mcp serve` over stdio is driven with raw JSON-RPC. Each round sends an idempotent UPDATE and
SIGKILLs the server after a random delay (sometimes before, sometimes during, sometimes after the write),
then starts a new server, which reconciles at start, and retries the same call with the same key, as a
client would. At the end, from the target and the ledger:
- every key's UPDATE took effect exactly once (no doubled effect, none lost);
- every committed write has an `executed` receipt (and so an undo);
- no idempotency key is left running or unknown;
- `safe-mcp undo --run` restores the starting rows exactly, and the receipt chain verifies.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import RawStdio, fresh_database, ledger_rows, write_config

KILLS = int(os.environ.get("SAFE_MCP_KILLS", "20"))
ROWS = 5


@dataclass
class Engine:
    name: str
    config: Path
    counts: Callable[[], list[int]]


def _sqlite(tmp_path: Path, journal_mode: str) -> Engine:
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as c:
        c.execute(f"PRAGMA journal_mode={journal_mode}")
        c.execute("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        c.executemany("INSERT INTO counters VALUES (?, 0)", [(i,) for i in range(1, ROWS + 1)])

    def counts() -> list[int]:
        with sqlite3.connect(db) as c:
            return [int(n) for (n,) in c.execute("SELECT n FROM counters ORDER BY id")]

    cfg = write_config(tmp_path, f'[targets.t]\nkind = "sqlite"\npath = "{db}"\naccess = "read-write"\n' + LIMITS)
    return Engine(f"sqlite-{journal_mode}", cfg, counts)


LIMITS = """
[limits]
writes_per_session = 100000
writes_per_minute = 100000
writes_per_hour = 100000
rows_affected_per_hour = 1000000
[breaker]
refusals = 1000
failures = 1000
"""


@pytest.fixture
def pg_db() -> Iterator[str]:
    with fresh_database("safe_mcp_k9") as url:
        yield url


def _postgres(tmp_path: Path, dsn: str) -> Engine:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        c.execute(f"INSERT INTO counters SELECT g, 0 FROM generate_series(1, {ROWS}) g")

    def counts() -> list[int]:
        with psycopg.connect(dsn) as c:
            return [int(r[0]) for r in c.execute("SELECT n FROM counters ORDER BY id")]

    cfg = write_config(tmp_path, f'[targets.t]\nkind = "postgres"\ndsn = "{dsn}"\naccess = "read-write"\n'
                                 f"pool_min_size = 0\n" + LIMITS)
    return Engine("postgres", cfg, counts)


def _play(engine: Engine, tmp_path: Path) -> dict[str, int]:
    rng = random.Random(int(os.environ.get("SAFE_MCP_KILL_SEED", "9")))
    expected = [0] * ROWS
    kills = calls = 0
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115 - kept open across many servers
    server = RawStdio(engine.config, log)
    try:
        i = 0
        while kills < KILLS:
            i += 1
            row = i % ROWS + 1
            args = {"target": "t", "sql": f"UPDATE counters SET n = n + 1 WHERE id = {row}",
                    "idempotency_key": f"k{i}", "run_id": "crashrun"}
            rid = server.start("tools/call", {"name": "sql_execute", "arguments": args})
            calls += 1
            if rng.random() < 0.7:
                time.sleep(rng.uniform(0, 0.08))
                server.kill()
                kills += 1
                server = RawStdio(engine.config, log)
                rid = server.start("tools/call", {"name": "sql_execute", "arguments": args})  # the client's retry
            reply = server.wait(rid)
            result = reply.get("result", {})
            assert not result.get("isError"), f"round {i}: {result}"
            assert result["structuredContent"]["status"] in ("ok", "duplicate"), result
            expected[row - 1] += 1
    finally:
        server.close()
        log.close()
    assert engine.counts() == expected, "every key took effect exactly once"
    return {"kills": kills, "calls": calls, "writes": sum(expected)}


def _ledger(config: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "safe_mcp", "receipts", "export", "--config", str(config)],
                         capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def _check(engine: Engine, tmp_path: Path, figures: dict[str, int]) -> None:
    receipts = _ledger(engine.config)
    executed = {r["args"]["idempotency_key"] for r in receipts
                if r["tool"] == "sql_execute" and r["outcome"] == "executed"}
    assert len(executed) == figures["writes"], "every committed write has its executed receipt"
    stuck = ledger_rows(engine.config, "SELECT key, state FROM idempotency WHERE state != 'done'")
    open_intents = ledger_rows(engine.config, "SELECT id FROM intents")
    assert stuck == [] and open_intents == [], (stuck, open_intents)
    undo = subprocess.run([sys.executable, "-m", "safe_mcp", "undo", "--run", "crashrun", "--config", str(engine.config)],
                          capture_output=True, text=True, timeout=300)
    assert undo.returncode == 0, undo.stdout[-2000:] + undo.stderr[-2000:]
    assert engine.counts() == [0] * ROWS, "undo of the whole run restores the starting rows exactly"
    verify = subprocess.run([sys.executable, "-m", "safe_mcp", "receipts", "verify", "--config", str(engine.config)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout
    committed = sum(1 for r in receipts if "reconciled after a crash" in r.get("reason", "") and r["outcome"] == "executed")
    rolled = sum(1 for r in receipts if r["outcome"] == "not_executed")
    print(f"\n{engine.name}: {figures['kills']} kills over {figures['calls']} calls; settled from the target's journal: "
          f"{committed} committed (executed, with undo), {rolled} not committed (key released); 0 stuck keys; 0 doubled")


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_kill9_during_idempotent_writes_on_sqlite(tmp_path: Path, journal_mode: str) -> None:
    engine = _sqlite(tmp_path, journal_mode)
    _check(engine, tmp_path, _play(engine, tmp_path))


def test_kill9_during_idempotent_writes_on_postgres(tmp_path: Path, pg_db: str) -> None:
    engine = _postgres(tmp_path, pg_db)
    _check(engine, tmp_path, _play(engine, tmp_path))
