"""Benchmark: the gate on SQLite against the raw driver, and start-up against a bare SDK server.

Run: .venv/bin/python bench/bench_sqlite.py [--quick]
Everything is measured in this one run, on this machine; ratios are what to compare.
Targets (issue 2): read overhead < 0.3 ms beyond raw sqlite3; `serve` start-up within 1.15x a bare MCPServer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from safe_mcp.adapter import Call
from safe_mcp.gate.pipeline import Caller
from safe_mcp.gate.runtime import Runtime
from safe_mcp.trust.config import load_config


def per_call(fn: Callable[[], object], n: int) -> float:
    """Median of 5 batches, in milliseconds per call."""
    batches = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter() - t) * 1000 / n)
    return statistics.median(batches)


def setup(d: Path, rows: int) -> Path:
    db = sqlite3.connect(d / "bench.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
    db.executemany("INSERT INTO items (name, qty) VALUES (?, ?)", [(f"item{i}", i) for i in range(rows)])
    db.commit()
    db.close()
    cfg = d / "safe-mcp.toml"
    cfg.write_text(textwrap.dedent("""
        [targets.b]
        kind = "sqlite"
        path = "bench.db"
        access = "read-write"
        [limits]
        rows_affected = 100000
        writes_per_session = 100000000
        writes_per_minute = 100000000
        writes_per_hour = 100000000
        rows_affected_per_hour = 1000000000
        rows_returned = 1000
    """))
    return cfg


async def spawn_to_list(args: list[str]) -> float:
    t = time.perf_counter()
    async with Client(StdioServerParameters(command=sys.executable, args=args)) as c:
        await c.list_tools()
    return (time.perf_counter() - t) * 1000


BARE = textwrap.dedent("""
    from mcp.server import MCPServer
    server = MCPServer("bare")
    @server.tool()
    def ping() -> str:
        return "pong"
    server.run()
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    n = 200 if a.quick else 1000
    d = Path(tempfile.mkdtemp(prefix="safe-mcp-bench-"))
    try:
        cfg = setup(d, 10_000)
        rt = Runtime(load_config(cfg), session="bench")
        caller = Caller(session="bench", client="bench")
        raw = sqlite3.connect(d / "bench.db", isolation_level=None)
        results = []

        q = "SELECT id, name, qty FROM items WHERE id = ?"
        raw_read = per_call(lambda: raw.execute(q, (42,)).fetchall(), n)
        call = Call(target="b", tool="sql_query", args={"sql": q, "params": [42]})
        gate_read = per_call(lambda: rt.gate.run(call, caller), n)
        results.append(("sql_query, 1 row", raw_read, gate_read))

        q100 = "SELECT id, name, qty FROM items WHERE id <= 100"
        raw_read100 = per_call(lambda: raw.execute(q100).fetchall(), n)
        call100 = Call(target="b", tool="sql_query", args={"sql": q100})
        gate_read100 = per_call(lambda: rt.gate.run(call100, caller), n)
        results.append(("sql_query, 100 rows", raw_read100, gate_read100))

        upd = "UPDATE items SET qty = qty + 1 WHERE id <= 100"

        def raw_write() -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute(upd)
            raw.execute("COMMIT")

        wn = max(20, n // 10)
        raw_w = per_call(raw_write, wn)
        wcall = Call(target="b", tool="sql_execute", args={"sql": upd})
        gate_w = per_call(lambda: rt.gate.run(wcall, caller), wn)
        results.append(("UPDATE 100 rows + before-images", raw_w, gate_w))

        raw.close()
        rt.close()

        runs = 3 if a.quick else 7
        bare_file = d / "bare.py"
        bare_file.write_text(BARE)
        bare = statistics.median(anyio.run(spawn_to_list, [str(bare_file)]) for _ in range(runs))
        ours = statistics.median(anyio.run(spawn_to_list, ["-m", "safe_mcp", "serve", "--config", str(cfg)])
                                 for _ in range(runs))

        print(f"{'measure':<34}{'raw (ms)':>10}{'gate (ms)':>11}{'overhead':>11}{'ratio':>8}")
        for name, r, g in results:
            print(f"{name:<34}{r:>10.3f}{g:>11.3f}{g - r:>11.3f}{g / r:>8.2f}")
        print(f"{'stdio spawn -> tools/list':<34}{bare:>10.1f}{ours:>11.1f}{ours - bare:>11.1f}{ours / bare:>8.2f}")
        print(f"\n(raw = sqlite3 / a bare MCPServer with one tool; cpu count {os.cpu_count()}; n={n})")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
