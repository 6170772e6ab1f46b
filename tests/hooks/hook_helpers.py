"""A shop database, configs with hooks, and a gate whose adapters run the hook step.

`Gate` does not call the hooks yet; `HookStep` puts the exact calls the pipeline makes at the adapter
boundary: `run_hooks` after the intent receipt and before `execute` (a required hook's failure is an
`AdapterError`, so the gate receipts the refusal and settles the intent), `attach` on the outcome, and
`undo_with_hooks` instead of `compensate`. Everything else is the real gate, state store and SQLite.
"""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, ClassVar

from support import write_config

from safe_mcp.adapter import Adapter, Budget, Call, Classification, Outcome
from safe_mcp.effects import Effect
from safe_mcp.gate.calls import Caller
from safe_mcp.gate.hooks_run import run_hooks, undo_with_hooks
from safe_mcp.gate.runtime import Runtime
from safe_mcp.state.receipts import Receipt
from safe_mcp.trust.config import Config, load_config

ORDERS = [(1, "tea", 3), (2, "cups", 12), (3, "pot", 1)]
CALLER = Caller(session="sess-hooks", client="pytest")


def make_shop(directory: Path) -> Path:
    db = directory / "shop.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, qty INTEGER)")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", ORDERS)
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes VALUES (1, 'keep')")
    return db


def shop_config(directory: Path, hooks: str) -> Path:
    """A read-write sqlite target `shop` (destructive statements run without a confirmation) with `hooks`."""
    make_shop(directory)
    return write_config(directory, textwrap.dedent("""
        [confirm]
        destructive = "none"

        [targets.shop]
        kind = "sqlite"
        path = "shop.db"
        access = "read-write"
        """) + textwrap.dedent(hooks))


def rows(db: Path, table: str = "orders") -> list[tuple[Any, ...]] | None:
    """The table's rows in id order, or None when there is no such table."""
    with closing(sqlite3.connect(db)) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is None:
            return None
        return list(conn.execute(f'SELECT * FROM "{table}" ORDER BY 1'))


class HookStep(Adapter):
    """The pipeline's hook step around a real adapter class (see the module docstring); mixed in first."""

    config: ClassVar[Config]

    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        if classification.effect is Effect.READ:
            return super().execute(call, classification, budget)  # type: ignore[safe-super]
        target = self.config.targets[self.name]
        hooked = run_hooks(self.config, target, self, classification, budget.intent_id)
        return hooked.attach(super().execute(call, classification, budget))  # type: ignore[safe-super]

    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        if "hooks" not in compensation:  # the adapter's own part, as undo_with_hooks hands it back
            return super().compensate(compensation, budget)  # type: ignore[safe-super]
        return undo_with_hooks(self.config, self.config.targets[self.name], self, compensation, budget)


@contextmanager
def hooked_runtime(config_path: Path) -> Iterator[Runtime]:
    """A runtime on `config_path` whose adapters all run the hook step."""
    config = load_config(config_path)
    classes = {n: type(f"Hooked{t.adapter_cls.__name__}", (HookStep, t.adapter_cls), {})
               for n, t in config.targets.items()}
    targets = {n: t.model_copy(update={"adapter_cls": classes[n]}) for n, t in config.targets.items()}
    hooked = config.model_copy(update={"targets": targets})
    for cls in classes.values():
        cls.config = hooked  # type: ignore[attr-defined]
    rt = Runtime(hooked)
    try:
        yield rt
    finally:
        rt.close()


def receipts(rt: Runtime) -> list[Receipt]:
    rt.store.flush()
    return list(reversed(rt.store.receipts(limit=200)))


def sql(rt: Runtime, statement: str) -> Any:
    return rt.gate.run(Call(target="shop", tool="sql_execute", args={"sql": statement}), CALLER)
