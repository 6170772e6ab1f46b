"""Every performance target of issue 17, measured side by side in one run and printed as one table.

    scripts/bench [--dsn postgresql://postgres@127.0.0.1:5432/test] [--quick] [--profile]

Raw driver, a bare MCP SDK server doing the same SQL (bench/bare_server.py), the peer (dbhub from npm,
in .tools) where the target names one, and safe-mcp, on the same data in the same run. Times are
medians in milliseconds; what is compared is the ratio (or the difference, where the target is one).
Creates its own SQLite files and PostgreSQL databases and removes them at the end.
--profile prints cProfile's top entries for the in-process safe-mcp side of every MISS.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import os
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psycopg
from mcp import Client, StdioServerParameters

from safe_mcp.adapter import Call
from safe_mcp.gate.pipeline import Caller
from safe_mcp.gate.runtime import Runtime
from safe_mcp.trust.config import Limits, load_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DBHUB = ROOT / ".tools" / "node_modules" / ".bin" / "dbhub"
ROWS = 20_000
BIG = 10_000
UPD1 = "UPDATE items SET qty = qty + 1 WHERE id = 7"
UPD_BIG = f"UPDATE items SET qty = qty + 1 WHERE id <= {BIG}"
DEL_BIG = f"DELETE FROM items WHERE id <= {BIG}"
READ1 = "SELECT id, name, qty FROM items WHERE id = 42"


@dataclass
class Row:
    name: str
    raw: float | None = None
    bare: float | None = None
    peer: float | None = None
    ours: float | None = None
    measure: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return ms(t0)


def paired(fns: list[Callable[[], object]], n: int, warmup: int = 3) -> list[float]:
    """Median per call of each function, calls interleaved so drift on a busy machine hits all alike."""
    for _ in range(warmup):
        for f in fns:
            f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for i, f in enumerate(fns):
            times[i].append(timed(f))
    return [statistics.median(t) for t in times]


# ------------------------------------------------------------------------------------------- setup


def make_sqlite(path: Path, rows: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
    db.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"item{i}", i) for i in range(1, rows + 1)])
    db.commit()
    db.close()


def make_pg(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        c.execute(f"INSERT INTO items SELECT g, 'item' || g, g FROM generate_series(1, {rows}) g")
        c.execute("VACUUM ANALYZE items")


def write_config(d: Path, name: str, sqlite_file: Path, pg_url: str | None, state: str) -> Path:
    lifted = "".join(f"{k} = 1000000000\n" for k in Limits.model_fields
                     if k.endswith(("_per_hour", "_per_session", "_per_minute")))
    pg = f'[targets.p]\nkind = "postgres"\ndsn = "{pg_url}"\naccess = "read-write"\n' if pg_url else ""
    cfg = d / f"{name}.toml"
    cfg.write_text(f'[targets.s]\nkind = "sqlite"\npath = "{sqlite_file}"\naccess = "read-write"\n{pg}'
                   f"[limits]\nrows_returned = 1000\nrows_affected = 100000\n{lifted}"
                   f'[confirm]\ndestructive = "none"\n[state]\n{state}\n')
    return cfg


# ------------------------------------------------------------------------------------------- stdio


@dataclass
class Stdio:
    label: str
    params: StdioServerParameters
    execute_tool: str = "sql_execute"
    read_tool: str = "sql_query"
    with_target: bool = True


async def stdio_run(srv: Stdio, calls: list[tuple[str, str, str]], n: int) -> dict[str, float]:
    """Start-up (spawn to tools/list answered) and the median of each call: (key, target, sql)."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    async with Client(srv.params) as c:
        await c.list_tools()
        out["startup"] = ms(t0)
        for key, target, sql in calls:
            tool = srv.read_tool if key.startswith("read") else srv.execute_tool
            args: dict[str, Any] = {"sql": sql}
            if srv.with_target:
                args["target"] = target
            times = []
            for i in range(n + 3):
                t = time.perf_counter()
                r = await c.call_tool(tool, args)
                if i >= 3:
                    times.append(ms(t))
                if r.is_error:
                    raise RuntimeError(f"{srv.label} {tool}: {r.content[0]}")
            out[key] = statistics.median(times)
    return out


