"""Target 6 before and after, fairly on a busy machine: the bare SDK server, safe-mcp from another checkout (BEFORE)
and safe-mcp from this one (AFTER), on the same data, calls interleaved one by one so that load drift hits all three
alike. Prints, per engine, the median latency of a 1-row read over stdio, the CPU each server process spent per call
(user+sys from /proc: what scheduling noise cannot inflate), and the median start-up (spawn to tools/list).

    .venv/bin/python bench/ab_stdio.py --before /work/main [--dsn postgresql://postgres@127.0.0.1:5432/test]

BEFORE must have its own .venv (scripts/_venv.sh). Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import psycopg
from mcp import Client
from suite import READ1, ROWS, make_pg, make_sqlite, quiet, write_config

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def server_pid(marker: str) -> int:
    """The pid of the one server process whose command line holds `marker` (under the /bin/sh that `quiet` execs)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes() and entry.name != str(os.getpid()):
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no server process with {marker!r}")


async def main(a: argparse.Namespace) -> None:
    d = Path(tempfile.mkdtemp(prefix="safe-mcp-ab-"))
    tag = uuid.uuid4().hex[:8]
    base = psycopg.conninfo.conninfo_to_dict(a.dsn)
    db = f"safe_mcp_ab_{tag}"
    pg_url = f"postgresql://{base.get('user', 'postgres')}@{base.get('host', '127.0.0.1')}:{base.get('port', 5432)}/{db}"
    with psycopg.connect(a.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    try:
        lite = d / "ab.db"
        make_sqlite(lite, ROWS)
        make_pg(psycopg.conninfo.make_conninfo("", **{**base, "dbname": db}), ROWS)
        log = d / "servers.log"
        before, after = Path(a.before).resolve(), HERE.parent
        servers = {
            "bare": quiet(log, sys.executable, str(HERE / "bare_server.py"), "--sqlite", str(lite), "--pg", pg_url),
            "before": quiet(log, str(before / ".venv/bin/python"), "-m", "safe_mcp", "serve", "--config",
                            str(write_config(d, "before", lite, pg_url, 'path = "state-before"'))),
            "after": quiet(log, sys.executable, "-m", "safe_mcp", "serve", "--config",
                           str(write_config(d, "after", lite, pg_url, 'path = "state-after"'))),
        }
        servers["before"] = servers["before"].model_copy(update={"cwd": str(before)})
        servers["after"] = servers["after"].model_copy(update={"cwd": str(after)})
        # Full paths under this run's own folder: other benches on the machine run the same programs.
        markers = {"bare": str(lite), "before": str(d / "before.toml"), "after": str(d / "after.toml")}
        print(f"before = {before}, after = {after}; {a.n} interleaved calls, {a.starts} start-ups each")
        for target, engine in (("s", "SQLite"), ("p", "PostgreSQL")):
            async with Client(servers["bare"]) as b, Client(servers["before"]) as x, Client(servers["after"]) as y:
                clients = {"bare": b, "before": x, "after": y}
                pids = {k: server_pid(m) for k, m in markers.items()}
                args = {"target": target, "sql": READ1}
                for c in clients.values():
                    for _ in range(20):
                        await c.call_tool("sql_query", args)
                times: dict[str, list[float]] = {k: [] for k in clients}
                cpu0 = {k: cpu_s(p) for k, p in pids.items()}
                for _ in range(a.n):
                    for k, c in clients.items():
                        t0 = time.perf_counter()
                        r = await c.call_tool("sql_query", args)
                        times[k].append((time.perf_counter() - t0) * 1000)
                        if r.is_error:
                            raise RuntimeError(f"{k}: {r.content[0]}")
                cpu = {k: (cpu_s(p) - cpu0[k]) / a.n * 1000 for k, p in pids.items()}
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"read 1 row over stdio ({engine}): latency ms bare {med['bare']:.3f}, before {med['before']:.3f} "
                  f"(x{med['before'] / med['bare']:.2f}), after {med['after']:.3f} (x{med['after'] / med['bare']:.2f});"
                  f" server CPU ms/call bare {cpu['bare']:.3f}, before {cpu['before']:.3f}, after {cpu['after']:.3f}")
        starts: dict[str, list[float]] = {k: [] for k in servers}
        for _ in range(a.starts):
            for k, params in servers.items():
                t0 = time.perf_counter()
                async with Client(params) as c:
                    await c.list_tools()
                starts[k].append((time.perf_counter() - t0) * 1000)
        med = {k: statistics.median(v) for k, v in starts.items()}
        print(f"start-up over stdio: ms bare {med['bare']:.0f}, before {med['before']:.0f} "
              f"(x{med['before'] / med['bare']:.2f}), after {med['after']:.0f} (x{med['after'] / med['bare']:.2f})")
    finally:
        shutil.rmtree(d, ignore_errors=True)
        with psycopg.connect(a.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="another checkout of safe-mcp, with its own .venv")
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--n", type=int, default=500, help="calls per server and engine")
    ap.add_argument("--starts", type=int, default=9)
    anyio.run(main, ap.parse_args())
