"""`safe-mcp demo`: a scripted agent session against the real server, over stdio, on a demo shop."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from safe_mcp.faces.cli_table import plural

__all__ = ["DEMO_CONFIG", "create_shop", "run_demo"]

DEMO_CONFIG = """\
# The demo: one SQLite shop, seen twice. `shop` is read-only (the default);
# `shop_admin` may write, with destructive statements held for a two-step confirm.
# `safe-mcp demo` writes this file and shop.db into ./safe-mcp-demo and runs a scripted session.

[targets.shop]
kind = "sqlite"
path = "shop.db"

[targets.shop_admin]
kind = "sqlite"
path = "shop.db"
access = "read-write"

[limits]
rows_returned = 50
rows_affected = 20
writes_per_session = 50

[confirm]
write = "none"
destructive = "agent"
irreversible = "human"
ttl_s = 300
min_delay_s = 1

[state]
path = ".safe-mcp"
"""

_CUSTOMERS = [("Ada", "ada@example.com"), ("Grace", "grace@example.com"), ("Linus", "linus@example.com"),
              ("Margaret", "margaret@example.com")]


def create_shop(path: Path) -> None:
    """A small shop: customers, products, 12 orders."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE);
        CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL);
        CREATE TABLE orders (
            id INTEGER PRIMARY KEY,
            customer_id INTEGER NOT NULL REFERENCES customers(id),
            product_id INTEGER NOT NULL REFERENCES products(id),
            quantity INTEGER NOT NULL,
            status TEXT NOT NULL
        );
    """)
    db.executemany("INSERT INTO customers (name, email) VALUES (?, ?)", _CUSTOMERS)
    db.executemany("INSERT INTO products (name, price_cents) VALUES (?, ?)",
                   [("keyboard", 4900), ("mouse", 1900), ("monitor", 18900)])
    statuses = ["paid", "shipped", "paid", "refunded"]
    db.executemany("INSERT INTO orders (customer_id, product_id, quantity, status) VALUES (?, ?, ?, ?)",
                   [(i % 4 + 1, i % 3 + 1, i % 2 + 1, statuses[i % 4]) for i in range(12)])
    db.commit()
    db.close()


def _say(step: str, text: str = "") -> None:
    print(f"\n\033[1m== {step}\033[0m" if sys.stdout.isatty() else f"\n== {step}")
    if text:
        print(textwrap.indent(textwrap.fill(text, 100), "   "))


def _show(result: Any) -> dict[str, Any]:
    if result.is_error:
        print(textwrap.indent(textwrap.fill(result.content[0].text, 100), "   ! "))
        return {}
    data: dict[str, Any] = result.structured_content or {}
    return data


def _table(data: dict[str, Any]) -> None:
    cols, rows = data.get("columns", []), data.get("rows", [])
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c)) for i, c in enumerate(cols)]
    print("   " + "  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("   " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))
    n = data.get("row_count")
    print(f"   ({plural(n if isinstance(n, int) else None, 'row')}, receipt {data.get('receipt_id')})")


def run_demo(directory: Path) -> int:
    """Create the demo files in `directory` and drive the real server over stdio. Returns an exit code."""
    import anyio

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "safe-mcp.toml"
    config.write_text(DEMO_CONFIG, encoding="utf-8")
    shutil.rmtree(directory / ".safe-mcp", ignore_errors=True)
    create_shop(directory / "shop.db")
    print(f"demo files in {directory.resolve()}: safe-mcp.toml, shop.db")
    return anyio.run(_session, config)


async def _session(config: Path) -> int:
    from mcp import Client, StdioServerParameters

    from safe_mcp.state.store import StateStore

    params = StdioServerParameters(command=sys.executable, args=["-m", "safe_mcp", "serve", "--config", str(config)])
    async with Client(params) as client:
        _say("1. The agent connects and asks what it may touch (tool: targets)")
        targets = _show(await client.call_tool("targets", {}))
        for t in targets["targets"]:
            print(f"   {t['name']:<11} {t['kind']} {t['access']:<10} destructive: {t['confirm']['destructive']}")

        _say("2. A read runs at once (sql_query on shop)")
        _table(_show(await client.call_tool("sql_query", {
            "target": "shop",
            "sql": "SELECT c.name, count(*) AS orders FROM orders o JOIN customers c ON c.id = o.customer_id "
                   "GROUP BY c.name ORDER BY orders DESC"})))

        _say("3. DROP TABLE on the read-only target is refused, and says why")
        _show(await client.call_tool("sql_execute", {"target": "shop", "sql": "DROP TABLE orders"}))

        _say("4. Sneaking a second statement into a read is refused too")
        _show(await client.call_tool("sql_query", {"target": "shop", "sql": "SELECT 1; DROP TABLE orders"}))

        _say("5. DELETE without WHERE on the writable target comes back as a pending action: nothing ran yet")
        pending = _show(await client.call_tool("sql_execute", {"target": "shop_admin", "sql": "DELETE FROM orders"}))
        view = pending["pending"]
        print(f"   status: {pending['status']}   effect: {view['effect']}   rows it would delete: {pending['affected']}")
        print(f"   action_id: {view['action_id']}   expires: {view['expires']}")
        for row in view["preview"]["sample"][:3]:
            print(f"   before-image: {row['before']}")

        _say("6. The user agrees; the agent confirms (after min_delay_s) and the delete runs, once")
        time.sleep(1.1)
        done = _show(await client.call_tool("confirm", {"action_id": view["action_id"]}))
        print(f"   {done['message']}")
        print(f"   receipt: {done['receipt_id']}")
        _table(_show(await client.call_tool("sql_query", {"target": "shop", "sql": "SELECT count(*) AS orders FROM orders"})))

        _say("7. Confirming the same action again is refused (single use)")
        _show(await client.call_tool("confirm", {"action_id": view["action_id"]}))

        _say("8. The receipt says exactly what happened")
        rec = _show(await client.call_tool("receipts", {"receipt_id": done["receipt_id"]}))["receipts"][0]
        for key in ("id", "time", "target", "tool", "effect", "outcome", "affected", "compensation_id", "prev", "hash"):
            print(f"   {key:<16} {rec[key]}")

        _say("9. Undo restores every deleted row from its before-image")
        undone = _show(await client.call_tool("undo", {"receipt_id": done["receipt_id"]}))
        print(f"   {undone['message']} (receipt {undone['receipt_id']})")
        _table(_show(await client.call_tool("sql_query", {"target": "shop", "sql": "SELECT count(*) AS orders FROM orders"})))

    _say("10. safe-mcp receipts verify: the hash chain over every receipt is intact")
    store = StateStore(config.parent / ".safe-mcp")
    report = store.verify()
    store.close()
    print(f"   {'ok' if report.ok else 'BROKEN'}: {report.count} receipts" + ("" if report.ok else f" ({report.problem})"))
    exe = Path(sys.executable).parent / "safe-mcp"
    print(f"\nNext: `{exe} client-config cursor --config {config.resolve()}` prints the JSON to paste into Cursor "
          "(or claude, claude-code, vscode; `safe-mcp bundle` makes a one-file install for Claude Desktop).")
    return 0 if report.ok else 1