async def interleaved(servers: list[tuple[Stdio, list[tuple[str, str, str]]]], n: int) -> list[dict[str, float]]:
    """Each server's median per call (key, target, sql), all servers connected at once and called in turn, one
    call each: a busy moment of the host lands on every server alike instead of on whichever ran then."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(srv.params)) for srv, _ in servers]
        for c in clients:
            await c.list_tools()
        out: list[dict[str, float]] = [{} for _ in servers]
        keys = list(dict.fromkeys(k for _, calls in servers for k in calls))
        for key, target, sql in keys:
            taking = [j for j, (_, calls) in enumerate(servers) if (key, target, sql) in calls]
            times: dict[int, list[float]] = {j: [] for j in taking}
            for i in range(n + 3):
                for j in taking:
                    srv = servers[j][0]
                    tool = srv.read_tool if key.startswith("read") else srv.execute_tool
                    args: dict[str, Any] = {"sql": sql, **({"target": target} if srv.with_target else {})}
                    t = time.perf_counter()
                    r = await clients[j].call_tool(tool, args)
                    if i >= 3:
                        times[j].append(ms(t))
                    if r.is_error:
                        raise RuntimeError(f"{srv.label} {tool}: {r.content[0]}")
            for j in taking:
                out[j][key] = statistics.median(times[j])
    return out


async def client_profile(srv: Stdio, key: str, target: str, sql: str) -> pstats.Stats:
    """cProfile of the client (this process) while it makes 200 calls: what answering costs the caller."""
    async with Client(srv.params) as c:
        tool = srv.read_tool if key.startswith("read") else srv.execute_tool
        args = {"target": target, "sql": sql}
        for _ in range(10):
            await c.call_tool(tool, args)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            await c.call_tool(tool, args)
        prof.disable()
    return pstats.Stats(prof)


async def startup_only(srv: Stdio) -> float:
    t0 = time.perf_counter()
    async with Client(srv.params) as c:
        await c.list_tools()
    return ms(t0)


def quiet(log: Path, command: str, *args: str) -> StdioServerParameters:
    """Spawn `command` with its stderr going to `log` (dbhub prints a banner there), the same way for every server."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return StdioServerParameters(command="/bin/sh", args=["-c", f'exec "$0" "$@" 2>>"{log}"', command, *args], env=env)


