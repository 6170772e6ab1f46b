"""safe-mcp's PostgreSQL adapter against raw psycopg on the same pool, in the same run.

    .venv/bin/python bench/bench_postgres.py [--dsn postgresql://postgres@127.0.0.1:5432/test]

Creates a scratch database, measures, drops it. Prints medians and ratios:
reads of 1 and 1,000 rows (adapter alone, and the whole gate with its receipts),
an UPDATE of 10,000 rows with before-image capture, and undo of a 10,000-row DELETE.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from safe_mcp_postgres.adapter import PostgresAdapter

from safe_mcp.adapter import Budget, Call
from safe_mcp.effects import Effect
from safe_mcp.gate.pipeline import Caller
from safe_mcp.gate.runtime import Runtime
from safe_mcp.trust.config import Limits, load_config


def median_ms(fn: Callable[[], object], n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--writes", type=int, default=7)
    args = ap.parse_args()
    db = f"safe_mcp_bench_{uuid.uuid4().hex[:8]}"
    base = psycopg.conninfo.conninfo_to_dict(args.dsn)
    dsn = psycopg.conninfo.make_conninfo(**{**base, "dbname": db})
    url = f"postgresql://{base.get('user', 'postgres')}@{base.get('host', '127.0.0.1')}:{base.get('port', 5432)}/{db}"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    tmp = tempfile.TemporaryDirectory()
    rows: list[tuple[str, float, float, str]] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE t (id int PRIMARY KEY, a int, b text, c numeric(12,2), d timestamptz)")
            c.execute("INSERT INTO t SELECT g, g, 'row ' || g, g * 1.5, now() FROM generate_series(1, 11000) g")
            c.execute("VACUUM ANALYZE t")
        cfg = Path(tmp.name, "safe-mcp.toml")
        # Raise every rate budget this version of the core knows, so the benchmark measures work, not refusals.
        budgets = "".join(f"{k} = 10000000\n" for k in Limits.model_fields if k.endswith(("_per_hour", "_per_session")))
        cfg.write_text(f'[targets.db]\nkind = "postgres"\ndsn = "{url}"\naccess = "read-write"\n'
                       f'[limits]\nrows_returned = 1000\nrows_affected = 20000\n{budgets}'
                       f'[state]\npath = "{tmp.name}/state"\n')
        runtime = Runtime(load_config(cfg))
        caller = Caller(session="bench")
        gate = runtime.gate
        gate.run(Call(target="db", tool="sql_query", args={"sql": "SELECT 1"}), caller)
        adapter = gate._adapters["db"]
        assert isinstance(adapter, PostgresAdapter)
        pool = adapter.engine.pool()
        read_budget = Budget(rows_returned=1000, rows_affected=0, allowed_effect=Effect.READ)

        for label, sql, params in (("SELECT 1 row", "SELECT * FROM t WHERE id = $1", [42]),
                                   ("SELECT 1,000 rows", "SELECT * FROM t WHERE id <= $1", [1000])):
            call = Call(target="db", tool="sql_query", args={"sql": sql, "params": params})

            def raw(sql: str = sql, params: list[int] = params) -> None:
                with pool.connection() as conn:
                    conn.execute(sql, params).fetchall()
                    conn.rollback()

            def through_adapter(call: Call = call) -> None:
                adapter.execute(call, adapter.classify(call), read_budget)

            def through_gate(call: Call = call) -> None:
                gate.run(call, caller)

            r = median_ms(raw, args.reads)
            a = median_ms(through_adapter, args.reads)
            g = median_ms(through_gate, args.reads)
            rows.append((f"{label}: classify+adapter", r, a, f"+{a - r:.3f} ms"))
            rows.append((f"{label}: whole gate (receipt)", r, g, f"+{g - r:.3f} ms"))

        upd = "UPDATE t SET a = a + 1 WHERE id <= $1"
        write_budget = Budget(rows_returned=1000, rows_affected=20000, allowed_effect=Effect.WRITE)
        ucall = Call(target="db", tool="sql_execute", args={"sql": upd, "params": [10000]})

        def raw_update() -> None:
            with pool.connection() as conn:
                conn.read_only = False
                assert conn.execute(upd, [10000]).rowcount == 10000
                conn.commit()

        def captured_update() -> None:
            out = adapter.execute(ucall, adapter.classify(ucall), write_budget)
            assert out.affected == 10000

        def gated_update() -> None:
            assert gate.run(ucall, caller).affected == 10000

        r = median_ms(raw_update, args.writes, 1)
        a = median_ms(captured_update, args.writes, 1)
        g = median_ms(gated_update, args.writes, 1)
        rows.append(("UPDATE 10,000 rows: capture (adapter)", r, a, f"x{a / r:.2f}"))
        rows.append(("UPDATE 10,000 rows: whole gate", r, g, f"x{g / r:.2f}"))

        dele = "DELETE FROM t WHERE id <= $1"
        dcall = Call(target="db", tool="sql_execute", args={"sql": dele, "params": [10000]})
        raw_times, cap_times, undo_times = [], [], []
        for _ in range(args.writes):
            with pool.connection() as conn:
                conn.read_only = False
                t0 = time.perf_counter()
                assert conn.execute(dele, [10000]).rowcount == 10000
                conn.commit()
                raw_times.append((time.perf_counter() - t0) * 1000)
                conn.execute("INSERT INTO t SELECT g, g, 'row ' || g, g * 1.5, now() FROM generate_series(1, 10000) g")
                conn.commit()
            t0 = time.perf_counter()
            out = adapter.execute(dcall, adapter.classify(dcall), write_budget)
            cap_times.append((time.perf_counter() - t0) * 1000)
            assert out.compensation is not None and out.affected == 10000
            t0 = time.perf_counter()
            back = adapter.compensate(out.compensation, write_budget)
            undo_times.append((time.perf_counter() - t0) * 1000)
            assert back.affected == 10000
        r = statistics.median(raw_times)
        c = statistics.median(cap_times)
        u = statistics.median(undo_times)
        rows.append(("DELETE 10,000 rows: capture (adapter)", r, c, f"x{c / r:.2f}"))
        rows.append(("undo of that DELETE vs raw DELETE", r, u, f"x{u / r:.2f}"))
        rows.append(("undo of that DELETE vs captured DELETE", c, u, f"x{u / c:.2f}"))
        runtime.close()
    finally:
        tmp.cleanup()
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement'.ljust(width)}  {'raw ms':>9}  {'safe-mcp ms':>11}  overhead")
    for label, raw_ms, ours, ratio in rows:
        print(f"{label.ljust(width)}  {raw_ms:9.3f}  {ours:11.3f}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