def run_async(fn: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
    async def go() -> Any:
        with anyio.fail_after(timeout):
            return await fn(*args)
    return anyio.run(go)


# ------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    ap.add_argument("--window", type=int, default=10_000, help="prior writes in the large budget window")
    ap.add_argument("--profile", action="store_true", help="print cProfile top entries for each MISS")
    a = ap.parse_args()
    n = 40 if a.quick else 200
    reps = 2 if a.quick else 7
    stdio_n = 30 if a.quick else 200
    starts = 3 if a.quick else 7
    began = time.perf_counter()

    d = Path(tempfile.mkdtemp(prefix="safe-mcp-bench-"))
    tag = uuid.uuid4().hex[:8]
    base = psycopg.conninfo.conninfo_to_dict(a.dsn)
    user, host, port = base.get("user", "postgres"), base.get("host", "127.0.0.1"), base.get("port", 5432)
    target_db, state_db = f"safe_mcp_bench_{tag}", f"safe_mcp_bench_state_{tag}"
    pg_url = f"postgresql://{user}@{host}:{port}/{target_db}"
    pg_dsn = psycopg.conninfo.make_conninfo("", **{**base, "dbname": target_db})
    with psycopg.connect(a.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{target_db}"')
        admin.execute(f'CREATE DATABASE "{state_db}"')
    rows: list[Row] = []
    profiles: dict[str, Callable[[], object]] = {}
    runtimes: list[Runtime] = []
    conns: list[Any] = []
    try:
        lite = d / "bench.db"
        make_sqlite(lite, ROWS)
        make_pg(pg_dsn, ROWS)
        cfg = write_config(d, "sqlite-state", lite, pg_url, 'path = "state"')
        cfg_pgstate = write_config(d, "pg-state", lite, pg_url, f'url = "postgresql://{user}@{host}:{port}/{state_db}"')
        cfg_stdio = write_config(d, "stdio", lite, pg_url, 'path = "state-stdio"')
        rt = Runtime(load_config(cfg), session="bench")
        runtimes.append(rt)
        gate = rt.gate
        me = Caller(session="bench", client="bench")
        raw_lite = sqlite3.connect(lite, isolation_level=None)
        raw_pg = psycopg.connect(pg_dsn)
        conns.extend([raw_lite, raw_pg])

        def lite_write(sql: str) -> Callable[[], object]:
            def go() -> None:
                raw_lite.execute("BEGIN IMMEDIATE")
                raw_lite.execute(sql)
                raw_lite.execute("COMMIT")
            return go

        def pg_write(sql: str) -> Callable[[], object]:
            def go() -> None:
                raw_pg.execute(sql)
                raw_pg.commit()
            return go

        def through(g: Any, target: str, sql: str, tool: str = "sql_execute") -> Callable[[], Any]:
            call = Call(target=target, tool=tool, args={"sql": sql})
            return lambda: g.run(call, me)

        # 1. one-row UPDATE in process: the gate (intent receipt durable first) against the raw driver
        raw1, ours1 = paired([lite_write(UPD1), through(gate, "s", UPD1)], n)
        rows.append(Row("1  UPDATE 1 row, in process (SQLite)", raw=raw1, ours=ours1,
                        measure=f"+{ours1 - raw1:.3f} ms", target="<= +1 ms", ok=ours1 - raw1 <= 1.0))
        profiles[rows[-1].name] = through(gate, "s", UPD1)

        # 7. the same write with the state store on PostgreSQL
        rt_pg = Runtime(load_config(cfg_pgstate), session="bench-pgstate")
        runtimes.append(rt_pg)
        lite_state, pg_state = paired([through(gate, "s", UPD1), through(rt_pg.gate, "s", UPD1)], n)
        rows.append(Row("7  UPDATE 1 row, state on PostgreSQL", raw=raw1, bare=None, ours=pg_state,
                        measure=f"+{pg_state - lite_state:.3f} ms", target="<= +2 ms vs SQLite state",
                        ok=pg_state - lite_state <= 2.0, note=f"SQLite state: {lite_state:.3f} ms"))
        profiles[rows[-1].name] = through(rt_pg.gate, "s", UPD1)

        # 2. SQLite 10,000-row UPDATE with before-images
        raw2, ours2 = paired([lite_write(UPD_BIG), through(gate, "s", UPD_BIG)], reps, warmup=1)
        rows.append(Row("2  UPDATE 10,000 rows (SQLite)", raw=raw2, ours=ours2, measure=f"x{ours2 / raw2:.2f}",
                        target="<= x3", ok=ours2 / raw2 <= 3))
        profiles[rows[-1].name] = through(gate, "s", UPD_BIG)

        # what any before-image capture costs at least: the raw UPDATE plus copying the old rows, one commit
        # (as statement-level capture does, which also keeps each row's after-image); and the same copy made by
        # a trigger per row, as every other SQLite write is captured
        raw_lite.execute("CREATE TABLE floor_undo (id INTEGER, name TEXT, qty INTEGER)")

        def copy_then_update() -> None:
            raw_lite.execute("BEGIN IMMEDIATE")
            raw_lite.execute(f"INSERT INTO floor_undo SELECT * FROM items WHERE id <= {BIG}")
            raw_lite.execute(UPD_BIG)
            raw_lite.execute("COMMIT")

        floor2 = statistics.median(timed(copy_then_update) for _ in range(reps))
        rows.append(Row("2  (floor: raw UPDATE + INSERT..SELECT of old rows)", raw=raw2, ours=floor2,
                        measure=f"x{floor2 / raw2:.2f}", target="(info: least any capture costs)"))
        raw_lite.execute("CREATE TEMP TRIGGER floor_capture BEFORE UPDATE ON main.items BEGIN "
                         "INSERT INTO floor_undo VALUES (old.id, old.name, old.qty); END")
        trig2 = statistics.median(timed(lite_write(UPD_BIG)) for _ in range(reps))
        raw_lite.execute("DROP TRIGGER temp.floor_capture")
        rows.append(Row("2  (the same copy by a trigger per row)", raw=raw2, ours=trig2,
                        measure=f"x{trig2 / raw2:.2f}", target="(info: other writes' capture)"))

        # 3. PostgreSQL 10,000-row UPDATE with before-images
        raw3, ours3 = paired([pg_write(UPD_BIG), through(gate, "p", UPD_BIG)], reps, warmup=1)
        rows.append(Row("3  UPDATE 10,000 rows (PostgreSQL)", raw=raw3, ours=ours3, measure=f"x{ours3 / raw3:.2f}",
                        target="<= x1.5", ok=ours3 / raw3 <= 1.5))
        profiles[rows[-1].name] = through(gate, "p", UPD_BIG)

        raw_pg.execute("CREATE TABLE floor_undo (LIKE items)")
        raw_pg.commit()
        floor3 = statistics.median(
            timed(pg_write(f"INSERT INTO floor_undo SELECT * FROM items WHERE id <= {BIG}; {UPD_BIG}"))
            for _ in range(reps))
        rows.append(Row("3  (floor: raw UPDATE + INSERT..SELECT of old rows)", raw=raw3, ours=floor3,
                        measure=f"x{floor3 / raw3:.2f}", target="(info: least any capture costs)"))

        # 4. undo of a 10,000-row DELETE against that DELETE through safe-mcp
        refill = {"s": f"WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {BIG}) "
                       "INSERT INTO items SELECT x, 'item' || x, x FROM g",
                  "p": f"INSERT INTO items SELECT g, 'item' || g, g FROM generate_series(1, {BIG}) g"}
        for t, engine, write in (("s", "SQLite", lite_write), ("p", "PostgreSQL", pg_write)):
            raw_d, del_d, undo_d = [], [], []
            for _ in range(reps):
                raw_d.append(timed(write(DEL_BIG)))
                write(refill[t])()
                t0 = time.perf_counter()
                res = gate.run(Call(target=t, tool="sql_execute", args={"sql": DEL_BIG}), me)
                del_d.append(ms(t0))
                assert res.affected == BIG and res.undo, res
                undo_d.append(timed(functools.partial(gate.undo, res.receipt_id, me)))
            rd, dd, ud = (statistics.median(x) for x in (raw_d, del_d, undo_d))
            rows.append(Row(f"4  undo of DELETE 10,000 rows ({engine})", raw=rd, bare=None, ours=ud,
                            measure=f"x{ud / dd:.2f}", target="<= x1.5 DELETE via safe-mcp", ok=ud / dd <= 1.5,
                            note=f"DELETE via safe-mcp: {dd:.1f} ms"))

            def del_undo(t: str = t) -> None:
                r = gate.run(Call(target=t, tool="sql_execute", args={"sql": DEL_BIG}), me)
                gate.undo(r.receipt_id, me)
            profiles[rows[-1].name] = del_undo
        count_s = raw_lite.execute("SELECT count(*) FROM items").fetchall()[0][0]
        count_p = raw_pg.execute("SELECT count(*) FROM items").fetchall()[0][0]
        raw_pg.rollback()
        assert count_s == ROWS and count_p == ROWS, (count_s, count_p)

        # 5. budgets and breaker: writes after 10 prior writes against writes after a large window, interleaved
        window_writes: dict[int, Callable[[], Any]] = {}
        for prior in (10, a.window):
            wdb = d / f"window{prior}.db"
            make_sqlite(wdb, 100)
            wrt = Runtime(load_config(write_config(d, f"window{prior}", wdb, None, f'path = "state-w{prior}"')),
                          session=f"w{prior}")
            runtimes.append(wrt)
            window_writes[prior] = through(wrt.gate, "s", UPD1)
            for _ in range(prior):
                window_writes[prior]()
        small, large = paired([window_writes[10], window_writes[a.window]], 30, warmup=0)
        rows.append(Row(f"5  write after {a.window:,} vs 10 in window", raw=None, ours=large,
                        measure=f"x{large / small:.2f}", target="<= x1.25 (same)", ok=large / small <= 1.25,
                        note=f"after 10: {small:.3f} ms"))

        # 6 and 1 over stdio: bare SDK server, dbhub, safe-mcp serve, each with the same mcp Client
        log = d / "servers.log"
        bare = Stdio("bare", quiet(log, sys.executable, str(HERE / "bare_server.py"), "--sqlite", str(lite), "--pg", pg_dsn))
        ours = Stdio("safe-mcp", quiet(log, sys.executable, "-m", "safe_mcp", "serve", "--config", str(cfg_stdio)))
        calls = [("read_s", "s", READ1), ("read_p", "p", READ1), ("write_s", "s", UPD1)]
        peer: dict[str, float | str] = {}
        hubs: list[tuple[Stdio, list[tuple[str, str, str]]]] = []
        if not DBHUB.exists():
            peer["why"] = "dbhub is not installed in .tools (scripts/bench installs it; npm missing?)"
        else:
            for t, dsn in (("p", pg_url + "?sslmode=disable"), ("s", f"sqlite://{lite}")):
                hub = Stdio("dbhub", quiet(log, str(DBHUB), "--transport", "stdio", "--dsn", dsn),
                            execute_tool="execute_sql", read_tool="execute_sql", with_target=False)
                try:  # a peer that cannot start is named in the table, and left out of the interleaved run
                    run_async(stdio_run, hub, [(f"read_{t}", t, READ1)], 3, timeout=60)
                    hubs.append((hub, [(f"read_{t}", t, READ1)]))
                except (RuntimeError, TimeoutError, OSError, ExceptionGroup) as exc:
                    said = [ln for ln in log.read_text(errors="replace").splitlines() if "rror" in ln]
                    peer[f"why_{t}"] = f"dbhub could not run: {(said[-1] if said else str(exc))[:90]}"
        # All connected at once and called in turn, one call each, so drift in the host's load hits all alike.
        got_bare, got_ours, *got_hubs = run_async(interleaved, [(bare, calls), (ours, calls), *hubs], stdio_n,
                                                  timeout=600)
        for got in got_hubs:
            peer.update(got)
        node = shutil.which("node")
        node_v = os.popen(f"{node} --version").read().strip() if node else "no node"

        for t, engine in (("s", "SQLite"), ("p", "PostgreSQL")):
            b, o = got_bare[f"read_{t}"], got_ours[f"read_{t}"]
            p = peer.get(f"read_{t}")
            why = peer.get(f"why_{t}", peer.get("why", ""))
            if t == "s" and why:
                why = f"{why} (dbhub 1.4 needs Node >= 22.5 for SQLite; here {node_v})"
            rows.append(Row(f"6  read 1 row over stdio ({engine})", bare=b, ours=o, measure=f"x{o / b:.2f}",
                            target="<= x1.1 bare", ok=o / b <= 1.1))
            if isinstance(p, float):
                rows.append(Row(f"6  read 1 row over stdio vs dbhub ({engine})", peer=p, ours=o,
                                measure=f"x{o / p:.2f}", target="<= x1.5 dbhub", ok=o / p <= 1.5))
            else:
                rows.append(Row(f"6  read 1 row over stdio vs dbhub ({engine})", ours=o, measure="-",
                                target="<= x1.5 dbhub", note=str(why) or "dbhub did not answer"))
        b, o = got_bare["write_s"], got_ours["write_s"]
        rows.append(Row("1  UPDATE 1 row over stdio (SQLite)", bare=b, ours=o, measure=f"+{o - b:.3f} ms",
                        target="<= +1.5 ms bare", ok=o - b <= 1.5))

        # 6. start-up: spawn to tools/list answered, alternating, median
        hub_start = Stdio("dbhub", quiet(log, str(DBHUB), "--transport", "stdio", "--dsn", pg_url + "?sslmode=disable"))
        srvs = [bare, ours] + ([hub_start] if isinstance(peer.get("read_p"), float) else [])
        st: list[list[float]] = [[] for _ in srvs]
        for _ in range(starts):
            for i, s in enumerate(srvs):
                st[i].append(run_async(startup_only, s))
        sb, so = statistics.median(st[0]), statistics.median(st[1])
        rows.append(Row("6  start-up over stdio", bare=sb, ours=so, measure=f"x{so / sb:.2f}",
                        target="<= x1.1 bare", ok=so / sb <= 1.1))
        if len(srvs) == 3:
            sp = statistics.median(st[2])
            rows.append(Row("6  start-up over stdio vs dbhub (PostgreSQL)", peer=sp, ours=so,
                            measure=f"x{so / sp:.2f}", target="<= x1.5 dbhub", ok=so / sp <= 1.5))

        # the same read in process: how much of the stdio difference is the gate itself (informational)
        def pg_read() -> None:
            raw_pg.execute(READ1).fetchall()
            raw_pg.rollback()
        for t, engine, raw_read in (("s", "SQLite", lambda: raw_lite.execute(READ1).fetchall()), ("p", "PostgreSQL", pg_read)):
            r_in, g_in = paired([raw_read, through(gate, t, READ1, "sql_query")], n)
            rows.append(Row(f"6  (read 1 row in process, {engine})", raw=r_in, ours=g_in, measure=f"+{g_in - r_in:.3f} ms",
                            target="(info: the gate's share)"))

        # classification: what a repeated statement costs to classify, per engine (informational)
        for t, engine in (("s", "SQLite"), ("p", "PostgreSQL")):
            adapter = gate._adapters[t]
            same = statistics.median(timed(functools.partial(adapter.classify, Call(
                target=t, tool="sql_query", args={"sql": READ1}))) for _ in range(n))
            fresh = statistics.median(timed(functools.partial(adapter.classify, Call(
                target=t, tool="sql_query", args={"sql": f"{READ1} -- {i}"}))) for i in range(n))
            rows.append(Row(f"6  classify a repeated read ({engine})", raw=fresh, ours=same,
                            measure=f"x{same / fresh:.2f}", target="(info: raw = new text)",
                            note="cached" if same < fresh * 0.5 else "not cached"))

        elapsed = time.perf_counter() - began
        print_table(rows, elapsed, a, node_v)
        if a.profile:
            shown: set[tuple[str, ...]] = set()  # the dbhub rows share their profile with the bare-SDK rows
            for r in rows:
                what = ("start-up",) if "start-up" in r.name else (r.name.split(" vs ")[0].split("(")[0].strip(), r.name[-12:])
                if r.ok is False and what in shown:
                    print(f"\n=== profile for MISS: {r.name}: as above ===")
                    continue
                shown.add(what)
                if r.ok is False and r.name in profiles:
                    print_profile(r.name, profiles[r.name], 30 if r.name.startswith(("1", "7")) else 3)
                elif r.ok is False and "start-up" in r.name:
                    print_imports(r.name, [("bare SDK server", bare), ("safe-mcp serve", ours)], d)
                elif r.ok is False and "over stdio" in r.name:
                    t = "p" if "PostgreSQL" in r.name else "s"
                    key, sql = ("read", READ1) if "read" in r.name else ("write", UPD1)
                    tool = "sql_query" if key == "read" else "sql_execute"
                    print_profile(f"{r.name}, the gate's share", through(gate, t, sql, tool), 200)
                    for label, srv in (("bare SDK server", bare), ("safe-mcp serve", ours)):
                        print_stats(f"{r.name}, the mcp Client's side against the {label}, 200 calls",
                                    run_async(client_profile, srv, key, t, sql), top=12, sort="tottime")
                    for label, cmd in (("bare SDK server", [str(HERE / "bare_server.py"), "--sqlite", str(lite),
                                                            "--pg", pg_dsn]),
                                       ("safe-mcp serve", ["-m", "safe_mcp", "serve", "--config", str(cfg_stdio)])):
                        prof = d / "serve.prof"
                        srv = Stdio(label, quiet(log, sys.executable, str(HERE / "profiled_serve.py"), *cmd))
                        srv.params.env = {**(srv.params.env or {}), "PROFILE_OUT": str(prof)}
                        run_async(stdio_run, srv, [(key, t, sql)], 200)
                        for _ in range(50):  # the server writes its profile as it exits
                            if prof.exists():
                                break
                            time.sleep(0.1)
                        print_stats(f"{r.name}, {label}: main thread (event loop, MCP layer), 203 calls",
                                    pstats.Stats(str(prof)), top=18)
                        prof.unlink()
        return 0
    finally:
        for conn in conns:
            conn.close()
        for runtime in runtimes:
            runtime.close()
        shutil.rmtree(d, ignore_errors=True)
        with psycopg.connect(a.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{target_db}" WITH (FORCE)')
            admin.execute(f'DROP DATABASE IF EXISTS "{state_db}" WITH (FORCE)')


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}" if v >= 100 else f"{v:.3f}"


def print_table(rows: list[Row], elapsed: float, a: argparse.Namespace, node_v: str) -> None:
    w = max(len(r.name) for r in rows)
    head = (f"{'target (issue 17)':<{w}}  {'raw':>8}  {'bare SDK':>8}  {'dbhub':>8}  {'safe-mcp':>8}  "
            f"{'measure':>10}  {'limit':<31} verdict")
    print(head)
    print("-" * len(head))
    for r in rows:
        verdict = "PASS" if r.ok else "MISS" if r.ok is False else "-"
        print(f"{r.name:<{w}}  {fmt(r.raw):>8}  {fmt(r.bare):>8}  {fmt(r.peer):>8}  {fmt(r.ours):>8}  "
              f"{r.measure:>10}  {r.target:<31} {verdict}{'  ' + r.note if r.note else ''}")
    misses = sum(r.ok is False for r in rows)
    print(f"\nms, medians; {sum(r.ok is True for r in rows)} PASS, {misses} MISS; "
          f"{os.cpu_count()} cpus, Python {sys.version.split()[0]}, node {node_v}, "
          f"{'quick' if a.quick else 'full'} run in {elapsed:.0f}s")


def print_profile(name: str, fn: Callable[[], object], times: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(times):
        fn()
    prof.disable()
    print_stats(f"{name}: in process, {times} runs", pstats.Stats(prof))


def print_imports(name: str, servers: list[tuple[str, Stdio]], d: Path) -> None:
    """What start-up spends on imports: `python -X importtime`, top-level modules by cumulative time."""
    print(f"\n=== profile for MISS: {name}: -X importtime, top-level imports by cumulative ms ===")
    for label, srv in servers:
        log = d / f"importtime-{label.split()[0]}.log"
        log.unlink(missing_ok=True)
        cmd = srv.params.args[2:]  # after /bin/sh -c SCRIPT: the command and its arguments
        run_async(startup_only, Stdio(label, quiet(log, cmd[0], "-X", "importtime", *cmd[1:])))
        tops: list[tuple[int, str]] = []
        for line in log.read_text().splitlines():
            parts = line.split("|")
            if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
                mod = parts[2].rstrip()
                if not mod.startswith("  "):  # top level (indented names were imported by another)
                    tops.append((int(parts[1]), mod.strip()))
        total = sum(us for us, _ in tops)
        tops.sort(reverse=True)
        print(f"{label}: {total / 1000:.0f} ms of imports; " +
              ", ".join(f"{m} {us / 1000:.0f}" for us, m in tops[:12]))


def print_stats(title: str, stats: pstats.Stats, top: int = 25, sort: str = "cumulative") -> None:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    total = stats.total_tt * 1000  # type: ignore[attr-defined]
    print(f"\n=== profile for MISS: {title} ({total:.0f} ms profiled; top {top} by {sort} time) ===")
    print("\n".join(lines[start:]))


if __name__ == "__main__":
    sys.exit(main())
